"""Training input pipeline: grain over TFDS ArrayRecord sources.

Per example: a fixed-length waveform crop, one caption and its embedding drawn per
epoch, the label and the record index. Captions stay on the host (stage 2 tokenises
them); the rest are arrays. Short clips follow the official recipe in two steps: for
training, a clip shorter than `min_samples` (6.1 s) first gets zeros appended as audio
(wav_to_lms.py pads the waveform, so that part is silence); a clip still shorter than the
crop is then zero-padded and keeps its true length in `audio_len`, so the front end pads
it in the log-mel domain (audio_dataset.py pads the log-mel with 0).

With `num_classes` (fine-tuning) an example carries a label vector instead: the crop,
`target` (multi-hot of the record's `labels`, else one-hot of `label`) and a mixup weight
`mix_lambda` drawn after the crop.

Determinism: every random choice comes from grain's per-record rng (seeded by
`seed` and the record's position in the sampled stream), and batch k is always the
stream's positions [kB, (k+1)B) (batching.py), so batches are identical for any
`num_workers`; workers build whole batches, so throughput grows with them. The
iterator's `get_state()`/`set_state()` (a stream position) give exact resume.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from jaxclap import paths
from jaxclap.data import batching, mixture
from jaxclap.data import caption_table as caption_table_lib
from jaxclap.data.info import DEFAULT_DATA_DIR

# 608 frames at hop 160 with centred frames: (608 - 1) * 160 + 160 samples.
DEFAULT_CROP_SAMPLES = 97_120
CAPTION_CHOICES = ("random", "first")


def open_source(
  name: str, split: str = "train", data_dir: str | None = None, caption_table: str = ""
) -> Any:
  """The TFDS random-access source of a built dataset split (no TensorFlow).

  `caption_table` (a text-model name or a table folder, `caption_table.resolve`): records
  take their caption embeddings from that table instead of their own vectors.
  """
  data_dir = paths.data_dir(data_dir or DEFAULT_DATA_DIR)
  source = tfds.data_source(
    name, split=split, data_dir=data_dir, builder_kwargs={"file_format": "array_record"}
  )
  if not caption_table:
    return source
  table = caption_table_lib.CaptionTable(caption_table_lib.resolve(data_dir, name, caption_table))
  return caption_table_lib.TableSource(source, table)


class MixedSource:
  """Random-access view over several sources, interleaved in proportion to `weights`.

  One pass over the mixture ("epoch") has `mixture.epoch_counts` records of each source:
  with `weights=None` every record once (plain concatenation, the official recipe), else
  max(len_i / w_i) records in all, so every record appears at least once and smaller
  sources repeat in proportion to their weight.
  """

  def __init__(self, sources: Sequence[Any], weights: Sequence[float] | None = None):
    if not sources:
      raise ValueError("make_loader needs at least one source")
    self._sources = list(sources)
    lengths = np.array([len(s) for s in self._sources], np.int64)
    for i, n in enumerate(lengths):
      if n == 0:
        raise ValueError(f"source {i} ({self._sources[i]!r}) has no records")
    counts = mixture.epoch_counts(lengths, weights)
    if len(self._sources) == 1:  # One source: the identity order, without index arrays.
      self._which = self._record = None
      self._len = int(counts[0])
      return
    # Spread each source's slots evenly over the epoch, then merge by position.
    which = np.concatenate([np.full(c, i, np.int32) for i, c in enumerate(counts)])
    slot = np.concatenate([np.arange(c) for c in counts])
    position = np.concatenate([(np.arange(c) + 0.5) / c for c in counts])
    order = np.lexsort((which, position))
    self._which = which[order]
    self._record = (slot[order] % lengths[self._which]).astype(np.int64)
    self._len = len(self._which)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, key: int) -> dict[str, Any]:
    key = int(key) % len(self)
    if self._which is None:
      source, index = 0, key
    else:
      source, index = int(self._which[key]), int(self._record[key])
    return {"record": self._sources[source][index], "source": source, "index": index}

  def __repr__(self) -> str:
    return f"MixedSource({len(self._sources)} sources, {len(self)} records per pass)"


def crop_clip(audio: np.ndarray, crop_samples: int, start: int = 0) -> tuple[np.ndarray, int]:
  """int16 [crop_samples] of a clip from `start`, zero-padded past its end, and the number
  of its samples that are audio (`audio_len`: the front end pads the rest)."""
  out = audio[start : start + crop_samples]
  length = out.shape[0]
  if length < crop_samples:
    out = np.concatenate([out, np.zeros(crop_samples - length, np.int16)])
  return out, length


def record_classes(record: dict[str, Any]) -> np.ndarray:
  """Class ids [n] int64 of a labelled record: its `labels`, else its one `label`."""
  return np.asarray(
    record["labels"] if "labels" in record else [record["label"]], np.int64
  ).reshape(-1)


def label_vector(record: dict[str, Any], num_classes: int, where: str) -> np.ndarray:
  """Label vector [num_classes] float32 of a record: multi-hot of its class ids."""
  labels = record_classes(record)
  if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(
      f"{where}: clip {record.get('id')!r} has labels {labels.tolist()}, outside [0, {num_classes})"
    )
  out = np.zeros(num_classes, np.float32)
  out[labels] = 1.0
  return out


def mixup_lambda(rng: np.random.Generator, alpha: float) -> np.float32:
  """One example's mixing weight λ ~ Beta(α, α), drawn on the host (α = 0: 1, no mixing).

  Host-side because jax.random.beta's rejection sampler triples the step's compile time;
  it is drawn with each example's crop from grain's per-record generator.
  """
  return np.float32(rng.beta(alpha, alpha) if alpha > 0 else 1.0)


def _random_start(rng: np.random.Generator, n: int, crop_samples: int) -> int:
  """First sample of a random crop; clips not longer than the crop start at 0 (no draw)."""
  return int(rng.integers(0, n - crop_samples + 1)) if n > crop_samples else 0


@dataclasses.dataclass(frozen=True)
class CropAndPick(grain.transforms.RandomMap):
  """Crops/pads the waveform and picks one caption embedding, from the record's rng."""

  crop_samples: int
  random_crop: bool
  caption: str
  min_samples: int = 0  # Shorter clips first get zeros appended (silence, counted as audio).

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    record = element["record"]
    audio = np.asarray(record["audio"], np.int16)
    if audio.shape[0] < self.min_samples:
      # The official data preparation (wav_to_lms.py, min_length=6.1 s) zero-pads the
      # waveform before the log-mel, so the padding is silence, log(eps), not log-domain 0.
      audio = np.concatenate([audio, np.zeros(self.min_samples - audio.shape[0], np.int16)])
    start = _random_start(rng, audio.shape[0], self.crop_samples) if self.random_crop else 0
    out, length = crop_clip(audio, self.crop_samples, start)
    # Records built with --text_model=none have no vectors (stage 2 needs none).
    embeddings = np.asarray(
      record.get("caption_embeddings", np.zeros((len(record["captions"]), 0), np.float32))
    )
    pick = int(rng.integers(embeddings.shape[0])) if self.caption == "random" else 0
    caption = record["captions"][pick]
    return {
      "caption": caption.decode("utf-8") if isinstance(caption, bytes) else str(caption),
      "audio": out,
      "audio_len": np.int32(length),
      "caption_embedding": embeddings[pick].astype(np.float32),
      "label": np.int32(record["label"]),
      "index": np.int64(element["index"]),
      "source": np.int32(element["source"]),
    }


