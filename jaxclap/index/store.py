"""The index on disk: a manifest, an append-only journal of committed batches, and shards.

    OUT/manifest.json   format, the audio folder, the model's identity (identity.py)
    OUT/journal.jsonl   one JSON line per committed batch: files added, bad or removed
    OUT/shards/*.npz    one batch's embeddings: clip [n, C], chunk [Σk, C], num_chunks [n]

A batch commits in an order that survives kill -9 at any instant: its shard is written to a
temporary name, fsynced and renamed, then its journal line is appended and fsynced. The
journal is the truth: a shard no line names (killed between the two) is deleted when a build
next opens the index, and a torn last line is cut off, so a rerun redoes only the files of
the batch that was cut. `compact` rewrites the live rows as one shard in path order and the
journal as one or two lines (written aside, then renamed over), so an index resumed after a
kill ends identical to one built without a break.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

FORMAT = "jaxclap-index"
VERSION = 1
MANIFEST, JOURNAL, SHARDS, LOCK = "manifest.json", "journal.jsonl", "shards", ".lock"


class BadIndexError(ValueError):
  """A folder that is not a usable index, or an index that refuses the operation."""


@dataclasses.dataclass(frozen=True)
class FileRecord:
  """One audio file as the index saw it: what identifies its content, and what came of it."""

  path: str  # Relative to the indexed folder, '/'-separated.
  size: int
  mtime_ns: int
  sha256: str
  duration_s: float = 0.0  # Embedded files only.
  num_chunks: int = 0  # Embedded files only: the model's input units (chunks) it spans.
  error: str = ""  # Bad files only: why it could not be decoded.

  def to_json(self) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(self).items() if v or k == "size"}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> FileRecord:
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class Embedded:
  """A file's embeddings: the whole file and one per chunk of the model's input grid."""

  record: FileRecord
  clip: np.ndarray  # [C] float32, L2-normalised.
  chunks: np.ndarray  # [num_chunks, C] float32, L2-normalised.


@dataclasses.dataclass(frozen=True)
class Arrays:
  """Everything search needs, in memory: files in path order and their vectors."""

  files: list[FileRecord]
  clip: np.ndarray  # [F, C]: row i is files[i].
  chunk: np.ndarray  # [M, C]: each file's chunks, file after file.
  chunk_start: np.ndarray  # [F] int64: first chunk row of each file (then num_chunks rows).


def atomic_write(path: str, data: bytes) -> None:
  """Writes `data` to a temporary sibling, fsyncs it and renames it over `path`."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  _fsync_dir(os.path.dirname(path))


