"""launch/slurm.sh under a real SLURM (munged, slurmctld, slurmd started by the test).

SLURM itself starts the tasks, sets the environment `jax.distributed.initialize()` reads,
sends the time limit's SIGTERM and runs the batch script's requeue. The cluster holds a
requeued job 11 s (`cred_expire`, 120 s by default), and the test gives the requeued job a
longer limit, as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
import slurm_cluster
from conftest import xla_flags

from jaxclap import restore

REPO = Path(__file__).resolve().parents[1]
TINY = [
  "--config.model.size=test",
  "--config.model.predictor_width=32",
  "--config.model.predictor_depth=1",
  "--config.model.predictor_heads=2",
  "--config.model.clap_dim=32",
  "--config.data.crop_frames=64",
  "--config.frontend.norm_stats_crops=32",
  "--config.data.build_demo=False",
  "--config.train.val_every=0",
  "--config.train.log_every=1",
  "--config.train.checkpoint_every=1000",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  """A one-node cluster for this module's tests; its daemons stop even if a test fails."""
  missing = slurm_cluster.missing()
  reason = None
  if missing:
    reason = f"SLURM not installed ({', '.join(missing)}): apt-get install " + " ".join(
      slurm_cluster.PACKAGES
    )
  elif os.geteuid() != 0:
    reason = "the test cluster runs its daemons as root"
  if reason:
    if os.environ.get("CI"):
      pytest.fail(reason + " (.ci/run installs SLURM; CI must not skip these tests)")
    pytest.skip(reason)
  c = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm"))
  try:
    c.start()
    print(f"SLURM cluster up in {c.started_s:.1f} s")
    yield c
  finally:
    c.stop()


