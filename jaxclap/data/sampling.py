"""Which training clips a fine-tuning epoch reads: a shuffled pass, or EVAR's AS2M draw.

EVAR's AS2M "epoch" (`evar/data.py`, `create_as_dataloader`) is not a pass over the data:
`WeightedRandomSampler(weights, num_samples=200000, replacement=False)` draws 200,000
clips per epoch over per-clip weights that favour rare classes, made by
`evar/utils/make_as_metadata.py:gen_weight` with AudioMAE's rule: class weight
1000 / (count + 0.01) over the training split's label counts, clip weight
(sum of its labels' class weights) ** (1 / 1.5).

Every epoch's order comes from a numpy generator seeded by (seed, epoch), so a run is
deterministic and any epoch can be recomputed on its own (grain workers, restarts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxclap.data import pipeline

WEIGHTINGS = ("none", "audioset")


def audioset_weights(labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
  """Per-clip sampling weights [N] float64 of AudioMAE's rule from each clip's class ids."""
  sizes = np.asarray([np.size(l) for l in labels], np.int64)
  flat = (
    np.concatenate([np.asarray(l, np.int64).reshape(-1) for l in labels])
    if len(labels)
    else np.zeros(0, np.int64)
  )
  if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
    raise ValueError(
      f"audioset_weights: class ids must lie in [0, {num_classes}), got "
      f"[{flat.min()}, {flat.max()}]"
    )
  class_weight = 1000.0 / (np.bincount(flat, minlength=num_classes) + 0.01)
  clip = np.repeat(np.arange(len(labels)), sizes)
  summed = np.bincount(clip, weights=class_weight[flat], minlength=len(labels))
  return np.power(summed, 1.0 / 1.5)


def epoch_order(
  seed: int, epoch: int, n: int, clips: int, weights: np.ndarray | None = None
) -> np.ndarray:
  """Record indices [clips] that epoch `epoch` reads, in order, without replacement.

  No weights: a random permutation's first `clips`. Weights: successive draws, each in
  proportion to the weights of the clips not yet drawn (torch.multinomial without
  replacement), done as the `clips` smallest of Exp(1) / w (Efraimidis–Spirakis), which
  has the same distribution, order included.
  """
  if not 0 < clips <= n:
    raise ValueError(f"cannot draw {clips} clips without replacement from {n}")
  rng = np.random.default_rng([seed, epoch])
  if weights is None:
    return rng.permutation(n)[:clips]
  weights = np.asarray(weights, np.float64)
  if weights.shape != (n,) or not np.isfinite(weights).all() or (weights < 0).any():
    raise ValueError(f"sampling weights must be {n} finite non-negative numbers")
  if np.count_nonzero(weights) < clips:
    raise ValueError(
      f"only {np.count_nonzero(weights)} clips have a non-zero weight; cannot "
      f"draw {clips} without replacement"
    )
  with np.errstate(divide="ignore"):
    keys = rng.exponential(size=n) / weights  # Weight 0: key inf, never drawn.
  top = np.argpartition(keys, clips - 1)[:clips]
  return top[np.argsort(keys[top], kind="stable")]


class EpochSource:
  """Random-access stream of a source's records: `epochs` epochs of `per_epoch` draws.

  Record i is epoch i // per_epoch's `epoch_order` at i % per_epoch, so every epoch
  starts a fresh batch when per_epoch is a multiple of the batch size.
  """

  def __init__(
    self, source: Any, *, per_epoch: int, epochs: int, seed: int, weights: np.ndarray | None = None
  ):
    self._source, self._weights = source, weights
    self.per_epoch, self.epochs, self.seed = per_epoch, epochs, seed
    self._cache: tuple[int, np.ndarray] | None = None
    epoch_order(seed, 0, len(source), per_epoch, weights)  # Fail early on bad arguments.

  def __len__(self) -> int:
    return self.per_epoch * self.epochs

  def order(self, epoch: int) -> np.ndarray:
    """Record indices of one epoch (the last one computed is kept)."""
    if self._cache is None or self._cache[0] != epoch:
      self._cache = (
        epoch,
        epoch_order(self.seed, epoch, len(self._source), self.per_epoch, self._weights),
      )
    return self._cache[1]

  def __getitem__(self, key: int) -> Any:
    epoch, pos = divmod(int(key), self.per_epoch)
    return self._source[int(self.order(epoch)[pos])]

  def __repr__(self) -> str:
    kind = "weighted" if self._weights is not None else "uniform"
    return f"EpochSource({kind}, {self.per_epoch} per epoch x {self.epochs})"


def record_labels(source: Any, where: str) -> list[np.ndarray]:
  """Class ids of every record of a labelled source (`labels`, else `label`), in order."""
  out = []
  for i in range(len(source)):
    record = source[i]
    labels = pipeline.record_classes(record)
    if labels.size == 0 or labels.min() < 0:
      raise ValueError(
        f"{where}[{i}]: clip {record.get('id')!r} has labels "
        f"{labels.tolist()}; weighted sampling needs labelled clips"
      )
    out.append(labels)
  return out
