"""`jaxclap.Index`: build an embedding index of an audio folder, search it by text or example.

    index = jaxclap.Index.build("WORKDIR_OR_RELEASE", audio="sounds/", index="sounds.idx")
    hits = index.search("a dog barking", k=10)         # or index.search(like="clip.wav")
    hits[0].path, hits[0].score, hits[0].start_s, hits[0].timeline

A file's score is the best cosine between the query and the file's embeddings: the whole
file's, or one chunk's (a window of the model's input length, so a dog bark in an hour of
street noise is found by its chunk). The hit's window is its best chunk, and `timeline` the
cosine of every chunk in turn (similarity over time). Search is exact float32 (one matrix
product over all vectors) unless `approximate=True` asks for the usearch graph (ann.py),
whose ranking is then rescored exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxclap import inference
from jaxclap.index import ann as ann_lib
from jaxclap.index import identity, indexer
from jaxclap.index import store as store_lib

ModelLike = str | inference.Model
REPORT = "report.json"


@dataclasses.dataclass(frozen=True)
class Hit:
  """One file found: its score, best-matching window and similarity over time."""

  path: str  # Relative to the indexed folder.
  score: float  # Best cosine over the whole file and its chunks.
  start_s: float  # Best-matching window: the chunk with the highest cosine.
  end_s: float
  duration_s: float
  chunk_s: float  # Length of a chunk (the model's input unit), in seconds.
  timeline: list[float]  # Cosine of each chunk, chunk_s apart.

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def model_name(model: ModelLike) -> str:
  """How the index records a model: a workdir's absolute path, or a release name."""
  if isinstance(model, inference.Model):
    return f"(a jaxclap.inference.Model, {model.stage} step {model.step})"
  return os.path.abspath(model) if os.path.exists(model) else model


