"""Inference API: equality with the features module, batch independence, resampling,
input checks, text / zero-shot and bounded memory on 20-minute input."""

from __future__ import annotations

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soxr
from conftest import write_wav

from jaxclap import inference, layers
from jaxclap.audio import frontend as fe
from jaxclap.audio import io as audio_io
from jaxclap.models import clap_heads, features, patches


@pytest.fixture(scope="module")
def models(stage1_workdir, stage2_workdir):
  """Stage-1 and stage-2 fixtures loaded once, batch 4 so batches really mix clips."""
  return {
    "stage1": inference.load(stage1_workdir, batch_size=4),
    "stage2": inference.load(stage2_workdir, batch_size=4),
  }


@pytest.fixture(scope="module")
def demo_audio(demo_data_dir) -> list[np.ndarray]:
  """Six demo test clips as float32 16 kHz waveforms."""
  from jaxclap.data import pipeline

  source = pipeline.open_source("jaxclap_demo", "test", demo_data_dir)
  return [audio_io.pcm16_to_float(np.asarray(source[i]["audio"])) for i in range(6)]


def _log_mel(model: inference.Model, wave: np.ndarray) -> jax.Array:
  lm = fe.log_mel(wave[None], None, model.frontend_cfg)
  return fe.normalize(lm, *model.norm_stats)


