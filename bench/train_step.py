"""Stage-1 train-step speed on CPU: jaxclap (JAX) against the PyTorch recipe, one process.

For (a) the demo config's model (tiny, 80×208) and (b) ViT-B 80×608 at a small batch, times
the full stage-1 train step — log-mel front end (in both), masking, online encoder,
predictor, EMA target forward, norm_mse + λ·InfoNCE, gradients, clipping, AdamW, EMA update
— in JAX (`jaxclap.train.step.jit_steps`, 1-device mesh) and in PyTorch
(bench/torch_m2d.py, all cores), each at float32 and at bf16: jaxclap `model.dtype=bfloat16`
(bf16 matmul operands, float32 accumulation) and PyTorch under
`torch.autocast("cpu", torch.bfloat16)`. The four steps and the four matmul peak probes
(f32 and bf16->f32 `jnp.dot`; f32 and autocast-bf16 `torch.mm`) run in turn in the same loop
so that load from other processes hits all alike; min and median are reported, with the
four ratios jaxclap/PyTorch (fp32 and bf16 each side) and each step's share of its own
bf16->f32 matmul peak.

  python bench/train_step.py [--quick] [--reps 5] [--vitb_batch 4] [--demo_batch 64]
                             [--precisions both|f32|bf16]
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
    "caption_embedding": rng.standard_normal((batch, text_dim)).astype(np.float32),
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


def torch_train_step(c: ml_collections.ConfigDict, batch: dict, bf16: bool = False) -> Callable:
  """Run-one-step closure for the PyTorch baseline (same config; bf16: CPU autocast)."""
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
  text = torch.from_numpy(batch["caption_embedding"])
  return lambda: torch_m2d.train_step(
    model, opt, wave, text, ema_decay=c.train.ema_start, grad_clip=c.optim.grad_clip, bf16=bf16
  )


def matmul_probes(n: int = 2048) -> dict[str, tuple[Callable, float]]:
  """n×n matmuls in JAX and torch, f32 and bf16 operands with f32 accumulation: (run, FLOPs)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  a16 = a.astype(jnp.bfloat16)
  dot = jax.jit(jnp.dot)
  dot16 = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  ta = torch.randn(n, n)

  def torch_mm16() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
      torch.mm(ta, ta)

  return {
    "jax_dot_f32": (lambda: jax.block_until_ready(dot(a, a)), 2.0 * n**3),
    "jax_dot_bf16": (lambda: jax.block_until_ready(dot16(a16, a16)), 2.0 * n**3),
    "torch_mm_f32": (lambda: torch.mm(ta, ta), 2.0 * n**3),
    "torch_mm_bf16": (torch_mm16, 2.0 * n**3),
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


STEPS = ("jax_f32", "jax_bf16", "torch_f32", "torch_bf16")


def bench_config(
  title: str, c: ml_collections.ConfigDict, batch_size: int, reps: int, precisions: str = "both"
) -> dict[str, float]:
  """Times JAX and PyTorch steps (fp32 and bf16) plus matmul probes, in turn; prints a summary."""
  c.train.global_batch = batch_size
  frames = c.data.crop_frames
  batch = synthetic_batch(batch_size, frames, c.model.text_dim)
  print(
    f"\n== {title}: size={c.model.size} 80x{frames} batch={batch_size} "
    f"predictor={c.model.predictor_width}x{c.model.predictor_depth} "
    f"text_dim={c.model.text_dim} clap_dim={c.model.clap_dim} ==",
    flush=True,
  )
  want = {"both": ("f32", "bf16"), "f32": ("f32",), "bf16": ("bf16",)}[precisions]
  steps, xla_flops = {}, {}
  for prec in want:
    cc = ml_collections.ConfigDict(c.to_dict())
    cc.model.dtype = "float32" if prec == "f32" else "bfloat16"
    steps[f"jax_{prec}"], xla_flops[prec], compile_s = jax_train_step(cc, batch)
    print(f"JAX {prec} compile {compile_s:.1f} s", flush=True)
    steps[f"torch_{prec}"] = torch_train_step(c, batch, bf16=prec == "bf16")
  probes = matmul_probes()
  ana = analytic_step_flops(c.model, frames, batch_size)
  fns = {}
  for k, (fn, _) in probes.items():
    fns[k] = fn
  for k in STEPS:
    if k in steps:
      fns[k] = steps[k]
  t = alternate(fns, reps)
  med = {k: statistics.median(v) for k, v in t.items()}
  peak = {k: probes[k][1] / min(t[k]) for k in probes}
  print(
    f"analytic {ana / batch_size / 1e9:.2f} GFLOP/clip; XLA cost analysis "
    + ", ".join(f"{p} {f / batch_size / 1e9:.2f}" for p, f in xla_flops.items())
  )
  print(
    "step times (s), in run order: "
    + "; ".join(f"{k} [{', '.join(f'{x:.3f}' for x in t[k])}]" for k in STEPS if k in t)
  )
  print(
    f"matmul peaks (2048², best of {reps}, GFLOP/s): "
    + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peak.items())
  )
  for k in STEPS:
    if k not in t:
      continue
    probe = "jax_dot" if k.startswith("jax") else "torch_mm"
    own16, own32 = peak[f"{probe}_bf16"], peak[f"{probe}_f32"]
    lo, md = min(t[k]), med[k]
    print(
      f"{k:10s} {md * 1e3:8.1f} ms/step (min {lo * 1e3:8.1f})  clips/s median "
      f"{batch_size / md:6.2f} min-time {batch_size / lo:6.2f}  analytic {ana / lo / 1e9:6.1f} "
      f"GFLOP/s = {ana / lo / own16:5.1%} of own bf16->f32 peak, {ana / lo / own32:5.1%} of "
      "own f32 peak"
    )
  ratios = {}
  for j in ("f32", "bf16"):
    for p in ("f32", "bf16"):
      if f"jax_{j}" in t and f"torch_{p}" in t:
        per_round = [tt / tj for tj, tt in zip(t[f"jax_{j}"], t[f"torch_{p}"])]
        ratios[(j, p)] = min(t[f"torch_{p}"]) / min(t[f"jax_{j}"])
        print(
          f"jaxclap {j:4s} / PyTorch {p:4s} clips/s: {ratios[(j, p)]:.2f}x (ratio of min "
          f"times), {statistics.median(per_round):.2f}x (median of per-round ratios)"
        )
  print(
    "targets: jaxclap bf16 >= 1.3x PyTorch bf16 and >= 1.5x PyTorch fp32 (ViT-B), >= 70% of "
    "bf16 peak; demo no slower than PyTorch",
    flush=True,
  )
  return {"ratios": ratios, **{k: med[k] for k in STEPS if k in med}}


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
  wave, text = torch.from_numpy(batch["audio"]), torch.from_numpy(batch["caption_embedding"])
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
  fns = {"jax_dot": probes["jax_dot_f32"][0], "torch_mm": probes["torch_mm_f32"][0]}
  for k in jax_parts:
    fns["jax " + k], fns["torch " + k] = jax_parts[k], torch_parts[k]
  t = {k: statistics.median(x) for k, x in alternate(fns, reps).items()}
  peak = {
    "jax": probes["jax_dot_f32"][1] / t["jax_dot"],
    "torch": probes["torch_mm_f32"][1] / t["torch_mm"],
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
  parser.add_argument(
    "--precisions", default="both", choices=["both", "f32", "bf16"], help="steps to time"
  )
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
    ("vitb", "ViT-B (base_config)", vitb, args.vitb_batch),
  ]
  for key, title, c, b in runs:
    if key in args.configs and not args.no_steps:
      bench_config(title, c, b, args.reps, args.precisions)
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
