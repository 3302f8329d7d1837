"""A real one-node SLURM cluster for tests: munged, slurmctld and slurmd in a temp folder.

Each instance has its own key, socket, ports, state and logs, so two test workers may run
one each. Every daemon is stopped by the PID it wrote, also when a test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
# Debian packages that provide the daemons and client commands (`.ci/run` installs them).
PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
# Job states after which a job never runs again (`squeue --help`, "JOB STATE CODES").
ENDED = (
  "BOOT_FAIL",
  "CANCELLED",
  "COMPLETED",
  "DEADLINE",
  "FAILED",
  "NODE_FAIL",
  "OUT_OF_MEMORY",
  "PREEMPTED",
  "TIMEOUT",
)


def missing() -> list[str]:
  """The daemons and commands not on this machine's PATH (or /usr/sbin)."""
  path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
  tools = (*DAEMONS, "mungekey", "sbatch", "squeue", "scontrol", "scancel")
  return [t for t in tools if shutil.which(t, path=path) is None]


def _free_ports(n: int) -> list[int]:
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def _memory_mb() -> int:
  with open("/proc/meminfo") as f:
    return int(f.readline().split()[1]) // 1024


class Cluster:
  """One node (this machine's cores and memory), one partition `test`; root only."""

  def __init__(self, root: Path):
    self.root = root
    self.conf = root / "slurm.conf"
    self.env = dict(os.environ, SLURM_CONF=str(self.conf))
    self.env["PATH"] = f"{self.env.get('PATH', '')}:/usr/sbin:/sbin"
    self.started_s = 0.0  # Seconds from the first daemon to an idle node.

  def _write_conf(self) -> None:
    r, host = self.root, socket.gethostname()
    ctld_port, slurmd_port = _free_ports(2)
    settings = {
      "ClusterName": "jaxclaptest",
      "SlurmctldHost": host,
      "SlurmUser": "root",
      "SlurmdUser": "root",
      "AuthType": "auth/munge",
      "CredType": "cred/munge",
      # cred_expire also sets how long a requeued job waits to start again (default 120 s).
      "AuthInfo": f"socket={r}/munge.sock,cred_expire=10",
      "SlurmctldPort": ctld_port,
      "SlurmdPort": slurmd_port,
      "StateSaveLocation": r / "state",
      "SlurmdSpoolDir": r / "spool",
      "SlurmctldPidFile": r / "slurmctld.pid",
      "SlurmdPidFile": r / "slurmd.pid",
      "SlurmctldLogFile": r / "slurmctld.log",
      "SlurmdLogFile": r / "slurmd.log",
      # No cgroups in a container: track processes by parent PID, bind nothing.
      "ProctrackType": "proctrack/linuxproc",
      "TaskPlugin": "task/none",
      "JobAcctGatherType": "jobacct_gather/none",
      "AccountingStorageType": "accounting_storage/none",
      "MpiDefault": "none",
      "SchedulerType": "sched/builtin",
      "SelectType": "select/cons_tres",
      "SelectTypeParameters": "CR_CPU",
      "ReturnToService": 2,
      "JobRequeue": 1,
      "KillWait": 10,  # SIGTERM to SIGKILL at a job's end (scancel, time limit).
      "OverTimeLimit": 1,  # Minutes past the limit: the batch script's requeue still runs.
      "MinJobAge": 3600,  # Finished jobs stay visible to squeue/scontrol for the test.
      # JAX derives the coordinator port from the job id: two clusters (test workers)
      # number their jobs apart.
      "FirstJobId": 1 + ctld_port % 4000,
    }
    lines = [f"{k}={v}" for k, v in settings.items()]
    cpus = os.cpu_count() or 1
    lines += [
      f"NodeName={host} CPUs={cpus} RealMemory={_memory_mb() // 2} State=UNKNOWN",
      f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP",
    ]
    self.conf.write_text("\n".join(lines) + "\n")

  def start(self, timeout: float = 60.0) -> Cluster:
    """Starts the three daemons and waits for the node to be idle."""
    t0 = time.monotonic()
    r = self.root
    for d in ("state", "spool"):
      (r / d).mkdir(parents=True, exist_ok=True)
    self._write_conf()
    self.run("mungekey", "-c", "-b", "1024", "-k", str(r / "munge.key"))
    os.chmod(r / "munge.key", 0o600)
    self.run(
      "munged",
      "-f",
      f"--key-file={r}/munge.key",
      f"--socket={r}/munge.sock",
      f"--pid-file={r}/munged.pid",
      f"--log-file={r}/munged.log",
      f"--seed-file={r}/munged.seed",
    )
    self.run("slurmctld", "-i", "-f", str(self.conf))
    self.run("slurmd", "-f", str(self.conf))
    while time.monotonic() - t0 < timeout:
      state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
      if state == "idle":
        self.started_s = time.monotonic() - t0
        return self
      time.sleep(0.5)
    raise RuntimeError(f"SLURM node not idle after {timeout} s:\n{self.logs()}")

  def stop(self) -> None:
    """Cancels its jobs (a failed test may leave one running), then stops every daemon
    this cluster started, by the PID in its PID file."""
    if (self.root / "slurmctld.pid").exists():
      jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
      if jobs:
        self.run("scancel", *jobs, check=False)
        deadline = time.monotonic() + 30
        while (
          time.monotonic() < deadline
          and self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
        ):
          time.sleep(0.5)
    for name in reversed(DAEMONS):
      pid_file = self.root / f"{name}.pid"
      if not pid_file.exists():
        continue
      pid = int(pid_file.read_text().split()[0])
      try:
        os.kill(pid, signal.SIGTERM)
      except ProcessLookupError:
        continue
      for _ in range(100):
        try:
          os.kill(pid, 0)
        except ProcessLookupError:
          break
        time.sleep(0.1)
      else:
        os.kill(pid, signal.SIGKILL)

  def run(self, *cmd: str, check: bool = True, cwd: Path | None = None):
    """Runs a SLURM/munge command against this cluster."""
    proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, cwd=cwd)
    if check and proc.returncode:
      raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr or proc.stdout}\n{self.logs()}")
    return proc

  def job(self, job_id: str) -> dict[str, str]:
    """`scontrol show job` as key -> value."""
    out = self.run("scontrol", "-o", "show", "job", job_id).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)

  def wait(self, job_id: str, states: tuple[str, ...], timeout: float) -> dict[str, str]:
    """Polls until the job's state is one of `states`; its record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      job = self.job(job_id)
      if job["JobState"] in states:
        return job
      time.sleep(0.5)
    raise TimeoutError(f"job {job_id} not in {states} after {timeout} s: {job}\n{self.logs()}")

  def logs(self, tail: int = 15) -> str:
    """The last lines of each daemon's log (for failure messages)."""
    out = []
    for name in ("slurmctld", "slurmd"):
      f = self.root / f"{name}.log"
      if f.exists():
        out.append(f"--- {name}.log\n" + "\n".join(f.read_text().splitlines()[-tail:]))
    return "\n".join(out)
