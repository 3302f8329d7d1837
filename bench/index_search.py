"""Search-your-audio index: build clips/s on CPU, and query latency and recall at 10k / 100k.

1. Build: `jaxclap.index` indexes `--clips` generated clips of `--seconds` s (noise and
   tones, wav) with a randomly initialised stage-1 ViT (`--size`, input 608 frames as the
   2024 releases): decode, log-mel, chunked encoder, whole-file and per-chunk CLAP
   embeddings, commits. Prints files/s and audio seconds per second, compile included and
   not (a second build of as many new files with the jit caches warm).
2. Search: synthetic unit vectors (768-d, varying along RANK random directions plus a little
   isotropic noise) with a modality gap (audio rows around one direction, text queries
   around another), stored as an index of files with one clip and three chunk rows each;
   `--entries` rows in all. Per size: exact float32 search and the
   usearch graph (f16, tuned by jaxclap.index.ann until recall@10 ≥ 0.9 on probe queries);
   p50 / p99 latency of `Index.search(vector=...)` over 200 queries (the query's embedding
   not included), and recall@10 of the approximate file ranking against exact for held-out
   text-like and audio-like queries.

    python bench/index_search.py [--clips 16] [--seconds 10] [--size base] [--entries 10000,100000]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
import soundfile as sf

from jaxclap import inference
from jaxclap.audio import frontend
from jaxclap.audio import norm_stats as norm_stats_lib
from jaxclap.index import ann, indexer, search
from jaxclap.index import store as store_lib
from jaxclap.models import m2d

DIM, CHUNKS_PER_FILE, QUERIES = 768, 3, 200
RANK = 48  # Embeddings vary along a few dozen directions (CLAP spaces have low effective rank).


def _unit(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _write_clips(folder: str, n: int, seconds: float, offset: int = 0) -> None:
  """n clips of noise plus a tone each (16 kHz wav)."""
  rng = np.random.default_rng(offset)
  t = np.arange(int(seconds * 16000)) / 16000
  for i in range(n):
    tone = 0.3 * np.sin(2 * np.pi * (200 + 37 * (i + offset)) * t)
    sf.write(f"{folder}/clip{i + offset:05d}.wav", tone + 0.05 * rng.normal(size=t.size), 16000)


def bench_build(size: str, clips: int, seconds: float) -> None:
  """Index build throughput with a randomly initialised ViT."""
  model = m2d.build_model({"size": size, "text_dim": 768, "input_frames": 608})
  online, _ = nn.unbox(m2d.init_params(model, jax.random.key(0), n_frames=608, text_dim=768))
  jm = inference.Model(
    model,
    online,
    frontend_cfg=frontend.FrontendConfig(),
    norm_stats=norm_stats_lib.LEGACY_NORM_STATS,
    progress=False,
  )
  with tempfile.TemporaryDirectory() as tmp:
    audio, out = f"{tmp}/audio", f"{tmp}/index"
    os.makedirs(audio)
    _write_clips(audio, clips, seconds)
    for label in ("first build (compiles included)", "second build, new files (warm)"):
      start = time.perf_counter()
      r = indexer.build(jm, f"random {size}", audio, out)
      took = time.perf_counter() - start
      print(
        f"build {label}: {len(r.embedded)} files, {r.audio_seconds:.0f} s of audio in "
        f"{took:.1f} s: {len(r.embedded) / took:.2f} files/s, {r.audio_seconds / took:.1f}x "
        "real time"
      )
      _write_clips(audio, clips, seconds, offset=clips)


def _spread(rng: np.random.Generator, basis: np.ndarray, n: int) -> np.ndarray:
  """n unit directions in the span of `basis` [RANK, DIM], plus 10% isotropic noise."""
  low = rng.normal(size=(n, RANK)) @ basis
  return _unit(_unit(low) + 0.1 * _unit(rng.normal(size=(n, DIM))))


def _synthetic_index(
  folder: str, entries: int, rng: np.random.Generator, basis: np.ndarray
) -> np.ndarray:
  """An index of entries / 4 files (1 clip + 3 chunk rows each); the audio direction."""
  audio_dir = _unit(rng.normal(size=DIM))
  files = entries // (1 + CHUNKS_PER_FILE)
  ident = {"name": "synthetic", "embedding_dim": DIM, "unit_frames": 1001}
  ident["frontend"] = {"hop_length": 160, "sample_rate": 16000}
  writer = store_lib.Store.writer(folder, {"root": folder, "model": ident})
  for start in range(0, files, 5000):
    n = min(5000, files - start)
    rows = _unit(0.8 * audio_dir + 0.6 * _spread(rng, basis, n * 4))
    items = [
      store_lib.Embedded(
        store_lib.FileRecord(f"f{start + i:07d}.wav", 1, 1, "0" * 64, 30.0, CHUNKS_PER_FILE),
        rows[4 * i],
        rows[4 * i + 1 : 4 * i + 4],
      )
      for i in range(n)
    ]
    writer.commit(items)
  writer.compact()
  writer.close()
  return audio_dir


def _latency(index: search.Index, queries: np.ndarray, approximate: bool) -> tuple[float, float]:
  times = []
  for q in queries:
    start = time.perf_counter()
    index.search(vector=q, k=10, approximate=approximate)
    times.append(time.perf_counter() - start)
  return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def _file_recall(index: search.Index, queries: np.ndarray) -> float:
  """Share of the exact top-10 files that the approximate search returns in its top 10."""
  got = []
  for q in queries:
    want = {h.path for h in index.search(vector=q, k=10)}
    have = {h.path for h in index.search(vector=q, k=10, approximate=True)}
    got.append(len(want & have) / 10)
  return float(np.mean(got))


def bench_search(entries: int) -> None:
  """Exact and approximate search over `entries` synthetic rows."""
  rng = np.random.default_rng(entries)
  with tempfile.TemporaryDirectory() as folder:
    basis = _unit(rng.normal(size=(RANK, DIM)))
    audio_dir = _synthetic_index(folder, entries, rng, basis)
    text_dir = _unit(rng.normal(size=DIM))
    index = search.Index(folder)
    text_q = _unit(0.8 * text_dir + 0.6 * _spread(rng, basis, QUERIES))
    audio_q = _unit(0.8 * audio_dir + 0.6 * _spread(rng, basis, QUERIES))
    probes = _unit(0.8 * text_dir + 0.6 * _spread(rng, basis, 24))
    queries = np.concatenate([text_q[: QUERIES // 2], audio_q[: QUERIES // 2]])
    p50, p99 = _latency(index, queries, approximate=False)
    rows = len(index.vectors())
    print(f"{rows} entries ({len(index)} files): exact   p50 {p50:.2f} ms  p99 {p99:.2f} ms")
    start = time.perf_counter()
    # force: report the numbers even where the check would refuse the graph (it says so).
    graph, facts = ann.build(index.vectors(), probes, dtype="f16", force=True)
    built = time.perf_counter() - start
    ann.save(folder, graph, facts, index.store.state_sha256())
    p50, p99 = _latency(index, queries, approximate=True)
    print(
      f"{rows} entries: approx  p50 {p50:.2f} ms  p99 {p99:.2f} ms  (f16 graph built and "
      f"tuned in {built:.0f} s, search breadth {facts['expansion_search']}; probe recall@10 "
      f"audio {facts['recall_audio']:.3f} text {facts['recall_text']:.3f})"
    )
    print(
      f"{rows} entries: file recall@10 of approximate vs exact, held-out queries: text "
      f"{_file_recall(index, text_q[:50]):.3f}, audio {_file_recall(index, audio_q[:50]):.3f}"
    )
    shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--clips", type=int, default=16)
  p.add_argument("--seconds", type=float, default=10.0)
  p.add_argument("--size", default="base")
  p.add_argument("--entries", default="10000,100000")
  p.add_argument("--skip_build", action="store_true")
  args = p.parse_args()
  print(
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}"
  )
  if not args.skip_build:
    bench_build(args.size, args.clips, args.seconds)
  for entries in (int(x) for x in args.entries.split(",")):
    bench_search(entries)


if __name__ == "__main__":
  main()
