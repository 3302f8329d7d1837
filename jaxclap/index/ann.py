"""Approximate search for large indexes (usearch HNSW), checked against exact search.

Optional: `pip install 'jaxclap[ann]'`. Exact float32 search (search.py) stays the default;
this backend answers the same question from a graph over the index's clip and chunk vectors.

A graph built from audio vectors serves audio queries well, but CLAP text embeddings sit
apart from the audio ones (the modality gap), so text queries arrive from outside the
region the graph and its quantisation were shaped on, and can lose most of their true
neighbours while audio queries look fine. `build` therefore measures recall@10 against
exact search twice, for audio queries (stored vectors) and for text queries (the model's
embeddings of PROBE_CAPTIONS), raises the search breadth until both reach `min_recall`,
and refuses an index that cannot (`force` keeps it, warns and records the numbers).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

from jaxclap.index import store as store_lib

ANN_FILE, ANN_META = "ann.usearch", "ann.json"
DTYPES = ("f32", "f16", "bf16", "i8")
EXPANSIONS = (64, 128, 256, 512, 1024)  # Search breadths tried, smallest first.
# Generic sound captions: text queries for the recall check (the index's model embeds them;
# 16, one jitted batch of the text model).
PROBE_CAPTIONS = (
  "a dog barking",
  "people talking in a crowded room",
  "rain falling on a roof",
  "a car engine starting",
  "birds singing in the morning",
  "a piano playing a slow melody",
  "footsteps on a wooden floor",
  "a door slamming shut",
  "water running from a tap",
  "an alarm clock ringing",
  "wind blowing through trees",
  "a baby crying",
  "a guitar being strummed",
  "thunder rumbling in the distance",
  "a drum beat",
  "a low humming tone",
)
_AUDIO_PROBES = 64  # Stored vectors used as audio queries in the check.


class MissingExtraError(ImportError):
  """usearch is not installed (the `ann` extra)."""


def _usearch() -> Any:
  """The usearch Index class; a clear error without the `ann` extra."""
  try:
    from usearch.index import Index  # Optional: the "ann" extra.
  except ImportError as e:
    raise MissingExtraError("approximate search needs usearch: pip install 'jaxclap[ann]'") from e
  return Index


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
  """Row ids of the k highest cosines per query [Q, k] (vectors are unit length)."""
  scores = queries @ vectors.T
  k = min(k, vectors.shape[0])
  top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
  order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
  return np.take_along_axis(top, order, axis=1)


def recall_at_k(index: Any, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
  """Mean share of the exact top-k rows that the approximate index returns in its top-k."""
  k = min(k, vectors.shape[0])
  want = exact_top(vectors, queries, k)
  got = index.search(queries.astype(np.float32), k).keys
  return float(np.mean([len(set(w) & set(g)) / k for w, g in zip(want, np.atleast_2d(got))]))


def build(
  vectors: np.ndarray,
  text_queries: np.ndarray | None,
  *,
  dtype: str = "f16",
  min_recall: float = 0.9,
  force: bool = False,
  expansions: tuple[int, ...] = EXPANSIONS,
  seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
  """(usearch index over `vectors` [N, C] keyed by row, its measured facts).

  Refuses (ValueError) when audio or text queries keep recall@10 under `min_recall` at
  every search breadth in `expansions`, unless `force`.
  """
  if dtype not in DTYPES:
    raise ValueError(f"ann dtype must be one of {DTYPES}, got {dtype!r}")
  index = _usearch()(ndim=vectors.shape[1], metric="cos", dtype=dtype)
  index.add(np.arange(len(vectors)), vectors.astype(np.float32))
  rng = np.random.default_rng(seed)
  audio_q = vectors[rng.choice(len(vectors), min(_AUDIO_PROBES, len(vectors)), replace=False)]
  facts: dict[str, Any] = {"dtype": dtype, "rows": len(vectors), "min_recall": min_recall}
  for expansion in expansions:
    index.expansion_search = expansion
    audio_r = recall_at_k(index, vectors, audio_q)
    text_r = None if text_queries is None else recall_at_k(index, vectors, text_queries)
    facts.update(expansion_search=expansion, recall_audio=audio_r, recall_text=text_r)
    if audio_r >= min_recall and (text_r is None or text_r >= min_recall):
      break
  problem = check(facts)
  if problem:
    if not force:
      raise ValueError(problem + "; refused (use exact search, another --ann dtype, or force)")
    warnings.warn(problem + "; kept because forced", stacklevel=2)
  return index, facts


def check(facts: dict[str, Any]) -> str | None:
  """What is wrong with an index's measured recall, or None."""
  need, audio_r, text_r = facts["min_recall"], facts["recall_audio"], facts["recall_text"]
  if text_r is not None and text_r < need <= audio_r:
    return (
      f"approximate ({facts['dtype']}) search keeps recall@10 {audio_r:.3f} for audio queries "
      f"but only {text_r:.3f} for text queries (the audio-text modality gap), under {need}"
    )
  if audio_r < need or (text_r is not None and text_r < need):
    return (
      f"approximate ({facts['dtype']}) search recall@10 is {audio_r:.3f} for audio and "
      f"{text_r if text_r is None else round(text_r, 3)} for text queries, under {need}"
    )
  return None


def save(folder: str, index: Any, facts: dict[str, Any], journal_sha256: str) -> None:
  """Writes the graph and its facts (with the index state it was built from)."""
  index.save(os.path.join(folder, ANN_FILE))
  meta = {**facts, "journal_sha256": journal_sha256}
  store_lib.atomic_write(os.path.join(folder, ANN_META), json.dumps(meta, indent=1).encode())


def load(folder: str, journal_sha256: str) -> tuple[Any, dict[str, Any]]:
  """The saved graph and its facts; refuses one built from another state of the index."""
  path = os.path.join(folder, ANN_META)
  if not os.path.exists(path):
    raise store_lib.BadIndexError(
      f"{folder} has no approximate index; build with --ann (e.g. --ann f16)"
    )
  with open(path) as f:
    facts = json.load(f)
  if facts.get("journal_sha256") != journal_sha256:
    raise store_lib.BadIndexError(
      f"{folder}: the approximate index is older than the index's files; rebuild with --ann"
    )
  index = _usearch().restore(os.path.join(folder, ANN_FILE))
  index.expansion_search = facts["expansion_search"]
  return index, facts
