"""Flax ViT encoder for log-mel patches (timm/MAE layout: pre-norm, qkv bias, erf GELU).

Parameters are float32 and carry logical axis names ('embed', 'mlp', 'qkv', 'heads',
'patch') so the trainer can shard them with rules; `dtype` sets the compute dtype.
The encoder is {patch_embed, cls_token, body: {block_0.., norm}} because M2D's EMA target
is a separate copy of exactly `body`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxclap.models import patches

Dtype = Any
_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones


def dense(features: int, names: tuple[str | None, str | None], dtype: Dtype,
          name: str) -> nn.Dense:
  """Dense layer with xavier-uniform kernel, zero bias and logical axis names."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                  kernel_init=nn.with_logical_partitioning(_xavier, names),
                  bias_init=nn.with_logical_partitioning(_zeros, names[1:]))


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
  """LayerNorm over 'embed' with logical axis names on scale and bias."""
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name,
                      scale_init=nn.with_logical_partitioning(_ones, ("embed",)),
                      bias_init=nn.with_logical_partitioning(_zeros, ("embed",)))


def attention(q: jax.Array, k: jax.Array, v: jax.Array,
              key_mask: jax.Array | None = None) -> jax.Array:
  """Softmax attention on [B, N, H, d] arrays; logits and softmax in float32.

  `key_mask` [B, N] (1 = real token) hides padding keys, for text towers.
  """
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits * (q.shape[-1] ** -0.5)
  if key_mask is not None:
    # A finite fill keeps a row with no valid key finite (our tokenizers never make one).
    logits = jnp.where(key_mask[:, None, None, :].astype(bool), logits, -1e9)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (rows q|k|v, as timm)."""

  heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    b, n, d = x.shape
    if d % self.heads:
      raise ValueError(f"Attention: width {d} not divisible by heads {self.heads}")
    qkv = dense(3 * d, ("embed", "qkv"), self.dtype, "qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, n, 3, self.heads, d // self.heads), 3, axis=2)
    out = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], key_mask).reshape(b, n, d)
    return dense(d, ("heads", "embed"), self.dtype, "proj")(out)


class Mlp(nn.Module):
  """fc1 → exact GELU → fc2."""

  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = dense(self.hidden, ("embed", "mlp"), self.dtype, "fc1")(x)
    h = nn.gelu(h, approximate=False)
    return dense(x.shape[-1], ("mlp", "embed"), self.dtype, "fc2")(h)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

  heads: int
  mlp_ratio: float = 4.0
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    d = x.shape[-1]
    x = x + Attention(self.heads, self.dtype, name="attn")(
        layer_norm(self.eps, self.dtype, "norm1")(x), key_mask)
    return x + Mlp(int(d * self.mlp_ratio), self.dtype, name="mlp")(
        layer_norm(self.eps, self.dtype, "norm2")(x))


REMAT_POLICIES = ("none", "full", "save_dots")
POS_TABLES = ("sincos", "stored")


def block_class(remat: str = "none") -> type[nn.Module]:
  """`Block`, or `Block` rematerialised in the backward pass (same parameter names).

  "full" keeps only each block's input and recomputes the rest; "save_dots" also keeps
  the matmul outputs (less recompute, more memory).
  """
  if remat == "none":
    return Block
  if remat == "full":
    return nn.remat(Block)
  if remat == "save_dots":
    return nn.remat(Block, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  raise ValueError(f"model.remat={remat!r}; expected one of {REMAT_POLICIES}")


class ViTBody(nn.Module):
  """Transformer blocks + final LayerNorm (the part M2D's EMA target copies)."""

  depth: int
  heads: int
  mlp_ratio: float = 4.0
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  remat: str = "none"  # Activation rematerialisation of each block (REMAT_POLICIES).

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    block = block_class(self.remat)
    for i in range(self.depth):
      x = block(self.heads, self.mlp_ratio, self.eps, self.dtype, name=f"block_{i}")(x)
    return layer_norm(self.eps, self.dtype, "norm")(x)


class ViTEncoder(nn.Module):
  """Patch embedding + fixed sin-cos positions + cls token + body.

  `input_frames` is the trained input length: shorter inputs keep the first time columns of
  the position table, longer ones get a bicubically resized table.
  """

  width: int
  depth: int
  heads: int
  patch_size: int = 16
  n_mels: int = 80
  input_frames: int = 608
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  remat: str = "none"  # See block_class.
  # "sincos": the fixed table, computed. "stored": a saved table (an imported official file
  # whose table was interpolated, e.g. by stage-1.1 fine-tuning), a parameter kept frozen.
  pos_table: str = "sincos"

  def setup(self):
    self.patch_embed = dense(self.width, ("patch", "embed"), self.dtype, "patch_embed")
    self.cls_token = self.param(
        "cls_token", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                  (None, None, "embed")),
        (1, 1, self.width), jnp.float32)
    self.body = ViTBody(self.depth, self.heads, self.mlp_ratio, 1e-6, self.dtype, self.remat)
    if self.pos_table not in POS_TABLES:
      raise ValueError(f"model.pos_table={self.pos_table!r}; expected one of {POS_TABLES}")
    if self.pos_table == "stored":
      self.stored_pos_embed = self.param(
          "pos_embed", nn.with_logical_partitioning(self._sincos_init, (None, "embed")),
          (self.train_grid[0] * self.train_grid[1], self.width), jnp.float32)

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
    tokens = self.patch_embed(patches.patchify(x.astype(self.dtype), self.patch_size))
    return tokens + self.pos_embed(grid).astype(tokens.dtype)

  def cls(self) -> jax.Array:
    """cls token [1, 1, D] (its position row is zero)."""
    return self.cls_token

  def encode_tokens(self, tokens: jax.Array) -> jax.Array:
    """Prepend cls to embedded tokens [B, N, D] and run the body → [B, 1 + N, D]."""
    cls = jnp.broadcast_to(self.cls_token.astype(tokens.dtype),
                           (tokens.shape[0], 1, self.width))
    return self.body(jnp.concatenate([cls, tokens], axis=1))

  def __call__(self, x: jax.Array) -> jax.Array:
    """All patches visible: [B, F, T] → [B, 1 + F'·T', D] (cls first)."""
    return self.encode_tokens(self.embed(x))