@dataclasses.dataclass(frozen=True)
class CropAndLabel(grain.transforms.RandomMap):
  """A random crop, the record's label vector and a mixup weight, from the record's rng
  (crop first, then λ)."""

  crop_samples: int
  num_classes: int
  where: str  # "<dataset>:<split>", named in label errors.
  mixup: float = 0.0  # Beta(α, α) of the example's mixup weight (0: λ = 1).

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    record = element["record"]
    audio = np.asarray(record["audio"], np.int16)
    out, length = crop_clip(
      audio, self.crop_samples, _random_start(rng, audio.shape[0], self.crop_samples)
    )
    return {
      "audio": out,
      "audio_len": np.int32(length),
      "target": label_vector(record, self.num_classes, self.where),
      "mix_lambda": mixup_lambda(rng, self.mixup),
    }


class Loader:
  """Iterable over batches; each `iter()` starts from the beginning (or a set state)."""

  def __init__(self, plan: batching.Plan, source: MixedSource):
    self.plan = plan
    self.batch_size = plan.batch_size
    self.drop_remainder = plan.drop_remainder
    self.source = source

  def __iter__(self) -> batching.BatchIterator:
    return batching.BatchIterator(self.plan)


def _ensure_flags_parsed() -> None:
  """Grain's worker processes read absl flags; outside an absl app, take their defaults."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:  # Left to JAX's distributed runtime.
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
  return process_index, process_count


def make_loader(
  sources: Any | Sequence[Any],
  weights: Sequence[float] | None = None,
  *,
  global_batch: int,
  crop_samples: int,
  seed: int,
  shuffle: bool = True,
  num_epochs: int | None = None,
  num_workers: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
  drop_remainder: bool = True,
  random_crop: bool = True,
  caption: str = "random",
  min_samples: int = 0,
  num_classes: int = 0,
  mixup: float = 0.0,
  where: str = "",
) -> Loader:
  """A loader of this process's batches (global_batch / process_count examples each).

  `sources`: one or more random-access sources (e.g. `open_source(name, split)`).
  `num_epochs=None` repeats forever; with several sources an epoch is one pass of the
  mixture (see `MixedSource`). `min_samples`: clips shorter than this are zero-padded to
  it as audio before the crop (training: the official 6.1 s; evaluation: 0, as inference).
  `num_classes` > 0: labelled examples {audio, audio_len, target, mix_lambda}
  (`CropAndLabel`, random crops, Beta(`mixup`, `mixup`) weights, label errors naming
  `where`) instead of captioned ones.
  """
  if not isinstance(sources, (list, tuple)):
    sources = [sources]
  if caption not in CAPTION_CHOICES:
    raise ValueError(f"caption must be one of {CAPTION_CHOICES}, got {caption!r}")
  if crop_samples <= 0:
    raise ValueError(f"crop_samples must be positive, got {crop_samples}")
  if min_samples < 0:
    raise ValueError(f"min_samples must be >= 0, got {min_samples}")
  index, count = _process_layout(process_index, process_count)
  if global_batch % count:
    raise ValueError(f"global_batch {global_batch} is not divisible by process_count {count}")
  if num_classes > 0:
    example = CropAndLabel(crop_samples, num_classes, where, mixup)
  else:
    dims = {
      int(np.asarray(s[0].get("caption_embeddings", np.zeros((1, 0)))).shape[-1])
      for s in sources
      if len(s)
    }
    if len(dims) > 1:
      raise ValueError(
        f"sources have different caption embedding dims {sorted(dims)}; "
        "build them with the same text_model"
      )
    example = CropAndPick(crop_samples, random_crop, caption, min_samples)
  mixed = MixedSource(sources, weights)
  # Endless (training) streams shuffle globally and give process p elements p, p + count,
  # ...: the same records and crops reach each global step whatever the process count, so a
  # run can resume on another topology (iterator_state.py). Finite (evaluation) passes
  # shard the records so that every process gets the same number of batches.
  shard = grain.sharding.ShardOptions(
    shard_index=index, shard_count=count, drop_remainder=drop_remainder
  )
  sampler = grain.samplers.IndexSampler(
    num_records=len(mixed),
    shuffle=shuffle,
    num_epochs=num_epochs,
    seed=seed,
    shard_options=grain.sharding.NoSharding() if num_epochs is None else shard,
  )
  if num_workers > 0:
    _ensure_flags_parsed()
  examples = batching.Examples(mixed, sampler, example, index, count)
  plan = batching.Plan(examples, global_batch // count, drop_remainder, num_workers)
  return Loader(plan, mixed)