def _submit(cluster, tmp: Path, workdir: Path, data_dir: str, *args: str, env=None) -> str:
  """launch/slurm.sh (no --dry-run) on a tiny stage-1 config; the job id."""
  settings = dict(
    WORKDIR=str(workdir),
    DATA_DIR=data_dir,
    CONFIG="configs/demo.py:stage1",
    GPUS_PER_NODE="0",
    CPUS_PER_TASK="1",
    VENV=sys.prefix,
    REPO_DIR=str(REPO),
    SBATCH_FILE=str(tmp / "job.sbatch"),
    JAX_PLATFORMS="cpu",
  )
  proc = subprocess.run(
    ["bash", str(REPO / "launch" / "slurm.sh"), *args],
    env={**cluster.env, **settings, **(env or {})},
    cwd=tmp,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 0, proc.stderr + proc.stdout
  (job_id,) = re.findall(r"Submitted batch job (\d+)", proc.stdout)
  return job_id


def _output(tmp: Path, job_id: str) -> str:
  f = tmp / f"jaxclap-{job_id}.out"
  return f.read_text() if f.exists() else ""


def _steps(workdir: Path) -> list[int]:
  d = workdir / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _params(workdir: Path, step: int):
  return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def test_two_tasks_train_as_one_jax_job(cluster, demo_data_dir, tmp_path):
  """2 tasks on the node: one JAX job found from SLURM's environment, written once."""
  workdir = tmp_path / "run"
  job = _submit(
    cluster,
    tmp_path,
    workdir,
    demo_data_dir,
    "--ntasks-per-node=2",
    "--time=10",
    "--config.train.global_batch=16",
    "--config.train.num_steps=3",
    *TINY,
    # Multi-process (gloo) runs skip the compilation cache (see test_multihost.py).
    env={"JAX_COMPILATION_CACHE_DIR": "", "XLA_FLAGS": xla_flags(4)},
  )
  record = cluster.wait(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=400)
  out = _output(tmp_path, job)
  assert record["JobState"] == "COMPLETED", out[-3000:]
  assert record["Restarts"] == "0" and record["NumTasks"] == "2"
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["end_step"] == 3 and summary["preempted"] is False
  assert _steps(workdir) == [3]  # One checkpoint, saved once by the two processes.
  data = sorted(p.name for p in (workdir / "checkpoints" / "3" / "data").glob("*.json"))
  assert data == ["process_0-of-2.json", "process_1-of-2.json"]
  assert out.count("summary.json") <= 1  # Only process 0 reports.


def test_time_limit_sigterm_saves_requeues_and_finishes_bit_exact(cluster, demo_data_dir, tmp_path):
  """Job 1 gets the limit's SIGTERM, saves, requeues itself; job 2 resumes and finishes."""
  steps = 40
  run = ["--config.train.global_batch=8", f"--config.train.num_steps={steps}"]
  ref = tmp_path / "ref"
  reference = subprocess.Popen(  # The same run, uninterrupted and outside SLURM.
    [
      sys.executable,
      "-m",
      "jaxclap.main",
      "--config=configs/demo.py:stage1",
      f"--workdir={ref}",
      f"--config.data.data_dir={demo_data_dir}",
      *TINY,
      *run,
    ],
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  workdir = tmp_path / "run"
  # 1 min limit, SIGTERM when 20 s are left: slurmctld checks limits every 30 s and
  # signals up to one period early, so it comes 10-40 s in (after jax.distributed has
  # started), while a step every second keeps this run going for 40 s past its start-up.
  job = _submit(
    cluster,
    tmp_path,
    workdir,
    demo_data_dir,
    "--time=1",
    "--signal-lead=20",
    *run,
    "--config.debug.step_sleep_s=1.0",
    *TINY,
  )
  deadline = time.monotonic() + 300
  record = cluster.job(job)
  # Poll on the restart count, not on a list of live states: between RUNNING and the
  # requeued PENDING the job passes through transient states (SIGNALING while the
  # limit's signal is delivered, COMPLETING, REQUEUED), any of which a poll may see.
  while record["Restarts"] == "0" and record["JobState"] not in slurm_cluster.ENDED:
    assert time.monotonic() < deadline, record
    time.sleep(0.5)
    record = cluster.job(job)
  out = _output(tmp_path, job)
  assert record["Restarts"] == "1", (record, out[-3000:])
  assert record["JobState"] not in slurm_cluster.ENDED, (record, out[-3000:])
  assert "SIGTERM: saved step" in out, out[-3000:]
  (saved,) = _steps(workdir)
  assert 0 < saved < steps
  # Room to finish for the requeued job (it starts again once cred_expire has passed).
  cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=10")
  record = cluster.wait(job, ("COMPLETED", "FAILED", "TIMEOUT"), timeout=300)
  out = _output(tmp_path, job)
  assert record["JobState"] == "COMPLETED", out[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["start_step"] == saved and summary["end_step"] == steps
  assert summary["preempted"] is False
  _, err = reference.communicate(timeout=300)
  assert reference.returncode == 0, err[-3000:]
  a, b = _params(ref, steps), _params(workdir, steps)
  import jax

  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 10
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_scancel_leaves_last_checkpoint_loadable(cluster, demo_data_dir, tmp_path):
  """scancel mid-run: the job ends CANCELLED (not requeued); the last commit restores."""
  workdir = tmp_path / "run"
  job = _submit(
    cluster,
    tmp_path,
    workdir,
    demo_data_dir,
    "--time=10",
    "--config.train.global_batch=8",
    "--config.train.num_steps=1000",
    "--config.debug.step_sleep_s=0.2",
    *TINY,
    "--config.train.checkpoint_every=2",
  )
  deadline = time.monotonic() + 240
  while len(_steps(workdir)) < 2:
    assert time.monotonic() < deadline, _output(tmp_path, job)[-3000:]
    time.sleep(0.2)
  cluster.run("scancel", job)
  record = cluster.wait(job, ("CANCELLED",), timeout=120)
  assert record["Restarts"] == "0"
  last = max(_steps(workdir))
  r = restore.restore(str(workdir))
  assert r.step == last and 2 <= last < 1000