def _fsync_dir(folder: str) -> None:
  """Makes a rename in `folder` durable (the directory entry, not just the data)."""
  fd = os.open(folder or ".", os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


class Store:
  """An index folder: read it (`open`), or add to it under an exclusive lock (`writer`)."""

  def __init__(self, folder: str, manifest: dict[str, Any]):
    self.folder = folder
    self.manifest = manifest
    self.files: dict[str, tuple[FileRecord, str, int, int]] = {}  # path → (rec, shard, row, c0)
    self.bad: dict[str, FileRecord] = {}
    self._lock_fd: int | None = None
    self._lines = 0  # Journal lines replayed or written.
    self._next_shard = 0

  # ---- opening ---------------------------------------------------------------------------

  @classmethod
  def open(cls, folder: str) -> Store:
    """Reads an existing index (no writes: a build may be running beside the reader)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
      raise BadIndexError(f"{folder}: not a jaxclap index (no {MANIFEST}); build one first")
    try:
      with open(path) as f:
        manifest = json.load(f)
    except ValueError as e:
      raise BadIndexError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
      raise BadIndexError(
        f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}; "
        f"this jaxclap reads {FORMAT!r} version {VERSION}"
      )
    store = cls(folder, manifest)
    store._replay(truncate=False)
    return store

  @classmethod
  def writer(cls, folder: str, manifest: dict[str, Any]) -> Store:
    """The index at `folder` (created with `manifest` if new), locked for one builder.

    Cleans what a killed build left: temporary files, shards no journal line names, and a
    torn last journal line. The caller checks that `manifest` matches the existing one.
    """
    os.makedirs(os.path.join(folder, SHARDS), exist_ok=True)
    fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      os.close(fd)
      raise BadIndexError(f"{folder}: another build is writing this index") from e
    if not os.path.exists(os.path.join(folder, MANIFEST)):
      manifest = {"format": FORMAT, "version": VERSION, **manifest}
      atomic_write(os.path.join(folder, MANIFEST), json.dumps(manifest, indent=1).encode())
    store = cls.open(folder)
    store._lock_fd = fd
    store._replay(truncate=True)
    live = {s for _, s, _, _ in store.files.values()}
    for name in os.listdir(os.path.join(folder, SHARDS)):
      if name not in live:  # Orphans and temporaries of a killed build.
        os.remove(os.path.join(folder, SHARDS, name))
    for name in os.listdir(folder):
      if ".tmp-" in name:
        os.remove(os.path.join(folder, name))
    return store

  def close(self) -> None:
    """Releases the builder's lock."""
    if self._lock_fd is not None:
      os.close(self._lock_fd)
      self._lock_fd = None

  def _lines_of_journal(self, truncate: bool) -> Iterator[dict[str, Any]]:
    """Parsed journal lines; a torn last line (a kill mid-append) is skipped or cut off."""
    path = os.path.join(self.folder, JOURNAL)
    if not os.path.exists(path):
      return
    with open(path, "rb") as f:
      data = f.read()
    good = 0  # Bytes of whole, parsed lines.
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
      if not line:
        continue
      try:
        op = json.loads(line)
        if i == len(lines) - 1:  # No newline after it: the append was cut before its end.
          raise ValueError("no newline")
      except ValueError as e:
        if i < len(lines) - 1:
          raise BadIndexError(f"{path}: line {i + 1} is damaged ({e}); rebuild the index") from e
        break
      good += len(line) + 1
      yield op
    if truncate and good < len(data):
      with open(path, "r+b") as f:
        f.truncate(good)
        os.fsync(f.fileno())

  def _replay(self, truncate: bool) -> None:
    """Rebuilds the file table from the journal."""
    self.files, self.bad, self._lines = {}, {}, 0
    for op in self._lines_of_journal(truncate):
      self._lines += 1
      kind = op.get("op")
      if kind == "add":
        row, chunk = 0, 0
        for d in op["files"]:
          rec = FileRecord.from_json(d)
          self.files[rec.path] = (rec, op["shard"], row, chunk)
          self.bad.pop(rec.path, None)
          row, chunk = row + 1, chunk + rec.num_chunks
        self._next_shard = max(self._next_shard, int(op["shard"].split(".")[0]) + 1)
      elif kind == "bad":
        for d in op["files"]:
          rec = FileRecord.from_json(d)
          self.bad[rec.path] = rec
          self.files.pop(rec.path, None)
      elif kind == "remove":
        for p in op["paths"]:
          self.files.pop(p, None)
          self.bad.pop(p, None)
      else:
        raise BadIndexError(f"{os.path.join(self.folder, JOURNAL)}: unknown op {kind!r}")

  # ---- writing ---------------------------------------------------------------------------

  def _append(self, op: dict[str, Any]) -> None:
    """Appends one journal line and makes it durable."""
    with open(os.path.join(self.folder, JOURNAL), "ab") as f:
      f.write(json.dumps(op).encode() + b"\n")
      f.flush()
      os.fsync(f.fileno())
    self._lines += 1

  def _write_shard(self, items: list[Embedded]) -> str:
    """Writes one shard (temporary name, fsync, rename); its file name."""
    name = f"{self._next_shard:08d}.npz"
    self._next_shard += 1
    dim = len(items[0].clip)
    chunks = [e.chunks for e in items]
    arrays = {
      "clip": np.stack([e.clip for e in items]).astype(np.float32),
      "chunk": np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, dim)),
      "num_chunks": np.array([len(c) for c in chunks], np.int64),
    }
    path = os.path.join(self.folder, SHARDS, name)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))
    return name

  def commit(
    self, added: list[Embedded], bad: list[FileRecord] = (), removed: list[str] = ()
  ) -> None:
    """Commits one batch: a shard of `added` (if any), then its journal lines."""
    if self._lock_fd is None:
      raise BadIndexError(f"{self.folder}: opened read-only; open with Store.writer to add")
    if added:
      shard = self._write_shard(added)
      self._append({"op": "add", "shard": shard, "files": [e.record.to_json() for e in added]})
      for row, (e, c0) in enumerate(zip(added, np.cumsum([0] + [len(a.chunks) for a in added]))):
        self.files[e.record.path] = (e.record, shard, row, int(c0))
        self.bad.pop(e.record.path, None)
    if bad:
      self._append({"op": "bad", "files": [r.to_json() for r in bad]})
      for r in bad:
        self.bad[r.path] = r
        self.files.pop(r.path, None)
    if removed:
      self._append({"op": "remove", "paths": list(removed)})
      for p in removed:
        self.files.pop(p, None)
        self.bad.pop(p, None)

  def compact(self) -> bool:
    """Rewrites the live rows as one shard in path order, the journal as ≤ 2 lines.

    Returns whether anything was rewritten (an index already compact is left alone).
    """
    shards = {s for _, s, _, _ in self.files.values()}
    if len(shards) <= 1 and self._lines <= (1 if self.files else 0) + (1 if self.bad else 0):
      return False
    arrays = self.arrays()
    lines = []
    if arrays.files:
      items = [
        Embedded(rec, arrays.clip[i], arrays.chunk[c0 : c0 + rec.num_chunks])
        for i, (rec, c0) in enumerate(zip(arrays.files, arrays.chunk_start))
      ]
      shard = self._write_shard(items)
      lines.append({"op": "add", "shard": shard, "files": [r.to_json() for r in arrays.files]})
    if self.bad:
      lines.append({"op": "bad", "files": [self.bad[p].to_json() for p in sorted(self.bad)]})
    text = b"".join(json.dumps(op).encode() + b"\n" for op in lines)
    atomic_write(os.path.join(self.folder, JOURNAL), text)  # The switch: one rename.
    for name in shards:
      os.remove(os.path.join(self.folder, SHARDS, name))
    self._replay(truncate=False)
    return True

  # ---- reading ---------------------------------------------------------------------------

  def state_sha256(self) -> str:
    """sha256 of the journal: changes with every commit (what an approximate index is of)."""
    path = os.path.join(self.folder, JOURNAL)
    if not os.path.exists(path):
      return hashlib.sha256(b"").hexdigest()
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()

  def arrays(self) -> Arrays:
    """The embedded files in path order with their clip and chunk vectors."""
    files = [self.files[p] for p in sorted(self.files)]
    dim = int(self.manifest["model"]["embedding_dim"])
    loaded: dict[str, Any] = {}
    clips, chunks, starts, n = [], [], [], 0
    for rec, shard, row, c0 in files:
      if shard not in loaded:
        path = os.path.join(self.folder, SHARDS, shard)
        try:
          with np.load(path) as z:
            loaded[shard] = {k: z[k] for k in ("clip", "chunk")}
        except (OSError, ValueError, KeyError) as e:
          raise BadIndexError(f"{path}: cannot read this shard ({e}); rebuild the index") from e
      clips.append(loaded[shard]["clip"][row])
      chunks.append(loaded[shard]["chunk"][c0 : c0 + rec.num_chunks])
      starts.append(n)
      n += rec.num_chunks
    return Arrays(
      files=[f[0] for f in files],
      clip=np.stack(clips).astype(np.float32) if clips else np.zeros((0, dim), np.float32),
      chunk=np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, dim), np.float32),
      chunk_start=np.array(starts, np.int64),
    )
