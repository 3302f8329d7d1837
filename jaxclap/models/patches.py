"""Patch layout and fixed 2-D sin-cos positions, in the official M2D order.

A log-mel [B, F, T] is cut into ph×pw patches on a (F' = F/ph, T' = T/pw) grid; token index
is f·T' + t (frequency outer, time inner), pixels inside a patch are (freq, time) row-major —
the order of flattening a [D, F', T'] conv output with an OIHW [D, 1, ph, pw] kernel. A patch
size is an int (square, p×p) or (ph, pw): 16×4 for the 40 ms M2D, 80×2 for M2D-S.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Patch = int | tuple[int, int]  # Square side, or (freq bins, frames).


def hw(patch_size: Patch) -> tuple[int, int]:
  """(height in mel bins, width in frames) of a patch size."""
  if isinstance(patch_size, (tuple, list)):
    return int(patch_size[0]), int(patch_size[1])
  return int(patch_size), int(patch_size)


def of_config(model_cfg: Any) -> Patch:
  """The patch of a model config: `patch_size` square, or (patch_size, patch_time)."""
  side, time = model_cfg.get("patch_size", 16), model_cfg.get("patch_time")
  return (side, time) if time else side


def grid_size(n_mels: int, n_frames: int, patch_size: Patch = 16) -> tuple[int, int]:
  """(F', T') patch grid of an [n_mels, n_frames] input; trailing partial patches drop."""
  ph, pw = hw(patch_size)
  return n_mels // ph, n_frames // pw


def patchify(x: jax.Array, patch_size: Patch = 16) -> jax.Array:
  """[B, F, T] → [B, F'·T', ph·pw]; frames beyond a whole patch are dropped."""
  b, f, t = x.shape
  (ph, pw), (gf, gt) = hw(patch_size), grid_size(f, t, patch_size)
  x = x[:, : gf * ph, : gt * pw]
  x = x.reshape(b, gf, ph, gt, pw)
  return x.transpose(0, 1, 3, 2, 4).reshape(b, gf * gt, ph * pw)


def unpatchify(patches: jax.Array, grid: tuple[int, int], patch_size: Patch = 16) -> jax.Array:
  """[B, F'·T', ph·pw] → [B, F'·ph, T'·pw] (inverse of patchify)."""
  b, (ph, pw) = patches.shape[0], hw(patch_size)
  gf, gt = grid
  x = patches.reshape(b, gf, gt, ph, pw).transpose(0, 1, 3, 2, 4)
  return x.reshape(b, gf * ph, gt * pw)


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """[N] positions → [N, dim]: [sin(pos·ω), cos(pos·ω)], ω_k = 1/10000^(k/(dim/2))."""
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.outer(pos.astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool = True) -> np.ndarray:
  """Fixed 2-D table [(1 +) F'·T', dim]: first half encodes time, second half frequency."""
  if dim % 4:
    raise ValueError(f"sincos_pos_embed: dim={dim} must be divisible by 4")
  gf, gt = grid
  t_idx, f_idx = np.meshgrid(np.arange(gt), np.arange(gf))  # each [F', T']
  table = np.concatenate(
    [_sincos_1d(dim // 2, t_idx.reshape(-1)), _sincos_1d(dim // 2, f_idx.reshape(-1))], axis=1
  )
  if cls_token:
    table = np.concatenate([np.zeros((1, dim)), table], axis=0)
  return table.astype(np.float32)


def fit_pos_embed(
  table: jax.Array, train_grid: tuple[int, int], grid: tuple[int, int]
) -> jax.Array:
  """Adapt a patch table [F'·T'_train, D] (no cls) to another grid.

  Fewer time columns keep the first columns (official runtime); more are bicubically
  resized (as for the 10 s fine-tuning models). Note jax's bicubic kernel is Keys a=-0.5,
  torch's F.interpolate uses a=-0.75, so resized tables differ slightly from PyTorch.
  """
  d = table.shape[-1]
  table = jnp.asarray(table).reshape(*train_grid, d)
  if grid[0] == train_grid[0] and grid[1] <= train_grid[1]:
    table = table[:, : grid[1]]
  elif grid != train_grid:
    table = jax.image.resize(table, (*grid, d), method="bicubic", antialias=False)
  return table.reshape(grid[0] * grid[1], d)


def split_time_chunks(
  x: jax.Array | np.ndarray, unit_frames: int, patch_size: Patch = 16, *, whole_units: bool = False
) -> list[jax.Array | np.ndarray]:
  """[..., T] → ceil(T / unit) chunks of `unit_frames` frames along the last axis.

  Follows the official runtime's `encode_lms`: the final chunk is padded with zeros
  (normalised domain) so its last partial patch is kept; `whole_units` pads it to a whole
  unit instead, so that all chunks can go through the encoder as one batch. A numpy input
  (the host-side inference queue) gives numpy views, padding only the last chunk.
  """
  xp = np if isinstance(x, np.ndarray) else jnp
  t, patch_size = x.shape[-1], hw(patch_size)[1]  # Padding is along time: the patch width.
  chunks = [x[..., i : i + unit_frames] for i in range(0, t, unit_frames)]
  last = chunks[-1].shape[-1]
  # As the official slicing, padding never reaches past the unit: with a unit that is no
  # patch multiple (1001 frames), a last chunk that nearly fills it drops its partial patch.
  pad = (
    unit_frames - last
    if whole_units
    else min((patch_size - last % unit_frames % patch_size) % patch_size, unit_frames - last)
  )
  if pad:
    chunks[-1] = xp.pad(chunks[-1], [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return chunks


def tokens_to_frames(tokens: jax.Array, grid_f: int) -> jax.Array:
  """[B, F'·T', D] → [B, T', F'·D] (per time patch, frequency patches concatenated)."""
  b, l, d = tokens.shape
  return (
    tokens.reshape(b, grid_f, l // grid_f, d)
    .transpose(0, 2, 1, 3)
    .reshape(b, l // grid_f, grid_f * d)
  )


def encode_chunks(
  encode_fn: Callable[[jax.Array], jax.Array],
  x: jax.Array,
  unit_frames: int,
  patch_size: Patch = 16,
  *,
  one_batch: bool = False,
) -> list[jax.Array]:
  """Patch tokens [B, F'·t', D] of each `split_time_chunks` chunk of [B, F, T] input.

  `encode_fn` maps a chunk [N, F, t] to patch tokens [N, F'·t', D] without cls.
  `one_batch`: chunks padded to whole units and encoded in one call of B·n rows (one
  compiled shape; the padded patches are the caller's to leave out).
  """
  chunks = split_time_chunks(x, unit_frames, patch_size, whole_units=one_batch)
  if not one_batch:
    return [encode_fn(c) for c in chunks]
  b, n = x.shape[0], len(chunks)
  tokens = encode_fn(jnp.stack(chunks, axis=1).reshape(b * n, *chunks[0].shape[1:]))
  return list(jnp.moveaxis(tokens.reshape(b, n, *tokens.shape[1:]), 1, 0))


def encode_in_chunks(
  encode_fn: Callable[[jax.Array], jax.Array],
  x: jax.Array,
  unit_frames: int,
  patch_size: Patch = 16,
) -> jax.Array:
  """Frame features [B, T'_total, F'·D] of a long input, chunk by chunk along time.

  `encode_fn` maps a chunk [B, F, t] to patch tokens [B, F'·t', D] without cls.
  """
  return chunks_to_frames(
    encode_chunks(encode_fn, x, unit_frames, patch_size), x.shape[1] // hw(patch_size)[0]
  )


def chunks_to_frames(chunks: list[jax.Array], grid_f: int) -> jax.Array:
  """Patch tokens of each time chunk → frame features [B, T'_total, F'·D] along time."""
  return jnp.concatenate([tokens_to_frames(t, grid_f) for t in chunks], axis=1)
