"""Stage-2 CLAP model: the stage-1 audio encoder, a fresh semantic-token pooler, a text tower."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxclap.models import clap_heads, patches, vit

LOGIT_SCALE_INIT = math.log(100.0)  # Stage 2 restarts the temperature at 0.01.


class CLAP(nn.Module):
  """Audio encoder (`encoder`, stage-1 names) + `audio_proj` pooler + `text_tower`."""

  text_tower: nn.Module
  size: str = "base"
  patch_size: patches.Patch = 16  # Square side, or (freq, time).
  n_mels: int = 80
  input_frames: int = 608  # Width of the stage-1 position table (longer input: resized).
  unit_frames: int = 0  # Input length trained on (chunk length); 0: input_frames.
  clap_dim: int = 768
  dtype: vit.Dtype = jnp.float32
  remat: str = "none"  # Rematerialise encoder blocks (vit.block_class).
  pos_table: str = "sincos"  # Encoder position table (vit.ViTEncoder.pos_table).

  def setup(self):
    self.encoder = vit.ViTEncoder.of_model(self)
    self.audio_proj = clap_heads.audio_head("semantic", self.clap_dim, self.dtype)
    self.logit_scale = self.param(
      "logit_scale",
      nn.with_logical_partitioning(nn.initializers.constant(LOGIT_SCALE_INIT), ()),
      (),
      jnp.float32,
    )

  def audio(self, x: jax.Array, keep_idx: jax.Array | None = None) -> jax.Array:
    """Normalised log-mel [B, F, T] → CLAP audio embedding [B, C] (not normalised).

    `keep_idx` [B, K] selects the patches left by structured masking (None: all).
    """
    tokens = self.encoder.embed(x)
    if keep_idx is not None:
      tokens = jnp.take_along_axis(tokens, keep_idx[..., None], axis=1)
    return self.audio_proj(self.encoder.encode_tokens(tokens)[:, 1:])

  def encode(self, x: jax.Array) -> jax.Array:
    """All patches visible: normalised log-mel [B, F, T] → patch tokens [B, F'·T', D]."""
    return self.encoder(x)[:, 1:]

  def project_audio(self, tokens: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    """CLAP audio embedding (not normalised) from patch tokens [B, N, D] (mask: real ones)."""
    return self.audio_proj(tokens, key_mask)

  def text(
    self, input_ids: jax.Array, attention_mask: jax.Array, deterministic: bool = True
  ) -> jax.Array:
    """Token ids [B, L] → CLAP text embedding [B, C] (not normalised)."""
    return self.text_tower(input_ids, attention_mask, deterministic=deterministic)

  def __call__(self, x: jax.Array, input_ids: jax.Array, attention_mask: jax.Array):
    """Initialisation path: both towers."""
    return self.audio(x), self.text(input_ids, attention_mask), self.logit_scale
