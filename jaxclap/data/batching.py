"""Whole batches built where the examples are made: in grain's worker processes.

Batch k of a process is a pure function of k: its examples are stream positions
[kB, (k+1)B) of that process, each read, cropped and captioned from the sampler's record
and per-record rng, then stacked. grain's dataset API maps positions to examples, batches
them (`MapDataset.batch`) and, with workers, hands worker w the batches w, w + W, ...
(`mp_prefetch`), read back in turn. So a batch is identical for any worker count, and
the main process only receives finished batches through shared memory (and turns their
int16 audio into float32, see `stack`).

The iterator's state is its position in the stream (iterator_state.py), so a restore
rebuilds the pipeline from that position, whatever the worker count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import grain
import numpy as np
from grain.multiprocessing import SharedMemoryArray

from jaxclap.audio import io as audio_io
from jaxclap.data import iterator_state

PREFETCH_BATCHES = 2  # Batches each worker (or the main process's reading thread) holds ready.
SHM_MIN_BYTES = 1 << 20  # Worker outputs at least this big are handed over in shared memory.


def stack(elements: list[dict[str, np.ndarray]], shared: bool = False) -> dict[str, np.ndarray]:
  """One batch of examples. In-process, int16 audio becomes float32 straight into the batch
  array. A worker (`shared`) leaves it int16, in shared memory: fresh shared pages cost more
  than the conversion, so handing over half the bytes and converting them in the main
  process (`received`) costs less CPU in all than converting here."""
  batch = {k: np.stack([e[k] for e in elements]) for k in elements[0] if k != "audio"}
  shape = (len(elements), elements[0]["audio"].shape[0])
  if shared:
    audio = SharedMemoryArray(shape, np.int16)
    for row, e in zip(audio, elements):
      row[:] = e["audio"]
  else:
    audio = np.empty(shape, np.float32)
    for row, e in zip(audio, elements):
      audio_io.pcm16_to_float(e["audio"], out=row)
  batch["audio"] = audio
  return batch


def received(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A batch as the trainer takes it: plain arrays, float32 audio (a worker's int16 audio
  is converted out of shared memory, which is freed with the view)."""
  out = {k: np.asarray(v) for k, v in batch.items()}
  if out["audio"].dtype == np.int16:
    out["audio"] = audio_io.pcm16_to_float(out["audio"])
  return out


@dataclasses.dataclass(frozen=True)
class Examples:
  """Stream position j of one process -> its example (pickled into each worker)."""

  source: Any  # Random-access source of elements (pipeline.MixedSource).
  sampler: grain.samplers.IndexSampler  # Record key and rng of each global position.
  transform: grain.transforms.RandomMap  # Crop/caption or crop/label of one element.
  process_index: int
  process_count: int

  def __len__(self) -> int:
    """Positions this process reads (sys.maxsize // count for an endless stream)."""
    return len(self.sampler) // self.process_count

  def __call__(self, position: int) -> dict[str, Any]:
    # Process p reads global positions p, p + count, ...: the same records and rngs reach
    # each global step whatever the process count (see iterator_state.py).
    meta = self.sampler[position * self.process_count + self.process_index]
    return self.transform.random_map(self.source[meta.record_key], meta.rng)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a process reads: its examples, batch size and worker count."""

  examples: Examples
  batch_size: int
  drop_remainder: bool
  num_workers: int

  def dataset(self, start: int) -> grain.IterDataset:
    """Batches of positions [start, end), built in `num_workers` processes (0: here)."""
    workers = self.num_workers > 0
    # In a worker, batches are built on demand (no thread buffer): every finished batch goes
    # straight to grain's queue, which unlinks the shared memory of any it never hands over.
    read = grain.ReadOptions(
      num_threads=0 if workers else 1, prefetch_buffer_size=0 if workers else PREFETCH_BATCHES
    )
    ds = (
      grain.MapDataset.range(start, len(self.examples))
      .map(self.examples)
      .batch(
        self.batch_size,
        drop_remainder=self.drop_remainder,
        batch_fn=functools.partial(stack, shared=workers),
      )
      .to_iter_dataset(read)
    )
    if workers:
      # Only the audio travels through shared memory; small arrays are cheaper pickled.
      ds = grain.experimental.WithOptionsIterDataset(
        ds, grain.experimental.DatasetOptions(min_shm_size=SHM_MIN_BYTES)
      )
      ds = ds.mp_prefetch(
        grain.MultiprocessingOptions(
          num_workers=self.num_workers, per_worker_buffer_size=PREFETCH_BATCHES
        )
      )
    return ds

  def state(self, consumed: int) -> dict[str, Any]:
    """The iterator state after `consumed` positions of this process."""
    e = self.examples
    return iterator_state.position_state(
      consumed * e.process_count,
      process_index=e.process_index,
      process_count=e.process_count,
      sampler=repr(e.sampler),
      data_source=repr(e.source),
    )


class BatchIterator:
  """This process's batches from a stream position; its state is that position."""

  def __init__(self, plan: Plan):
    self._plan = plan
    self._consumed = 0  # Positions of this process handed out so far.
    self._inner = None  # grain iterator from `_consumed`, started on first use.

  def __iter__(self) -> BatchIterator:
    return self

  def _running(self) -> Any:
    if self._inner is None:
      self._inner = iter(self._plan.dataset(self._consumed))
    return self._inner

  def __next__(self) -> dict[str, np.ndarray]:
    batch = received(next(self._running()))
    self._consumed += batch["audio"].shape[0]
    return batch

  def get_state(self) -> bytes:
    return json.dumps(self._plan.state(self._consumed)).encode()

  def set_state(self, state: bytes | str | dict[str, Any]) -> None:
    """Moves to a saved position (also grain DataLoader states saved before batching
    moved into the workers: the same stream, so they resume exactly)."""
    s = iterator_state.decode(state)
    mine = self._plan.state(0)
    for key in ("sampler", "data_source"):  # The stream itself must be the same one.
      if s.get(key) != mine[key]:
        raise ValueError(
          f"iterator state key {key!r} is {s.get(key)!r}, this input pipeline has "
          f"{mine[key]!r}: the checkpoint was written for other data or another seed"
        )
    e = self._plan.examples
    consumed = iterator_state.records_consumed(
      s, process_index=e.process_index, process_count=e.process_count
    )
    self.close()
    self._consumed = consumed // e.process_count

  def start_prefetch(self) -> None:
    """Starts reading ahead (grain's Orbax CheckpointHandler calls this after restore)."""
    running = self._running()
    if hasattr(running, "start_prefetch"):
      running.start_prefetch()

  def close(self) -> None:
    """Stops the worker processes, if any (they also stop when the iterator is dropped)."""
    if self._inner is not None and hasattr(self._inner, "close"):
      self._inner.close()
    self._inner = None
