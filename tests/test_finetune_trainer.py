"""Stage 1.1 on the one trainer: `python -m jaxclap.main --config=configs/finetune.py` resumes
bit-exactly after kill -9 and SIGTERM, and runs sharded on 8 devices and in 2 processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import xla_flags

from jaxclap.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
# 64-clip demo set, batch 8: 6 steps an epoch, 2 epochs; a checkpoint after every step.
SMALL = [
  "--config.finetune.batch=8",
  "--config.finetune.epochs=2",
  "--config.finetune.warmup_epochs=0.5",
  "--config.finetune.eval_batch=8",
  "--config.finetune.lr=0.05",
  "--config.train.log_every=1",
  "--config.train.checkpoint_every=1",
]
# 2 processes: their collectives are not reloaded from the session's compilation cache
# (see tests/test_multihost.py).
_NO_JIT_CACHE = {"JAX_COMPILATION_CACHE_DIR": ""}


def _cmd(workdir, stage1, data_dir, *extra):
  return [
    sys.executable,
    "-m",
    "jaxclap.main",
    "--config=configs/finetune.py",
    f"--workdir={workdir}",
    f"--config.init.workdir={stage1}",
    f"--config.data.data_dir={data_dir}",
    *SMALL,
    *extra,
  ]


def _start(cmd, log: Path, devices: int = 1, env_extra=None) -> subprocess.Popen:
  env = dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu", **(env_extra or {}))
  out = open(log, "a")  # A file: a full pipe would block the run.
  return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)


def _finish(proc: subprocess.Popen, log: Path) -> None:
  assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]


def _steps(workdir: Path) -> list[int]:
  d = workdir / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _result(workdir: Path) -> dict:
  return json.loads((workdir / "finetune.json").read_text())


def _export(workdir: Path) -> dict:
  saved = ckpt.load(str(workdir))
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
    for path, v in jax.tree_util.tree_flatten_with_path(saved.state)[0]
  }


@pytest.fixture(scope="module")
def reference(stage1_workdir, demo_data_dir, tmp_path_factory) -> Path:
  """The run uninterrupted, on 1 device."""
  workdir = tmp_path_factory.mktemp("ft_reference")
  log = workdir.parent / "ft_reference.log"
  _finish(_start(_cmd(workdir, stage1_workdir, demo_data_dir), log), log)
  return workdir


@pytest.mark.slow
def test_kill_and_sigterm_resume_bit_exactly(reference, stage1_workdir, demo_data_dir, tmp_path):
  """kill -9 during a save, and SIGTERM (which saves first), then the same command: both
  end with the reference's best epoch, scores and history, bit for bit."""
  killed, termed = tmp_path / "killed", tmp_path / "termed"
  k_log, t_log = tmp_path / "killed.log", tmp_path / "termed.log"
  slow = ["--config.debug.step_sleep_s=0.3"]  # Stays in flight long enough to be stopped.
  kp = _start(_cmd(killed, stage1_workdir, demo_data_dir), k_log)
  tp = _start(_cmd(termed, stage1_workdir, demo_data_dir, *slow), t_log)
  deadline = time.time() + 300
  while time.time() < deadline and kp.poll() is None:
    in_flight = list((killed / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    if in_flight and any(s >= 3 for s in _steps(killed)):
      break
    time.sleep(0.01)
  kp.send_signal(signal.SIGKILL)
  assert kp.wait() == -signal.SIGKILL
  before = _steps(killed)
  assert before and max(before) < 12 and not (killed / "finetune.json").exists()
  while time.time() < deadline and "step 7/12" not in t_log.read_text():
    time.sleep(0.05)
  tp.send_signal(signal.SIGTERM)
  assert tp.wait(timeout=120) == 0, t_log.read_text()[-3000:]
  assert "SIGTERM: saved step" in t_log.read_text()
  termed_at = max(_steps(termed))
  assert 7 <= termed_at < 12 and not (termed / "finetune.json").exists()
  for workdir, log in ((killed, k_log), (termed, t_log)):
    _finish(_start(_cmd(workdir, stage1_workdir, demo_data_dir), log), log)
  want, want_params = _result(reference), _export(reference)
  for workdir, resumed_at in ((killed, max(before)), (termed, termed_at)):
    got = _result(workdir)
    for key in ("val", "test", "best_epoch", "best_step", "history", "steps"):
      assert got[key] == want[key], (workdir.name, key)
    params = _export(workdir)
    assert params.keys() == want_params.keys()
    for k, v in want_params.items():
      np.testing.assert_array_equal(params[k], v, err_msg=f"{workdir.name}: {k}")
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["start_step"] == resumed_at
  # The best epoch's encoder was trained, and its export is the run's last step.
  assert _steps(reference) == [12] and want["best_step"] in (6, 12)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_eight_devices_and_two_processes_match_one_device(
  reference, stage1_workdir, demo_data_dir, tmp_path
):
  """The same fine-tune on 8 devices (data 4 × fsdp 2): the same steps, validation scores
  and best epoch as on 1 device, losses within 1e-4 and parameters within 2e-4 (sums over
  other device splits round differently); and as 2 processes × 4 devices, to the end."""
  eight, two = tmp_path / "eight", tmp_path / "two"
  mesh = ["--config.mesh.fsdp=2"]
  port = _free_port()
  procs = [(_start(_cmd(eight, stage1_workdir, demo_data_dir, *mesh), tmp_path / "8.log", 8),)]
  layout = ["--distributed", f"--coordinator_address=localhost:{port}", "--num_processes=2"]
  for pid in range(2):
    cmd = _cmd(two, stage1_workdir, demo_data_dir, *mesh, *layout, f"--process_id={pid}")
    procs.append((_start(cmd, tmp_path / f"p{pid}.log", 4, _NO_JIT_CACHE),))
  for (p,), log in zip(procs, [tmp_path / "8.log", tmp_path / "p0.log", tmp_path / "p1.log"]):
    _finish(p, log)
  want, want_params = _result(reference), _export(reference)
  got = _result(eight)
  assert (got["steps"], got["epochs"], got["best_epoch"]) == (
    want["steps"],
    want["epochs"],
    want["best_epoch"],
  )
  assert [h["val"] for h in got["history"]] == [h["val"] for h in want["history"]]
  np.testing.assert_allclose(
    [h["loss"] for h in got["history"]], [h["loss"] for h in want["history"]], rtol=1e-4
  )
  params = _export(eight)
  assert params.keys() == want_params.keys()
  for k, v in want_params.items():
    if v.dtype.kind == "f":
      np.testing.assert_allclose(params[k], v, rtol=2e-4, atol=2e-4, err_msg=k)
  # Two processes read the same records, but a global batch is laid out process by process
  # (rows 0, 2, 4, 6 then 1, 3, 5, 7), so mixup partners and masks pair other rows: the
  # same run shape, not the same numbers.
  got = _result(two)
  assert (got["steps"], got["epochs"], len(got["history"])) == (12, 2, 2)
  assert all(np.isfinite(h["loss"]) for h in got["history"]) and 0 <= got["test"] <= 1
  assert _export(two).keys() == want_params.keys()
