"""The saved input position, and moving it between process counts and worker counts.

Element j of process p (of c) is global stream position p + c·j, whatever its worker count.
So after every process has read n elements, exactly the global positions [0, c·n) are
consumed. That total is the position (`records_consumed` in the state the pipeline saves,
with the sampler and source it belongs to); it can be laid out again for any other process
or worker layout, which is what resuming on a different topology needs.

States saved before batching moved into the workers are grain DataLoader states
(`last_seen_indices` per worker, in global indices); they are read here too, and the
stream they index is the same, so such a checkpoint resumes exactly.
"""

from __future__ import annotations

import json
import re
from typing import Any

_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json$")


def parse_layout(filename: str) -> tuple[int, int]:
  """(process_index, process_count) from grain's `process_<i>-of-<n>.json` file name."""
  m = _FILE.search(filename)
  if not m:
    raise ValueError(f"{filename!r} is not a grain iterator state file (process_<i>-of-<n>.json)")
  return int(m.group(1)), int(m.group(2))


def decode(state: bytes | str | dict[str, Any]) -> dict[str, Any]:
  """A saved state as a dict (grain writes it as JSON bytes)."""
  return state if isinstance(state, dict) else json.loads(state)


def position_state(
  consumed: int, *, process_index: int, process_count: int, sampler: str, data_source: str
) -> dict[str, Any]:
  """The state of a pipeline `consumed` global records in, for one process."""
  return {
    "records_consumed": consumed,
    "process_index": process_index,
    "process_count": process_count,
    "sampler": sampler,  # repr of the sampler: seed, records, epochs, shuffling.
    "data_source": data_source,  # repr of the (mixed) source.
  }


def records_consumed(
  state: bytes | str | dict[str, Any], *, process_index: int, process_count: int
) -> int:
  """Global records read by all processes, from one process's saved state."""
  s = decode(state)
  if "records_consumed" in s:
    layout = (s.get("process_index"), s.get("process_count"))
    if layout != (process_index, process_count):
      raise ValueError(
        f"iterator state keys 'process_index', 'process_count' are {layout}, not "
        f"({process_index}, {process_count})"
      )
    return int(s["records_consumed"])
  if "last_seen_indices" not in s:
    raise ValueError(
      f"iterator state has neither 'records_consumed' nor grain's 'last_seen_indices' "
      f"(keys {sorted(s)}): not an input position this pipeline wrote"
    )
  # Kept on purpose: checkpoints from before batching moved into the workers hold grain
  # DataLoader states, and no public grain API turns one into a record count.
  seen = s["last_seen_indices"]
  workers = max(int(s["worker_count"]), 1)  # 0 workers reads like one, in grain's formulas.
  stride = workers * process_count
  local = 0
  for w in range(workers):
    last = int(seen[str(w)])
    # grain writes last_seen = p + w·c + (next_index - 1)·W·c for worker w.
    offset = last - process_index - w * process_count
    if offset % stride:
      raise ValueError(
        f"iterator state {s} does not fit process {process_index} of "
        f"{process_count} with {workers} workers"
      )
    local += offset // stride + 1
  return local * process_count


def state_for(
  consumed: int, template: bytes | str | dict[str, Any], *, process_index: int, process_count: int
) -> dict[str, Any]:
  """`template` (a fresh iterator's state in the new layout) advanced to `consumed` records."""
  if consumed % process_count:
    raise ValueError(
      f"{consumed} records cannot be split evenly over {process_count} processes "
      "(the global batch must be divisible by the process count)"
    )
  s = decode(template)
  return position_state(
    consumed,
    process_index=process_index,
    process_count=process_count,
    sampler=s["sampler"],
    data_source=s["data_source"],
  )