def test_attributes(models):
  m1, m2 = models["stage1"], models["stage2"]
  assert (m1.stage, m2.stage) == ("stage1", "stage2")
  assert m1.sample_rate == m2.sample_rate == 16000
  assert m1.feature_dim == m2.feature_dim == 5 * 64  # F' = 80 / 16 frequency patches × D.
  assert m1.embedding_dim == m2.embedding_dim == 64
  assert m1.frame_hop_s == pytest.approx(0.16)
  assert m1.step == 3 and m2.step == 2
  assert m1.unit_frames == 64


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_matches_features_module_on_chunked_input(models, demo_audio, stage):
  """Chunked long input: same frames/CLAP embedding as features.py on the whole log-mel."""
  m = models[stage]
  wave = np.concatenate(demo_audio[:2])  # Longer than the 64-frame trained length.
  lm = _log_mel(m, wave)
  assert lm.shape[-1] > 3 * m.unit_frames
  frames = m.frame_features(wave, sample_rate=16000)
  want = np.asarray(features.frame_features(m.params, lm, model=m.model))
  assert frames.shape == want.shape
  np.testing.assert_allclose(frames, want, atol=1e-5)
  np.testing.assert_allclose(m.clip_features(wave, sample_rate=16000), want.mean(axis=1), atol=1e-5)
  emb = m.audio_embedding(wave, sample_rate=16000)
  want_emb = np.asarray(features.clap_audio_embedding(m.params, lm, model=m.model))
  np.testing.assert_allclose(emb, want_emb, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
  # The public pooling of given frames (what the search index uses per chunk) is the same.
  np.testing.assert_allclose(m.clap_from_frames(frames[0]), emb[0], atol=1e-5)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_pooler_matches_head_with_padding(models, stage):
  """Inference's pooling equals the module's audio head; padded tokens change nothing."""
  m = models[stage]
  tokens = jax.random.normal(jax.random.key(0), (2, 30, m.token_dim))
  want = m.model.apply({"params": m.params}, tokens, method="project_audio")
  padded = np.concatenate([np.asarray(tokens), np.full((2, 10, m.token_dim), 7.0)], axis=1)
  valid = np.arange(40)[None].repeat(2, 0) < 30
  got = inference._pool(m.params, padded, valid, model=m.model)
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("kind", ["semantic", "mlp"])
def test_audio_head_key_mask_and_single_query_block(kind):
  """Heads with a key mask ignore padding; the pooler's O(N) block equals a full block."""
  head = clap_heads.audio_head(kind, 24, jnp.float32)
  tokens = jax.random.normal(jax.random.key(1), (2, 30, 16))
  params = nn.unbox(head.init(jax.random.key(2), tokens))["params"]
  params = jax.tree.map(
    lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params
  )  # Non-zero semantic token and biases.
  want = head.apply({"params": params}, tokens)
  padded = jnp.concatenate([tokens, jnp.full((2, 10, 16), 7.0)], axis=1)
  valid = jnp.arange(40)[None].repeat(2, 0) < 30
  np.testing.assert_allclose(head.apply({"params": params}, padded, valid), want, atol=1e-5)
  if kind == "semantic":  # The old form: every token through the whole block, then row 0.
    x = jnp.concatenate([jnp.broadcast_to(params["sem_token"], (2, 1, 16)), tokens], axis=1)
    x = layers.Block(1, 1.0, 1e-5).apply({"params": params["sem_block_0"]}, x)[:, 0]
    x = nn.LayerNorm(1e-5).apply({"params": params["norm"]}, x)
    full = nn.Dense(24).apply({"params": params["out_proj"]}, x)
    np.testing.assert_allclose(want, full, atol=1e-5)


@pytest.mark.slow
def test_model_without_checkpoint_mlp_head_and_bfloat16():
  """A Model from a bare network (as the benchmark builds it): 2024 mean-MLP head, bf16."""
  from jaxclap.models import m2d

  net = m2d.build_model(
    {
      "size": "test",
      "text_dim": 16,
      "clap_head": "mlp",
      "clap_dim": 32,
      "input_frames": 64,
      "predictor_width": 32,
      "predictor_depth": 1,
      "predictor_heads": 2,
    }
  )
  params, _ = nn.unbox(m2d.init_params(net, jax.random.key(0), n_frames=64, text_dim=16))
  m = inference.Model(net, params, frontend_cfg=fe.FrontendConfig(), norm_stats=(-7.1, 4.2))
  assert (m.embedding_dim, m.feature_dim, m.stage) == (32, 320, "stage1")
  wave = 0.1 * np.random.default_rng(0).standard_normal(23456, dtype=np.float32)
  want = np.asarray(features.clap_audio_embedding(params, _log_mel(m, wave), model=net))
  np.testing.assert_allclose(m.audio_embedding(wave, sample_rate=16000), want, atol=1e-5)
  with pytest.raises(ValueError, match="no text side"):
    m.text_embedding(["a dog"])
  half = inference.Model(
    net, params, frontend_cfg=fe.FrontendConfig(), norm_stats=(-7.1, 4.2), dtype="bfloat16"
  )
  a = m.clip_features(wave, sample_rate=16000)[0]
  b = half.clip_features(wave, sample_rate=16000)[0]
  assert b.dtype == np.float32 and _cosine(a, b) > 0.99


def test_segmented_log_mel_matches_whole_clip(models):
  m = models["stage1"]
  seg = inference.SegmentedLogMel(m.frontend_cfg, m.norm_stats, segment_frames=40)
  rng = np.random.default_rng(0)
  for n in (1, 150, 201, 6399, 6400, 16000, 48123):  # Shorter than the pad, segment edges.
    wave = (0.1 * rng.standard_normal(n)).astype(np.float32)
    want = np.asarray(_log_mel(m, wave))[0]
    got = seg(wave)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{n} samples")


def test_time_chunks_match_official_split():
  rng = np.random.default_rng(0)
  for t in (1, 15, 16, 63, 64, 65, 200, 256):
    lm = rng.standard_normal((80, t)).astype(np.float32)
    want = patches.split_time_chunks(lm[None], 64, 16)
    got = inference.time_chunks(lm, 64, 16)
    assert [c.shape[-1] for c in got] == [c.shape[-1] for c in want]
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, np.asarray(b)[0])


