"""Fine-tuning augmentations on normalised log-mels: mixup, SpecAugment, random resize
crop, patch masking.

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


# Random resize crop (EVAR finetune.py's RandomResizeCrop, from byol-a): each log-mel sits
# in the middle of a zero canvas 1.0× as high and 1.5× as wide; a crop of 0.6-1.5× the
# input's height and width (clipped to the canvas) is resized back to the input's shape.
RRC_CANVAS = (1.0, 1.5)  # virtual_crop_scale (frequency, time).
RRC_SCALE = (0.6, 1.5)  # freq_scale and time_scale.
_CUBIC_A = -0.75  # torch's bicubic kernel constant.


def _cubic_weights(t: jax.Array) -> jax.Array:
  """[..., 4] weights of the taps at offsets -1, 0, 1, 2 for a fraction t in [0, 1)."""
  a = _CUBIC_A

  def near(d):  # |d| <= 1
    return ((a + 2) * d - (a + 3)) * d * d + 1

  def far(d):  # 1 < |d| < 2
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

  return jnp.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _taps(out: int, start: jax.Array, length: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Source rows [out, 4] and weights [out, 4] of a bicubic resize (align_corners=True) of
  the `length` entries from `start` to `out` entries, edges clamped inside the crop."""
  scale = (length - 1).astype(jnp.float32) / max(out - 1, 1)
  src = jnp.arange(out, dtype=jnp.float32) * scale
  base = jnp.floor(src)
  taps = base.astype(jnp.int32)[:, None] + jnp.arange(-1, 3)[None, :]
  return start + jnp.clip(taps, 0, length - 1), _cubic_weights(src - base)


def resize_crop(x: jax.Array, i: jax.Array, j: jax.Array, h: jax.Array, w: jax.Array) -> jax.Array:
  """One log-mel [F, T]: the canvas crop rows [i, i+h), columns [j, j+w) resized to [F, T]."""
  f, t = x.shape
  cf, ct = int(f * RRC_CANVAS[0]), int(t * RRC_CANVAS[1])
  top, left = (cf - f) // 2, (ct - t) // 2
  canvas = jnp.pad(x, ((top, cf - f - top), (left, ct - t - left)))
  rows, row_w = _taps(f, i, h)
  cols, col_w = _taps(t, j, w)
  x = jnp.einsum("fk,fkt->ft", row_w, canvas[rows])  # [F, Tc]
  return jnp.einsum("tk,ftk->ft", col_w, x[:, cols])


def draw_crops(rng: jax.Array, batch: int, f: int, t: int) -> tuple[jax.Array, ...]:
  """(i, j, h, w) [B] each, drawn as RandomResizeCrop.get_params does."""
  cf, ct = int(f * RRC_CANVAS[0]), int(t * RRC_CANVAS[1])
  keys = jax.random.split(rng, 4)
  lo, hi = RRC_SCALE
  h = jnp.clip((jax.random.uniform(keys[0], (batch,), minval=lo, maxval=hi) * f).astype(int), 1, cf)
  w = jnp.clip((jax.random.uniform(keys[1], (batch,), minval=lo, maxval=hi) * t).astype(int), 1, ct)
  # random.randint(0, n) includes n.
  i = jnp.floor(jax.random.uniform(keys[2], (batch,)) * (cf - h + 1)).astype(jnp.int32)
  j = jnp.floor(jax.random.uniform(keys[3], (batch,)) * (ct - w + 1)).astype(jnp.int32)
  return i, j, h.astype(jnp.int32), w.astype(jnp.int32)


def random_resize_crop(rng: jax.Array, x: jax.Array) -> jax.Array:
  """Log-mels [B, F, T], each through its own random resize crop."""
  b, f, t = x.shape
  return jax.vmap(resize_crop)(x, *draw_crops(rng, b, f, t))
