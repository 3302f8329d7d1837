"""Embedding CLI: folder search, formats, resume without duplicates, bad files."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_wav

from jaxclap import embed, inference


@pytest.fixture(scope="module")
def model(stage1_workdir):
  return inference.load(stage1_workdir, batch_size=4, progress=False)


@pytest.fixture()
def folder(tmp_path) -> str:
  """Seven wavs in nested folders (16/44.1 kHz, mono/stereo) and a text file."""
  rng = np.random.default_rng(0)
  root = tmp_path / "audio"
  for i in range(7):
    sr = 44100 if i % 3 == 0 else 16000
    n = int(sr * (0.5 + 0.3 * i))
    wave = 0.2 * rng.standard_normal((n, 2) if i == 4 else n)
    write_wav(root / ("sub" if i % 2 else "") / f"clip{i}.wav", wave, sr)
  (root / "notes.txt").write_text("not audio")
  return str(root)


def _load(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def test_find_audio_sorted_relative_ids(folder):
  items = embed.find_audio([folder])
  ids = [i for i, _ in items]
  assert ids == sorted(ids) and len(ids) == 7
  assert "sub/clip1.wav" in ids and "clip0.wav" in ids and "notes.txt" not in ids
  single = embed.find_audio([os.path.join(folder, "clip0.wav")])
  assert [i for i, _ in single] == ["clip0.wav"]
  with pytest.raises(ValueError, match="duplicate ids"):
    embed.find_audio([folder, folder])
  with pytest.raises(FileNotFoundError, match="nowhere"):
    embed.find_audio([os.path.join(folder, "nowhere")])


def test_clip_embeddings_of_a_folder(model, folder, tmp_path):
  out = str(tmp_path / "emb.npz")
  summary = embed.embed_files([folder], checkpoint="ckpt", output=out, model=model, shard_size=3)
  assert summary["clips"] == 7 and summary["new_shards"] == 3
  z = _load(out)
  items = embed.find_audio([folder])
  assert z["ids"].tolist() == [i for i, _ in items]
  want = model.clip_features([p for _, p in items])
  np.testing.assert_allclose(z["embeddings"], want, atol=1e-5)
  assert not os.path.exists(out + ".parts")


def test_resume_after_interruption(model, folder, tmp_path):
  """Stopped after 2 of 4 shards, a rerun reuses them; output equals an uninterrupted run."""
  full = str(tmp_path / "full.npz")
  embed.embed_files(
    [folder], checkpoint="ckpt", output=full, model=model, shard_size=2, kind="clap"
  )
  out = str(tmp_path / "resumed.npz")
  first = embed.embed_files(
    [folder],
    checkpoint="ckpt",
    output=out,
    model=model,
    shard_size=2,
    kind="clap",
    stop_after_shards=2,
  )
  assert first["stopped"] and not os.path.exists(out)
  parts = sorted(os.listdir(out + ".parts"))
  assert len([p for p in parts if p.startswith("shard-")]) == 2
  # A write killed mid-way leaves only a temporary file: it must be ignored.
  open(os.path.join(out + ".parts", "shard-00002-of-00004.npz.tmp-999"), "wb").write(b"x")
  second = embed.embed_files(
    [folder], checkpoint="ckpt", output=out, model=model, shard_size=2, kind="clap"
  )
  assert (second["reused_shards"], second["new_shards"]) == (2, 2)
  a, b = _load(full), _load(out)
  assert b["ids"].tolist() == a["ids"].tolist() and len(set(b["ids"].tolist())) == 7
  np.testing.assert_allclose(b["embeddings"], a["embeddings"], atol=1e-6)
  assert b["embeddings"].shape == (7, model.embedding_dim)


def test_parts_of_another_run_are_refused(model, folder, tmp_path):
  out = str(tmp_path / "emb.npz")
  embed.embed_files(
    [folder], checkpoint="ckpt", output=out, model=model, shard_size=2, stop_after_shards=1
  )
  with pytest.raises(ValueError, match="kind"):
    embed.embed_files(
      [folder], checkpoint="ckpt", output=out, model=model, shard_size=2, kind="frame"
    )


def test_frame_kind_and_parquet(model, folder, tmp_path):
  import pyarrow.parquet as pq

  npz, pqt = str(tmp_path / "f.npz"), str(tmp_path / "f.parquet")
  embed.embed_files([folder], checkpoint="ckpt", output=npz, model=model, kind="frame")
  embed.embed_files(
    [folder], checkpoint="ckpt", output=pqt, model=model, kind="frame", fmt="parquet"
  )
  z = _load(npz)
  assert z["embeddings"].shape == (z["num_frames"].sum(), model.feature_dim)
  table = pq.read_table(pqt).to_pydict()
  assert table["id"] == z["ids"].tolist()
  assert table["num_frames"] == z["num_frames"].tolist()
  first = np.asarray(table["embedding"][0], np.float32)
  np.testing.assert_array_equal(first, z["embeddings"][: z["num_frames"][0]])
  clip_pq = str(tmp_path / "c.parquet")
  embed.embed_files([folder], checkpoint="ckpt", output=clip_pq, model=model, fmt="parquet")
  clips = pq.read_table(clip_pq).to_pydict()
  assert clips["id"] == table["id"]
  starts = np.concatenate([[0], np.cumsum(z["num_frames"])[:-1]])
  means = [z["embeddings"][s : s + n].mean(0) for s, n in zip(starts, z["num_frames"])]
  np.testing.assert_allclose(np.asarray(clips["embedding"], np.float32), means, atol=1e-5)


def test_bad_files(model, folder, tmp_path):
  bad = os.path.join(folder, "sub", "broken.wav")
  with open(bad, "wb") as f:
    f.write(b"RIFF\x00\x00garbage")
  out = str(tmp_path / "emb.npz")
  with pytest.raises(ValueError, match="broken.wav"):
    embed.embed_files([folder], checkpoint="ckpt", output=out, model=model)
  out2 = str(tmp_path / "emb2.npz")
  summary = embed.embed_files([folder], checkpoint="ckpt", output=out2, model=model, skip_bad=True)
  assert summary["skipped"] == ["sub/broken.wav"] and summary["clips"] == 7
  z = _load(out2)
  assert z["skipped"].tolist() == ["sub/broken.wav"] and "broken.wav" in z["skipped_errors"][0]
  assert "sub/broken.wav" not in z["ids"].tolist()
  assert open(out2 + ".skipped.txt").read().startswith("sub/broken.wav\t")


@pytest.mark.parametrize("shard_size", [256, 3])
def test_progress_counts_files_on_stderr(model, folder, tmp_path, capsys, shard_size):
  """A bar over files for any number of files (7 here, one shard or three)."""
  out = str(tmp_path / "emb.npz")
  embed.embed_files([folder], checkpoint="ckpt", output=out, model=model, shard_size=shard_size)
  captured = capsys.readouterr()
  assert "7/7" in captured.err and "file" in captured.err
  assert "7/7" not in captured.out


def test_parquet_without_pyarrow_fails_first(model, folder, tmp_path, monkeypatch):
  """No pyarrow: a one-line install hint before any embedding work is done."""
  for name in ("pyarrow", "pyarrow.parquet"):
    monkeypatch.setitem(sys.modules, name, None)  # `import pyarrow` raises ImportError.
  out = str(tmp_path / "emb.parquet")
  with pytest.raises(embed.MissingExtraError, match=r"pip install 'jaxclap\[parquet\]'"):
    embed.embed_files([folder], checkpoint="ckpt", output=out, model=model, fmt="parquet")
  assert not os.path.exists(out + ".parts") and not os.path.exists(out)


def test_cli(stage1_workdir, folder, tmp_path):
  """The absl entry point: writes the output; a bad file fails with exit 2 and its name."""
  out = str(tmp_path / "cli.npz")
  cmd = [
    sys.executable,
    "-m",
    "jaxclap.embed",
    f"--checkpoint={stage1_workdir}",
    f"--output={out}",
    "--kind=clap",
    "--shard_size=4",
    folder,
  ]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert _load(out)["embeddings"].shape == (7, 64)
  with open(os.path.join(folder, "zz_bad.flac"), "wb") as f:
    f.write(b"fLaC broken")
  done = subprocess.run(
    cmd[:4] + [f"--output={out}.2.npz", folder], capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 2 and "zz_bad.flac" in done.stderr.splitlines()[-1]
