"""Caption-embedding tables: one per (dataset, text model), kept apart from the audio.

Switching the text model (the 2025 paper compares several) then writes a new table, not
the audio. A table is a folder under `<data_dir>/caption_tables/<dataset>/<text model>/`:

  vectors.bin     [count, dim] rows (float16 or float32), in the order they were committed
  hashes.bin      [count] uint64, the 64-bit BLAKE2b of each row's caption
  captions.jsonl  the captions, one JSON string a line (row order)
  committed.json  rows known written (and the files' byte lengths): a killed writer resumes
                  from here, cutting anything written after it
  index.npy       [count, 2] uint64 (hash, row) sorted by hash: the caption -> row lookup
  metadata.json   text model, backend, dim, dtype, count; written last, so its presence
                  means complete

Memory while writing: one chunk of captions and 8 bytes per distinct caption seen (their
hashes), not the captions or their vectors. Readers memory-map the vectors and the index.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxclap.data import schema

TABLES_DIR = "caption_tables"
VECTORS = "vectors.bin"
HASHES = "hashes.bin"
CAPTIONS = "captions.jsonl"
COMMITTED = "committed.json"
INDEX = "index.npy"
METADATA = "metadata.json"


def caption_hash(caption: str) -> int:
  """64-bit key of a caption (collisions among the table's captions are refused)."""
  return int.from_bytes(hashlib.blake2b(caption.encode("utf-8"), digest_size=8).digest(), "little")


def _slug(name: str) -> str:
  """A folder name for a dataset or model name: 'nvidia/NV-Embed-v2' -> 'nvidia__NV-Embed-v2'."""
  return name.strip("/").replace("/", "__")


def table_dir(data_dir: str | os.PathLike, dataset: str, text_model: str) -> Path:
  """Where the table of (`dataset`, `text_model`) lives."""
  root = Path(os.path.expanduser(os.fspath(data_dir)))
  return root / TABLES_DIR / _slug(dataset) / _slug(text_model)


def resolve(data_dir: str | os.PathLike, dataset: str, spec: str) -> Path:
  """The table folder `spec` names: a folder holding a table, else a text-model name."""
  path = Path(os.path.expanduser(spec))
  if (path / METADATA).is_file():
    return path
  return table_dir(data_dir, dataset, spec)


def _write_json(path: Path, value: dict[str, Any]) -> None:
  """Atomic: a reader (or a resumed writer) sees the old file or the new one, never half."""
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(value, indent=1))
  os.replace(tmp, path)


class TableWriter:
  """Appends (caption, vector) rows to a table folder; resumes from its last commit."""

  def __init__(self, folder: str | os.PathLike, *, spec: dict[str, Any]):
    self.folder = Path(folder)
    self.spec = dict(spec)  # text_model, backend, dim, dtype (and the dataset): checked on resume.
    self.dim = int(spec["dim"])
    self.dtype = schema.check_embedding_dtype(spec["dtype"])
    self.folder.mkdir(parents=True, exist_ok=True)
    (self.folder / METADATA).unlink(missing_ok=True)  # Complete again only after finish().
    committed = self._read_committed()
    self.count = int(committed["count"])
    self._caption_bytes = int(committed["caption_bytes"])
    # Cut whatever a killed writer appended after its last commit.
    for name, size in (
      (VECTORS, self.count * self.dim * self.dtype.itemsize),
      (HASHES, self.count * 8),
      (CAPTIONS, self._caption_bytes),
    ):
      with open(self.folder / name, "ab") as f:
        f.truncate(size)
    self.seen = np.sort(np.fromfile(self.folder / HASHES, np.uint64))  # Committed captions.

  def _read_committed(self) -> dict[str, Any]:
    path = self.folder / COMMITTED
    if not path.is_file():
      return {"count": 0, "caption_bytes": 0, "spec": self.spec}
    committed = json.loads(path.read_text())
    if committed["spec"] != self.spec:
      raise ValueError(
        f"{self.folder} holds a partial table of {committed['spec']}, not {self.spec}; "
        "delete the folder to start over"
      )
    return committed

  def is_seen(self, hashes: np.ndarray) -> np.ndarray:
    """Which of `hashes` are committed rows already."""
    if not self.seen.size:
      return np.zeros(len(hashes), bool)
    pos = np.searchsorted(self.seen, hashes)
    return (pos < self.seen.size) & (self.seen[np.minimum(pos, self.seen.size - 1)] == hashes)

  def append(self, captions: Sequence[str], vectors: np.ndarray) -> None:
    """Writes new rows and commits them (the files are synced before the commit record)."""
    vectors = np.asarray(vectors)
    if vectors.shape != (len(captions), self.dim):
      raise ValueError(f"vectors of shape {vectors.shape} for {len(captions)} captions")
    hashes = np.array([caption_hash(c) for c in captions], np.uint64)
    lines = "".join(json.dumps(c) + "\n" for c in captions).encode("utf-8")
    for name, data in (
      (VECTORS, vectors.astype(self.dtype).tobytes()),
      (HASHES, hashes.tobytes()),
      (CAPTIONS, lines),
    ):
      with open(self.folder / name, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    self.count += len(captions)
    self._caption_bytes += len(lines)
    _write_json(
      self.folder / COMMITTED,
      {"count": self.count, "caption_bytes": self._caption_bytes, "spec": self.spec},
    )
    self.seen = np.sort(np.concatenate([self.seen, hashes]))

  def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Writes the sorted index and the metadata; returns the metadata."""
    hashes = np.fromfile(self.folder / HASHES, np.uint64)
    order = np.argsort(hashes, kind="stable")
    index = np.stack([hashes[order], order.astype(np.uint64)], axis=1)
    if index.shape[0] > 1 and (np.diff(index[:, 0].astype(np.uint64)) == 0).any():
      raise ValueError(f"{self.folder}: two captions share a 64-bit hash; cannot index them")
    np.save(self.folder / INDEX, index)
    meta = {**self.spec, "dtype": self.dtype.name, "count": self.count, **(extra or {})}
    _write_json(self.folder / METADATA, meta)
    return meta


class CaptionTable:
  """Read side: caption -> vector lookups over memory-mapped files (picklable by path)."""

  def __init__(self, folder: str | os.PathLike):
    self.folder = Path(folder)
    path = self.folder / METADATA
    if not path.is_file():
      state = "incomplete" if (self.folder / COMMITTED).is_file() else "missing"
      raise FileNotFoundError(
        f"caption table {self.folder} is {state}; write it with python -m "
        "jaxclap.data.embed_captions --dataset=... --text_model=... (it resumes)"
      )
    self.meta = json.loads(path.read_text())
    self.text_model = str(self.meta["text_model"])
    self.dim = int(self.meta["dim"])
    self.dtype = np.dtype(self.meta["dtype"])
    self.count = int(self.meta["count"])
    self._vectors = self._keys = self._rows = None

  def __getstate__(self) -> dict[str, Any]:
    return {"folder": self.folder}  # Grain workers reopen the maps instead of copying them.

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(state["folder"])

  def _open(self) -> None:
    index = np.load(self.folder / INDEX, mmap_mode="r")
    self._keys, self._rows = index[:, 0], index[:, 1]
    self._vectors = np.memmap(
      self.folder / VECTORS, self.dtype, mode="r", shape=(self.count, self.dim)
    )

  def lookup(self, captions: Sequence[str]) -> np.ndarray:
    """[len(captions), dim] vectors of the table's dtype; a missing caption is an error."""
    if self._vectors is None:
      self._open()
    hashes = np.array([caption_hash(c) for c in captions], np.uint64)
    pos = np.minimum(np.searchsorted(self._keys, hashes), max(self.count - 1, 0))
    found = self._keys[pos] == hashes if self.count else np.zeros(len(captions), bool)
    if not found.all():
      missing = captions[int(np.argmin(found))]
      raise KeyError(
        f"caption {missing!r} is not in the table {self.folder}; rerun "
        "python -m jaxclap.data.embed_captions for this dataset"
      )
    return np.asarray(self._vectors[np.asarray(self._rows[pos], np.int64)])


class TableSource:
  """A random-access source whose records take their caption embeddings from a table."""

  def __init__(self, source: Any, table: CaptionTable):
    self._source = source
    self.table = table

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = dict(self._source[index])
    captions = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in record["captions"]]
    record["caption_embeddings"] = self.table.lookup(captions)
    return record

  def __repr__(self) -> str:
    return f"TableSource({self._source!r}, {self.table.folder})"


