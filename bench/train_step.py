"""Stage-1 train-step speed on CPU: jaxclap (JAX) against the PyTorch recipe, one process.

For (a) the demo config's model (tiny, 80×208) and (b) ViT-B 80×608 at a small batch, times
the full stage-1 train step — log-mel front end (in both), masking, online encoder,
predictor, EMA target forward, norm_mse + λ·InfoNCE, gradients, clipping, AdamW, EMA update
— in JAX (`jaxclap.train.step.jit_steps`, 1-device mesh) and in PyTorch
(bench/torch_m2d.py, float32, all cores). The JAX and PyTorch steps, and the two matmul
peak probes (f32 `jnp.dot` and `torch.mm`), are run alternately in the same loop so that
load from other processes hits both alike; medians are reported.

  python bench/train_step.py [--quick] [--reps 5] [--vitb_batch 4] [--demo_batch 64]
                             [--profile]   # per-part breakdown (JAX and PyTorch)
  taskset -c 0 python bench/train_step.py  # one core, one thread each: robust to load
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch
from torch.nn import utils as nn_utils

from jaxclap import sharding as shd
from jaxclap.audio import frontend
from jaxclap.audio import norm_stats as norm_stats_lib
from jaxclap.models import flops, m2d, sizes
from jaxclap.run_meta import RunMeta
from jaxclap.train import config as config_lib
from jaxclap.train import objectives, optim
from jaxclap.train import state as state_lib
from jaxclap.train import step as step_lib

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_m2d  # noqa: E402  (sibling bench module)

ROOT = Path(__file__).resolve().parents[1]
NORM_STATS = norm_stats_lib.LEGACY_NORM_STATS
TOTAL_STEPS = 1000  # Only shapes the lr/EMA schedules; irrelevant to speed.


def analytic_step_flops(model_cfg: Any, n_frames: int, batch: int, patch: int = 16) -> float:
  """Matmul FLOPs of one stage-1 step (jaxclap.models.flops)."""
  return flops.stage1_step_flops(model_cfg, n_frames, batch, patch=patch)


def load_config(name: str, stage: str = "stage1") -> ml_collections.ConfigDict:
  """Stage-1 config of configs/<name>.py (`get_config(stage)` where it takes a stage)."""
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  takes_stage = bool(inspect.signature(module.get_config).parameters)
  return module.get_config(stage) if takes_stage else module.get_config()


def synthetic_batch(batch: int, n_frames: int, text_dim: int, seed: int = 0) -> dict:
  """Full-length noise clips giving `n_frames` log-mel frames, and random text embeddings."""
  rng = np.random.default_rng(seed)
  s = (n_frames - 1) * frontend.FrontendConfig().hop_length
  return {
    "audio": (0.1 * rng.standard_normal((batch, s))).astype(np.float32),
    "audio_len": np.full((batch,), s, np.int32),
    "text_embedding": rng.standard_normal((batch, text_dim)).astype(np.float32),
  }


def jax_train_step(c: ml_collections.ConfigDict, batch: dict) -> tuple[Callable, float, float]:
  """(run one step and block, XLA cost-analysis FLOPs, compile seconds) for the JAX trainer."""
  b = batch["audio"].shape[0]
  sched = optim.learning_rate(c.optim, global_batch=b, steps_per_epoch=10, total_steps=TOTAL_STEPS)
  tx = optim.make_optimizer(c.optim, sched)
  objective = objectives.build(c, RunMeta(total_steps=TOTAL_STEPS))
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  state, state_sh = state_lib.create_sharded_state(
    init_params=objective.init, tx=tx, seed=0, norm_stats=NORM_STATS, mesh=mesh, rules=c.mesh.rules
  )
  train = step_lib.jit_steps(
    mesh=mesh,
    state_sh=state_sh,
    objective=objective,
    tx=tx,
    schedule=sched,
    grad_accum=c.train.grad_accum,
  )["train"]
  gbatch = shd.global_batch(batch, mesh)
  t0 = time.perf_counter()
  compiled = train.lower(state, gbatch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  holder = {"state": state}

  def run() -> None:
    holder["state"], metrics = compiled(holder["state"], gbatch)
    jax.block_until_ready(metrics["loss"])

  return run, float((cost or {}).get("flops", 0.0)), compile_s


def torch_train_step(c: ml_collections.ConfigDict, batch: dict) -> Callable:
  """Run-one-step closure for the PyTorch baseline (same config, float32)."""
  torch.manual_seed(0)
  model = torch_m2d.TorchM2D(
    c.model, n_frames=c.data.crop_frames, clap_weight=c.train.clap_weight, norm_stats=NORM_STATS
  )
  b = batch["audio"].shape[0]
  opt = torch_m2d.make_optimizer(
    model,
    lr=c.optim.base_lr * b / 256,
    weight_decay=c.optim.weight_decay,
    betas=(c.optim.b1, c.optim.b2),
  )
  wave = torch.from_numpy(batch["audio"])
  text = torch.from_numpy(batch["text_embedding"])
  return lambda: torch_m2d.train_step(
    model, opt, wave, text, ema_decay=c.train.ema_start, grad_clip=c.optim.grad_clip
  )


def matmul_probes(n: int = 2048) -> dict[str, tuple[Callable, float]]:
  """f32 n×n matmul in JAX and in torch: (run-and-block, FLOPs)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  ta = torch.randn(n, n)
  return {
    "jax_dot": (lambda: jax.block_until_ready(dot(a, a)), 2.0 * n**3),
    "torch_mm": (lambda: torch.mm(ta, ta), 2.0 * n**3),
  }


