"""Structured patch masking for stage 2: drop whole frequency rows and time columns.

Patch tokens are numbered frequency-major, ``index = f * grid_t + t``, as the ViT's
`patchify` lays them out. A token is kept exactly when neither its row nor its column is
dropped; which rows and columns are dropped is drawn at random per example.

How many rows and columns: the official recipe (nttcslab/m2d `random_structured_mask` in
`m2d/models_mae.py`) draws the counts once per *batch*: rows = int(F·(r + 1/F)·U), U ~ U[0, 1),
capped at F − 1, then columns = int(T·max(r + 0.5/T − rows/F, 0)). `official_variants` lists
the few (rows, columns) pairs this can give with their probabilities, and `draw_variant`
picks one per batch (the official DDP run draws per GPU, its ranks seeding numpy apart;
jaxclap per global batch, or per micro-batch under grad_accum); each pair has its own
static token count, so callers compile one branch per pair (`jax.lax.switch`, see
`objectives.Stage2`). `structured_counts` is the older fixed-count rule
(`model.structured_mask_counts="fixed"`), one static shape for every batch.

The official code then orders tokens by ``argsort(mask, descending=True)`` and keeps the
first ``len_keep = (F − rows)·(T − cols)``, which takes the tokens of the *sampled*
rows/columns first (the same number of tokens, but mostly the wrong ones); its docstring
and the papers describe dropping the sampled rows/columns, and that is what
`structured_keep` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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


def official_variants(grid_f: int, grid_t: int, ratio: float) -> tuple[tuple[int, int, float], ...]:
  """Every (rows, columns, probability) the official per-batch draw can give, exactly.

  rows = min(int(a·U), F − 1) with a = F·(r + 1/F): each k < floor(a) has probability 1/a,
  k = floor(a) has (a − floor(a))/a; the cap at F − 1 folds the tail into F − 1.
  ``ratio == 0`` gives ``((0, 0, 1.0),)`` (the official rule would still drop columns).
  """
  _check_grid(grid_f, grid_t)
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"structured mask ratio must be in [0, 1), got {ratio}")
  if ratio == 0.0:
    return ((0, 0, 1.0),)
  a = grid_f * (ratio + 1.0 / grid_f)
  probs: dict[int, float] = {}
  for k in range(int(math.floor(a)) + 1):
    p = 1.0 / a if k < math.floor(a) else (a - math.floor(a)) / a
    if p > 0:
      rows = min(k, grid_f - 1)
      probs[rows] = probs.get(rows, 0.0) + p
  out = []
  for rows, p in sorted(probs.items()):
    cols = int(grid_t * max(ratio + 0.5 / grid_t - rows / grid_f, 0.0))
    out.append((rows, min(cols, grid_t - 1), p))
  return tuple(out)


def stage2_variants(
  grid_f: int, grid_t: int, ratio: float, counts: str = "official"
) -> tuple[tuple[int, int, float], ...]:
  """The (rows, columns, probability) variants of `model.structured_mask_counts`.

  "official": `official_variants` (counts drawn per batch); "fixed": the single
  `structured_counts` pair. ``ratio == 0`` gives ``((0, 0, 1.0),)`` (no masking) either way.
  """
  if counts == "official":
    return official_variants(grid_f, grid_t, ratio)
  if counts == "fixed":
    return (structured_counts(grid_f, grid_t, ratio) + (1.0,),)
  raise ValueError(f"model.structured_mask_counts={counts!r}; expected 'official' or 'fixed'")


def draw_variant(rng: jax.Array, variants: tuple[tuple[int, int, float], ...]) -> jax.Array:
  """Index (int32 scalar, traced) of the variant drawn for this batch."""
  probs = jnp.asarray([p for *_, p in variants], jnp.float32)
  return jax.random.choice(rng, len(variants), p=probs).astype(jnp.int32)


def draw_mask(
  rng: jax.Array, variants: tuple[tuple[int, int, float], ...]
) -> tuple[jax.Array, jax.Array]:
  """(index of this batch's variant, key for its kept rows/columns)."""
  pick_key, keep_key = jax.random.split(rng)
  if len(variants) == 1:
    return jnp.zeros((), jnp.int32), keep_key
  return draw_variant(pick_key, variants), keep_key


def with_drawn_mask(
  rng: jax.Array,
  variants: tuple[tuple[int, int, float], ...],
  batch: int,
  grid: tuple[int, int],
  fn: Callable[..., Any],
) -> tuple[Any, jax.Array]:
  """`fn(keep, kept_grid)` under this batch's structured mask; (its output, variant index).

  The variant is drawn per batch (`draw_mask`); `jax.lax.switch` runs one branch per
  (rows, columns) pair, each with its own static token count, so every branch's output
  must have the same shape. `keep` [batch, K] holds the sorted kept token indices and
  `kept_grid` the (rows, columns) kept; both are None when the variant drops nothing.
  """
  grid_f, grid_t = grid
  index, keep_key = draw_mask(rng, variants)

  def branch(n_rows: int, n_cols: int) -> Callable[[], Any]:
    def run():
      if not (n_rows or n_cols):
        return fn(None, None)
      keep = structured_keep(keep_key, batch, grid_f, grid_t, n_rows, n_cols)
      return fn(keep, (grid_f - n_rows, grid_t - n_cols))

    return run

  branches = [branch(r, c) for r, c, _ in variants]
  if len(branches) == 1:
    return branches[0](), index
  return jax.lax.switch(index, branches), index


def dropped_fraction(grid_f: int, grid_t: int, n_rows: int, n_cols: int) -> float:
  """Fraction of tokens dropped by removing ``n_rows`` rows and ``n_cols`` columns."""
  return 1.0 - (grid_f - n_rows) * (grid_t - n_cols) / (grid_f * grid_t)


def _kept_sorted(rng: jax.Array, batch: int, size: int, n_drop: int) -> jax.Array:
  """Per example, a sorted random subset of ``size - n_drop`` of ``range(size)``: [B, keep]."""
  noise = jax.random.uniform(rng, (batch, size))
  return jnp.sort(jnp.argsort(noise, axis=-1)[:, : size - n_drop], axis=-1).astype(jnp.int32)


def structured_keep(
  rng: jax.Array, batch: int, grid_f: int, grid_t: int, n_rows: int, n_cols: int
) -> jax.Array:
  """Sorted kept token indices ``[batch, (grid_f - n_rows) * (grid_t - n_cols)]`` int32.

  All size arguments are Python ints (static under ``jit``); only ``rng`` is traced.
  """
  _check_grid(grid_f, grid_t)
  if not (0 <= n_rows < grid_f and 0 <= n_cols < grid_t):
    raise ValueError(
      f"cannot drop {n_rows} rows and {n_cols} columns of a {grid_f}x{grid_t} "
      "patch grid; at least one row and one column must stay"
    )
  # The sampled rows/columns are the dropped ones, as documented officially; the official
  # code's argsort(mask, descending=True)[:len_keep] would keep them instead (module docs).
  row_key, col_key = jax.random.split(rng)
  rows = _kept_sorted(row_key, batch, grid_f, n_rows)  # [B, F_keep]
  cols = _kept_sorted(col_key, batch, grid_t, n_cols)  # [B, T_keep]
  # Sorted rows times sorted columns, row-major, is already sorted in f * grid_t + t.
  return (rows[:, :, None] * grid_t + cols[:, None, :]).reshape(batch, -1)
