"""The index's files: what a kill leaves behind is cleaned, compaction keeps the content,
damage and foreign folders are named."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxclap.index import store as store_lib

DIM = 4
MODEL = {"name": "test", "embedding_dim": DIM}


def _item(path: str, seed: int, chunks: int) -> store_lib.Embedded:
  rng = np.random.default_rng(seed)
  rec = store_lib.FileRecord(path, 10 + seed, 1000 + seed, f"{seed:064x}", 1.5, chunks)
  return store_lib.Embedded(rec, rng.normal(size=DIM), rng.normal(size=(chunks, DIM)))


def _content(folder) -> tuple[list, np.ndarray, np.ndarray, dict]:
  s = store_lib.Store.open(str(folder))
  a = s.arrays()
  return a.files, a.clip, a.chunk, s.bad


def test_kill_leftovers_are_cleaned_and_compaction_keeps_content(tmp_path):
  w = store_lib.Store.writer(str(tmp_path), {"root": "/r", "model": MODEL})
  w.commit([_item("b.wav", 1, 2), _item("a.wav", 2, 1)])
  w.commit([_item("c.wav", 3, 3)], [store_lib.FileRecord("bad.wav", 1, 1, "0" * 64, error="x")])
  w.commit([_item("a.wav", 4, 2)])  # a.wav changed: its new rows replace the old.
  w.close()
  before = _content(tmp_path)
  assert [r.path for r in before[0]] == ["a.wav", "b.wav", "c.wav"]
  np.testing.assert_array_equal(before[1][0], _item("a.wav", 4, 2).clip.astype(np.float32))
  assert before[2].shape == (2 + 2 + 3, DIM) and list(before[3]) == ["bad.wav"]

  # What a kill -9 leaves: a shard no journal line names, a temporary file, a torn line.
  shards = tmp_path / store_lib.SHARDS
  (shards / "00000099.npz").write_bytes(b"half a shard")
  (shards / "00000100.npz.tmp-123").write_bytes(b"")
  with open(tmp_path / store_lib.JOURNAL, "ab") as f:
    f.write(b'{"op": "add", "shard": "00000099.npz", "fil')
  assert _content(tmp_path)[0] == before[0]  # A reader skips the torn line.
  w = store_lib.Store.writer(str(tmp_path), {"root": "/r", "model": MODEL})
  assert sorted(os.listdir(shards)) == ["00000000.npz", "00000001.npz", "00000002.npz"]
  assert (tmp_path / store_lib.JOURNAL).read_bytes().endswith(b"\n")
  assert w.compact()
  w.close()
  after = _content(tmp_path)
  assert after[0] == before[0] and after[3] == before[3]
  np.testing.assert_array_equal(after[1], before[1])
  np.testing.assert_array_equal(after[2], before[2])
  assert len(os.listdir(shards)) == 1
  assert len((tmp_path / store_lib.JOURNAL).read_text().splitlines()) == 2  # add + bad.


def test_damage_and_foreign_folders_are_named(tmp_path):
  with pytest.raises(store_lib.BadIndexError, match="not a jaxclap index"):
    store_lib.Store.open(str(tmp_path))
  w = store_lib.Store.writer(str(tmp_path), {"root": "/r", "model": MODEL})
  with pytest.raises(store_lib.BadIndexError, match="another build is writing"):
    store_lib.Store.writer(str(tmp_path), {"root": "/r", "model": MODEL})
  w.commit([_item("a.wav", 1, 1)])
  w.commit([_item("b.wav", 2, 1)])
  w.close()
  journal = tmp_path / store_lib.JOURNAL
  lines = journal.read_text().splitlines()
  journal.write_text("\n".join([lines[0][:-5], lines[1]]) + "\n")
  with pytest.raises(store_lib.BadIndexError, match=r"journal.jsonl: line 1 is damaged"):
    store_lib.Store.open(str(tmp_path))
  manifest = json.loads((tmp_path / store_lib.MANIFEST).read_text())
  (tmp_path / store_lib.MANIFEST).write_text(json.dumps({**manifest, "version": 99}))
  with pytest.raises(store_lib.BadIndexError, match="version 99; this jaxclap reads"):
    store_lib.Store.open(str(tmp_path))
