"""Builds or updates an index: walk the folder, embed new and changed files, commit as it goes.

Each file gets a CLAP embedding of the whole file and one per chunk of the model's input
grid (`Model.unit_frames` log-mel frames, as inference chunks long audio), both from one
pass of the encoder. Files are compared with what the index holds by size and mtime, then
by content hash, so only new and changed files are embedded; files gone from the folder
are dropped; files that do not decode are listed as bad and skipped (retried once they
change). Batches commit to the store every `commit_every` files, so a build killed at any
instant resumes with nothing committed embedded again (store.py says how).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxclap import embed, inference
from jaxclap.audio import io as audio_io
from jaxclap.index import identity
from jaxclap.index import store as store_lib

_HASH_BLOCK = 1 << 20


@dataclasses.dataclass
class Report:
  """What a build did; `bad` lists each file that did not decode, with the reason."""

  embedded: list[str] = dataclasses.field(default_factory=list)
  unchanged: int = 0
  removed: list[str] = dataclasses.field(default_factory=list)
  bad: list[dict[str, str]] = dataclasses.field(default_factory=list)
  files: int = 0  # Embedded files in the index after the build.
  seconds: float = 0.0
  audio_seconds: float = 0.0  # Audio embedded in this build.

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def file_sha256(path: str) -> str:
  """sha256 of a file's bytes (the content check behind 'changed')."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_HASH_BLOCK), b""):
      digest.update(block)
  return digest.hexdigest()


