"""Trains a jaxclap stage, or a chain of stages: python -m jaxclap.main --config=C --workdir=DIR

Configs (in the repository's configs/ folder):
  configs/demo.py         the demo: stage 1 -> 1.1 -> 2 -> 2.1 on synthetic sounds, laptop CPU
  configs/demo.py:stage1  one stage of the demo (also :stage2, :stage2_1)
  configs/real_small.py   stage 1 on real recordings (a named_folder dataset), 2-core CPU
  configs/stage1.py       the paper's stage 1: M2D + 0.01 CLAP, ViT-B, 80x608, batch 2048
  configs/stage2.py       the paper's stage 2 (--config.init.workdir=STAGE1.1, a text model)
  configs/stage2_1.py     the paper's stage 2.1 (--config.init.workdir=STAGE2)
  configs/finetune.py     stage 1.1 (fine-tuning; :as2m, :as20k, :esc50, :spcv2, :vc1 presets)
  configs/distill.py      a small student of a trained model (--config.distill.teacher=...)

Common overrides (every field of jaxclap/train/config.py can be set as --config.x.y=v):
  --config.data.data_dir=~/jaxclap_data   where built TFDS datasets are read
  --config.train.global_batch=N           --config.train.epochs=N
  --config.train.num_steps=N (overrides the epochs)   --config.model.dtype=bfloat16
  --config.init.workdir=DIR               start from an earlier stage's checkpoint
  --config.text.model=NAME_OR_DIR         stage 2's text model
Library logs are at WARNING; --verbosity=0 shows their INFO lines (-1 is the default here).
A run resumes from its workdir's last checkpoint; SIGTERM saves before exiting.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxclap import cli, releases, sequence
from jaxclap.train import aot, loop

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
_COMPILE_FOR = flags.DEFINE_string(
  "compile_for",
  None,
  "Compile the train and eval steps for a TPU slice (v5e-4, v4-32, v5p-64, v6e-8, ...) "
  "ahead of time and report memory, FLOPs and time; trains nothing (needs the tpu extra).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _COMPILE_FOR.value:
    aot.use_cpu_host()  # Before any backend starts: the compile needs no chip.
    with cli.exit_on(ValueError, FileNotFoundError):
      aot.run(_CONFIG.value, _COMPILE_FOR.value)
    return
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
      if _CONFIG.value.stage == "distill":
        _fetch_teacher(_CONFIG.value)
      loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def _fetch_teacher(config) -> None:
  """A distillation teacher named by release: downloaded and imported once (the cache's
  workdir is read), the name kept for the student's metadata."""
  name = config.distill.teacher
  if name and not os.path.exists(name) and name in releases.table():
    config.distill.teacher_name = name
    config.distill.teacher = str(releases.fetch(name))


if __name__ == "__main__":
  cli.run(main)
