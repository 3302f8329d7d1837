"""Fine-tuning inputs: random crops with label vectors and mixup weights, whole clips.

Training batches are `data.pipeline`'s labelled loader over epochs of
`sampling.epoch_order` draws (a shuffled pass, or EVAR's weighted AS2M draw); every random
choice comes from grain's per-record rng, so batches are deterministic for a seed.
Evaluation reads whole clips in order without grain (no random choice) and pads the last
batch with silent rows, so every evaluation batch has one compiled shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxclap.audio import io as audio_io
from jaxclap.data import pipeline


def eval_batches(
  source: Any, *, samples: int, batch: int, num_classes: int, where: str
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """Whole clips in order, padded to `samples`, in batches of `batch` (the last one padded
  with silent rows); yields (batch, number of real rows)."""
  for begin in range(0, len(source), batch):
    idx = range(begin, min(begin + batch, len(source)))
    out = {
      "audio": np.zeros((batch, samples), np.float32),
      "audio_len": np.ones(batch, np.int32),
      "target": np.zeros((batch, num_classes), np.float32),
    }
    for row, i in enumerate(idx):
      record = source[i]
      clip, out["audio_len"][row] = pipeline.crop_clip(
        np.asarray(record["audio"], np.int16), samples
      )
      audio_io.pcm16_to_float(clip, out=out["audio"][row])
      out["target"][row] = pipeline.label_vector(record, num_classes, f"{where}[{i}]")
    yield out, len(idx)


def longest_clip(sources: list[Any]) -> int:
  """Samples in the longest clip of the sources."""
  return max(int(np.asarray(s[i]["audio"]).size) for s in sources for i in range(len(s)))
