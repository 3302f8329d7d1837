"""How a training mixture draws its sources: records per epoch, shares and passes per run.

The official run concatenates its file lists and samples them uniformly, so each corpus
is drawn in proportion to its size. A `data.train` without weights does the same: one
mixture epoch is every record of every source once. With explicit weights, one epoch has
max(size_i / w_i) records, so every record appears at least once and smaller sources
repeat in proportion to their weight. `pipeline.MixedSource` and the trainer's
steps-per-epoch both count epochs with `epoch_counts`, so they always agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

MAX_EPOCH_RECORDS = 2**31  # grain's index space; an epoch beyond this is a weight mistake.


def epoch_counts(sizes: Sequence[int], weights: Sequence[float] | None = None) -> np.ndarray:
  """Records of each source in one mixture epoch (`weights=None`: the sizes themselves)."""
  lengths = np.asarray(sizes, np.float64)
  if lengths.ndim != 1 or not lengths.size:
    raise ValueError(f"a mixture needs at least one source, got sizes {sizes!r}")
  if (lengths <= 0).any():
    raise ValueError(f"every source of a mixture needs records, got sizes {list(sizes)}")
  if weights is None:
    return lengths.astype(np.int64)
  w = np.asarray(weights, np.float64)
  if w.shape != lengths.shape or (w <= 0).any() or not np.isfinite(w).all():
    raise ValueError(f"weights must be {lengths.size} positive numbers, got {weights!r}")
  w = w / w.sum()
  total = float(np.max(lengths / w))
  counts = np.maximum(np.round(total * w), lengths).astype(np.int64)
  if counts.sum() > MAX_EPOCH_RECORDS:
    raise ValueError(
      f"weights {list(weights)!r} make a mixture epoch of {counts.sum()} records; "
      "give small sources less extreme weights"
    )
  return counts


def spec_weights(specs: Sequence[tuple]) -> list[float] | None:
  """The weights of parsed `data.train` entries (name, split, weight|None); None = by size."""
  weights = [w for *_, w in specs]
  if all(w is None for w in weights):
    return None
  if any(w is None for w in weights):
    raise ValueError(f"data.train entries {specs!r} mix weighted and unweighted sources")
  return [float(w) for w in weights]


@dataclasses.dataclass(frozen=True)
class Share:
  """One source's place in the mixture over a run."""

  source: str  # "name:split".
  size: int  # Records in the source.
  per_epoch: int  # Records drawn from it in one mixture epoch.
  share: float  # Fraction of all examples drawn from it.
  passes: float  # Times each of its records is seen over the run, on average.


def shares(
  names: Sequence[str], sizes: Sequence[int], weights: Sequence[float] | None, examples: int
) -> list[Share]:
  """Each source's share of the mixture and passes over it in a run of `examples` draws."""
  counts = epoch_counts(sizes, weights)
  fraction = counts / counts.sum()
  return [
    Share(
      source=str(n), size=int(s), per_epoch=int(c), share=float(f), passes=float(examples * f / s)
    )
    for n, s, c, f in zip(names, sizes, counts, fraction)
  ]


def format_shares(mix: Sequence[Share]) -> str:
  """'mixture: audioset:train 78.1% (92.0 passes), ...' (one line)."""
  return "mixture: " + ", ".join(
    f"{m.source} {100 * m.share:.1f}% ({m.passes:.1f} passes)" for m in mix
  )


def log_shares(
  specs: Sequence[tuple], sizes: Sequence[int], examples: int, *, printer: bool = True
) -> list[dict[str, Any]]:
  """Logs (and on `printer` prints) the run's mixture; returns it for summary.json."""
  mix = shares(
    [f"{name}:{split}" for name, split, *_ in specs], sizes, spec_weights(specs), examples
  )
  line = format_shares(mix)
  logging.info("%s", line)
  if printer:
    print(line, flush=True)
  return [dataclasses.asdict(m) for m in mix]
