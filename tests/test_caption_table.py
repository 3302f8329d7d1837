"""Caption-embedding tables apart from the audio, and the parallel (multi-worker) build."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import HashEmbedder, small_config, write_wav

from jaxclap.data import build, caption_table, embed_captions, pipeline
from jaxclap.models import network as models_network
from jaxclap.text import sentence
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import loop


class SaltedEmbedder(HashEmbedder):
  """A second 'text model' of the same width: other vectors for the same captions."""

  def __init__(self, name: str, salt: str, fail_after: int | None = None):
    super().__init__(dim=384, name=name)  # small_config's text_dim: its compiled steps.
    self.salt = salt
    self.fail_after = fail_after  # Calls before a simulated kill.

  def embed(self, texts: list[str]) -> np.ndarray:
    if self.fail_after is not None and len(self.calls) >= self.fail_after:
      raise KeyboardInterrupt("killed")
    out = super().embed([self.salt + t for t in texts])
    self.calls[-1] = list(texts)
    return out


def _all_captions(data_dir: str) -> list[str]:
  info = build.dataset_info(build.DEMO, data_dir)
  rows = caption_table.record_rows(
    (pipeline.open_source(build.DEMO, s, data_dir) for s in sorted(info["splits"])),
    with_vectors=False,
  )
  return [c for c, _ in rows]


def test_two_tables_resume_and_stage1_switch(tmp_path):
  data_dir = str(tmp_path / "data")
  info = build.build_dataset(build.DEMO, data_dir, num_clips=40, text_model="none")
  assert info["embedding_dim"] == 0 and info["text_model"] == "none"
  assert "caption_embeddings" not in pipeline.open_source(build.DEMO, "train", data_dir)[0]
  unique = list(dict.fromkeys(_all_captions(data_dir)))

  # A kill after two committed chunks of 8; the rerun embeds only the rest, no duplicates.
  killed = SaltedEmbedder("hash-a", "a:", fail_after=2)
  with pytest.raises(KeyboardInterrupt):
    embed_captions.embed_captions(build.DEMO, data_dir, embedder=killed, chunk_size=8, batch_size=8)
  folder = caption_table.table_dir(data_dir, build.DEMO, "hash-a")
  assert json.loads((folder / caption_table.COMMITTED).read_text())["count"] == 16
  with pytest.raises(FileNotFoundError, match="incomplete"):
    caption_table.CaptionTable(folder)
  resumed = SaltedEmbedder("hash-a", "a:")
  meta = embed_captions.embed_captions(
    build.DEMO, data_dir, embedder=resumed, chunk_size=8, batch_size=8
  )
  redone = [c for call in resumed.calls for c in call]
  assert redone == unique[16:]  # Only the captions after the last commit.
  assert meta["count"] == len(unique) and meta["dim"] == 384
  written = [
    json.loads(line) for line in (folder / caption_table.CAPTIONS).read_text().splitlines()
  ]
  assert written == unique  # Each caption once, in first-seen order.

  b_meta = embed_captions.embed_captions(
    build.DEMO, data_dir, embedder=SaltedEmbedder("hash-b", "b:"), dtype="float32"
  )
  table_a, table_b = (caption_table.CaptionTable(m["folder"]) for m in (meta, b_meta))
  probe = unique[::7]
  want_a = SaltedEmbedder("x", "a:").embed(probe).astype(np.float16)
  np.testing.assert_array_equal(table_a.lookup(probe), want_a)
  np.testing.assert_array_equal(table_b.lookup(probe), SaltedEmbedder("x", "b:").embed(probe))
  with pytest.raises(KeyError, match="not in the table"):
    table_a.lookup(["a caption nobody wrote"])

  # A stage-1 run per table, switched by data.caption_table alone.
  for name, table in (("hash-a", table_a), ("hash-b", table_b)):
    c = small_config("stage1", data_dir)
    c.data.train, c.data.val, c.data.zero_shot = "jaxclap_demo:train", "", ""
    c.data.caption_table = name
    c.frontend.norm_stats = (-5.0, 4.0)  # No statistics pass: the table is what differs.
    if name == "hash-a":  # An evaluator's split (vector-less records) reads the table too.
      c.evaluate.evaluators = ml_collections.ConfigDict(
        {"ret": {"kind": "retrieval", "data": "jaxclap_demo:test", "every": 3}}
      )
    out = loop.train_and_evaluate(c, str(tmp_path / name))
    assert out["end_step"] == 3 and np.isfinite(out["last_logged"]["loss"]), out
    if name == "hash-a":
      ret = [h for h in out["evaluators"]["history"] if h["name"] == "ret"]
      assert ret and ret[-1]["step"] == 3, out["evaluators"]["history"]
    saved = ckpt.load(str(tmp_path / name)).meta
    assert set(saved.text_models.values()) == {name}
    assert saved.text_runtime == {"backend": "custom", "trust_remote_code": False}
    source = pipeline.open_source(build.DEMO, "train", data_dir, name)
    record = source[3]
    captions = [x.decode() for x in record["captions"]]
    np.testing.assert_array_equal(record["caption_embeddings"], table.lookup(captions))

  c.model.text_dim = 16  # Table b is 384-d.
  with pytest.raises(ValueError, match=r"384-d embeddings \(hash-b\).*model.text_dim=16"):
    loop.train_and_evaluate(c, str(tmp_path / "mismatch"))


def test_prompts_use_the_tables_runtime(monkeypatch):
  seen = []
  monkeypatch.setattr(
    sentence, "load_sentence_embedder", lambda *a, **k: seen.append((a, k)) or HashEmbedder()
  )
  runtime = {"backend": "st", "trust_remote_code": True}
  models_network._lazy_sentence_embedder("nvidia/NV-Embed-v2", runtime)(["a dog barks"])
  models_network._lazy_sentence_embedder("some-bert")(["a dog barks"])
  assert seen == [
    (("nvidia/NV-Embed-v2", "st"), {"trust_remote_code": True}),
    (("some-bert", "auto"), {}),
  ]


def test_migration_from_records(hash_demo_data_dir, tmp_path):
  data_dir = str(tmp_path)
  for entry in os.listdir(hash_demo_data_dir):  # A writable view of the shared set.
    os.symlink(os.path.join(hash_demo_data_dir, entry), os.path.join(data_dir, entry))
  meta = embed_captions.embed_captions(build.DEMO, data_dir, from_records=True)
  assert meta["text_model"] == "test-hash-embedder" and meta["dtype"] == "float32"
  table = caption_table.CaptionTable(meta["folder"])
  record = pipeline.open_source(build.DEMO, "test", data_dir)[0]
  captions = [x.decode() for x in record["captions"]]
  np.testing.assert_array_equal(table.lookup(captions), record["caption_embeddings"])


def _folder(root) -> str:
  """12 short clips with captions over three splits (captioned-folder CSV layout)."""
  rng = np.random.default_rng(0)
  rows = ["file,caption,split"]
  for i in range(12):
    write_wav(root / f"c{i}.wav", 0.1 * rng.standard_normal(1600 + 160 * i), 16000)
    rows.append(f"c{i}.wav,sound number {i % 5},{('train', 'validation', 'test')[i % 3]}")
  (root / "captions.csv").write_text("\n".join(rows) + "\n")
  return str(root)


def test_four_workers_equal_one(tmp_path):
  manual = _folder(tmp_path / "clips")
  opts = dict(manual_dir=manual, text_model="none")
  name = "captioned_folder/clips"
  one = build.build_dataset(name, str(tmp_path / "one"), **opts)
  par = str(tmp_path / "par")
  for k in (0, 1, 3):  # Worker 2 "was killed": it left nothing complete.
    build.build_parallel(name, par, num_workers=4, worker_index=k, **opts)
  made = []  # Worker shares whose builder runs.
  real = build.BUILDERS["captioned_folder"]
  with pytest.MonkeyPatch.context() as m:
    m.setitem(build.BUILDERS, "captioned_folder", lambda **k: made.append(k["worker"]) or real(**k))
    merged = build.build_parallel(name, par, num_workers=4, **opts)
  assert made == [(2, 4)]  # The final step redoes only the killed worker's share.
  assert not os.path.exists(
    os.path.join(par, build.parallel_build.WORKERS_DIR, "captioned_folder__clips")
  )
  assert merged["splits"] == one["splits"] and merged["build"]["clips"] == 12
  assert merged["build"]["workers"] == 4
  for split in one["splits"]:
    a = tfds.data_source(name, split=split, data_dir=str(tmp_path / "one"))
    b = tfds.data_source(name, split=split, data_dir=par)
    assert len(a) == len(b)
    for i in range(len(a)):
      ra, rb = a[i], b[i]
      assert sorted(ra) == sorted(rb)
      for key in ra:
        np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{split}[{i}].{key}")


@pytest.mark.parametrize("split,key", [("train", "a/b.wav"), ("test", "dir\\clip.mp3"), ("x", "é")])
def test_worker_split_follows_tfds_record_order(split, key):
  """parallel_build's written-out key hash is TFDS's (read here from its internal module)."""
  from tensorflow_datasets.core import hashing

  assert build.parallel_build.key_hash(split, key) == hashing.Hasher(split).hash_key(key)
