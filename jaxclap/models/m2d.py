"""M2D + CLAP stage-1 model (Flax) and its pure training functions.

Parameters live in two trees: `online` = {'encoder', 'predictor', 'audio_proj',
'text_proj' (only when text_dim != clap_dim), 'logit_scale'} and `target` = an EMA copy with
the structure of online['encoder']['body'] (blocks + final norm). Patch/position embeddings
and the cls token are shared: the target branch uses the online ones without gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxclap import layers
from jaxclap.models import clap_heads, patches, sizes, vit

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


class Predictor(nn.Module):
  """M2D predictor: Linear→width, mask tokens restored to full order with cls, sin-cos
  positions, blocks, LayerNorm, Linear→out_dim; returns predictions at masked positions."""

  width: int = 512
  depth: int = 8
  heads: int = 16
  out_dim: int = 768
  dtype: vit.Dtype = jnp.float32
  remat: str = "none"  # See vit.block_class.
  attention: str = "einsum"  # Attention backend (layers.ATTENTION_BACKENDS).

  @nn.compact
  def __call__(
    self, z: jax.Array, visible_idx: jax.Array, masked_idx: jax.Array, grid: tuple[int, int]
  ) -> jax.Array:
    b, v = visible_idx.shape
    m = masked_idx.shape[1]
    x = layers.dense(self.width, ("embed", "mlp"), self.dtype, "embed")(z)
    mask_token = self.param(
      "mask_token",
      nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
      (1, 1, self.width),
      jnp.float32,
    )
    shuffled = jnp.concatenate(
      [x[:, 1:], jnp.broadcast_to(mask_token.astype(x.dtype), (b, m, self.width))], axis=1
    )
    restore = jnp.argsort(jnp.concatenate([visible_idx, masked_idx], axis=1), axis=1)
    x_ = jnp.take_along_axis(shuffled, restore[..., None], axis=1)
    pos = patches.sincos_pos_embed(self.width, grid, cls_token=True)
    x = jnp.concatenate([x[:, :1], x_], axis=1) + pos.astype(x.dtype)
    block = vit.block_class(self.remat)
    for i in range(self.depth):
      x = block(self.heads, 4.0, 1e-6, self.dtype, self.attention, name=f"block_{i}")(x)
    x = layers.layer_norm(1e-6, self.dtype, "norm")(x)
    y = jnp.take_along_axis(x[:, 1:], masked_idx[..., None], axis=1)  # [B, M, width]
    return layers.dense(self.out_dim, ("mlp", "embed"), self.dtype, "pred")(y)


class M2D(nn.Module):
  """M2D encoder + predictor + CLAP heads (stage 1)."""

  size: str = "base"
  patch_size: int | tuple[int, int] = 16  # Square side, or (freq, time) (patches.Patch).
  n_mels: int = 80
  input_frames: int = 608  # Width of the position table (the stage-1 crop).
  # Input length the model was trained on, and so the chunk length of inference and export
  # (the table is fitted to it); 0: input_frames. See features.unit_frames.
  unit_frames: int = 0
  mask_ratio: float = 0.7
  predictor_width: int = 512
  predictor_depth: int = 8
  predictor_heads: int = 16
  clap_head: str = "semantic"
  clap_dim: int = 768
  text_dim: int = 768
  dtype: vit.Dtype = jnp.float32
  remat: str = "none"  # Rematerialise encoder and predictor blocks (vit.block_class).
  attention: str = "einsum"  # Encoder and predictor attention backend (layers.ATTENTION_BACKENDS).
  pos_table: str = "sincos"  # Encoder position table (vit.ViTEncoder.pos_table).

  def setup(self):
    w = sizes.get_size(self.size).width
    self.encoder = vit.ViTEncoder.of_model(self)
    self.predictor = Predictor(
      self.predictor_width,
      self.predictor_depth,
      self.predictor_heads,
      w,
      self.dtype,
      self.remat,
      self.attention,
    )
    self.audio_proj = clap_heads.audio_head(self.clap_head, self.clap_dim, self.dtype)
    self.text_proj = clap_heads.TextProjection(self.clap_dim, self.dtype)
    self.logit_scale = self.param(
      "logit_scale",
      nn.with_logical_partitioning(nn.initializers.constant(LOGIT_SCALE_INIT), ()),
      (),
      jnp.float32,
    )

  def stage1(
    self, x: jax.Array, visible_idx: jax.Array, masked_idx: jax.Array, text_emb: jax.Array
  ) -> dict[str, jax.Array]:
    """Online branch: predictions at masked positions, target inputs, CLAP embeddings."""
    grid = patches.grid_size(x.shape[1], x.shape[2], self.patch_size)
    tokens = self.encoder.embed(x)
    visible = jnp.take_along_axis(tokens, visible_idx[..., None], axis=1)
    z = self.encoder.encode_tokens(visible)
    return {
      "pred": self.predictor(z, visible_idx, masked_idx, grid),
      "target_in": jnp.concatenate(
        [
          jnp.broadcast_to(
            self.encoder.cls().astype(tokens.dtype), (tokens.shape[0], 1, tokens.shape[2])
          ),
          jnp.take_along_axis(tokens, masked_idx[..., None], axis=1),
        ],
        axis=1,
      ),
      "audio_emb": self.audio_proj(z[:, 1:]),
      "text_emb": self.text_proj(text_emb),
      "logit_scale": self.logit_scale,
    }

  def encode(self, x: jax.Array) -> jax.Array:
    """All patches visible: normalised log-mel [B, F, T] → patch tokens [B, F'·T', D]."""
    return self.encoder(x)[:, 1:]

  def project_audio(self, tokens: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    """CLAP audio embedding (not normalised) from patch tokens [B, N, D] (mask: real ones)."""
    return self.audio_proj(tokens, key_mask)

  def project_text(self, text_emb: jax.Array) -> jax.Array:
    """Sentence embedding → CLAP space (not normalised)."""
    return self.text_proj(text_emb)

  def __call__(self, x: jax.Array, text_emb: jax.Array) -> dict[str, jax.Array]:
    """Initialisation path: stage-1 forward with a fixed mask."""
    grid = patches.grid_size(x.shape[1], x.shape[2], self.patch_size)
    n = grid[0] * grid[1]
    v = num_visible(n, self.mask_ratio)
    idx = jnp.broadcast_to(jnp.arange(n), (x.shape[0], n))
    return self.stage1(x, idx[:, :v], idx[:, v:], text_emb)


def target_body(model: M2D) -> vit.ViTBody:
  """A standalone ViTBody with the encoder body's config (applies the target params)."""
  _, depth, heads = sizes.get_size(model.size)
  return vit.ViTBody(depth, heads, dtype=model.dtype, attention=model.attention, parent=None)


