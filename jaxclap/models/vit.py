"""Flax ViT encoder for log-mel patches (timm/MAE layout: pre-norm, qkv bias, erf GELU).

Parameters are float32 and carry logical axis names ('embed', 'mlp', 'qkv', 'heads',
'patch') so the trainer can shard them with rules; `dtype` is the matmul operand dtype
(bfloat16: bf16 operands, float32 accumulation, float32 residual stream; see `layers`).
The encoder is {patch_embed, cls_token, body: {block_0.., norm}} because M2D's EMA target
is a separate copy of exactly `body`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxclap import layers
from jaxclap.models import patches, sizes

Dtype = Any
REMAT_POLICIES = ("none", "full", "save_dots")
POS_TABLES = ("sincos", "stored")


def block_class(remat: str = "none") -> type[nn.Module]:
  """`layers.Block`, or `layers.Block` rematerialised in the backward pass (same parameter names).

  "full" keeps only each block's input and recomputes the rest; "save_dots" also keeps
  the matmul outputs (less recompute, more memory).
  """
  if remat == "none":
    return layers.Block
  if remat == "full":
    return nn.remat(layers.Block)
  if remat == "save_dots":
    return nn.remat(layers.Block, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  raise ValueError(f"model.remat={remat!r}; expected one of {REMAT_POLICIES}")


class ViTBody(nn.Module):
  """Transformer blocks + final LayerNorm (the part M2D's EMA target copies)."""

  depth: int
  heads: int
  mlp_ratio: float = 4.0
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  remat: str = "none"  # Activation rematerialisation of each block (REMAT_POLICIES).
  attention: str = "einsum"  # Attention backend (layers.ATTENTION_BACKENDS).

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # The residual stream is float32 in every mode: only matmul operands are `dtype`.
    x = x.astype(jnp.float32)
    block = block_class(self.remat)
    for i in range(self.depth):
      x = block(
        self.heads, self.mlp_ratio, self.eps, self.dtype, self.attention, name=f"block_{i}"
      )(x)
    return layers.layer_norm(self.eps, self.dtype, "norm")(x)


class ViTEncoder(nn.Module):
  """Patch embedding + fixed sin-cos positions + cls token + body.

  `input_frames` is the trained input length: shorter inputs keep the first time columns of
  the position table, longer ones get a bicubically resized table.
  """

  width: int
  depth: int
  heads: int
  patch_size: int | tuple[int, int] = 16  # Square side, or (freq, time) (patches.Patch).
  n_mels: int = 80
  input_frames: int = 608
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  remat: str = "none"  # See block_class.
  attention: str = "einsum"  # Attention backend (layers.ATTENTION_BACKENDS).
  # "sincos": the fixed table, computed. "stored": a saved table (an imported official file
  # whose table was interpolated, e.g. by stage-1.1 fine-tuning), a parameter kept frozen.
  pos_table: str = "sincos"

  @classmethod
  def of_model(cls, model: nn.Module) -> ViTEncoder:
    """The encoder a model describes by its fields (M2D, CLAP and the fine-tuning network).

    Reads `size` ("base", "large", ...; see `sizes`), `patch_size`, `n_mels`,
    `input_frames`, `dtype`, `pos_table` and, where the model has them, `remat` and
    `attention`.
    """
    width, depth, heads = sizes.get_size(model.size)
    return cls(
      width,
      depth,
      heads,
      model.patch_size,
      model.n_mels,
      model.input_frames,
      dtype=model.dtype,
      remat=getattr(model, "remat", "none"),
      attention=getattr(model, "attention", "einsum"),
      pos_table=model.pos_table,
    )

  def setup(self):
    self.patch_embed = layers.dense(self.width, ("patch", "embed"), self.dtype, "patch_embed")
    self.cls_token = self.param(
      "cls_token",
      nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
      (1, 1, self.width),
      jnp.float32,
    )
    self.body = ViTBody(
      self.depth, self.heads, self.mlp_ratio, 1e-6, self.dtype, self.remat, self.attention
    )
    if self.pos_table not in POS_TABLES:
      raise ValueError(f"model.pos_table={self.pos_table!r}; expected one of {POS_TABLES}")
    if self.pos_table == "stored":
      self.stored_pos_embed = self.param(
        "pos_embed",
        nn.with_logical_partitioning(self._sincos_init, (None, "embed")),
        (self.train_grid[0] * self.train_grid[1], self.width),
        jnp.float32,
      )

  def _sincos_init(self, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    del key
    table = patches.sincos_pos_embed(self.width, self.train_grid, cls_token=False)
    return jnp.asarray(table, dtype).reshape(shape)

  @property
  def train_grid(self) -> tuple[int, int]:
    return patches.grid_size(self.n_mels, self.input_frames, self.patch_size)

  def pos_embed(self, grid: tuple[int, int]) -> jax.Array:
    """Patch position table [F'·T', D] for `grid` (no cls row; the cls row is zeros)."""
    if self.pos_table == "stored":
      table = jax.lax.stop_gradient(self.stored_pos_embed)  # Fixed, as the official table.
    else:
      table = patches.sincos_pos_embed(self.width, self.train_grid, cls_token=False)
    return patches.fit_pos_embed(table, self.train_grid, grid)

  def embed(self, x: jax.Array) -> jax.Array:
    """Normalised log-mel [B, F, T] → patch tokens + positions [B, F'·T', D] (no cls)."""
    if x.shape[1] != self.n_mels:
      raise ValueError(f"ViTEncoder: expected {self.n_mels} mel bins, got input {x.shape}")
    grid = patches.grid_size(x.shape[1], x.shape[2], self.patch_size)
    tokens = self.patch_embed(patches.patchify(x.astype(jnp.float32), self.patch_size))
    return tokens + self.pos_embed(grid).astype(tokens.dtype)

  def cls(self) -> jax.Array:
    """cls token [1, 1, D] (its position row is zero)."""
    return self.cls_token

  def encode_tokens(self, tokens: jax.Array) -> jax.Array:
    """Prepend cls to embedded tokens [B, N, D] and run the body → [B, 1 + N, D]."""
    cls = jnp.broadcast_to(self.cls_token.astype(tokens.dtype), (tokens.shape[0], 1, self.width))
    return self.body(jnp.concatenate([cls, tokens], axis=1))

  def __call__(self, x: jax.Array) -> jax.Array:
    """All patches visible: [B, F, T] → [B, 1 + F'·T', D] (cls first)."""
    return self.encode_tokens(self.embed(x))
