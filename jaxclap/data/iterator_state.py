"""Moving a saved input position between process counts and worker counts.

grain's DataLoader state is written per process, in *global* record indices: element j of
process p (of c) is global index p + c·j, whatever its worker count (workers take turns
element by element). So after every process has read n elements, exactly the global
indices [0, c·n) are consumed. That total is the position; it can be laid out again for
any other process/worker layout, which is what resuming on a different topology needs.
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


def _decode(state: bytes | str | dict[str, Any]) -> dict[str, Any]:
  return state if isinstance(state, dict) else json.loads(state)


def records_consumed(
  state: bytes | str | dict[str, Any], *, process_index: int, process_count: int
) -> int:
  """Global records read by all processes, from one process's saved state."""
  s = _decode(state)
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
  s = dict(_decode(template))
  workers = max(int(s["worker_count"]), 1)
  n = consumed // process_count  # Elements this process has read.
  stride = workers * process_count
  s["last_seen_indices"] = {
    str(w): process_index + w * process_count + (-(-(n - w) // workers) - 1) * stride
    for w in range(workers)
  }
  s["last_worker_index"] = (n % workers) - 1 if int(s["worker_count"]) else -1
  return s