class Index:
  """An index folder opened for search; the model loads when a query needs it."""

  def __init__(self, folder: str, model: ModelLike | None = None, *, batch_size: int = 16):
    self.folder = folder
    self.store = store_lib.Store.open(folder)
    self.manifest = self.store.manifest
    self.root: str = self.manifest["root"]
    self.arrays = self.store.arrays()
    self.paths = {rec.path: i for i, rec in enumerate(self.arrays.files)}
    fe, ident = self.manifest["model"]["frontend"], self.manifest["model"]
    self.chunk_s = ident["unit_frames"] * fe["hop_length"] / fe["sample_rate"]
    self.report: indexer.Report | None = None
    self._model_arg, self._model, self._batch_size = model, None, batch_size
    self._ann: tuple[Any, dict[str, Any]] | None = None

  def __len__(self) -> int:
    return len(self.arrays.files)

  @classmethod
  def build(
    cls,
    model: ModelLike,
    audio: str,
    index: str,
    *,
    name: str | None = None,
    ann: str | None = None,
    min_recall: float = 0.9,
    force: bool = False,
    commit_every: int = 32,
    batch_size: int = 16,
    progress: bool | None = None,
  ) -> Index:
    """Indexes `audio`'s new and changed files into `index` (indexer.py); `ann` (a dtype,
    e.g. "f16") also builds the approximate graph. The report is `.report`.

    `name`: what the index records as the model (default: the workdir's absolute path or the
    release name given), from which a later search loads it.
    """
    if not os.path.isdir(audio):  # Before loading the model: a typo should fail at once.
      raise FileNotFoundError(f"--audio {audio}: no such folder")
    loaded = _load(model, batch_size)
    name = name or model_name(model)
    report = indexer.build(loaded, name, audio, index, commit_every=commit_every, progress=progress)
    store_lib.atomic_write(os.path.join(index, REPORT), json.dumps(report.to_json()).encode())
    out = cls(index, loaded)
    out._model = loaded  # Identity was checked by the build.
    out.report = report
    if ann:
      out.build_ann(ann, min_recall=min_recall, force=force)
    return out

  # ---- the model ---------------------------------------------------------------------------

  @property
  def model(self) -> inference.Model:
    """The index's model (loaded from its recorded name unless given); identity checked."""
    if self._model is None:
      name = self._model_arg or self.manifest["model"]["name"]
      model = _load(name, self._batch_size)
      diff = identity.mismatch(self.manifest["model"], model, model_name(name))
      if diff:
        raise store_lib.BadIndexError(
          f"{self.folder} was built by another model than {model_name(name)}: " + "; ".join(diff)
        )
      self._model = model
    return self._model

  # ---- queries -----------------------------------------------------------------------------

  def query_vector(
    self,
    text: str | None = None,
    *,
    like: str | os.PathLike | np.ndarray | None = None,
    sample_rate: int | None = None,
  ) -> np.ndarray:
    """The L2-normalised query embedding [C] of a text or an audio example."""
    if (text is None) == (like is None):
      raise ValueError("give a text query or an example (like=), not both and not neither")
    if text is not None:
      if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text query must be a non-empty string, got {text!r}")
      return self.model.text_embedding([text])[0]
    return self.model.audio_embedding(like, sample_rate, progress=False)[0]

  def search(
    self,
    text: str | None = None,
    *,
    like: str | os.PathLike | np.ndarray | None = None,
    vector: np.ndarray | None = None,
    k: int = 10,
    approximate: bool = False,
    sample_rate: int | None = None,
  ) -> list[Hit]:
    """The k best files for a text, an example clip (path or waveform) or a vector."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"k must be a positive integer, got {k!r}")
    if vector is None:
      vector = self.query_vector(text, like=like, sample_rate=sample_rate)
    q = np.asarray(vector, np.float32).reshape(-1)
    if q.shape[0] != self.arrays.clip.shape[1]:
      raise ValueError(f"query has {q.shape[0]} dims; the index holds {self.arrays.clip.shape[1]}")
    if not len(self):
      return []
    if approximate:  # The graph's candidates, rescored exactly (their rows only).
      found = [self._rescore(i, q) for i in self._approximate_files(q, k, text is not None)]
      return sorted(found, key=lambda h: (-h.score, h.path))[:k]
    chunk_scores = self.arrays.chunk @ q
    best_chunk = np.maximum.reduceat(chunk_scores, self.arrays.chunk_start)
    total = np.maximum(self.arrays.clip @ q, best_chunk)
    order = np.argsort(-total, kind="stable")[:k]
    return [self._hit(int(i), float(total[i]), self._timeline(int(i), chunk_scores)) for i in order]

  def _timeline(self, i: int, chunk_scores: np.ndarray) -> np.ndarray:
    """File i's chunk cosines out of all chunks' [M]."""
    c0 = self.arrays.chunk_start[i]
    return chunk_scores[c0 : c0 + self.arrays.files[i].num_chunks]

  def _rescore(self, i: int, q: np.ndarray) -> Hit:
    """File i's exact hit for query q (its own rows only)."""
    c0 = self.arrays.chunk_start[i]
    timeline = self.arrays.chunk[c0 : c0 + self.arrays.files[i].num_chunks] @ q
    return self._hit(i, float(max(self.arrays.clip[i] @ q, timeline.max())), timeline)

  def _hit(self, i: int, score: float, timeline: np.ndarray) -> Hit:
    rec = self.arrays.files[i]
    j = int(np.argmax(timeline))
    return Hit(
      path=rec.path,
      score=round(score, 6),
      start_s=round(j * self.chunk_s, 4),
      end_s=round(min(rec.duration_s, (j + 1) * self.chunk_s), 4),
      duration_s=rec.duration_s,
      chunk_s=self.chunk_s,
      timeline=[round(float(s), 6) for s in timeline],
    )

  def _approximate_files(self, q: np.ndarray, k: int, text_query: bool) -> list[int]:
    """Files of the graph's nearest rows, widening until k distinct files are found."""
    graph, facts = self._load_ann()
    if text_query and facts.get("recall_text") is not None:
      problem = ann_lib.check(facts)
      if problem:
        warnings.warn(problem + "; text results may miss files exact search finds", stacklevel=3)
    n_files, rows = len(self), len(self) + len(self.arrays.chunk)
    count = min(rows, 8 * k)
    while True:
      keys = np.asarray(graph.search(q, count).keys).reshape(-1)
      owners = np.where(
        keys < n_files,
        keys,
        np.searchsorted(self.arrays.chunk_start, keys - n_files, side="right") - 1,
      )
      files = list(dict.fromkeys(int(f) for f in owners))  # In rank order, first time seen.
      if len(files) >= k or count >= rows:
        return files
      count = min(rows, 4 * count)

  # ---- the approximate graph ---------------------------------------------------------------

  def vectors(self) -> np.ndarray:
    """All searchable vectors: the files' then the chunks' (the graph's row order)."""
    return np.concatenate([self.arrays.clip, self.arrays.chunk])

  def build_ann(self, dtype: str = "f16", *, min_recall: float = 0.9, force: bool = False) -> dict:
    """Builds and saves the usearch graph after checking its recall (ann.py); its facts."""
    if not len(self):
      raise store_lib.BadIndexError(f"{self.folder}: nothing indexed, no graph to build")
    text_queries = None
    if self.manifest["model"].get("text_probe") is not None:
      text_queries = self.model.text_embedding(list(ann_lib.PROBE_CAPTIONS))
    graph, facts = ann_lib.build(
      self.vectors(), text_queries, dtype=dtype, min_recall=min_recall, force=force
    )
    ann_lib.save(self.folder, graph, facts, self.store.state_sha256())
    self._ann = (graph, facts)
    return facts

  def _load_ann(self) -> tuple[Any, dict[str, Any]]:
    if self._ann is None:
      self._ann = ann_lib.load(self.folder, self.store.state_sha256())
    return self._ann

  # ---- zero-shot and files -----------------------------------------------------------------

  def zero_shot(
    self,
    audio: str | os.PathLike | np.ndarray,
    labels: Sequence[str],
    *,
    template: str = "{} can be heard",
    sample_rate: int | None = None,
  ) -> dict[str, float]:
    """Label → probability for one clip against the user's labels (the model's zero-shot)."""
    labels = [str(label).strip() for label in labels if str(label).strip()]
    if not labels:
      raise ValueError("zero-shot needs at least one label")
    probs = self.model.zero_shot(audio, labels, template, sample_rate=sample_rate, progress=False)
    return {label: round(float(p), 6) for label, p in zip(labels, probs[0])}

  def file_path(self, rel: str) -> str:
    """The absolute path of an indexed file; anything else (outside the folder, not
    indexed, a link leading out) raises PermissionError or FileNotFoundError."""
    real_root = os.path.realpath(self.root)
    full = os.path.realpath(os.path.join(real_root, rel))
    if os.path.isabs(rel) or os.path.commonpath([real_root, full]) != real_root:
      raise PermissionError(f"{rel!r} is outside the indexed folder")
    if os.path.relpath(full, real_root).replace(os.sep, "/") not in self.paths:
      raise FileNotFoundError(f"{rel!r} is not an indexed file")
    return full


def _load(model: ModelLike, batch_size: int) -> inference.Model:
  """A Model as given, or loaded from a workdir or release name."""
  if isinstance(model, inference.Model):
    return model
  return inference.load(model, batch_size=batch_size, progress=False)
