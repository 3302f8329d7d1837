"""What a teacher cache would save: the distillation step against the teacher's forward alone.

A distillation step (train/distill.py) runs the frozen teacher on the batch's crops, then the
student forward and backward. A cache of teacher outputs would remove the teacher's
forward, at the price of one fixed crop per clip (no new crops across epochs) and, for the
frame-feature loss, T'·F'·D floats per clip on disk. This times, on the same batch, the
jitted train step and the jitted teacher forward (tokens + CLAP embedding), interleaved,
and prints the teacher's share of the step.

  PYTHONPATH=. python bench/distill_step.py --teacher DIR [--size mini] [--batch 64] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np

from configs import distill as distill_config
from jaxclap import sharding as shd
from jaxclap.audio import frontend as fe
from jaxclap.train import distill, optim
from jaxclap.train import state as state_lib
from jaxclap.train import step as step_lib


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--teacher", required=True, help="The teacher's workdir.")
  parser.add_argument("--size", default="mini", help="The student's encoder size.")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args()
  print(
    f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
    f"load average {os.getloadavg()}; jax {jax.__version__} ({jax.default_backend()})"
  )
  teacher = distill.load_teacher(args.teacher)
  c = distill_config.get_config("demo")
  c.distill.teacher = args.teacher
  c.model.size = args.size
  c.train.global_batch = args.batch
  config = distill.student_config(c, teacher)
  objective = distill.build(config, teacher)
  mesh = shd.make_mesh(data=-1, fsdp=1)
  schedule = optim.learning_rate(
    config.optim, global_batch=args.batch, steps_per_epoch=1, total_steps=1000
  )
  tx = optim.make_optimizer(config.optim, schedule)
  state, state_sh = state_lib.create_sharded_state(
    init_params=objective.init,
    tx=tx,
    seed=0,
    norm_stats=config.frontend.norm_stats,
    mesh=mesh,
    rules=[tuple(r) for r in config.mesh.rules],
  )
  state = objective.lay_in(state)
  steps = step_lib.jit_steps(
    mesh=mesh, state_sh=state_sh, objective=objective, tx=tx, schedule=schedule
  )
  fcfg = objective.net.frontend_cfg
  samples = (config.data.crop_frames - 1) * fcfg.hop_length
  rng = np.random.default_rng(0)
  raw = {
    "audio": (0.1 * rng.standard_normal((args.batch, samples))).astype(np.float32),
    "audio_len": np.full((args.batch,), samples, np.int32),
    "caption": ["a sound"] * args.batch,
  }
  if teacher.stage == "stage1":
    raw["caption_embedding"] = np.zeros((args.batch, teacher.config.model.text_dim), np.float32)
  batch = step_lib.device_batch(raw, objective, mesh)
  teacher_fwd = jax.jit(  # The teacher's half of the step: what a cache would replace.
    lambda frozen, b, ns: objective._teacher(frozen, fe.waveform_input(b, fcfg, ns))
  )
  print(
    f"teacher {teacher.config.model.size} ({teacher.stage}), student {args.size}, "
    f"batch {args.batch} x {config.data.crop_frames} frames"
  )
  state, _ = steps["train"](state, batch)  # Compile.
  jax.block_until_ready(teacher_fwd(state.frozen, batch, state.norm_stats))
  step_t, teacher_t = [], []
  for _ in range(args.rounds):
    t = time.perf_counter()
    state, metrics = steps["train"](state, batch)
    jax.block_until_ready(metrics)
    step_t.append(time.perf_counter() - t)
    t = time.perf_counter()
    jax.block_until_ready(teacher_fwd(state.frozen, batch, state.norm_stats))
    teacher_t.append(time.perf_counter() - t)
  step_m, teacher_m = statistics.median(step_t), statistics.median(teacher_t)
  print(f"train step: min {min(step_t):.3f} s, median {step_m:.3f} s")
  print(f"teacher forward: min {min(teacher_t):.3f} s, median {teacher_m:.3f} s")
  print(f"teacher share of the step (medians): {100 * teacher_m / step_m:.0f}%")


if __name__ == "__main__":
  main()
