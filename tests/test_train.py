"""Stage-1 training end to end: resume after SIGKILL/SIGTERM, NaN stop, config errors."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import small_config

from jaxclap.train import loop

REPO = Path(__file__).resolve().parents[1]
# A few-second model: 64-frame crops, 2-block width-64 encoder, 1-block predictor.
SMALL = [
  "--config.model.size=test",
  "--config.model.predictor_width=32",
  "--config.model.predictor_depth=1",
  "--config.model.predictor_heads=2",
  "--config.model.clap_dim=32",
  "--config.data.crop_frames=64",
  "--config.train.global_batch=8",
  "--config.frontend.norm_stats_crops=64",
  "--config.data.build_demo=False",
  "--config.train.val_every=0",
  "--config.train.log_every=1",
  "--config.optim.warmup_epochs=1",
]


@pytest.fixture(scope="module")
def data_dir(demo_data_dir):
  return demo_data_dir


def _cmd(workdir, data_dir, *extra):
  return [
    sys.executable,
    "-m",
    "jaxclap.main",
    "--config=configs/demo.py:stage1",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    *SMALL,
    *extra,
  ]


def _run(workdir, data_dir, *extra, check=True):
  proc = subprocess.run(
    _cmd(workdir, data_dir, *extra), cwd=REPO, capture_output=True, text=True, timeout=600
  )
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _steps(workdir) -> list[int]:
  """Committed checkpoint steps (Orbax's temporary folders are not digits)."""
  d = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _state(workdir, step):
  return ocp.StandardCheckpointer().restore(Path(workdir) / "checkpoints" / str(step) / "state")


def _assert_trees_equal(a, b):
  import jax

  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 10
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _summary(workdir):
  return json.loads((Path(workdir) / "summary.json").read_text())


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(data_dir, tmp_path):
  steps = ["--config.train.num_steps=10", "--config.train.checkpoint_every=1"]
  ref = tmp_path / "ref"
  ref_log = open(tmp_path / "ref.log", "w")  # A file: a full pipe would block the run.
  reference = subprocess.Popen(  # The same run uninterrupted, beside the killed one.
    _cmd(ref, data_dir, *steps), cwd=REPO, stdout=ref_log, stderr=subprocess.STDOUT
  )
  killed = tmp_path / "killed"
  proc = subprocess.Popen(
    _cmd(killed, data_dir, *steps), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 300
  in_flight = []
  while time.time() < deadline and proc.poll() is None:
    # Kill while a save is being written (Orbax's temporary folder exists) after step 3.
    in_flight = [p.name for p in (killed / "checkpoints").glob("*.orbax-checkpoint-tmp*")]
    if in_flight and any(s >= 3 for s in _steps(killed)):
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  before = _steps(killed)
  assert before and max(before) < 10
  # A save cut short by the kill leaves only its temporary folder: never a "latest" step.
  for leftover in (killed / "checkpoints").glob("*.orbax-checkpoint-tmp*"):
    assert int(leftover.name.split(".")[0]) not in before
  _run(killed, data_dir, *steps)
  assert _summary(killed)["start_step"] == max(before)
  assert reference.wait(timeout=600) == 0, (tmp_path / "ref.log").read_text()[-3000:]
  ref_log.close()
  _assert_trees_equal(_state(ref, 10), _state(killed, 10))


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero_then_resumes(data_dir, tmp_path):
  steps = ["--config.train.num_steps=400", "--config.train.checkpoint_every=1000"]
  log = tmp_path / "out.txt"
  with open(log, "w") as out:
    proc = subprocess.Popen(
      _cmd(tmp_path, data_dir, *steps), cwd=REPO, stdout=out, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 300
    while time.time() < deadline and "step 6/400" not in log.read_text():
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
  text = log.read_text()
  assert "SIGTERM: saved step" in text
  saved = _steps(tmp_path)
  assert len(saved) == 1 and 6 <= saved[0] < 400
  _run(tmp_path, data_dir, *steps, f"--config.train.stop_after={saved[0] + 2}")
  summary = _summary(tmp_path)
  assert summary["start_step"] == saved[0] and summary["end_step"] == saved[0] + 2


@pytest.mark.slow
def test_nan_stops_with_clear_error_and_keeps_last_good(data_dir, tmp_path):
  proc = _run(
    tmp_path,
    data_dir,
    "--config.train.num_steps=12",
    "--config.train.checkpoint_every=4",
    "--config.debug.nan_at_step=6",
    "--config.train.async_checkpoint=False",
    check=False,
  )
  assert proc.returncode == 2
  assert "Non-finite loss or gradient at step 6" in proc.stderr
  assert _steps(tmp_path) == [4]
  state = _state(tmp_path, 4)
  assert int(state["step"]) == 4 and int(state["bad_step"]) == -1
  assert all(
    np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(state["params"])
  )


def test_unknown_config_key_is_named(data_dir, tmp_path):
  proc = _run(tmp_path, data_dir, "--config.model.sizee=base", check=False)
  assert proc.returncode != 0
  assert "sizee" in proc.stderr


@pytest.mark.parametrize(
  "override,named",
  [
    ("--config.model.mask_ratio=1.5", "model.mask_ratio"),
    ("--config.model.size=huge", "model.size"),
    ("--config.train.global_batch=1", "train.global_batch"),
    ("--config.data.train=jaxclap_demo", "jaxclap_demo"),
    ("--config.model.text_dim=512", "text_dim"),
  ],
)
def test_bad_config_value_is_named(data_dir, tmp_path, override, named):
  proc = _run(tmp_path, data_dir, override, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and named in last


@pytest.mark.slow
def test_resume_with_changed_model_is_refused(data_dir, tmp_path):
  _run(tmp_path, data_dir, "--config.train.num_steps=2")
  proc = _run(
    tmp_path, data_dir, "--config.train.num_steps=2", "--config.model.clap_dim=48", check=False
  )
  assert proc.returncode == 2
  assert "Refusing to resume" in proc.stderr and "model.clap_dim" in proc.stderr


def test_dataset_at_another_sample_rate_is_refused(data_dir, tmp_path):
  """16 kHz records read by a 32 kHz front end would play an octave up: refused, named."""
  config = small_config("stage1", data_dir)
  config.frontend.sample_rate = 32000
  with pytest.raises(ValueError, match=r"'jaxclap_demo' .* stored at 16000 Hz .* reads 32000 Hz"):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()  # Refused before anything was written.
