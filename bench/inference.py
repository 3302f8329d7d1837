"""Inference throughput: 10 s clips/s of `frame_features`, JAX vs a PyTorch baseline.

A randomly initialised stage-1 ViT-B (input_frames 608, as trained) encodes the same clips
in both frameworks with the official runtime's chunking (10 s = 1001 frames → chunks of
608 and 393 → 400 frames). JAX: `jaxclap.inference.Model.frame_features` (segmented
on-device log-mel, chunks batched across clips). PyTorch: `bench/torch_m2d.py`'s encoder
with the same weights under `torch.inference_mode`, torch.stft log-mel, chunks of all clips
batched likewise. Prints clips/s of each, the ratio and the max abs difference of the
features.

  python bench/inference.py [--clips 4] [--rounds 3] [--size base] [--seconds 10]

Distillation (`--student DIR --teacher DIR`): end-to-end CLAP audio embeddings
(`jaxclap.load(...).audio_embedding`: decode-free waveform → log-mel → chunks → encoder →
head) of the student and its teacher, interleaved rounds, clips/s min and median of each and
their ratio; then the student exported by `jaxclap.onnx_export` under ONNX Runtime (CPU
provider): the same log-mel and chunks, the chunks in one ONNX batch (frame features and
per-chunk embeddings), clips/s beside JAX's frame features, the largest difference to JAX,
and the files' sizes on disk.

  python bench/inference.py --student DIR --teacher DIR [--clips 16] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_m2d  # noqa: E402  (bench/ sibling module)

from jaxclap import inference  # noqa: E402
from jaxclap.audio import frontend  # noqa: E402
from jaxclap.audio import norm_stats as norm_stats_lib  # noqa: E402
from jaxclap.models import m2d, patches  # noqa: E402


def torch_frame_features(
  tm: torch_m2d.TorchM2D, wave: torch.Tensor, unit: int, patch: int = 16
) -> torch.Tensor:
  """[N, S] → [N, T', F'·D]: log-mel, chunks of `unit` frames (last padded to a patch)."""
  x = tm.frontend(wave)
  t = x.shape[-1]
  pad = (patch - (t % unit % patch)) % patch
  x = torch.nn.functional.pad(x, (0, pad))
  enc = tm.encoder
  gf, gt = tm.grid
  d = enc.pos.shape[-1]
  outs = []
  for start in range(0, t, unit):
    c = x[..., start : start + unit]
    tc = c.shape[-1] // patch
    pos = enc.pos.reshape(gf, gt, d)[:, :tc].reshape(gf * tc, d)
    tokens = enc.body(enc.with_cls(enc.patch_embed(c) + pos))[:, 1:]
    outs.append(tokens.reshape(-1, gf, tc, d).permute(0, 2, 1, 3).reshape(-1, tc, gf * d))
  return torch.cat(outs, dim=1)


def _rates(clips: int, times: list[float]) -> str:
  return f"min {clips / max(times):7.2f}  median {clips / statistics.median(times):7.2f} clips/s"


def distill_bench(args: argparse.Namespace) -> None:
  """Student vs teacher clips/s (JAX, end to end), and the student under ONNX Runtime."""
  import onnxruntime as ort  # The onnx extra.

  from jaxclap import onnx_export

  student = inference.load(args.student, batch_size=args.clips, progress=False)
  teacher = inference.load(args.teacher, batch_size=args.clips, progress=False)
  sr = student.sample_rate
  rng = np.random.default_rng(0)
  clips = (0.1 * rng.standard_normal((args.clips, int(args.seconds * sr)))).astype(np.float32)
  for name, m in (("teacher", teacher), ("student", student)):
    n_params = sum(np.size(v) for v in jax.tree.leaves(m.params["encoder"]))
    print(f"{name}: {m.model.size} encoder, {n_params / 1e6:.2f} M params, chunk {m.unit_frames}")
    t = time.perf_counter()
    m.audio_embedding(clips, sample_rate=sr)
    print(f"  first call (compile + run): {time.perf_counter() - t:.1f} s")
  times = {"teacher": [], "student": []}
  for _ in range(args.rounds):  # Interleaved so machine noise hits both alike.
    for name, m in (("teacher", teacher), ("student", student)):
      t = time.perf_counter()
      m.audio_embedding(clips, sample_rate=sr)
      times[name].append(time.perf_counter() - t)
  for name, ts in times.items():
    print(f"JAX {name} audio_embedding: {_rates(args.clips, ts)}")
  ratios = [t / s for t, s in zip(times["teacher"], times["student"])]
  speedup = statistics.median(times["teacher"]) / statistics.median(times["student"])
  print(
    f"student/teacher clips/s: {speedup:.2f}x"
    f" (ratio of medians), per-round ratios min {min(ratios):.2f}x median "
    f"{statistics.median(ratios):.2f}x"
  )

  with tempfile.TemporaryDirectory() as tmp:
    out = onnx_export.export(args.student, tmp)
    for name, size in out["bytes"].items():
      print(f"export {name}: {size / 1e6:.2f} MB")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(out["onnx"], opts, providers=["CPUExecutionProvider"])

    def ort_frames(waves: np.ndarray) -> list[np.ndarray]:
      chunks = [
        inference.time_chunks(student._log_mel(w), student.unit_frames, student.patch_size)
        for w in waves
      ]
      full = [c for cs in chunks for c in cs if c.shape[-1] == student.unit_frames]
      if len(full) != sum(len(cs) for cs in chunks):
        raise ValueError("--seconds: use a whole number of the student's chunks for ONNX")
      feats, _ = session.run(None, {"log_mel": np.stack(full)})
      per = len(chunks[0])
      return [np.concatenate(feats[i * per : (i + 1) * per]) for i in range(len(waves))]

    got = ort_frames(clips)
    want = student.frame_features(clips, sample_rate=sr)
    print(f"ONNX vs JAX frame features: max abs diff {np.abs(np.stack(got) - want).max():.3g}")
    ort_t, jax_t = [], []
    for _ in range(args.rounds):
      t = time.perf_counter()
      ort_frames(clips)
      ort_t.append(time.perf_counter() - t)
      t = time.perf_counter()
      student.frame_features(clips, sample_rate=sr)
      jax_t.append(time.perf_counter() - t)
    print(f"ONNX Runtime student frame features: {_rates(args.clips, ort_t)}")
    print(f"JAX student frame features:          {_rates(args.clips, jax_t)}")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--clips", type=int, default=4, help="Clips per round (also the batch).")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--size", default="base")
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--input_frames", type=int, default=608)
  parser.add_argument("--student", help="A distilled student's workdir (with --teacher).")
  parser.add_argument("--teacher", help="Its teacher's workdir.")
  args = parser.parse_args()

  torch.set_num_threads(os.cpu_count() or 1)
  print(
    f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
    f"load average {os.getloadavg()}"
  )
  print(
    f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
    f"({torch.get_num_threads()} threads)"
  )
  if args.student or args.teacher:
    if not (args.student and args.teacher):
      parser.error("--student and --teacher go together")
    distill_bench(args)
    return
  cfg = {"size": args.size, "text_dim": 768, "input_frames": args.input_frames}
  model = m2d.build_model(cfg)
  fcfg = frontend.FrontendConfig()
  online, target = nn.unbox(
    m2d.init_params(model, jax.random.key(0), n_frames=args.input_frames, text_dim=768)
  )
  jm = inference.Model(
    model,
    online,
    frontend_cfg=fcfg,
    norm_stats=norm_stats_lib.LEGACY_NORM_STATS,
    batch_size=args.clips,
    progress=False,
  )
  tm = torch_m2d.TorchM2D(cfg, n_frames=args.input_frames, clap_weight=0.01)
  torch_m2d.load_jax_params(tm, online, target)
  tm.eval()

  samples = int(args.seconds * fcfg.sample_rate)
  rng = np.random.default_rng(0)
  clips = (0.1 * rng.standard_normal((args.clips, samples))).astype(np.float32)
  n_frames = fcfg.num_frames(samples)
  chunks = [
    c.shape[-1] for c in inference.time_chunks(np.zeros((80, n_frames)), args.input_frames, 16)
  ]
  print(
    f"== {args.size}: {args.clips} clips of {args.seconds:g} s = {n_frames} frames → "
    f"chunks {chunks}; grid F'={patches.grid_size(80, args.input_frames)[0]} =="
  )

  t0 = time.perf_counter()
  jax_out = jm.frame_features(clips, sample_rate=fcfg.sample_rate)
  print(f"JAX first call (compile + run): {time.perf_counter() - t0:.1f} s")
  wave = torch.from_numpy(clips)
  with torch.inference_mode():
    torch_out = torch_frame_features(tm, wave, args.input_frames).numpy()
  diff = np.abs(jax_out - torch_out)
  print(
    f"features {jax_out.shape}: max abs diff JAX vs PyTorch {diff.max():.3g} "
    f"(max |feature| {np.abs(torch_out).max():.3g}, mean abs diff {diff.mean():.3g})"
  )

  jax_t, torch_t = [], []
  for _ in range(args.rounds):  # Interleaved so machine noise hits both alike.
    t = time.perf_counter()
    jm.frame_features(clips, sample_rate=fcfg.sample_rate)
    jax_t.append(time.perf_counter() - t)
    t = time.perf_counter()
    with torch.inference_mode():
      torch_frame_features(tm, wave, args.input_frames)
    torch_t.append(time.perf_counter() - t)
  print(
    "round times (s): jax "
    + str([round(x, 3) for x in jax_t])
    + "; torch "
    + str([round(x, 3) for x in torch_t])
  )
  jax_cps = args.clips / statistics.median(jax_t)
  torch_cps = args.clips / statistics.median(torch_t)
  ratios = [tt / jt for jt, tt in zip(jax_t, torch_t)]
  print(f"JAX     {jax_cps:7.2f} clips/s")
  print(f"PyTorch {torch_cps:7.2f} clips/s")
  print(
    f"JAX/PyTorch clips/s: {jax_cps / torch_cps:.2f}x (ratio of medians), "
    f"{statistics.median(ratios):.2f}x (median of per-round ratios)"
  )


if __name__ == "__main__":
  main()
