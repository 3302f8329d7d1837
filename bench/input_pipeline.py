"""Input pipeline throughput: clips/s read + cropped (10 s) + batched on the demo set.

  python bench/input_pipeline.py [--data_dir=...] [--num_clips=2000] [--batches=40]

Baseline, measured in the same run: reading the same number of records straight from
the TFDS ArrayRecord source (no crop, no batching). Ratios are pipeline / baseline.
Builds the demo set first if it is missing (a minute or so).
"""

from __future__ import annotations

import itertools
import time

from absl import app, flags

from jaxclap.data import build, pipeline

_DATA_DIR = flags.DEFINE_string("data_dir", build.DEFAULT_DATA_DIR, "TFDS data dir.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 2000, "Demo clips to build if missing.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches timed per setting.")
_BATCH = flags.DEFINE_integer("global_batch", 32, "Batch size.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts to time.")
CROP_10S = 160_000


def _rate(make_iter, batches: int) -> float:
  """Clips/s after one warm-up batch (worker start-up is not throughput)."""
  it = make_iter()
  next(it)
  start = time.perf_counter()
  consumed = sum(b["audio"].shape[0] for b in itertools.islice(it, batches))
  return consumed / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
  del argv
  info = build.ensure_demo_dataset(_DATA_DIR.value, num_clips=_NUM_CLIPS.value)
  source = pipeline.open_source(build.DEMO, "train", _DATA_DIR.value)
  n = _BATCHES.value * _BATCH.value
  print(
    f"demo train split: {len(source)} clips; {info['text_model']} dim "
    f"{info['embedding_dim']}; crop {CROP_10S} samples; batch {_BATCH.value}"
  )

  start = time.perf_counter()
  for i in range(n):
    source[i % len(source)]
  baseline = n / (time.perf_counter() - start)
  print(f"baseline: raw record reads       {baseline:8.1f} clips/s  (1.00x)")

  for workers in map(int, _WORKERS.value):
    loader = pipeline.make_loader(
      source,
      global_batch=_BATCH.value,
      crop_samples=CROP_10S,
      seed=0,
      num_workers=workers,
      process_index=0,
      process_count=1,
    )
    rate = _rate(lambda: iter(loader), _BATCHES.value)
    print(
      f"pipeline: {workers} worker(s)              {rate:8.1f} clips/s  "
      f"({rate / baseline:.2f}x baseline)"
    )


if __name__ == "__main__":
  app.run(main)
