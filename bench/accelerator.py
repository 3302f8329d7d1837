"""Stage-1 train step on whatever devices JAX sees: step time, clips/s, FLOPs, MFU, memory.

Runs the real trainer step (`jaxclap.train.step.jit_steps`) of configs/stage1.py (ViT-B
80×608) over a (data, fsdp) mesh of all local devices, on synthetic clips. Reports:
  - model FLOPs per clip, counted from the network (`jaxclap.models.flops`) and by XLA;
  - MFU = model FLOP/s ÷ the devices' peak: the vendor's dense bf16 (or f32) peak for
    known accelerators, or a matmul measured in this process on CPU;
  - peak device memory (allocator statistics on GPU/TPU; XLA's compiled footprint on CPU).

  python bench/accelerator.py                       # paper model, bf16, batch 64 per device
  python bench/accelerator.py --batch_per_device=128 --remat=full --fsdp=8
  python bench/accelerator.py --quick               # tiny model (a CPU smoke run)
  python bench/accelerator.py --compare_dtypes --batch_per_device=4 --steps=3   # bf16 vs f32
  python bench/accelerator.py --attention=xla       # jax.nn.dot_product_attention (cuDNN)

With --compare_dtypes the bfloat16 and float32 steps run in alternating rounds and the
bf16/f32 clips/s ratio is printed (min and median).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxclap import sharding as shd
from jaxclap.audio import frontend
from jaxclap.audio import norm_stats as norm_stats_lib
from jaxclap.models import flops
from jaxclap.run_meta import RunMeta
from jaxclap.train import config as config_lib
from jaxclap.train import objectives, optim
from jaxclap.train import state as state_lib
from jaxclap.train import step as step_lib

# Dense peak FLOP/s per chip from vendor data sheets (no sparsity): (bf16, f32).
PEAKS = {
  "H100": (989e12, 67e12),  # SXM; PCIe/NVL parts are lower.
  "H200": (989e12, 67e12),
  "A100": (312e12, 19.5e12),
  "TPU v4": (275e12, 275e12 / 2),
  "TPU v5 lite": (197e12, 197e12 / 2),  # v5e
  "TPU v5p": (459e12, 459e12 / 2),
  "TPU v6 lite": (918e12, 918e12 / 2),  # v6e (Trillium)
}


def device_peak(device, dtype: str) -> tuple[float, str]:
  """(peak FLOP/s of one device, where the number comes from)."""
  kind = getattr(device, "device_kind", "")
  for name, (bf16, f32) in PEAKS.items():
    if name.lower() in kind.lower():
      return (bf16 if dtype == "bfloat16" else f32), f"data sheet ({name}, {dtype})"
  n, dt = 4096, jnp.dtype(dtype)
  a = jnp.ones((n, n), dt)
  # float32 accumulation and result, as the model's bf16 matmuls (a bf16-result dot is slower).
  f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
  f(a).block_until_ready()
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / min(times), f"measured {dtype}->f32 {n}² matmul on {kind or device.platform}"


def peak_memory(device, compiled) -> tuple[float | None, str]:
  """(bytes, what they are): allocator peak where the backend keeps one, else XLA's plan."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    return float(stats["peak_bytes_in_use"]), "allocator peak_bytes_in_use (device 0)"
  mem = compiled.memory_analysis()
  if mem is None:
    return None, "unavailable"
  total = (
    mem.temp_size_in_bytes
    + mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    - mem.alias_size_in_bytes
  )
  return float(total), "XLA compiled footprint (temp + arguments + outputs - aliased)"