@pytest.mark.parametrize("kind", ["frame", "clip", "clap"])
def test_deterministic_and_batch_independent(models, demo_audio, kind):
  """A clip alone, twice, in a mixed-length list and in a stacked batch: same output."""
  m = models["stage2"] if kind == "clap" else models["stage1"]
  method = {"frame": m.frame_features, "clip": m.clip_features, "clap": m.audio_embedding}[kind]
  clips = [
    demo_audio[0],
    demo_audio[1][:5000],
    np.concatenate(demo_audio[2:4]),
    demo_audio[4][:700],
    demo_audio[5],
  ]
  alone = [method([c], sample_rate=16000)[0] for c in clips]
  again = method([clips[0]], sample_rate=16000)[0]
  np.testing.assert_array_equal(alone[0], again)
  mixed = method(clips, sample_rate=16000)
  for a, b in zip(alone, mixed):
    np.testing.assert_allclose(a, b, atol=1e-5)
  n = min(len(c) for c in demo_audio)
  stacked = method(np.stack([c[:n] for c in demo_audio]), sample_rate=16000)
  for i in (0, 5):
    np.testing.assert_allclose(
      stacked[i], method(demo_audio[i][:n], sample_rate=16000)[0], atol=1e-5
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
  a, b = a.ravel(), b.ravel()
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_resampled_inputs_give_close_features(models, demo_audio):
  """44.1 kHz and 8 kHz copies of 16 kHz clips land near the original clip features.

  Measured on the stage-1 fixture (cosine to the original's clip features): 44.1 kHz
  0.9987-1.0000; 8 kHz 0.65-1.0 (clips with content above 4 kHz lose it: 0.65, 0.95),
  while two different clips range from -0.61 to 0.87. So 44.1 kHz must stay > 0.995 and
  every 8 kHz copy must still be closer to its own original than to any other clip.
  """
  m = models["stage1"]
  orig = m.clip_features(demo_audio, sample_rate=16000)
  up = m.clip_features([soxr.resample(x, 16000, 44100) for x in demo_audio], sample_rate=44100)
  down = m.clip_features([soxr.resample(x, 16000, 8000) for x in demo_audio], sample_rate=8000)
  for i in range(len(demo_audio)):
    assert _cosine(up[i], orig[i]) > 0.995
    to_orig = [_cosine(down[i], o) for o in orig]
    assert to_orig[i] > 0.6 and int(np.argmax(to_orig)) == i, to_orig
  assert np.mean([_cosine(d, o) for d, o in zip(down, orig)]) > 0.9


def test_file_paths_equal_arrays(models, demo_audio, tmp_path):
  m = models["stage1"]
  wave44 = soxr.resample(demo_audio[0], 16000, 44100)
  path = write_wav(tmp_path / "a.wav", wave44, 44100, subtype="FLOAT")
  stereo = write_wav(
    tmp_path / "b.wav", np.stack([demo_audio[1]] * 2, axis=1), 16000, subtype="FLOAT"
  )
  got = m.clip_features([str(path), stereo])
  np.testing.assert_allclose(got[0], m.clip_features(wave44, sample_rate=44100)[0], atol=1e-5)
  np.testing.assert_allclose(
    got[1], m.clip_features(demo_audio[1], sample_rate=16000)[0], atol=1e-5
  )
  np.testing.assert_allclose(m.clip_features(str(path)), got[:1], atol=1e-6)


def test_decoding_files_shows_progress(tmp_path, capsys, monkeypatch):
  """Files get a decode bar on stderr when asked, or by default from _PROGRESS_MIN_CLIPS files."""
  paths = [write_wav(tmp_path / f"{i}.wav", np.zeros(800), 16000) for i in range(3)]
  waves, _ = inference.prepare_audio(paths, None, 16000, progress=True)
  assert len(waves) == 3 and "3/3" in capsys.readouterr().err
  inference.prepare_audio(paths, None, 16000)  # 3 files, below the default threshold.
  assert "decode" not in capsys.readouterr().err
  monkeypatch.setattr(inference, "_PROGRESS_MIN_CLIPS", 3)
  inference.prepare_audio(paths, None, 16000)
  assert "3/3" in capsys.readouterr().err
  inference.prepare_audio(paths, None, 16000, progress=False)
  assert "decode" not in capsys.readouterr().err


def test_timestamps_and_list_outputs(models, demo_audio):
  m = models["stage1"]
  clips = [demo_audio[0], demo_audio[1][:8000]]
  feats, times = m.frame_features(clips, sample_rate=16000, return_timestamps=True)
  assert isinstance(feats, list) and [f.shape[1] for f in feats] == [320, 320]
  assert feats[1].shape[0] == -(-(1 + 8000 // 160) // 16)  # 51 frames → 4 patch columns.
  assert [len(t) for t in times] == [len(f) for f in feats]
  np.testing.assert_allclose(np.diff(times[0]), 0.16, atol=1e-9)
  assert times[0][0] == pytest.approx(7.5 * 0.01)  # Mean centre of log-mel frames 0..15.
  stacked, ts = m.frame_features(
    np.stack([clips[0]] * 2), sample_rate=16000, return_timestamps=True
  )
  assert stacked.shape == (2, len(times[0]), 320) and ts.shape == (2, len(times[0]))


def test_input_errors_are_clear(models, tmp_path):
  m = models["stage1"]
  x = np.zeros(1600, np.float32)
  with pytest.raises(ValueError, match="sample_rate= is required"):
    m.clip_features(x)
  for bad in (0, -16000, 16000.5):
    with pytest.raises(ValueError, match="positive integer"):
      m.clip_features(x, sample_rate=bad)
  with pytest.raises(ValueError, match="dtype int16"):
    m.clip_features(np.zeros(1600, np.int16), sample_rate=16000)
  with pytest.raises(ValueError, match=r"\[samples\] or \[clips, samples\]"):
    m.clip_features(np.zeros((1, 2, 1600), np.float32), sample_rate=16000)
  with pytest.raises(ValueError, match="no clips"):
    m.clip_features([], sample_rate=16000)
  with pytest.raises(audio_io.AudioDecodeError, match="audio clip 1: .*NaN"):
    m.clip_features([x, np.full(100, np.nan, np.float32)], sample_rate=16000)
  bad = tmp_path / "bad.wav"
  bad.write_bytes(b"RIFF not really a wav file")
  with pytest.raises(audio_io.AudioDecodeError, match="bad.wav"):
    m.clip_features([str(bad)])
  with pytest.raises(ValueError, match="dtype must be"):
    inference.Model(
      m.model, m.params, frontend_cfg=m.frontend_cfg, norm_stats=(0, 1), dtype="float16"
    )


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_text_embedding_and_zero_shot(models, demo_audio, stage):
  m = models[stage]
  texts = ["a dog barks", "rain on a roof", "a bell rings", "an engine idles", "birds sing"]
  text = m.text_embedding(texts)
  assert text.shape == (5, 64)
  np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(m.text_embedding(texts[3:4])[0], text[3], atol=1e-5)
  labels = ["dog", "rain", "bell"]
  probs, sim = m.zero_shot(demo_audio[:4], labels, sample_rate=16000, return_similarity=True)
  assert probs.shape == sim.shape == (4, 3)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
  assert np.all(np.abs(sim) <= 1.0 + 1e-5)
  want = m.similarity(
    m.audio_embedding(demo_audio[:4], sample_rate=16000),
    m.text_embedding([f"{x} can be heard" for x in labels]),
  )
  np.testing.assert_allclose(sim, want, atol=1e-5)
  z = m.logit_scale * want
  np.testing.assert_allclose(probs, np.exp(z) / np.exp(z).sum(1, keepdims=True), atol=1e-5)
  with pytest.raises(ValueError, match="no '{}'"):
    m.zero_shot(demo_audio[:1], labels, template="sound of", sample_rate=16000)


_MEMORY_SCRIPT = """
import json, resource, sys
import numpy as np
from jaxclap import inference, layers
m = inference.load(sys.argv[1], progress=False)
x = 0.1 * np.random.default_rng(0).standard_normal(int(float(sys.argv[2]) * 60 * 16000),
                                                  dtype=np.float32)
frames = m.frame_features(x, sample_rate=16000)
emb = m.audio_embedding(x, sample_rate=16000)
print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "frames": list(frames.shape), "finite": bool(np.isfinite(emb).all())}))
"""


def _peak_memory(workdir: str, minutes: float) -> dict:
  out = subprocess.run(
    [sys.executable, "-c", _MEMORY_SCRIPT, workdir, str(minutes)],
    capture_output=True,
    text=True,
    timeout=600,
    check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_twenty_minutes_bounded_memory(stage1_workdir):
  """Peak RSS of 20 minutes (frames + CLAP embedding) < 2× that of 1 minute."""
  one = _peak_memory(stage1_workdir, 1)
  twenty = _peak_memory(stage1_workdir, 20)
  assert twenty["frames"] == [1, -(-(1 + 20 * 60 * 100) // 16), 320]
  assert one["finite"] and twenty["finite"]
  assert twenty["rss_kb"] < 2 * one["rss_kb"], (one, twenty)
