"""HEAR 2021 API: attributes, shapes, timestamps in milliseconds, framework inputs."""

from __future__ import annotations

import numpy as np
import pytest

from jaxclap import hear


@pytest.fixture(scope="module")
def model(stage1_workdir):
  return hear.load_model(stage1_workdir, batch_size=4)


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
  with pytest.raises(ValueError, match=r"\[n_sounds, n_samples\]"):
    hear.get_scene_embeddings(np.zeros(16000, np.float32), model)
