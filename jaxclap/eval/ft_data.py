"""Fine-tuning inputs: random crops with label vectors and mixup weights, whole clips.

Training batches read epochs of `sampling.epoch_order` draws (a shuffled pass, or EVAR's
weighted AS2M draw) through grain; every random choice comes from grain's per-record rng,
so batches are deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import grain
import numpy as np

from jaxclap.eval import augment, sampling


def targets(record: dict[str, Any], num_classes: int, where: str) -> np.ndarray:
  """Label vector [classes] float32 of a record: multi-hot of `labels`, else one-hot."""
  labels = np.asarray(record["labels"] if "labels" in record else [record["label"]])
  labels = labels.astype(np.int64).reshape(-1)
  if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"{where}: clip {record.get('id')!r} has labels {labels.tolist()}, "
                     f"outside [0, {num_classes})")
  out = np.zeros(num_classes, np.float32)
  out[labels] = 1.0
  return out


def _fit(audio: np.ndarray, samples: int, start: int = 0) -> tuple[np.ndarray, int]:
  """int16 clip → float32 [samples] from `start` (zero-padded) and its true length."""
  out = np.zeros(samples, np.float32)
  piece = audio[start:start + samples]
  out[:piece.size] = piece.astype(np.float32) / 32768.0
  return out, int(piece.size)


@dataclasses.dataclass(frozen=True)
class TrainExample(grain.transforms.RandomMap):
  """A random crop of a record's audio, its label vector and mixup weight (grain's
  per-record rng)."""

  crop_samples: int
  num_classes: int
  where: str
  mixup: float = 0.0  # Beta(α, α) of the example's mixup weight (0: λ = 1).

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    audio = np.asarray(record["audio"], np.int16)
    start = int(rng.integers(0, max(audio.size - self.crop_samples, 0) + 1))
    wave, length = _fit(audio, self.crop_samples, start)
    return {"audio": wave, "audio_len": np.int32(length),
            "target": targets(record, self.num_classes, self.where),
            "mix_lambda": augment.mixup_lambda(rng, self.mixup)}


def train_batches(source: Any, *, batch: int, crop_samples: int, num_classes: int, seed: int,
                  where: str, mixup: float = 0.0, num_workers: int = 0,
                  steps_per_epoch: int | None = None, epochs: int = 1,
                  weights: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Batches {audio [B, S], audio_len [B], target [B, classes], mix_lambda [B]} of
  `epochs` epochs, each `steps_per_epoch` batches (default: a pass over the source) of
  `sampling.epoch_order` draws (weighted by `weights` when given)."""
  steps_per_epoch = steps_per_epoch or len(source) // batch
  stream = sampling.EpochSource(source, per_epoch=steps_per_epoch * batch, epochs=epochs,
                                seed=seed, weights=weights)
  sampler = grain.samplers.IndexSampler(
      num_records=len(stream), shard_options=grain.sharding.NoSharding(), shuffle=False,
      num_epochs=1, seed=seed)
  loader = grain.DataLoader(
      data_source=stream, sampler=sampler, worker_count=num_workers,
      operations=[TrainExample(crop_samples, num_classes, where, mixup),
                  grain.transforms.Batch(batch, drop_remainder=True)])
  return iter(loader)


def eval_batches(source: Any, *, samples: int, batch: int, num_classes: int, where: str
                 ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """Whole clips in order, padded to `samples`, in batches of `batch` (the last one padded
  with silent rows); yields (batch, number of real rows)."""
  for begin in range(0, len(source), batch):
    idx = range(begin, min(begin + batch, len(source)))
    out = {"audio": np.zeros((batch, samples), np.float32), "audio_len": np.ones(batch, np.int32),
           "target": np.zeros((batch, num_classes), np.float32)}
    for row, i in enumerate(idx):
      record = source[i]
      out["audio"][row], out["audio_len"][row] = _fit(np.asarray(record["audio"], np.int16),
                                                      samples)
      out["target"][row] = targets(record, num_classes, f"{where}[{i}]")
    yield out, len(idx)


def longest_clip(sources: list[Any]) -> int:
  """Samples in the longest clip of the sources."""
  return max(int(np.asarray(s[i]["audio"]).size) for s in sources for i in range(len(s)))