def chunk_embeddings(model: inference.Model, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(whole-file embedding [C], per-chunk embeddings [K, C]) from one file's frame features.

  A chunk is one input unit of the encoder (`unit_frames` log-mel frames), which gives
  `unit_frames // patch` frame features; the last chunk may be shorter. Both use the
  model's own CLAP head on the frames (`Model.clap_from_frames`, as `audio_embedding`).
  """
  per_chunk = max(1, model.unit_frames // model.patch_size)
  whole = model.clap_from_frames(frames)
  chunks = [
    model.clap_from_frames(frames[i : i + per_chunk]) for i in range(0, len(frames), per_chunk)
  ]
  return whole, np.stack(chunks)


def _record(root: str, rel: str, previous: store_lib.FileRecord | None) -> store_lib.FileRecord:
  """The file's record, its hash reused when size and mtime match the previous record."""
  st = os.stat(os.path.join(root, rel))
  if previous is not None and (previous.size, previous.mtime_ns) == (st.st_size, st.st_mtime_ns):
    sha = previous.sha256
  else:
    sha = file_sha256(os.path.join(root, rel))
  return store_lib.FileRecord(rel, st.st_size, st.st_mtime_ns, sha)


def _decoded(
  root: str,
  records: list[store_lib.FileRecord],
  rate: int,
  decoded: collections.deque,
  bad: list[store_lib.FileRecord],
  bar: tqdm,
) -> Iterator[np.ndarray]:
  """Waveforms of the records that decode, in order, each (record, seconds) queued on
  `decoded` as it is yielded; the others go to `bad`."""
  for rec in records:
    try:
      wave = audio_io.load_audio(os.path.join(root, rec.path), rate)
    except (audio_io.AudioDecodeError, OSError) as e:
      bad.append(dataclasses.replace(rec, error=str(e)))
      bar.update(1)
      continue
    decoded.append((rec, len(wave) / rate))
    yield wave


def build(
  model: inference.Model,
  model_name: str,
  audio_dir: str,
  index_dir: str,
  *,
  commit_every: int = 32,
  progress: bool | None = None,
) -> Report:
  """Adds `audio_dir`'s new and changed files to the index at `index_dir` (made if new)."""
  if not os.path.isdir(audio_dir):
    raise FileNotFoundError(f"--audio {audio_dir}: no such folder")
  if commit_every < 1:
    raise ValueError(f"commit_every must be >= 1, got {commit_every}")
  start = time.perf_counter()
  root = os.path.realpath(audio_dir)
  if os.path.exists(os.path.join(index_dir, store_lib.MANIFEST)):
    existing = store_lib.Store.open(index_dir)
    _check_same(existing, root, model, model_name, index_dir)
    ident = existing.manifest["model"]
  else:
    ident = identity.of_model(model, model_name)
  store = store_lib.Store.writer(index_dir, {"root": root, "model": ident})
  try:
    report = _update(model, store, root, commit_every, progress)
    store.compact()
  finally:
    store.close()
  report.files = len(store.files)
  report.seconds = time.perf_counter() - start
  return report


def _check_same(
  store: store_lib.Store, root: str, model: inference.Model, name: str, index_dir: str
) -> None:
  """Refuses an index made from another folder or by another model."""
  if store.manifest["root"] != root:
    raise store_lib.BadIndexError(
      f"{index_dir} indexes {store.manifest['root']}, not {root}; build a new index for it"
    )
  diff = identity.mismatch(store.manifest["model"], model, name)
  if diff:
    raise store_lib.BadIndexError(
      f"{index_dir} holds embeddings of another model ({store.manifest['model']['name']}); "
      f"refusing to mix in {name}'s: " + "; ".join(diff)
    )


def _update(
  model: inference.Model,
  store: store_lib.Store,
  root: str,
  commit_every: int,
  progress: bool | None,
) -> Report:
  """Finds what changed, embeds it in committed batches; the report of what was done."""
  report = Report()
  found = [rel.replace(os.sep, "/") for rel, _ in _walk(root)]
  gone = sorted((set(store.files) | set(store.bad)) - set(found))
  if gone:
    store.commit([], removed=gone)
    report.removed = gone
  pending = []
  for rel in found:
    known = store.files.get(rel, (None,))[0] or store.bad.get(rel)
    rec = _record(root, rel, known)
    if known is not None and known.sha256 == rec.sha256:
      report.unchanged += 1
      if rel in store.bad:
        report.bad.append({"path": rel, "error": store.bad[rel].error})
      continue
    pending.append(rec)
  bad: list[store_lib.FileRecord] = []
  batch: list[store_lib.Embedded] = []
  decoded: collections.deque = collections.deque()  # Decoded, not yet embedded, in order.
  show = progress if progress is not None else sys.stderr.isatty()
  bar = tqdm(total=len(pending), desc="jaxclap index", unit="file", disable=not show)
  with bar:
    waves = _decoded(root, pending, model.sample_rate, decoded, bad, bar)
    # Outputs come in input order, so each is the oldest decoded file's.
    for frames in model.iter_outputs(waves, "frame", progress=False):
      rec, seconds = decoded.popleft()
      whole, chunks = chunk_embeddings(model, frames)
      rec = dataclasses.replace(rec, duration_s=round(seconds, 4), num_chunks=len(chunks))
      batch.append(store_lib.Embedded(rec, whole, chunks))
      report.audio_seconds += seconds
      bar.update(1)
      if len(batch) >= commit_every:
        _commit(store, batch, bad, report)
    _commit(store, batch, bad, report)
  return report


def _commit(
  store: store_lib.Store,
  batch: list[store_lib.Embedded],
  bad: list[store_lib.FileRecord],
  report: Report,
) -> None:
  """Commits the batch and the bad files found so far; empties both lists."""
  store.commit(batch, bad)
  report.embedded += [e.record.path for e in batch]
  report.bad += [{"path": r.path, "error": r.error} for r in bad]
  batch.clear()
  bad.clear()


def _walk(root: str) -> list[tuple[str, str]]:
  """Sorted (relative path, path) of every audio file the decoder reads under `root`."""
  try:
    return embed.find_audio([root])
  except ValueError as e:  # No audio files at all: an empty folder indexes to nothing.
    if "no audio files" in str(e):
      return []
    raise
