"""Structured patch masks: whole rows/columns dropped, exact counts, about the ratio."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from jaxclap.models import masks


def _dropped_grid(keep: np.ndarray, grid_f: int, grid_t: int) -> np.ndarray:
  """[grid_f, grid_t] bool, True where the token is not in ``keep``."""
  dropped = np.ones(grid_f * grid_t, bool)
  dropped[keep] = False
  return dropped.reshape(grid_f, grid_t)


@pytest.mark.parametrize("grid_f,grid_t", [(5, 62), (5, 38)])
def test_drops_whole_rows_and_columns_at_about_the_ratio(grid_f, grid_t):
  n_rows, n_cols = masks.structured_counts(grid_f, grid_t, 0.3)
  assert n_rows >= 1 and n_cols >= 1
  frac = masks.dropped_fraction(grid_f, grid_t, n_rows, n_cols)
  assert abs(frac - 0.3) <= 0.1
  batch = 16
  keep = np.asarray(
    masks.structured_keep(jax.random.PRNGKey(0), batch, grid_f, grid_t, n_rows, n_cols)
  )
  assert keep.dtype == np.int32
  assert keep.shape == (batch, (grid_f - n_rows) * (grid_t - n_cols))
  for b in range(batch):
    assert np.all(np.diff(keep[b]) > 0), "indices must be sorted and unique"
    dropped = _dropped_grid(keep[b], grid_f, grid_t)
    full_rows = dropped.all(axis=1)
    full_cols = dropped.all(axis=0)
    assert full_rows.sum() == n_rows and full_cols.sum() == n_cols
    # Every dropped token lies in a fully dropped row or a fully dropped column.
    explained = full_rows[:, None] | full_cols[None, :]
    np.testing.assert_array_equal(dropped, explained)
    assert abs(dropped.mean() - 0.3) <= 0.1


def test_counts_rule():
  assert masks.structured_counts(5, 62, 0.3) == (1, 8)
  assert masks.structured_counts(5, 38, 0.3) == (1, 5)
  assert masks.structured_counts(5, 62, 0.0) == (0, 0)
  # A large ratio never drops a whole axis.
  n_rows, n_cols = masks.structured_counts(5, 62, 0.99)
  assert n_rows <= 4 and n_cols <= 61
  for ratio in (0.1, 0.3, 0.5, 0.7):
    r, c = masks.structured_counts(8, 100, ratio)
    assert abs(masks.dropped_fraction(8, 100, r, c) - ratio) < 0.03


def test_zero_ratio_keeps_everything():
  keep = masks.structured_keep(jax.random.PRNGKey(1), 3, 5, 62, 0, 0)
  np.testing.assert_array_equal(keep, np.tile(np.arange(5 * 62), (3, 1)))


def test_positions_differ_per_example_and_per_key():
  keep = np.asarray(masks.structured_keep(jax.random.PRNGKey(2), 8, 5, 62, 1, 8))
  assert len({tuple(row) for row in keep}) == 8
  other = np.asarray(masks.structured_keep(jax.random.PRNGKey(3), 8, 5, 62, 1, 8))
  assert not np.array_equal(keep, other)


def test_jit_matches_eager():
  fn = jax.jit(
    functools.partial(masks.structured_keep, batch=4, grid_f=5, grid_t=38, n_rows=1, n_cols=5)
  )
  key = jax.random.PRNGKey(4)
  np.testing.assert_array_equal(fn(key), masks.structured_keep(key, 4, 5, 38, 1, 5))


@pytest.mark.parametrize(
  "args,match", [((5, 62, 1.0), "ratio"), ((5, 62, -0.1), "ratio"), ((0, 62, 0.3), "grid")]
)
def test_counts_reject_bad_input(args, match):
  with pytest.raises(ValueError, match=match):
    masks.structured_counts(*args)


def test_keep_rejects_dropping_a_whole_axis():
  with pytest.raises(ValueError, match="5 rows"):
    masks.structured_keep(jax.random.PRNGKey(0), 2, 5, 62, 5, 0)


# --- The official per-batch counts (nttcslab/m2d random_structured_mask) ----------------


def _official_counts_numpy(
  grid_f: int, grid_t: int, ratio: float, u: np.ndarray
) -> list[tuple[int, int]]:
  """The official rule, written from its formula, for each uniform draw in `u`."""
  out = []
  for x in u:
    rows = min(int(grid_f * (ratio + 1.0 / grid_f) * x), grid_f - 1)
    cols = int(grid_t * max(ratio + 0.5 / grid_t - rows / grid_f, 0.0))
    out.append((rows, cols))
  return out


@pytest.mark.parametrize("grid_f,grid_t,ratio", [(5, 62, 0.3), (5, 38, 0.5)])
def test_drawn_counts_follow_the_official_distribution(grid_f, grid_t, ratio):
  variants = masks.official_variants(grid_f, grid_t, ratio)
  sim = _official_counts_numpy(grid_f, grid_t, ratio, np.random.default_rng(0).random(200_000))
  pairs, sim_counts = np.unique(np.asarray(sim), axis=0, return_counts=True)
  # The same (rows, columns) pairs, none missing and none extra.
  assert [tuple(p) for p in pairs] == [(r, c) for r, c, _ in variants]
  n = 4000
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  draws = np.asarray(jax.jit(jax.vmap(lambda k: masks.draw_variant(k, variants)))(keys))
  freq = np.bincount(draws, minlength=len(variants)) / n
  p_sim = sim_counts / sim_counts.sum()
  sigma = np.sqrt(p_sim * (1 - p_sim) / n)
  assert np.all(np.abs(freq - p_sim) <= 3 * sigma + 1e-3), (freq, p_sim)


def test_official_variants_probabilities_closed_form():
  # rows = min(int(a·U), F − 1), a = F·(r + 1/F): P(k) = 1/a for k < floor(a), the rest on
  # floor(a); columns from the official formula.
  for grid_f, grid_t, ratio in [
    (5, 62, 0.3),
    (5, 38, 0.5),
    (5, 4, 0.3),
    (8, 100, 0.7),
    (5, 62, 0.9),
  ]:
    a = grid_f * (ratio + 1.0 / grid_f)
    probs = {}
    for k in range(int(np.floor(a)) + 1):
      p = 1.0 / a if k < np.floor(a) else (a - np.floor(a)) / a
      probs[min(k, grid_f - 1)] = probs.get(min(k, grid_f - 1), 0.0) + p
    expected = [
      (r, int(grid_t * max(ratio + 0.5 / grid_t - r / grid_f, 0.0)), p)
      for r, p in sorted(probs.items())
      if p > 0
    ]
    got = masks.official_variants(grid_f, grid_t, ratio)
    assert [(r, c) for r, c, _ in got] == [(r, c) for r, c, _ in expected]
    np.testing.assert_allclose([p for *_, p in got], [p for *_, p in expected], rtol=1e-12)
    assert sum(p for *_, p in got) == pytest.approx(1.0)
  # The worked example: F=5, r=0.3 → (0, 19), (1, 6), (2, 0) at 0.4 / 0.4 / 0.2.
  got = masks.official_variants(5, 62, 0.3)
  assert [(r, c) for r, c, _ in got] == [(0, 19), (1, 6), (2, 0)]
  np.testing.assert_allclose([p for *_, p in got], [0.4, 0.4, 0.2], rtol=1e-12)


def test_stage2_variants_official_and_fixed():
  assert masks.stage2_variants(5, 62, 0.3) == masks.official_variants(5, 62, 0.3)
  assert masks.stage2_variants(5, 62, 0.3, "fixed") == ((1, 8, 1.0),)
  assert masks.stage2_variants(5, 62, 0.0, "official") == ((0, 0, 1.0),)
  assert masks.stage2_variants(5, 62, 0.0, "fixed") == ((0, 0, 1.0),)
  with pytest.raises(ValueError, match="structured_mask_counts='per_example'"):
    masks.stage2_variants(5, 62, 0.3, "per_example")
