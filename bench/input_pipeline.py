"""Input pipeline throughput: clips/s of 10 s crops in batches, per grain worker count.

  python bench/input_pipeline.py [--data_dir=...] [--num_clips=2000] [--batches=40]
      [--rounds=3] [--workers=0,1,2]

Every round times each setting once, in turn, so a change in the machine's load hits all
of them; the table gives min and median clips/s over rounds, the ratios of medians (and
the median of per-round ratios) against one worker and against the in-process loader
(0 workers), and the load average. The consumer copies each batch's audio into a staging
buffer, as a host->device transfer reads it, so every setting pays for reading its batch
(a worker's batch lies in shared memory). Baselines measured in the same rounds: raw record reads
(no crop, no batching), and the per-element loader batching became (grain.DataLoader
handing back single examples, batched in the main process), at 0 workers.

Each setting also reports the CPU time per clip of all its processes and of the main one
alone, which a busy machine changes far less than wall-clock rates; the last line projects
from them the host cores a capacity plan needs (docs/capacity.md) at the largest worker
count, and the rate one trainer process can receive. Builds the demo set if missing.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable, Iterator

import grain
import numpy as np
import psutil
from absl import app, flags

from jaxclap.data import batching, build, pipeline

_DATA_DIR = flags.DEFINE_string("data_dir", build.DEFAULT_DATA_DIR, "TFDS data dir.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 2000, "Demo clips to build if missing.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches timed per setting and round.")
_BATCH = flags.DEFINE_integer("global_batch", 32, "Batch size.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds over all settings.")
_WARMUP = flags.DEFINE_integer("warmup", 4, "Untimed batches per worker (or in-process).")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts to time.")
_LEGACY = flags.DEFINE_bool("legacy", True, "Also time the per-element loader (0 workers).")
_NEEDED = flags.DEFINE_float(
  "needed_clips_per_s", 46_000, "Clips/s the plan needs (8 x H100 at 50% MFU, capacity.md)."
)
CROP_10S = 160_000


def _cpu_seconds() -> np.ndarray:
  """User + system CPU seconds so far: [this process, this process and its workers]."""
  me = psutil.Process()
  out = np.zeros(2)
  for proc in [me, *me.children(recursive=True)]:
    try:
      t = proc.cpu_times()
    except psutil.NoSuchProcess:
      continue
    out += (t.user + t.system) * np.array([proc.pid == me.pid, 1.0])
  return out


def _rate(
  batches: Iterator[dict[str, np.ndarray]], n: int, warmup: int
) -> tuple[float, np.ndarray]:
  """(clips/s, CPU ms per clip [main process, all]) over `n` batches after `warmup` (worker
  start-up is not throughput); each batch's audio is read once, into a staging buffer."""
  staging = np.empty((_BATCH.value, CROP_10S), np.float32)
  for _ in range(warmup):
    next(batches)
  cpu, start = _cpu_seconds(), time.perf_counter()
  clips = 0
  for b in itertools.islice(batches, n):
    if isinstance(b["audio"], np.ndarray):  # Raw reads are a list of records' audio.
      np.copyto(staging[: b["audio"].shape[0]], b["audio"])
    clips += len(b["audio"])
  wall = time.perf_counter() - start
  return clips / wall, 1e3 * (_cpu_seconds() - cpu) / clips


def _raw_reads(source, n: int) -> Iterator[dict[str, np.ndarray]]:
  """Records read straight from the source, `n` at a time (no crop, no batch array)."""
  for k in itertools.count():
    yield {"audio": [source[(k * n + i) % len(source)]["audio"] for i in range(n)]}


def _per_element(source, batch: int) -> Iterator[dict[str, np.ndarray]]:
  """The loader before batching moved into the workers: grain.DataLoader examples, batched
  in the main process (0 workers: records read by grain's threads)."""
  mixed = pipeline.MixedSource([source])
  loader = grain.DataLoader(
    data_source=mixed,
    sampler=grain.samplers.IndexSampler(
      num_records=len(mixed), shuffle=True, num_epochs=None, seed=0
    ),
    operations=[pipeline.CropAndPick(CROP_10S, True, "random")],
    worker_count=0,
    shard_options=grain.sharding.NoSharding(),
  )
  it = iter(loader)
  while True:
    yield batching.stack(list(itertools.islice(it, batch)))