def _check(out: np.ndarray, chunk: list[str], name: str, dim: int) -> np.ndarray:
  out = np.asarray(out)
  if out.shape != (len(chunk), dim):
    raise schema.BadInputError(
      f"text embedder {name!r} returned shape {out.shape} for {len(chunk)} captions; "
      f"expected ({len(chunk)}, {dim})"
    )
  if not np.isfinite(out).all():
    raise schema.BadInputError(f"text embedder {name!r} returned NaN/inf among {chunk[:3]!r}")
  return out


def write_table(
  rows: Iterable[tuple[str, np.ndarray | None]],
  folder: str | os.PathLike,
  *,
  embedder: schema.TextEmbedder | None,
  spec: dict[str, Any],
  chunk_size: int = 4096,
  batch_size: int = 256,
  progress: Any = None,
) -> dict[str, Any]:
  """Writes the table of the distinct captions in `rows`; returns its metadata.

  `rows` yields (caption, vector or None); None rows are embedded by `embedder` in
  batches. Every `chunk_size` new captions are appended and committed, so a rerun after a
  kill skips the committed ones (the same `rows` in the same order) and adds no duplicate.
  """
  writer = TableWriter(folder, spec=spec)
  dim = writer.dim
  pending: dict[int, tuple[str, np.ndarray | None]] = {}

  def flush() -> None:
    items = list(pending.values())
    todo = [c for c, v in items if v is None]
    if todo and embedder is None:
      raise ValueError("rows without vectors need an embedder")
    made: list[np.ndarray] = []
    for start in range(0, len(todo), batch_size):
      batch = todo[start : start + batch_size]
      made.append(_check(embedder.embed(batch), batch, embedder.name, dim))
    made_rows = iter(np.concatenate(made) if made else [])
    vectors = np.stack([next(made_rows) if v is None else np.asarray(v) for _, v in items])
    writer.append([c for c, _ in items], vectors)
    if progress is not None:
      progress.update(len(items))
    pending.clear()

  for caption, vector in rows:
    key = caption_hash(caption)
    if key in pending or writer.is_seen(np.array([key], np.uint64))[0]:
      continue
    pending[key] = (caption, vector)
    if len(pending) >= chunk_size:
      flush()
  if pending:
    flush()
  return writer.finish()


def record_rows(sources: Iterable[Any], *, with_vectors: bool) -> Iterator[tuple[str, Any]]:
  """(caption, stored vector or None) of every record of `sources`, in order."""
  for source in sources:
    for i in range(len(source)):
      record = source[i]
      vectors = record["caption_embeddings"] if with_vectors else None
      for j, caption in enumerate(record["captions"]):
        text = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
        yield text, (vectors[j] if with_vectors else None)