def build_step(args: argparse.Namespace, dtype: str) -> dict:
  """The compiled trainer step for `dtype`, with its state, batch and what describes it."""
  c = config_lib.base_config()
  c.model.dtype, c.model.remat, c.model.attention = dtype, args.remat, args.attention
  if args.quick:
    c.model.size, c.data.crop_frames, c.model.predictor_width = "tiny", 208, 192
    c.model.predictor_depth, c.model.predictor_heads, c.model.clap_dim = 2, 6, 192
    c.model.text_dim, args.batch_per_device = 384, 8
  devices = jax.devices()
  batch = args.batch_per_device * len(devices)
  fcfg = frontend.FrontendConfig.for_sample_rate(c.frontend.sample_rate)
  total = 1000
  sched = optim.learning_rate(c.optim, global_batch=batch, steps_per_epoch=10, total_steps=total)
  tx = optim.make_optimizer(c.optim, sched)
  objective = objectives.build(c, RunMeta(total_steps=total))
  mesh = shd.make_mesh(fsdp=args.fsdp)
  state, state_sh = state_lib.create_sharded_state(
    init_params=objective.init,
    tx=tx,
    seed=0,
    norm_stats=norm_stats_lib.LEGACY_NORM_STATS,
    mesh=mesh,
    rules=c.mesh.rules,
  )
  train = step_lib.jit_steps(
    mesh=mesh, state_sh=state_sh, objective=objective, tx=tx, schedule=sched
  )["train"]
  rng = np.random.default_rng(0)
  samples = (c.data.crop_frames - 1) * fcfg.hop_length
  local = {
    "audio": (0.1 * rng.standard_normal((batch, samples))).astype(np.float32),
    "audio_len": np.full((batch,), samples, np.int32),
    "caption_embedding": rng.standard_normal((batch, c.model.text_dim)).astype(np.float32),
  }
  gbatch = shd.global_batch(local, mesh)
  t0 = time.perf_counter()
  compiled = train.lower(state, gbatch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  hold = {"state": state, "metrics": None}

  def run() -> None:
    hold["state"], hold["metrics"] = compiled(hold["state"], gbatch)
    jax.block_until_ready(hold["metrics"]["loss"])

  return {
    "c": c,
    "fcfg": fcfg,
    "batch": batch,
    "compiled": compiled,
    "compile_s": compile_s,
    "xla_flops": float((cost or {}).get("flops", 0.0)),
    "run": run,
    "hold": hold,
  }


def timed_rounds(runs: dict, steps: int, warmup: int = 2) -> dict[str, list[float]]:
  """Step wall times of each run, the runs taking turns each round (load hits all alike)."""
  for _ in range(warmup):
    for r in runs.values():
      r["run"]()
  times = {k: [] for k in runs}
  for _ in range(steps):
    for k, r in runs.items():
      t0 = time.perf_counter()
      r["run"]()
      times[k].append(time.perf_counter() - t0)
  return times


def report(args: argparse.Namespace, dtype: str, r: dict, times: list[float]) -> dict:
  """Prints and returns one configuration's figures (median step time)."""
  c, fcfg, batch, compiled = r["c"], r["fcfg"], r["batch"], r["compiled"]
  devices = jax.devices()
  step_s = statistics.median(times)
  per_clip = flops.stage1_step_flops(c.model, c.data.crop_frames, n_mels=fcfg.n_mels)
  peak, peak_src = device_peak(devices[0], dtype)
  mem, mem_src = peak_memory(devices[0], compiled)
  achieved = per_clip * batch / step_s
  xla_flops = r["xla_flops"]
  out = {
    "device": f"{len(devices)} × {devices[0].device_kind}",
    "model": c.model.size,
    "input": f"{fcfg.n_mels}x{c.data.crop_frames}",
    "dtype": dtype,
    "remat": args.remat,
    "attention": args.attention,
    "fsdp": args.fsdp,
    "global_batch": batch,
    "compile_s": round(r["compile_s"], 1),
    "step_s": step_s,
    "step_s_min": min(times),
    "clips_per_s": batch / step_s,
    "model_gflop_per_clip": per_clip / 1e9,
    "xla_gflop_per_clip": xla_flops * (len(devices) if xla_flops else 0) / batch / 1e9,
    "mfu": achieved / (peak * len(devices)),
    "peak_flops_per_device": peak,
    "peak_source": peak_src,
    "peak_memory_gib": None if mem is None else mem / 2**30,
    "memory_source": mem_src,
    "loss": float(r["hold"]["metrics"]["loss"]),
  }
  print(
    f"{out['device']}: {out['model']} {out['input']} {dtype} remat={args.remat} "
    f"attention={args.attention} fsdp={args.fsdp} global batch {batch}"
  )
  print(
    f"  step {step_s * 1e3:.1f} ms (median of {len(times)}; min {min(times) * 1e3:.1f}) = "
    f"{out['clips_per_s']:.1f} clips/s; compile {r['compile_s']:.1f} s"
  )
  print(
    f"  model FLOPs {out['model_gflop_per_clip']:.1f} GFLOP/clip (counted from the network;"
    f" XLA counts {out['xla_gflop_per_clip']:.1f})"
  )
  print(f"  MFU {100 * out['mfu']:.1f}% of {peak / 1e9:,.0f} GFLOP/s per device ({peak_src})")
  if mem is not None:
    print(f"  peak memory {mem / 2**30:.2f} GiB ({mem_src})")
  print("RESULT " + json.dumps(out))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_per_device", type=int, default=64)
  parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up)")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--remat", default="none", choices=["none", "full", "save_dots"])
  parser.add_argument("--attention", default="einsum", choices=["einsum", "xla"])
  parser.add_argument("--fsdp", type=int, default=1)
  parser.add_argument("--quick", action="store_true", help="tiny model, 80×208, batch 8/device")
  parser.add_argument(
    "--compare_dtypes", action="store_true", help="bfloat16 and float32 steps, alternating"
  )
  args = parser.parse_args()

  dtypes = ("bfloat16", "float32") if args.compare_dtypes else (args.dtype,)
  print(f"load average {os.getloadavg()}")
  runs = {d: build_step(args, d) for d in dtypes}
  times = timed_rounds(runs, args.steps)
  for d in dtypes:
    report(args, d, runs[d], times[d])
  if args.compare_dtypes:
    per_round = [f / b for b, f in zip(times["bfloat16"], times["float32"])]
    print(
      f"bf16/f32 clips/s: {min(times['float32']) / min(times['bfloat16']):.2f}x (ratio of "
      f"mins), {statistics.median(per_round):.2f}x (median of per-round ratios); target >= 1.4x"
    )
  print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
  main()