Setting = tuple[Callable[[], Iterator[dict[str, np.ndarray]]], int]


def _settings(source) -> dict[str, Setting]:
  """Name -> (batch iterator factory, warm-up batches). A fresh worker's first batches cost
  it more CPU (imports finishing, files opened, caches cold): the timing starts after
  `_WARMUP` batches from each worker, in the steady state a long run lives in."""
  out = {"raw record reads": (lambda: _raw_reads(source, _BATCH.value), 1)}
  if _LEGACY.value:
    out["per-element loader, 0 workers"] = (lambda: _per_element(source, _BATCH.value), 1)
  for w in map(int, _WORKERS.value):
    loader = pipeline.make_loader(
      source,
      global_batch=_BATCH.value,
      crop_samples=CROP_10S,
      seed=0,
      num_workers=w,
      process_index=0,
      process_count=1,
    )
    warmup = _WARMUP.value * max(1, w)
    out[f"pipeline, {w} worker(s)"] = (lambda loader=loader: iter(loader), warmup)
  return out


def _ratio_line(rates: dict[str, list[float]], num: str, den: str) -> str:
  a, b = rates[num], rates[den]
  per_round = statistics.median(x / y for x, y in zip(a, b))
  return (
    f"{num} / {den}: {statistics.median(a) / statistics.median(b):.2f}x (ratio of medians), "
    f"{per_round:.2f}x (median of per-round ratios)"
  )


def main(argv: list[str]) -> None:
  del argv
  info = build.ensure_demo_dataset(_DATA_DIR.value, num_clips=_NUM_CLIPS.value)
  source = pipeline.open_source(build.DEMO, "train", _DATA_DIR.value)
  print(
    f"demo train split: {len(source)} clips; {info['text_model']} dim "
    f"{info['embedding_dim']}; crop {CROP_10S} samples; batch {_BATCH.value}; "
    f"{_BATCHES.value} batches x {_ROUNDS.value} interleaved rounds; {os.cpu_count()} CPUs"
  )
  settings = _settings(source)
  rates: dict[str, list[float]] = {name: [] for name in settings}
  cpu_ms: dict[str, list[np.ndarray]] = {name: [] for name in settings}
  loads = [os.getloadavg()[0]]
  for r in range(_ROUNDS.value):
    for name, (make, warmup) in settings.items():
      batches = make()
      rate, cost = _rate(batches, _BATCHES.value, warmup)
      rates[name].append(rate)
      cpu_ms[name].append(cost)
      if hasattr(batches, "close"):
        batches.close()  # Stops its worker processes before the next setting.
    loads.append(os.getloadavg()[0])
    print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in rates.items()))
  print(
    "load average (1 min) at start and after each round: " + ", ".join(f"{x:.2f}" for x in loads)
  )
  print(f"{'setting':32s} {'min':>8s} {'median':>8s} clips/s   CPU ms/clip, median: all (main)")
  for name, v in rates.items():
    main_ms, all_ms = np.median(cpu_ms[name], axis=0)
    print(
      f"{name:32s} {min(v):8.1f} {statistics.median(v):8.1f}           {all_ms:.2f} ({main_ms:.2f})"
    )

  workers = sorted(map(int, _WORKERS.value))
  name = "pipeline, {} worker(s)".format
  if 1 in workers and 2 in workers:
    print(_ratio_line(rates, name(2), name(1)) + "   target >= 1.6x")
  if 0 in workers and 2 in workers:
    print(_ratio_line(rates, name(2), name(0)) + "   target >= 1.4x")
  if _LEGACY.value and 2 in workers:
    print(_ratio_line(rates, name(2), "per-element loader, 0 workers"))
  top = workers[-1]
  if top > 0:
    # CPU time per clip does not depend on how busy the machine is; wall-clock rates do.
    main_ms, all_ms = np.median(cpu_ms[name(top)], axis=0)
    per_core = 1e3 / all_ms
    print(
      f"projected: {per_core:.0f} clips/s per busy core ({top} workers, CPU time of all "
      f"processes) -> {_NEEDED.value:,.0f} clips/s needs about "
      f"{int(np.ceil(_NEEDED.value / per_core))} host cores; the main process alone "
      f"({main_ms:.2f} ms/clip) caps one trainer process near {1e3 / main_ms:,.0f} clips/s"
    )


if __name__ == "__main__":
  app.run(main)