def _dtype(name: str) -> Any:
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"model dtype must be 'float32' or 'bfloat16', got {name!r}")
  return jnp.dtype(name)


def build_model(model_cfg: Mapping[str, Any]) -> M2D:
  """M2D from a model config (ml_collections ConfigDict or dict); see M2D's fields."""
  get = model_cfg.get
  return M2D(
    size=model_cfg["size"],
    patch_size=patches.of_config(model_cfg),
    n_mels=get("n_mels", 80),
    input_frames=get("input_frames", 608),
    unit_frames=get("unit_frames", 0),
    mask_ratio=get("mask_ratio", 0.7),
    predictor_width=get("predictor_width", 512),
    predictor_depth=get("predictor_depth", 8),
    predictor_heads=get("predictor_heads", 16),
    clap_head=get("clap_head", "semantic"),
    clap_dim=get("clap_dim", 768),
    text_dim=model_cfg["text_dim"],
    dtype=_dtype(get("dtype", "float32")),
    remat=get("remat", "none"),
    attention=get("attention", "einsum"),
    pos_table=get("pos_table", "sincos"),
  )


def init_params(
  model: M2D, rng: jax.Array, *, n_frames: int, n_mels: int = 80, text_dim: int
) -> tuple[dict, dict]:
  """(online, target) parameter trees, with nn.Partitioned boxes (logical axis names).

  The target body is initialised independently of the online body (official recipe).
  """
  rng_online, rng_target = jax.random.split(rng)
  x = jnp.zeros((1, n_mels, n_frames), jnp.float32)
  text = jnp.zeros((1, text_dim), jnp.float32)
  online = jax.jit(model.init)(rng_online, x, text)["params"]
  width = sizes.get_size(model.size).width
  body = target_body(model)
  target = jax.jit(body.init)(rng_target, jnp.zeros((1, 2, width), jnp.float32))["params"]
  return dict(online), dict(target)


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """Visible patches per example, counted as the official code: int(L · (1 − ratio))."""
  return int(num_patches * (1 - mask_ratio))


def sample_masks(
  rng: jax.Array, batch: int, num_patches: int, mask_ratio: float
) -> tuple[jax.Array, jax.Array]:
  """Per-example random masks: sorted, disjoint (visible_idx [B, V], masked_idx [B, M])."""
  v = num_visible(num_patches, mask_ratio)
  if not 0 < v < num_patches:
    raise ValueError(
      f"sample_masks: mask_ratio={mask_ratio} leaves {v} of {num_patches} "
      "patches visible; need at least one visible and one masked"
    )
  shuffle = jnp.argsort(jax.random.uniform(rng, (batch, num_patches)), axis=1)
  return jnp.sort(shuffle[:, :v], axis=1), jnp.sort(shuffle[:, v:], axis=1)
