"""launch/tpu_pod.sh run for real against tests/fake_gcloud/gcloud, a stand-in gcloud on PATH.

The stand-in rejects flags the real CLI lacks, keeps each TPU VM as a local folder (one home
per worker) and runs `ssh --command` there as local processes; writing PREEMPTED to a node's
`state` file preempts it (SIGTERM to its processes, then SIGKILL). The slice's "training" is
a real tiny jaxclap run on CPU in a clone of this repository at HEAD, whose jaxclap package
is replaced by the working tree's (as the rest of the suite, it tests the working tree).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fake_gcloud"
ZONE = "us-east5-a"
SETTINGS = (  # tpu_pod.sh's settings: the test's environment must not leak any in.
  "TPU_NAME ZONE PROJECT ACCELERATOR_TYPE RUNTIME_VERSION SPOT QUEUED QUEUED_ID WORKDIR DATA_DIR "
  "CONFIG REPO COMMIT INSTALL_CMD WORKER MAX_ATTEMPTS RETRY_SLEEP DRY_RUN"
).split()
TINY = [  # A seconds-per-step stage 1 (tests/test_slurm.py's).
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
  "--config.train.global_batch=8",
]


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
  """The environment of a tpu_pod.sh call: the stand-in first on PATH, its state in tmp."""
  state = tmp_path / "gcloud"
  state.mkdir(exist_ok=True)
  base = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  return {
    **base,
    "PATH": f"{FAKE}{os.pathsep}{os.environ['PATH']}",
    "FAKE_GCLOUD_DIR": str(state),
    "TPU_NAME": "m2d",
    "ZONE": ZONE,
    "REPO": str(ROOT),
    "COMMIT": _head(),
    **settings,
  }


def _head() -> str:
  return subprocess.run(
    ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout.strip()


def _pod(
  env: dict, *args: str, ok: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess:
  """launch/tpu_pod.sh ARGS (no --dry-run)."""
  proc = subprocess.run(
    ["bash", str(ROOT / "launch" / "tpu_pod.sh"), *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _gcloud(env: dict, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [str(FAKE / "gcloud"), *args], env=env, capture_output=True, text=True, timeout=30
  )


def _calls(env: dict) -> list[dict]:
  """Every gcloud call so far: {"argv": [...], "rc": N}."""
  log = Path(env["FAKE_GCLOUD_DIR"]) / "calls.jsonl"
  return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _verbs(calls: list[dict]) -> list[str]:
  """'tpu-vm create', 'tpu-vm ssh', ... for each call."""
  return [" ".join(c["argv"][3:5]) for c in calls]


def _node(env: dict, name: str = "m2d") -> Path:
  return (
    Path(env["FAKE_GCLOUD_DIR"]) / "projects" / "fake-project" / "zones" / ZONE / "nodes" / name
  )


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_stand_in_rejects_flags_the_cli_lacks(tmp_path):
  """Misspelt or borrowed flags fail as gcloud fails them; the accepted ones work."""
  env = _env(tmp_path)
  create = ["compute", "tpus", "tpu-vm", "create", "n", f"--zone={ZONE}"]
  bad = [
    [*create, "--versoin=v2-alpha-tpuv5"],
    [*create, "--runtime-version=v2-alpha-tpuv5"],  # queued-resources' name for --version.
    [*create, "--version", "v", "--spot=true"],  # A switch takes no value.
    ["compute", "tpus", "tpu-vm", "delete", "n", f"--zone={ZONE}", "--force"],
    ["compute", "tpus", "tpu-vm", "ssh", "n", f"--zone={ZONE}", "--commmand=ls"],
    ["compute", "tpus", "queued-resources", "create", "q", f"--zone={ZONE}", "--version=v"],
  ]
  for argv in bad:
    proc = _gcloud(env, *argv)
    assert proc.returncode == 2 and "ERROR: (gcloud.compute.tpus." in proc.stderr, argv
  assert "must be specified" in _gcloud(env, *create).stderr  # --version is required.
  assert _gcloud(env, "storage", "cat", "gs://b/x").returncode == 2  # Not emulated.
  ok = _gcloud(env, *create, "--version", "v", "--accelerator-type=v5p-16", "--spot", "--quiet")
  assert ok.returncode == 0, ok.stderr
  described = _gcloud(env, "compute", "tpus", "tpu-vm", "describe", "n", f"--zone={ZONE}")
  assert "READY" in described.stdout and '"spot": true' in described.stdout
  assert [c["rc"] for c in _calls(env)] == [2] * 6 + [2, 2, 0, 0]


def test_setup_runs_on_every_worker_and_fails_loudly(tmp_path):
  """A 2-host slice: setup clones COMMIT on both workers and runs INSTALL_CMD in the checkout;
  a failing install fails setup (a `&&` list under `set -e` used to hide it); delete."""
  env = _env(tmp_path, ACCELERATOR_TYPE="v4-16", INSTALL_CMD="pwd > ~/installed")
  _pod(env, "create")
  node = _node(env)
  workers = sorted(node.glob("worker-*"))
  assert [w.name for w in workers] == ["worker-0", "worker-1"]
  _pod(env, "setup")
  for home in workers:
    head = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=home / "jaxclap", capture_output=True, text=True
    ).stdout.strip()
    assert head == env["COMMIT"]
    assert (home / "installed").read_text().strip() == str(home / "jaxclap")
    assert (home / "jaxclap-stage").is_dir()
  failed = _pod({**env, "INSTALL_CMD": "false && echo unreachable"}, "setup", ok=False)
  assert "unreachable" not in failed.stdout
  _pod(env, "delete")
  assert not node.exists()
  assert _verbs(_calls(env)) == ["tpu-vm create", "tpu-vm ssh", "tpu-vm ssh", "tpu-vm delete"]
  assert [c["rc"] for c in _calls(env)] == [0, 0, 1, 0]


def test_queued_create_and_forced_delete(tmp_path):
  """--queued: a queued resource whose node exists once it is ACTIVE; delete --force. The
  commands that ran are the ones --dry-run prints."""
  env = _env(tmp_path, ACCELERATOR_TYPE="v5litepod-16", QUEUED="1")
  dry = _pod(env, "--dry-run", "--spot", "create").stdout.splitlines()
  _pod(env, "--spot", "create")
  assert [c["argv"] for c in _calls(env)] == [
    shlex.split(line.removeprefix("dry-run$ ")) for line in dry
  ]
  node = json.loads((_node(env) / "node.json").read_text())
  assert node["acceleratorType"] == "v5litepod-16" and node["schedulingConfig"]["spot"]
  assert len(node["networkEndpoints"]) == 4  # 4 hosts of 4 chips.
  _pod(env, "delete")
  assert not _node(env).exists()
  verbs = _verbs(_calls(env))
  assert verbs == [
    "queued-resources create",
    "queued-resources describe",
    "queued-resources delete",
  ]
  assert all(c["rc"] == 0 for c in _calls(env))


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
  """Polls until `predicate()`; fails if `proc` ends first or the time runs out."""
  deadline = time.monotonic() + timeout
  while not predicate():
    assert proc.poll() is None, f"exited with status {proc.returncode} before {what}"
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.2)


def test_run_preempted_then_resume_loop_recreates_and_finishes(demo_data_dir, tmp_path):
  """create → setup → run; the slice is preempted mid-run (the run saves on SIGTERM);
  resume-loop recreates and sets up the slice, the run resumes from that checkpoint and
  finishes; delete. One tiny stage-1 run on CPU, in the fake VM's clone of this repository."""
  steps = 8
  workdir = tmp_path / "run"
  env = _env(
    tmp_path,
    ACCELERATOR_TYPE="v4-8",  # One host: a single-process job.
    WORKDIR=str(workdir),
    DATA_DIR=demo_data_dir,
    CONFIG="configs/demo.py:stage1",
    # For the TPU image's pip install: this environment's venv, and in the clone the working
    # tree's package, which the rest of the suite tests (the clone is HEAD's).
    INSTALL_CMD=f"rm -r jaxclap && ln -s {shlex.quote(str(ROOT / 'jaxclap'))} jaxclap && "
    f"ln -sfn {shlex.quote(sys.prefix)} ~/jaxclap-venv",
    RETRY_SLEEP="0",
    MAX_ATTEMPTS="3",
    JAX_PLATFORMS="cpu",
    FAKE_GCLOUD_PREEMPT_GRACE_S="60",
  )
  train = [*TINY, f"--config.train.num_steps={steps}", "--config.debug.step_sleep_s=0.5"]

  def coordinator() -> list[str]:
    """On a TPU VM JAX finds these itself; a CPU process is told (one process)."""
    port = _free_port()
    return ["--", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=1", "--process_id=0"]

  _pod(env, "--spot", "create")
  _pod(env, "setup")
  node = _node(env)
  log = node / "worker-0" / "jaxclap-run.log"
  with open(tmp_path / "run.out", "w") as out:
    run = subprocess.Popen(
      ["bash", str(ROOT / "launch" / "tpu_pod.sh"), "run", *train, *coordinator()],
      cwd=ROOT,
      env=env,
      stdout=out,
      stderr=subprocess.STDOUT,
    )
    try:
      _wait_for(lambda: "step 2/" in (log.read_text() if log.exists() else ""), run, "step 2")
      (node / "state").write_text("PREEMPTED\n")
      assert run.wait(timeout=120) == 255  # ssh's status when the connection drops.
    finally:
      if run.poll() is None:
        run.kill()
  assert not any((node / "procs").iterdir())  # The preemption ended the VM's processes.
  assert "closed by remote host" in (tmp_path / "run.out").read_text()
  first = json.loads((workdir / "summary.json").read_text())
  saved = first["end_step"]
  assert first["preempted"] is True and 2 <= saved < steps, first
  assert f"SIGTERM: saved step {saved}" in log.read_text()
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [saved]
  before = len(_calls(env))

  proc = _pod(env, "resume-loop", *train, *coordinator(), timeout=240)
  assert "TPU m2d is PREEMPTED; recreating it" in proc.stderr
  assert f"run in {workdir} finished" in proc.stderr
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["start_step"] == saved and summary["end_step"] == steps, summary
  assert summary["preempted"] is False
  assert (node / "state").read_text().strip() == "READY"  # The recreated slice.
  resumed = _verbs(_calls(env)[before:])
  assert resumed == [
    "tpu-vm ssh",  # summary.json check on worker 0: the preempted VM refuses.
    "tpu-vm describe",
    "tpu-vm delete",
    "tpu-vm create",
    "tpu-vm ssh",  # setup
    "tpu-vm scp",
    "tpu-vm ssh",  # run
    "tpu-vm ssh",  # summary.json check: finished.
  ], resumed

  _pod(env, "delete")
  assert not node.exists()
  gone = _gcloud(env, "compute", "tpus", "tpu-vm", "describe", "m2d", f"--zone={ZONE}")
  assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
  # tpu_pod.sh never passed a flag the real CLI lacks (the stand-in exits 2 on one).
  assert all(c["rc"] != 2 for c in _calls(env)), _calls(env)


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path):
  """Ends a failed test's fake-VM processes (each is its own process group)."""
  yield
  for procs in tmp_path.glob("gcloud/projects/*/zones/*/nodes/*/procs"):
    for pgid in procs.iterdir():
      try:
        os.killpg(int(pgid.name), signal.SIGKILL)
      except ProcessLookupError:
        pass
