"""Fine-tuning augmentations on normalised log-mels: mixup, SpecAugment, patch masking.

All are pure functions of a JAX key and arrays, so a jitted step stays deterministic
(each example's mixup weight λ comes with its crop: `data.pipeline.mixup_lambda`).
Log-mels are [B, F, T] (frequency bins, time frames), normalised: 0 is the data mean,
which is the value masked bands are set to (torchaudio's FrequencyMasking default).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxclap.models import masks

# SpecAugment time-mask widths are quoted for 10 s input (1001 frames).
TIME_MASK_REF_FRAMES = 1001
HEAD_INPUTS = ("frames", "tokens")


def mix(x: jax.Array, lam: jax.Array, perm: jax.Array) -> jax.Array:
  """λ·x + (1 − λ)·x[perm], λ [B] broadcast over every axis after the first."""
  lam = lam.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
  return lam * x + (1 - lam) * x[perm]


def mixup(
  rng: jax.Array, x: jax.Array, y: jax.Array, lam: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixes each example's input and label vector with a random partner's, with the same
  per-example λ [B] for both; returns (x, y, partner permutation)."""
  perm = jax.random.permutation(rng, x.shape[0])
  return mix(x, lam, perm), mix(y, lam, perm), perm


def draw_bands(
  rng: jax.Array, batch: int, size: int, max_width: int
) -> tuple[jax.Array, jax.Array]:
  """Per example a band (start, width) of an axis of `size`: width ~ U{0..max_width-1},
  start ~ U[0, size − width) (torchaudio's FrequencyMasking/TimeMasking draws)."""
  w_key, s_key = jax.random.split(rng)
  max_width = min(max_width, size)
  width = jnp.floor(jax.random.uniform(w_key, (batch,)) * max_width).astype(jnp.int32)
  start = jnp.floor(jax.random.uniform(s_key, (batch,)) * (size - width)).astype(jnp.int32)
  return start, width


def band_mask(size: int, start: jax.Array, width: jax.Array) -> jax.Array:
  """[B, size] bool: True inside [start, start + width) of each example."""
  idx = jnp.arange(size)[None, :]
  return (idx >= start[:, None]) & (idx < (start + width)[:, None])


def spec_augment(rng: jax.Array, x: jax.Array, freq_mask: int, time_mask: int) -> jax.Array:
  """One frequency band (< freq_mask bins) and one time band (< time_mask frames) per
  example set to 0; a width of 0 disables that axis."""
  b, f, t = x.shape
  f_key, t_key = jax.random.split(rng)
  if freq_mask > 0:
    hide = band_mask(f, *draw_bands(f_key, b, f, freq_mask))
    x = jnp.where(hide[:, :, None], 0.0, x)
  if time_mask > 0:
    hide = band_mask(t, *draw_bands(t_key, b, t, time_mask))
    x = jnp.where(hide[:, None, :], 0.0, x)
  return x


def scaled_time_mask(time_mask: int, frames: int) -> int:
  """Time-mask width for `frames`-long crops: the 10 s width scaled down in proportion
  (192 of 1001 frames → 40 of 208); crops of 10 s or more keep it."""
  if frames >= TIME_MASK_REF_FRAMES:
    return time_mask
  return int(round(time_mask * frames / TIME_MASK_REF_FRAMES))


def mask_counts(head_input: str, grid_f: int, grid_t: int, ratio: float) -> tuple[int, int]:
  """(frequency rows, time columns) of patches that structured masking drops.

  "frames" heads read one F'·D vector per time patch, so only whole time columns may go
  (a dropped row would remove part of that vector): round(ratio·T') columns. "tokens"
  heads average tokens (the official runtime's D-dim "flat" features when masking), so
  rows and columns go as `masks.structured_counts`.
  """
  if head_input not in HEAD_INPUTS:
    raise ValueError(f"head_input must be one of {HEAD_INPUTS}, got {head_input!r}")
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {ratio}")
  if head_input == "tokens":
    return masks.structured_counts(grid_f, grid_t, ratio)
  return 0, min(int(round(ratio * grid_t)), grid_t - 1)


def mask_variants(
  head_input: str, grid_f: int, grid_t: int, ratio: float
) -> tuple[tuple[int, int, float], ...]:
  """(rows, columns, probability) of structured masking, one variant drawn per batch.

  "tokens" heads: the official runtime's draw (rows and columns, counts drawn per batch,
  `masks.official_variants`). "frames" heads may only drop time columns: one variant,
  `mask_counts`'. Ratio 0: the single variant (0, 0) (no masking).
  """
  if head_input == "tokens" and ratio > 0:
    return masks.official_variants(grid_f, grid_t, ratio)
  rows, cols = mask_counts(head_input, grid_f, grid_t, ratio)
  return ((rows, cols, 1.0),)
