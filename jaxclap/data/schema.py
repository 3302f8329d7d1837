"""Record layout shared by all jaxclap builders, and caption embedding at build time.

Every record holds 16 kHz int16 PCM, its captions and their precomputed sentence
embeddings (M2D-CLAP stage 1 trains against stored embeddings, never a live text
model), and an integer label (-1 when the source has none).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import tensorflow_datasets as tfds
import tqdm

SAMPLE_RATE = 16_000
EMBEDDING_DTYPES = ("float16", "float32")
NO_LABEL = -1


class TextEmbedder(Protocol):
  """What builders need from a sentence embedder."""

  name: str
  dim: int

  def embed(self, texts: list[str]) -> np.ndarray:
    """Returns [len(texts), dim] float32 embeddings."""


class NoEmbedder:
  """`--text_model=none`: records keep their captions and no vectors (dim 0); stage 1 then
  reads a caption table (`caption_table`, written by `embed_captions`)."""

  name = "none"
  dim = 0

  def embed(self, texts: list[str]) -> np.ndarray:
    return np.zeros((len(texts), 0), np.float32)


class BadInputError(ValueError):
  """A source file, CSV row or caption that cannot go into a dataset."""


def check_embedding_dtype(dtype: str) -> np.dtype:
  """Validates an `embedding_dtype` option."""
  if dtype not in EMBEDDING_DTYPES:
    raise ValueError(f"embedding_dtype must be one of {EMBEDDING_DTYPES}, got {dtype!r}")
  return np.dtype(dtype)


def features_dict(
  embedding_dim: int, embedding_dtype: str, extra: dict | None = None
) -> tfds.features.FeaturesDict:
  """The feature spec of a jaxclap record (plus builder-specific `extra` features)."""
  spec = {
    # Raw bytes: the default encoding writes int16 samples as a proto int64 list,
    # several times slower to build and read.
    "audio": tfds.features.Tensor(
      shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES
    ),
    "sample_rate": tfds.features.Scalar(dtype=np.int32),
    "id": tfds.features.Text(),
    "captions": tfds.features.Sequence(tfds.features.Text()),
    "caption_embeddings": tfds.features.Tensor(
      shape=(None, embedding_dim),
      dtype=check_embedding_dtype(embedding_dtype),
      encoding=tfds.features.Encoding.BYTES,
    ),
    "label": tfds.features.Scalar(dtype=np.int64),
  }
  if not embedding_dim:  # `--text_model=none`: the vectors live in a caption table.
    del spec["caption_embeddings"]
  spec.update(extra or {})
  return tfds.features.FeaturesDict(spec)


def embed_unique(
  captions: Iterable[str],
  embedder: TextEmbedder,
  *,
  dtype: str,
  batch_size: int = 256,
  desc: str = "Embedding captions",
) -> dict[str, np.ndarray]:
  """Embeds each distinct caption once; returns caption -> [dim] vector of `dtype`."""
  np_dtype = check_embedding_dtype(dtype)
  dim = int(embedder.dim)
  if dim == 0:  # `--text_model=none`: records get no vectors.
    return {}
  unique = list(dict.fromkeys(captions))  # Keeps first-seen order, drops repeats.
  table: dict[str, np.ndarray] = {}
  with tqdm.tqdm(total=len(unique), desc=desc, unit="caption") as bar:
    for start in range(0, len(unique), batch_size):
      chunk = unique[start : start + batch_size]
      out = np.asarray(embedder.embed(chunk))
      if out.shape != (len(chunk), dim):
        raise BadInputError(
          f"text embedder {embedder.name!r} returned shape {out.shape} for {len(chunk)} "
          f"captions; expected ({len(chunk)}, {dim}) from its declared dim={dim}"
        )
      if not np.isfinite(out).all():
        raise BadInputError(
          f"text embedder {embedder.name!r} returned NaN/inf for a caption among {chunk[:3]!r}..."
        )
      table.update(zip(chunk, out.astype(np_dtype)))
      bar.update(len(chunk))
  return table


def stack_embeddings(captions: Sequence[str], table: dict[str, np.ndarray]) -> np.ndarray:
  """The [len(captions), dim] embedding array of one record."""
  return np.stack([table[c] for c in captions])


def base_metadata(
  embedder: TextEmbedder, embedding_dtype: str, sample_rate: int = SAMPLE_RATE
) -> dict:
  """Metadata every builder records next to its splits."""
  return {
    "text_model": str(embedder.name),
    "embedding_dim": int(embedder.dim),
    "embedding_dtype": embedding_dtype,
    "sample_rate": int(sample_rate),  # Of the stored PCM; the trainer checks it.
  }


class BuildReport:
  """Collects per-split counts and skipped inputs while examples are generated."""

  def __init__(self, skip_bad: bool, sample_rate: int = SAMPLE_RATE):
    self.skip_bad = skip_bad
    self.sample_rate = sample_rate
    self.skipped: list[str] = []  # Error messages, each naming its file or CSV line.
    self.clips = 0
    self.samples = 0
    self.captions = 0

  def bad(self, error: Exception) -> None:
    """Re-raises `error` unless skipping bad inputs, in which case records it."""
    if not self.skip_bad:
      raise error
    self.skipped.append(str(error))

  def add(self, num_samples: int, num_captions: int) -> None:
    self.clips += 1
    self.samples += num_samples
    self.captions += num_captions

  def as_dict(self) -> dict:
    return {
      "clips": self.clips,
      "hours": self.samples / self.sample_rate / 3600.0,
      "captions": self.captions,
      "skipped": len(self.skipped),
      "skipped_inputs": self.skipped,
    }
