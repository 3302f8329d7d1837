"""Stage-1 train-step throughput on CPU: ViT-B, 80×608 crops, batch 4.

Prints forward+backward clips/s of `stage1_loss`, its FLOP/s (XLA cost analysis and an
analytic matmul count) and the ratio to a large f32 `jnp.dot` measured in the same process;
also times the attention backends (model.attention: "einsum", "xla") at f32 and bf16 at the
step's shapes (encoder visible tokens, target, predictor's 16 heads of 32).

  python bench/model.py [--batch 4] [--size base] [--iters 5]
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxclap import layers
from jaxclap.audio import frontend
from jaxclap.models import m2d, sizes
from jaxclap.train import objectives


def timeit(fn: Callable[[], object], iters: int) -> float:
  """Best wall time of `iters` calls (after one warm-up call)."""
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return best


def matmul_flops_per_s(n: int = 2048, iters: int = 5) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  return 2 * n**3 / timeit(lambda: dot(a, a), iters)


def analytic_step_flops(model: m2d.M2D, batch: int, n_patches: int, visible: int) -> float:
  """Matmul FLOPs of forward + backward (×3 for trained parts; target forward only)."""
  w, depth, _ = sizes.get_size(model.size)
  pw, pd = model.predictor_width, model.predictor_depth

  def blocks(n_tok: int, d: int, n_blocks: int) -> float:
    per = 2 * n_tok * (d * 3 * d + d * d + 8 * d * d) + 4 * n_tok * n_tok * d
    return n_blocks * per

  online = blocks(visible + 1, w, depth) + 2 * n_patches * 256 * w
  predictor = (
    blocks(n_patches + 1, pw, pd) + 2 * (visible + 1) * w * pw + 2 * (n_patches - visible) * pw * w
  )
  head = blocks(visible + 1, w, 1) / 4 if model.clap_head == "semantic" else 0.0
  target = blocks(n_patches - visible + 1, w, depth)
  return batch * (3 * (online + predictor + head) + target)


def time_step(args: argparse.Namespace, model: m2d.M2D, peak: float, n: int, v: int) -> None:
  """Times the stage-1 fwd+bwd and prints its FLOP/s."""
  fe = frontend.FrontendConfig()
  online, target = nn.unbox(
    m2d.init_params(model, jax.random.key(0), n_frames=args.frames, text_dim=768)
  )
  s = (args.frames - 1) * fe.hop_length
  batch = {
    "audio": 0.1 * jax.random.normal(jax.random.key(1), (args.batch, s)),
    "audio_len": jnp.full((args.batch,), s, jnp.int32),
    "caption_embedding": jax.random.normal(jax.random.key(2), (args.batch, 768)),
  }

  def loss(o):
    return objectives.stage1_loss(
      o, target, batch, jax.random.key(3), model=model, frontend_cfg=fe, norm_stats=(-7.1, 4.2)
    )[0]

  step = jax.jit(jax.value_and_grad(loss))
  t0 = time.perf_counter()
  compiled = step.lower(online).compile()
  print(f"compile: {time.perf_counter() - t0:.1f} s")
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
  sec = timeit(lambda: compiled(online), args.iters)
  ana = analytic_step_flops(model, args.batch, n, v)
  print(
    f"stage-1 fwd+bwd {args.size} 80x{args.frames} batch {args.batch}: {sec * 1e3:.0f} ms "
    f"= {args.batch / sec:.2f} clips/s"
  )
  print(
    f"  XLA cost-analysis FLOPs {xla_flops / 1e9:.1f} G → {xla_flops / sec / 1e9:.1f} "
    f"GFLOP/s = {xla_flops / sec / peak:.2f} × jnp.dot"
  )
  print(
    f"  analytic matmul FLOPs  {ana / 1e9:.1f} G → {ana / sec / 1e9:.1f} GFLOP/s "
    f"= {ana / sec / peak:.2f} × jnp.dot"
  )


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--size", default="base")
  parser.add_argument("--frames", type=int, default=608)
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--attention_only", action="store_true", help="skip the step timing")
  args = parser.parse_args()

  print(f"devices: {jax.devices()}")
  peak = matmul_flops_per_s()
  print(f"jnp.dot 2048² f32: {peak / 1e9:.1f} GFLOP/s")

  model = m2d.build_model({"size": args.size, "text_dim": 768})
  n = 5 * (args.frames // 16)
  v = m2d.num_visible(n, model.mask_ratio)
  if not args.attention_only:
    time_step(args, model, peak, n, v)

  w, _, h = sizes.get_size(args.size)
  for n_tok, heads, d in ((v + 1, h, w), (n - v + 1, h, w), (n + 1, 16, 512)):
    q, k, val = jax.random.normal(jax.random.key(4), (3, args.batch, n_tok, heads, d // heads))
    impls = {
      f"{backend} {dt.__name__}": functools.partial(layers.attention, dtype=dt, backend=backend)
      for dt in (jnp.float32, jnp.bfloat16)
      for backend in layers.ATTENTION_BACKENDS
    }
    times = {}
    for name, fn in impls.items():
      g = jax.jit(jax.grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2)))
      times[name] = timeit(lambda g=g: g(q, k, val), args.iters * 4)
    print(
      f"  attention fwd+bwd N={n_tok} H={heads}: "
      + ", ".join(f"{k} {t * 1e3:.2f} ms" for k, t in times.items())
    )


if __name__ == "__main__":
  main()