def alternate(fns: dict[str, Callable], reps: int, warmup: int = 1) -> dict[str, list[float]]:
  """Wall times of each fn, run in turn (a, b, c, a, b, c, ...) after `warmup` rounds."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {k: [] for k in fns}
  for _ in range(reps):
    for k, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t)
  return times


def bench_config(
  title: str, c: ml_collections.ConfigDict, batch_size: int, reps: int
) -> dict[str, float]:
  """Times JAX and PyTorch steps plus matmul probes, alternating; prints a summary."""
  c.train.global_batch = batch_size
  frames = c.data.crop_frames
  batch = synthetic_batch(batch_size, frames, c.model.text_dim)
  print(
    f"\n== {title}: size={c.model.size} 80x{frames} batch={batch_size} "
    f"predictor={c.model.predictor_width}x{c.model.predictor_depth} "
    f"text_dim={c.model.text_dim} clap_dim={c.model.clap_dim} ==",
    flush=True,
  )
  jax_run, xla_flops, compile_s = jax_train_step(c, batch)
  torch_run = torch_train_step(c, batch)
  probes = matmul_probes()
  ana = analytic_step_flops(c.model, frames, batch_size)
  t = alternate(
    {
      "jax_dot": probes["jax_dot"][0],
      "jax_step": jax_run,
      "torch_mm": probes["torch_mm"][0],
      "torch_step": torch_run,
    },
    reps,
  )
  med = {k: statistics.median(v) for k, v in t.items()}
  peak_jax = probes["jax_dot"][1] / med["jax_dot"]
  peak_torch = probes["torch_mm"][1] / med["torch_mm"]
  pair_ratio = statistics.median([tt / tj for tj, tt in zip(t["jax_step"], t["torch_step"])])
  print(
    f"JAX compile {compile_s:.1f} s; analytic {ana / batch_size / 1e9:.2f} GFLOP/clip, "
    f"XLA cost analysis {xla_flops / batch_size / 1e9:.2f} GFLOP/clip"
  )
  print(
    "step times (s), in run order: "
    + "; ".join(f"{k} [{', '.join(f'{x:.3f}' for x in v)}]" for k, v in t.items() if "step" in k)
  )
  print(
    f"matmul peak (f32 2048², median of {reps}): jnp.dot {peak_jax / 1e9:.1f} GFLOP/s, "
    f"torch.mm {peak_torch / 1e9:.1f} GFLOP/s"
  )
  rows = [("JAX", med["jax_step"], peak_jax), ("PyTorch", med["torch_step"], peak_torch)]
  for name, sec, peak in rows:
    line = (
      f"{name:8s} {sec * 1e3:8.1f} ms/step  {batch_size / sec:7.2f} clips/s  "
      f"analytic {ana / sec / 1e9:6.1f} GFLOP/s = {ana / sec / peak:5.1%} of own peak"
    )
    if name == "JAX" and xla_flops:
      line += f"  (XLA-count {xla_flops / sec / 1e9:.1f} GFLOP/s = {xla_flops / sec / peak:.1%})"
    print(line)
  ratio = med["torch_step"] / med["jax_step"]
  print(
    f"JAX/PyTorch clips/s: {ratio:.2f}x (ratio of medians), {pair_ratio:.2f}x "
    f"(median of per-round ratios); target >= 1.3x",
    flush=True,
  )
  return {"ratio": ratio, "jax_s": med["jax_step"], "torch_s": med["torch_step"]}


def _jax_vjp(fn: Callable, *args: Any) -> Callable:
  """Run-and-block closure of fwd + bwd of fn(*args) (gradients w.r.t. every argument)."""
  ct = jax.random.normal(jax.random.key(9), jax.eval_shape(fn, *args).shape)
  grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * ct), argnums=tuple(range(len(args)))))
  return lambda: jax.block_until_ready(grad(*args))


def _torch_vjp(fn: Callable, *args: torch.Tensor) -> Callable:
  """Run closure of fwd + bwd of fn(*args) with a fixed random cotangent."""
  with torch.no_grad():
    ct = torch.randn(fn(*args).shape)

  def run() -> None:
    fn(*args).backward(ct)

  return run


def profile_parts(title: str, c: ml_collections.ConfigDict, b: int, reps: int) -> None:
  """Times the step's parts in JAX and PyTorch (alternating) at the same shapes."""
  frames = c.data.crop_frames
  model = m2d.build_model({**c.model.to_dict(), "input_frames": frames})
  w, depth, _ = sizes.get_size(c.model.size)
  n = 5 * (frames // 16)
  v = m2d.num_visible(n, c.model.mask_ratio)
  m, pw = n - v, c.model.predictor_width
  online, target = nn.unbox(
    m2d.init_params(model, jax.random.key(0), n_frames=frames, text_dim=c.model.text_dim)
  )
  batch = synthetic_batch(b, frames, c.model.text_dim)
  fcfg = frontend.FrontendConfig()
  vis, msk = m2d.sample_masks(jax.random.key(1), b, n, c.model.mask_ratio)
  r = lambda *shape: jax.random.normal(jax.random.key(len(shape) + shape[-2]), shape)
  enc_in, z, tgt_in = r(b, v + 1, w), r(b, v + 1, w), r(b, m + 1, w)
  apply = lambda f: lambda p, *a: model.apply({"params": p}, *a, method=f)
  grid = (5, frames // 16)
  body = m2d.target_body(model)
  tx = optim.make_optimizer(
    c.optim,
    optim.learning_rate(c.optim, global_batch=b, steps_per_epoch=10, total_steps=TOTAL_STEPS),
  )

  def update(params, opt_state, tgt, grads):
    upd, opt_state = tx.update(grads, opt_state, params)
    params = objectives.clamp_logit_scale(optax.apply_updates(params, upd))
    return params, opt_state, objectives.ema_update(tgt, params["encoder"]["body"], 0.9999)

  upd_jit = jax.jit(update, donate_argnums=(0, 1, 2))
  hold = {"s": jax.tree.map(jnp.copy, (online, tx.init(online), target))}  # Donated.
  grads = jax.tree.map(jnp.ones_like, online)

  def jax_update() -> None:
    hold["s"] = upd_jit(*hold["s"], grads)
    jax.block_until_ready(hold["s"])

  fe_jit = jax.jit(lambda a: frontend.waveform_input(a, fcfg, NORM_STATS))
  jax_parts = {
    "front end": lambda: jax.block_until_ready(fe_jit(batch)),
    "online encoder fwd+bwd": _jax_vjp(
      apply(lambda md, t: md.encoder.encode_tokens(t)), online, enc_in[:, 1:]
    ),
    "predictor fwd+bwd": _jax_vjp(
      lambda p, zz: apply(lambda md, a: md.predictor(a, vis, msk, grid))(p, zz), online, z
    ),
    "target fwd": (lambda f: lambda: jax.block_until_ready(f(target, tgt_in)))(
      jax.jit(lambda p, t: body.apply({"params": p}, t))
    ),
    "clip+AdamW+EMA": jax_update,
  }
  tm = torch_m2d.TorchM2D(c.model, n_frames=frames, clap_weight=c.train.clap_weight)
  topt = torch_m2d.make_optimizer(tm, lr=1e-4)
  wave, text = torch.from_numpy(batch["audio"]), torch.from_numpy(batch["text_embedding"])
  torch_m2d.train_step(tm, topt, wave, text, ema_decay=0.9999)  # Populates .grad.
  tt = lambda a: torch.from_numpy(np.array(a)).requires_grad_(True)
  tvis, tmsk = (torch.from_numpy(np.array(a)).long() for a in (vis, msk))

  def torch_update() -> None:
    nn_utils.clip_grad_norm_(tm.parameters(), c.optim.grad_clip, foreach=True)
    topt.step()
    with torch.no_grad():
      torch._foreach_lerp_(list(tm.target.parameters()), list(tm.encoder.body.parameters()), 1e-4)

  def torch_target() -> None:
    with torch.no_grad():
      tm.target(tt(tgt_in))

  torch_parts = {
    "front end": lambda: tm.frontend(wave),
    "online encoder fwd+bwd": _torch_vjp(
      lambda t: tm.encoder.body(tm.encoder.with_cls(t)), tt(enc_in[:, 1:])
    ),
    "predictor fwd+bwd": _torch_vjp(lambda zz: tm.predictor(zz, tvis, tmsk), tt(z)),
    "target fwd": torch_target,
    "clip+AdamW+EMA": torch_update,
  }
  part_flops = {
    "online encoder fwd+bwd": 3 * b * flops.blocks_flops(v + 1, w, depth),
    "predictor fwd+bwd": 3
    * b
    * (
      flops.blocks_flops(n + 1, pw, c.model.predictor_depth) + 2 * (v + 1) * w * pw + 2 * m * pw * w
    ),
    "target fwd": b * flops.blocks_flops(m + 1, w, depth),
  }
  probes = matmul_probes()
  fns = {"jax_dot": probes["jax_dot"][0], "torch_mm": probes["torch_mm"][0]}
  for k in jax_parts:
    fns["jax " + k], fns["torch " + k] = jax_parts[k], torch_parts[k]
  t = {k: statistics.median(x) for k, x in alternate(fns, reps).items()}
  peak = {
    "jax": probes["jax_dot"][1] / t["jax_dot"],
    "torch": probes["torch_mm"][1] / t["torch_mm"],
  }
  print(
    f"\n== {title} parts, batch {b} (medians of {reps}, alternating; % = of own matmul "
    f"peak: jnp.dot {peak['jax'] / 1e9:.1f}, torch.mm {peak['torch'] / 1e9:.1f} GFLOP/s) =="
  )
  for k in jax_parts:
    cells = []
    for fw in ("jax", "torch"):
      sec = t[f"{fw} {k}"]
      cell = f"{fw} {sec * 1e3:8.1f} ms"
      if k in part_flops:
        cell += f" {part_flops[k] / sec / 1e9:6.1f} GFLOP/s ({part_flops[k] / sec / peak[fw]:5.1%})"
      cells.append(f"{cell:42s}")
    print(f"{k:24s} " + "  ".join(cells))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smoke run: few reps, small batches")
  parser.add_argument("--reps", type=int, default=5, help="timed rounds per config")
  parser.add_argument("--demo_batch", type=int, default=64)
  parser.add_argument("--vitb_batch", type=int, default=4)
  parser.add_argument("--profile", action="store_true", help="per-part breakdown (slower)")
  parser.add_argument("--configs", default="demo,vitb", help="comma list: demo, vitb")
  parser.add_argument("--no_steps", action="store_true", help="with --profile: parts only")
  args = parser.parse_args()
  if args.quick:
    args.reps, args.demo_batch, args.vitb_batch = 2, 16, 2

  # All cores this process may use (= os.cpu_count() unless pinned with taskset).
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  cpu = next(
    (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
    platform.processor(),
  )
  print(
    f"machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {cpu}; "
    f"load average {os.getloadavg()}"
  )
  print(
    f"python {platform.python_version()}, jax {jax.__version__} ({jax.devices()[0].platform}"
    f", {len(jax.devices())} device), torch {torch.__version__} "
    f"({torch.get_num_threads()} threads), numpy {np.__version__}"
  )
  print("front end: included in both steps (JAX on-device log-mel; torch.stft log-mel)")

  demo = load_config("demo")
  vitb = config_lib.base_config()
  vitb.model.dtype = "float32"
  runs = [
    ("demo", "demo (configs/demo.py)", demo, args.demo_batch),
    ("vitb", "ViT-B (base_config, float32)", vitb, args.vitb_batch),
  ]
  for key, title, c, b in runs:
    if key in args.configs and not args.no_steps:
      bench_config(title, c, b, args.reps)
  for key, title, c, b in runs if args.profile else []:
    if key in args.configs:
      profile_parts(title.split(" (")[0], c, b, args.reps)
  load, usable = os.getloadavg()[0], len(os.sched_getaffinity(0))
  print(f"\nload average at end {os.getloadavg()}")
  if load > os.cpu_count() and usable > 1:
    print(
      f"WARNING: load average {load:.1f} > {os.cpu_count()} cores. Under oversubscription "
      f"torch's OpenMP pool ({usable} threads) loses far more than XLA's; for a fair ratio "
      "rerun on an idle machine or pinned to one core (taskset -c 0)."
    )


if __name__ == "__main__":
  main()
