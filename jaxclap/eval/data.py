"""Evaluation inputs: whole clips of a built TFDS split with their labels and captions.

Evaluation sees each clip whole, at its own length (no crop, no padding): the inference
model (`jaxclap.load`) takes a list of variable-length waveforms and gives each clip its
own front end, as the official runtime does.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from jaxclap import paths
from jaxclap.audio import io as audio_io
from jaxclap.data import build, pipeline


@dataclasses.dataclass(frozen=True)
class EvalSplit:
  """Float waveforms of one split with their labels and captions."""

  name: str  # "<dataset>:<split>".
  audio: list[np.ndarray]  # float32 [samples] per clip, in [-1, 1].
  labels: np.ndarray  # int64 [N]; -1 where the source has no label.
  captions: list[list[str]]
  ids: list[str]
  sample_rate: int
  folds: np.ndarray | None = None  # int [N] official fold per clip (0: none), when stored.
  label_sets: list[np.ndarray] | None = None  # Every class id of each clip (multi-label).

  def __len__(self) -> int:
    return len(self.audio)


def _text(value: bytes | str) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_split(
  dataset: str, split: str, data_dir: str, *, max_clips: int | None = None
) -> EvalSplit:
  """Reads every record (or the first `max_clips`) of a built split into memory."""
  info = build.dataset_info(dataset, data_dir)
  if split not in info["splits"]:
    raise ValueError(
      f"dataset {dataset!r} under {data_dir} has no split {split!r}; "
      f"it has {sorted(info['splits'])}"
    )
  source = pipeline.open_source(dataset, split, data_dir)
  n = len(source) if max_clips is None else min(max_clips, len(source))
  if n == 0:
    raise ValueError(f"{dataset}:{split} under {data_dir} is empty")
  records = [source[i] for i in range(n)]
  rates = {int(r["sample_rate"]) for r in records}
  if len(rates) != 1:
    raise ValueError(f"{dataset}:{split}: clips have several sample rates {sorted(rates)}")
  return EvalSplit(
    name=f"{dataset}:{split}",
    audio=[audio_io.pcm16_to_float(r["audio"]) for r in records],
    labels=np.asarray([int(r["label"]) for r in records], np.int64),
    captions=[[_text(c) for c in r["captions"]] for r in records],
    ids=[_text(r["id"]) for r in records],
    sample_rate=rates.pop(),
    folds=np.asarray([int(r["fold"]) for r in records]) if "fold" in records[0] else None,
    label_sets=[pipeline.record_classes(r) for r in records],
  )


def class_names(dataset: str, data_dir: str) -> list[str]:
  """Label names of a built dataset (index = label); empty when it has none."""
  return build.dataset_info(dataset, data_dir)["class_names"]


def check_labelled(split: EvalSplit, num_classes: int) -> None:
  """Every clip must carry labels, each in [0, num_classes)."""
  sets = split.label_sets or [np.asarray([v]) for v in split.labels]
  bad = [i for i, s in enumerate(sets) if not len(s) or s.min() < 0 or s.max() >= num_classes]
  if bad:
    i = bad[0]
    raise ValueError(
      f"{split.name}: clip {split.ids[i]!r} has label(s) {np.asarray(sets[i]).tolist()}, "
      f"outside [0, {num_classes}); {len(bad)} such clips"
    )


def multilabel(split: EvalSplit) -> bool:
  """A clip carries several classes (EVAR's rule for a multi-label set)."""
  return any(len(s) != 1 for s in split.label_sets or ())


def built_multilabel(dataset: str, data_dir: str) -> bool:
  """The `multi_label` a labelled-folder build records (a split may hold single-class clips
  only, so its clips alone cannot tell)."""
  builder = tfds.builder(dataset, data_dir=paths.data_dir(data_dir))
  return bool((builder.info.metadata or {}).get("multi_label", False))
