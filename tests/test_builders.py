"""Tests of the TFDS builders, the build API/CLI and bad-input handling."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds
from conftest import DEMO_CLIPS, TEXT_MODEL, HashEmbedder, write_wav

from jaxclap.audio import io as audio_io
from jaxclap.data import build, builders, schema, synth

# The shared recordings sit beside the checkout (<repo>/../shared); JAXCLAP_SHARED_DIR moves them.
REPO = Path(__file__).resolve().parents[1]


def shared_berklee(env: dict[str, str]) -> Path:
  """The Berklee folder; skips when absent, fails instead when JAXCLAP_REQUIRE_SHARED=1."""
  shared = Path(env.get("JAXCLAP_SHARED_DIR") or REPO.parent / "shared")
  folder = shared / "data" / "berklee"
  if not folder.is_dir():
    why = f"shared Berklee recordings not found at {folder} (set JAXCLAP_SHARED_DIR)"
    if env.get("JAXCLAP_REQUIRE_SHARED", "") == "1":
      pytest.fail(f"{why}; JAXCLAP_REQUIRE_SHARED=1 says they must be there")
    pytest.skip(why)
  return folder


def _records(name, split, data_dir):
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  return {r["id"].decode(): r for r in (source[i] for i in range(len(source)))}


def _tone(sr, seconds, hz=440.0, channels=1, amp=0.5):
  t = np.arange(int(round(sr * seconds))) / sr
  x = (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)
  return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


# ----------------------------------------------------------------------------- demo


def test_demo_round_trip(hash_demo_data_dir):
  info = build.dataset_info(build.DEMO, hash_demo_data_dir)
  expected = {
    s: sum(builders.demo_split(i) == s for i in range(DEMO_CLIPS)) for s in builders.DEMO_SPLITS
  }
  assert info["splits"] == expected and sum(expected.values()) == DEMO_CLIPS
  assert info["embedding_dim"] == 8 and info["text_model"] == "test-hash-embedder"
  assert info["sample_rate"] == 16000 and info["class_names"] == list(synth.CLASS_NAMES)
  assert info["build"]["clips"] == DEMO_CLIPS and info["build"]["skipped"] == 0
  embedder = HashEmbedder()
  for split in builders.DEMO_SPLITS:
    for clip_id, rec in _records(build.DEMO, split, hash_demo_data_dir).items():
      index = int(clip_id.rsplit("_", 1)[1])
      assert builders.demo_split(index) == split
      spec = synth.clip_spec(index, seed=0)
      np.testing.assert_array_equal(rec["audio"], audio_io.float_to_pcm16(synth.render(spec)))
      assert rec["audio"].dtype == np.int16 and rec["sample_rate"] == 16000
      assert [c.decode() for c in rec["captions"]] == list(spec.captions)
      assert rec["caption_embeddings"].dtype == np.float32
      np.testing.assert_array_equal(rec["caption_embeddings"], embedder.embed(list(spec.captions)))
      assert rec["label"] == spec.label


def test_demo_with_real_text_model(demo_data_dir, text_embedder):
  info = build.dataset_info(build.DEMO, demo_data_dir)
  assert info["text_model"] == TEXT_MODEL and info["embedding_dim"] == 384
  assert info["embedding_dtype"] == "float16"
  recs = _records(build.DEMO, "validation", demo_data_dir)
  rec = next(iter(recs.values()))
  captions = [c.decode() for c in rec["captions"]]
  assert rec["caption_embeddings"].dtype == np.float16
  np.testing.assert_allclose(rec["caption_embeddings"], text_embedder.embed(captions), atol=2e-3)


def test_ensure_demo_dataset_reuses_a_complete_build(demo_data_dir):
  marker = Path(build.dataset_info(build.DEMO, demo_data_dir)["data_dir"]) / "dataset_info.json"
  before = marker.stat().st_mtime_ns
  info = build.ensure_demo_dataset(demo_data_dir, text_model=TEXT_MODEL, num_clips=DEMO_CLIPS)
  assert marker.stat().st_mtime_ns == before and sum(info["splits"].values()) == DEMO_CLIPS
  with pytest.raises(ValueError, match="num_clips=64"):
    build.ensure_demo_dataset(demo_data_dir, text_model=TEXT_MODEL, num_clips=100)


def test_each_unique_caption_embedded_once(tmp_path):
  embedder = HashEmbedder()
  build.build_dataset(build.DEMO, str(tmp_path), num_clips=40, embedder=embedder)
  sent = [c for call in embedder.calls for c in call]
  expected = {c for i in range(40) for c in synth.clip_spec(i).captions}
  assert len(sent) == len(set(sent)) and set(sent) == expected


def test_build_is_idempotent_and_checks_existing(tmp_path):
  build.build_dataset(build.DEMO, str(tmp_path), num_clips=30, embedder=HashEmbedder())
  again = HashEmbedder()
  info = build.build_dataset(build.DEMO, str(tmp_path), num_clips=30, embedder=again)
  assert again.calls == [] and sum(info["splits"].values()) == 30
  with pytest.raises(ValueError, match="text_model"):
    build.build_dataset(
      build.DEMO, str(tmp_path), num_clips=30, embedder=HashEmbedder(name="other-model")
    )


class _Boom(RuntimeError):
  pass


def test_interrupted_build_leaves_nothing_loadable(tmp_path, monkeypatch):
  real_render = synth.render

  def failing_render(spec, *a, **k):
    if spec.index == 17:  # Mid-way through the train split.
      raise _Boom("simulated crash")
    return real_render(spec, *a, **k)

  monkeypatch.setattr(synth, "render", failing_render)
  with pytest.raises(_Boom):
    build.build_dataset(build.DEMO, str(tmp_path), num_clips=30, embedder=HashEmbedder())
  assert not build.is_built(build.DEMO, str(tmp_path))
  with pytest.raises(Exception):
    tfds.data_source(build.DEMO, split="train", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not built"):
    build.dataset_info(build.DEMO, str(tmp_path))
  monkeypatch.setattr(synth, "render", real_render)
  info = build.build_dataset(build.DEMO, str(tmp_path), num_clips=30, embedder=HashEmbedder())
  assert sum(info["splits"].values()) == 30


def test_embedding_dim_mismatch(tmp_path):
  class WrongDim(HashEmbedder):
    def embed(self, texts):
      return np.zeros((len(texts), self.dim + 1), np.float32)

  with pytest.raises(schema.BadInputError, match=r"wrong-dim.*expected \(\d+, 8\)"):
    build.build_dataset(
      build.DEMO, str(tmp_path), num_clips=30, embedder=WrongDim(name="wrong-dim")
    )
  assert not build.is_built(build.DEMO, str(tmp_path))


def test_unknown_dataset_and_options():
  with pytest.raises(ValueError, match="unknown dataset"):
    build.build_dataset("no_such_set", "/tmp/x", embedder=HashEmbedder())
  with pytest.raises(ValueError, match="--dataset=audioset --manual_dir=<AudioSet"):
    build.build_dataset("audioset", "/tmp/x", embedder=HashEmbedder())  # A corpus builder.
  with pytest.raises(ValueError, match="manual_dir"):
    build.build_dataset("captioned_folder/x", "/tmp/x", embedder=HashEmbedder())
  with pytest.raises(ValueError, match="embedding_dtype"):
    build.build_dataset(build.DEMO, "/tmp/x", embedding_dtype="bfloat16", embedder=HashEmbedder())


# ----------------------------------------------------------------------------- folders


@pytest.fixture
def captioned_dir(tmp_path):
  """A small mixed-format captioned folder: rates 44.1k/8k/22.05k/48k, mono/stereo."""
  root = tmp_path / "caps"
  write_wav(root / "audio" / "a.wav", _tone(44100, 1.5, channels=2), 44100)
  write_wav(root / "audio" / "b.flac", _tone(8000, 2.0, hz=300.0), 8000)
  sf.write(str(root / "audio" / "c.mp3"), _tone(22050, 1.0, hz=600.0), 22050, format="MP3")
  write_wav(root / "d.ogg", _tone(48000, 1.0, hz=1000.0, channels=2), 48000, subtype="VORBIS")
  (root / "captions.csv").write_text(
    "file,caption,split\n"
    "a.wav,a tone in stereo,train\n"
    "a.wav,a second caption for a,train\n"  # AudioCaps style: one caption per row.
    "b,an 8 kHz tone,val\n"  # No extension; 'val' alias.
    "c.mp3,an mp3 tone,test\n"
    "d.ogg,an ogg tone,train\n"
  )
  return root


def test_captioned_folder_round_trip(captioned_dir, tmp_path):
  data_dir = str(tmp_path / "data")
  embedder = HashEmbedder(dim=6)
  info = build.build_dataset(
    "captioned_folder/mini",
    data_dir,
    manual_dir=str(captioned_dir),
    embedding_dtype="float32",
    embedder=embedder,
  )
  assert info["splits"] == {"train": 2, "validation": 1, "test": 1}
  assert info["embedding_dim"] == 6 and info["build"]["captions"] == 5
  train = _records("captioned_folder/mini", "train", data_dir)
  assert set(train) == {"audio/a", "d"}
  a = train["audio/a"]
  assert [c.decode() for c in a["captions"]] == ["a tone in stereo", "a second caption for a"]
  np.testing.assert_array_equal(
    a["caption_embeddings"], embedder.embed(["a tone in stereo", "a second caption for a"])
  )
  assert a["label"] == -1 and a["sample_rate"] == 16000
  # 44.1 kHz stereo -> 16 kHz mono (mean of 1.0x and 0.5x channels = 0.75x).
  assert abs(a["audio"].size - 24000) <= 2
  np.testing.assert_array_equal(
    a["audio"], audio_io.float_to_pcm16(audio_io.load_audio(captioned_dir / "audio/a.wav"))
  )
  peak = np.abs(audio_io.pcm16_to_float(a["audio"][1000:-1000])).max()
  assert abs(peak - 0.375) < 0.01
  b = _records("captioned_folder/mini", "validation", data_dir)["audio/b"]
  assert abs(b["audio"].size - 32000) <= 2  # 8 kHz mono, 2 s -> 16 kHz.
  x = audio_io.pcm16_to_float(b["audio"])
  assert abs(np.argmax(np.abs(np.fft.rfft(x))) * 16000 / x.size - 300.0) < 2.0


def test_clotho_style_caption_columns(tmp_path):
  root = tmp_path / "clotho"
  write_wav(root / "development" / "x.wav", _tone(44100, 1.0), 44100)
  (root / "train.csv").write_text("file_name,caption_1,caption_2,caption_3\nx.wav,one,two,three\n")
  (root / "development").rename(root / "train")
  data_dir = str(tmp_path / "data")
  build.build_dataset("captioned_folder", data_dir, manual_dir=str(root), embedder=HashEmbedder())
  recs = _records("captioned_folder/clotho", "train", data_dir)  # Config name = folder name.
  assert [c.decode() for c in recs["train/x"]["captions"]] == ["one", "two", "three"]


def _bad_folder(tmp_path, problem):
  """A captioned folder with two good clips and one `problem` row."""
  root = tmp_path / problem
  write_wav(root / "good1.wav", _tone(16000, 1.0), 16000)
  write_wav(root / "good2.wav", _tone(16000, 1.0, hz=500), 16000)
  rows = ["good1.wav,fine", "good2.wav,also fine"]
  if problem == "corrupt":
    (root / "bad.wav").write_bytes(b"RIFF not really a wave file" * 20)
    rows.append("bad.wav,corrupt")
  elif problem == "empty":
    (root / "bad.wav").write_bytes(b"")
    rows.append("bad.wav,empty")
  elif problem == "zero_length":
    write_wav(root / "bad.wav", np.zeros(0, np.float32), 16000)
    rows.append("bad.wav,zero length")
  elif problem == "nan":
    x = _tone(16000, 1.0)
    x[5] = np.nan
    write_wav(root / "bad.wav", x, 16000, subtype="FLOAT")
    rows.append("bad.wav,nan")
  elif problem == "missing":
    rows.append("bad.wav,missing")
  elif problem == "empty_caption":
    write_wav(root / "bad.wav", _tone(16000, 1.0), 16000)
    rows.append("bad.wav,   ")
  (root / "captions.csv").write_text("file,caption\n" + "\n".join(rows) + "\n")
  return root


@pytest.mark.parametrize(
  "problem,message",
  [
    ("corrupt", r"captions.csv line 4.*bad.wav.*cannot decode"),
    ("empty", r"captions.csv line 4.*bad.wav.*empty \(0 bytes\)"),
    ("zero_length", r"captions.csv line 4.*bad.wav.*zero samples"),
    ("nan", r"captions.csv line 4.*bad.wav.*NaN"),
    ("missing", r"captions.csv line 4.*'bad.wav' not found"),
    ("empty_caption", r"captions.csv line 4.*bad.wav.*empty caption"),
  ],
)
def test_bad_inputs_raise_or_skip(tmp_path, problem, message):
  root = _bad_folder(tmp_path, problem)
  data_dir = str(tmp_path / "data")
  with pytest.raises(schema.BadInputError, match=message):
    build.build_dataset(
      "captioned_folder/bad", data_dir, manual_dir=str(root), embedder=HashEmbedder()
    )
  assert not build.is_built("captioned_folder/bad", data_dir)
  info = build.build_dataset(
    "captioned_folder/bad", data_dir, manual_dir=str(root), skip_bad=True, embedder=HashEmbedder()
  )
  assert info["splits"] == {"train": 2}
  assert info["build"]["skipped"] == 1
  assert "line 4" in info["build"]["skipped_inputs"][0]


def test_csv_without_caption_column(tmp_path):
  root = tmp_path / "nocap"
  write_wav(root / "x.wav", _tone(16000, 1.0), 16000)
  (root / "captions.csv").write_text("file,description\nx.wav,hello\n")
  with pytest.raises(schema.BadInputError, match="captions.csv: no caption column"):
    build.build_dataset(
      "captioned_folder/x", str(tmp_path / "d"), manual_dir=str(root), embedder=HashEmbedder()
    )


def test_esc50_layout(tmp_path):
  root = tmp_path / "esc50"
  rows = ["filename,fold,target,category,esc10,src_file,take"]
  for i, (target, category) in enumerate(
    [(1, "rooster"), (0, "dog"), (1, "rooster"), (2, "chirping_birds")]
  ):
    write_wav(root / "audio" / f"{i}.wav", _tone(44100, 0.5, hz=200 + 100 * i), 44100)
    rows.append(f"{i}.wav,{i % 2 + 1},{target},{category},False,x,A")
  (root / "meta").mkdir()
  (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
  data_dir = str(tmp_path / "data")
  info = build.build_dataset(
    "labelled_folder/esc50", data_dir, manual_dir=str(root), embedder=HashEmbedder()
  )
  assert info["class_names"] == ["dog", "rooster", "chirping birds"]  # Ordered by target.
  recs = _records("labelled_folder/esc50", "train", data_dir)
  assert {k: (int(r["label"]), int(r["fold"])) for k, r in recs.items()} == {
    "audio/0": (1, 1),
    "audio/1": (0, 2),
    "audio/2": (1, 1),
    "audio/3": (2, 2),
  }
  assert [c.decode() for c in recs["audio/3"]["captions"]] == ["chirping birds"]
  assert recs["audio/0"]["audio"].size == 8000


def test_folder_per_class_layout(tmp_path):
  root = tmp_path / "classes"
  for name in ("cat", "dog"):
    for j in range(2):
      write_wav(root / name / f"{j}.wav", _tone(8000, 0.5), 8000)
  (root / "dog" / "notes.txt").write_text("not audio")
  data_dir = str(tmp_path / "data")
  info = build.build_dataset(
    "labelled_folder/pets", data_dir, manual_dir=str(root), embedder=HashEmbedder()
  )
  assert info["class_names"] == ["cat", "dog"] and info["splits"] == {"train": 4}
  recs = _records("labelled_folder/pets", "train", data_dir)
  assert {k: int(r["label"]) for k, r in recs.items()} == {
    "cat/0": 0,
    "cat/1": 0,
    "dog/0": 1,
    "dog/1": 1,
  }


def test_shared_dir_missing_skips_or_fails(tmp_path):
  env = {"JAXCLAP_SHARED_DIR": str(tmp_path / "nowhere")}
  with pytest.raises(pytest.skip.Exception, match="nowhere"):
    shared_berklee(env)
  with pytest.raises(pytest.fail.Exception, match="JAXCLAP_REQUIRE_SHARED=1"):
    shared_berklee({**env, "JAXCLAP_REQUIRE_SHARED": "1"})
  (tmp_path / "here" / "data" / "berklee").mkdir(parents=True)
  found = shared_berklee({"JAXCLAP_SHARED_DIR": str(tmp_path / "here")})
  assert found == tmp_path / "here" / "data" / "berklee"


def test_berklee_mp3s(tmp_path):
  berklee = shared_berklee(dict(os.environ))
  lines = (berklee / "captions.csv").read_text().splitlines()
  root = tmp_path / "berklee"
  root.mkdir()
  chosen = lines[1:6]
  for line in chosen:
    name = line.split(",")[0]
    (root / name).symlink_to(berklee / name)
  (root / "captions.csv").write_text("\n".join([lines[0], *chosen]) + "\n")
  data_dir = str(tmp_path / "data")
  info = build.build_dataset(
    "captioned_folder/berklee", data_dir, manual_dir=str(root), embedder=HashEmbedder()
  )
  assert info["splits"] == {"train": 5} and info["build"]["hours"] > 0
  for rec in _records("captioned_folder/berklee", "train", data_dir).values():
    assert rec["audio"].size > 1600 and np.abs(rec["audio"]).max() > 0


# ----------------------------------------------------------------------------- CLI


def _run_cli(args, tmp_path, block_torch=True):
  prelude = "import sys\n"
  if block_torch:  # The build path must not need PyTorch: make `import torch` fail.
    prelude += "sys.modules['torch'] = None\n"
  code = (
    prelude + "import runpy\nsys.argv = ['build'] + sys.argv[1:]\n"
    "runpy.run_module('jaxclap.data.build', run_name='__main__')\n"
  )
  env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
  return subprocess.run(
    [sys.executable, "-c", code, *args],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    cwd=tmp_path,
  )


@pytest.mark.slow
def test_cli_builds_demo_without_torch(tmp_path):
  data_dir = tmp_path / "data"
  result = _run_cli(
    [f"--data_dir={data_dir}", "--num_clips=30", f"--text_model={TEXT_MODEL}"], tmp_path
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "clips          30" in result.stdout and "dim 384" in result.stdout
  info = build.dataset_info(build.DEMO, str(data_dir))
  assert info["embedding_dim"] == 384 and sum(info["splits"].values()) == 30


def test_cli_fails_with_nonzero_exit(tmp_path):
  result = _run_cli(
    [
      "--dataset=captioned_folder/x",
      f"--data_dir={tmp_path}",
      f"--manual_dir={tmp_path / 'absent'}",
    ],
    tmp_path,
    block_torch=False,
  )
  assert result.returncode != 0
  assert "absent" in result.stderr and "not a folder" in result.stderr
