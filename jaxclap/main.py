"""Entry point: `python -m jaxclap.main --config=configs/stage1.py --workdir=DIR`."""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxclap import cli, sequence
from jaxclap.train import loop

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Training config file (configs/*.py); fields overridable as --config.x.y=v.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, TensorBoard, summary.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed", False, "Call jax.distributed.initialize() (multi-host TPU/GPU/CPU runs)."
)
# Left unset, JAX finds these itself on Cloud TPU and under SLURM; give them elsewhere.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _DISTRIBUTED.value:
    if jax.config.jax_platforms in (None, "", "cpu"):
      # CPU processes exchange collectives through gloo (no-op for TPU/GPU backends).
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  logging.info(
    "JAX %s: process %d/%d, %d devices (%s)",
    jax.__version__,
    jax.process_index(),
    jax.process_count(),
    jax.device_count(),
    jax.default_backend(),
  )
  # Config, data, missing-file and numerics errors are the user's to fix: one line, exit 2.
  with cli.exit_on(ValueError, FileNotFoundError, FloatingPointError):
    if "stages" in _CONFIG.value:
      sequence.run_stages(_CONFIG.value, _WORKDIR.value)
    else:
      loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
