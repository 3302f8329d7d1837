"""Structured patch masking for stage 2: drop whole frequency rows and time columns.

Patch tokens are numbered frequency-major, ``index = f * grid_t + t``, as the ViT's
`patchify` lays them out. The counts of dropped rows and columns are fixed per run (so
every batch has the same static shape); which rows and columns are dropped is drawn at
random per example. A token is kept exactly when neither its row nor its column is dropped.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _check_grid(grid_f: int, grid_t: int) -> None:
  if grid_f < 1 or grid_t < 1:
    raise ValueError(f"patch grid must be at least 1x1, got {grid_f}x{grid_t}")


def structured_counts(grid_f: int, grid_t: int, ratio: float) -> tuple[int, int]:
  """Rows and columns to drop so that about ``ratio`` of the ``grid_f x grid_t`` tokens go.

  Rule: both axes first get the same drop fraction ``s = 1 - sqrt(1 - ratio)`` (kept
  fraction ``(1 - s)^2 = 1 - ratio``); rows are ``round(s * grid_f)``; columns are then
  rounded to whatever brings the total dropped fraction closest to ``ratio`` given those
  rows, which absorbs the coarse rounding of the short frequency axis. At least one row
  and one column are always kept; ``ratio == 0`` gives ``(0, 0)``.
  """
  _check_grid(grid_f, grid_t)
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"structured mask ratio must be in [0, 1), got {ratio}")
  if ratio == 0.0:
    return 0, 0
  per_axis = 1.0 - math.sqrt(1.0 - ratio)
  n_rows = min(int(round(per_axis * grid_f)), grid_f - 1)
  keep_cols = (1.0 - ratio) / (1.0 - n_rows / grid_f)  # Column keep fraction still needed.
  n_cols = min(max(int(round((1.0 - keep_cols) * grid_t)), 0), grid_t - 1)
  return n_rows, n_cols


def dropped_fraction(grid_f: int, grid_t: int, n_rows: int, n_cols: int) -> float:
  """Fraction of tokens dropped by removing ``n_rows`` rows and ``n_cols`` columns."""
  return 1.0 - (grid_f - n_rows) * (grid_t - n_cols) / (grid_f * grid_t)


def _kept_sorted(rng: jax.Array, batch: int, size: int, n_drop: int) -> jax.Array:
  """Per example, a sorted random subset of ``size - n_drop`` of ``range(size)``: [B, keep]."""
  noise = jax.random.uniform(rng, (batch, size))
  return jnp.sort(jnp.argsort(noise, axis=-1)[:, :size - n_drop], axis=-1).astype(jnp.int32)


def structured_keep(rng: jax.Array, batch: int, grid_f: int, grid_t: int, n_rows: int,
                    n_cols: int) -> jax.Array:
  """Sorted kept token indices ``[batch, (grid_f - n_rows) * (grid_t - n_cols)]`` int32.

  All size arguments are Python ints (static under ``jit``); only ``rng`` is traced.
  """
  _check_grid(grid_f, grid_t)
  if not (0 <= n_rows < grid_f and 0 <= n_cols < grid_t):
    raise ValueError(f"cannot drop {n_rows} rows and {n_cols} columns of a {grid_f}x{grid_t} "
                     "patch grid; at least one row and one column must stay")
  row_key, col_key = jax.random.split(rng)
  rows = _kept_sorted(row_key, batch, grid_f, n_rows)  # [B, F_keep]
  cols = _kept_sorted(col_key, batch, grid_t, n_cols)  # [B, T_keep]
  # Sorted rows times sorted columns, row-major, is already sorted in f * grid_t + t.
  return (rows[:, :, None] * grid_t + cols[:, None, :]).reshape(batch, -1)
