"""Orbax checkpoints of a run: train state, input-iterator state, run metadata, text tower.

Layout: `<workdir>/checkpoints/<step>/{state,data,meta[,text]}`; `text` (stage 2) holds the
text tower's architecture and tokenizer (`text.assets`), so the model restores without the
pretrained folder. Orbax commits a step only after all its items are written (a temporary
folder renamed at the end), so a job killed during a save leaves the previous step as the
latest complete checkpoint. Everything is written and read through a CheckpointManager.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util

from jaxclap import paths
from jaxclap.data import iterator_state
from jaxclap.run_meta import RunMeta
from jaxclap.text.assets import TextAssets

# Config sections whose change alters the model or its inputs: resuming across them is refused.
MODEL_KEYS = ("model", "frontend.sample_rate", "data.crop_frames", "stage")
TEXT_KEYS = ("text",)  # Also model-defining in stage 2.
# How the model is computed, not what it is: these may change between runs of one workdir.
EXECUTION_KEYS = ("model.remat", "model.dtype")


class IteratorSnapshot:
  """Adapts an input iterator's state to grain's checkpoint handler (bytes, per process).

  The state is taken when the save starts, so an asynchronous write stores the position
  of that step even while training moves the live iterator on.
  """

  def __init__(self, iterator: Any):
    self.live = iterator  # The iterator training reads from.
    self._state = None

  def snapshot(self) -> IteratorSnapshot:
    state = self.live.get_state()
    self._state = state if isinstance(state, bytes) else json.dumps(state).encode()
    return self

  def get_state(self) -> bytes:
    return self._state

  def set_state(self, state: bytes) -> None:
    current = self.live.get_state()
    self.live.set_state(state if isinstance(current, bytes) else json.loads(state))

  def start_prefetch(self) -> None:
    if hasattr(self.live, "start_prefetch"):
      self.live.start_prefetch()


@dataclasses.dataclass(frozen=True)
class Saved:
  """One saved step read back on the host."""

  state: dict[str, Any]  # The train state as numpy arrays (params, frozen, step, ...).
  meta: RunMeta
  text: TextAssets | None  # Stage 2's text tower assets; None before they were saved.
  source: str  # The step directory.


def _handlers() -> dict[str, ocp.CheckpointHandler]:
  return {
    "state": ocp.StandardCheckpointHandler(),
    "data": grain.checkpoint.CheckpointHandler(),
    "meta": ocp.JsonCheckpointHandler(),
    "text": ocp.JsonCheckpointHandler(),
    "evals": ocp.JsonCheckpointHandler(),  # The evaluators' latest results and baselines.
  }


def make_manager(workdir: str, *, keep: int, async_save: bool) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the newest `keep` steps under `<workdir>/checkpoints`."""
  directory = paths.resolve(workdir) / "checkpoints"
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=True, enable_async_checkpointing=async_save
  )
  return ocp.CheckpointManager(directory, options=options, item_handlers=_handlers())


def _items(meta: RunMeta, text: TextAssets | None) -> dict[str, Any]:
  items = {"meta": ocp.args.JsonSave(meta.to_dict())}
  if text is not None:
    items["text"] = ocp.args.JsonSave(text.to_dict())
  return items


def write_params_checkpoint(
  workdir: str, step: int, state: dict[str, Any], meta: RunMeta, text: TextAssets | None = None
) -> epath.Path:
  """Writes one complete step of `state` and `meta` (no input-iterator state), waiting
  for it: what `restore`, a later stage's `init.workdir` and `to_torch` read (an imported
  or fine-tuned model, not a run to resume). Returns the step directory."""
  manager = make_manager(workdir, keep=1, async_save=False)
  manager.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), **_items(meta, text)),
    force=True,
  )
  manager.wait_until_finished()
  manager.close()
  return epath.Path(manager.directory) / str(step)


def save(
  manager: ocp.CheckpointManager,
  step: int,
  *,
  state: Any,
  iterator: IteratorSnapshot,
  meta: RunMeta,
  text: TextAssets | None = None,
  evals: dict[str, Any] | None = None,
) -> None:
  """Starts saving `step` (returns before an asynchronous write finishes)."""
  extra = {"evals": ocp.args.JsonSave(evals)} if evals else {}
  manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(iterator.snapshot()),
      **_items(meta, text),
      **extra,
    ),
    force=True,
  )


def restore(
  manager: ocp.CheckpointManager,
  step: int,
  *,
  abstract_state: Any,
  iterator: IteratorSnapshot | None,
) -> tuple[Any, dict[str, Any]]:
  """Restores the state into `abstract_state`'s shardings and rewinds `iterator`.

  A checkpoint written by another number of processes restores too: Orbax reshards the
  arrays and the input position is carried over as a count of global records.
  """
  items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
  data_dir = epath.Path(manager.directory) / str(step) / "data"
  mine = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
  same_layout = mine.exists()
  if iterator is not None and same_layout:
    items["data"] = grain.checkpoint.CheckpointRestore(iterator)
  out = manager.restore(step, args=ocp.args.Composite(**items))
  if iterator is not None and not same_layout:
    _reshard_iterator(data_dir, iterator)
  return out.state, RunMeta.from_dict(out.meta)


def _reshard_iterator(data_dir: epath.Path, iterator: IteratorSnapshot) -> None:
  """Moves the input position saved by another process layout onto this one."""
  files = sorted(data_dir.glob("process_*-of-*.json")) if data_dir.exists() else []
  if not files:
    raise ValueError(
      f"{data_dir}: the checkpoint holds no input-iterator state for process "
      f"{jax.process_index()} of {jax.process_count()}, nor for any other layout"
    )
  counts = set()
  for f in files:
    p, c = iterator_state.parse_layout(f.name)
    counts.add(iterator_state.records_consumed(f.read_text(), process_index=p, process_count=c))
  if len(counts) != 1:
    raise ValueError(f"{data_dir}: processes saved different input positions {sorted(counts)}")
  consumed = counts.pop()
  state = iterator_state.state_for(
    consumed,
    iterator.live.get_state(),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  iterator.set_state(json.dumps(state).encode())
  iterator.start_prefetch()
  logging.info(
    "Input position moved from %d saved process state(s) to process %d of %d at %d global records",
    len(files),
    jax.process_index(),
    jax.process_count(),
    consumed,
  )


def read_meta(manager: ocp.CheckpointManager, step: int) -> RunMeta:
  """The run metadata (config, norm_stats, data facts) of a saved step."""
  return RunMeta.from_dict(
    manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  )


def locate(path: str) -> tuple[epath.Path, int]:
  """(checkpoints dir, latest complete step) of a workdir, its checkpoints dir or a step dir."""
  p = epath.Path(path).expanduser()
  if not p.exists():
    raise ValueError(f"init.workdir={path!r} does not exist")
  for directory in (p / "checkpoints", p):
    steps = (
      sorted(int(c.name) for c in directory.iterdir() if c.name.isdigit())
      if directory.is_dir()
      else []
    )
    if steps:
      return directory, steps[-1]
  if p.name.isdigit() and (p / "state").exists():
    return p.parent, int(p.name)
  raise ValueError(
    f"init.workdir={path!r} holds no complete checkpoint (expected "
    "<workdir>/checkpoints/<step>/state, as jaxclap.main writes)"
  )


def load(path: str) -> Saved:
  """The latest complete step of a workdir, its checkpoints dir or one step dir, on the host
  (numpy arrays, whatever device layout wrote them), read through a CheckpointManager."""
  directory, step = locate(path)
  handlers = _handlers()
  handlers["state"] = ocp.PyTreeCheckpointHandler()  # Its restore can ask for numpy.
  manager = ocp.CheckpointManager(
    directory, item_handlers=handlers, options=ocp.CheckpointManagerOptions(read_only=True)
  )
  try:
    tree = manager.item_metadata(step)["state"].tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    items = {"state": ocp.args.PyTreeRestore(restore_args=as_numpy), "meta": ocp.args.JsonRestore()}
    if (directory / str(step) / "text").exists():
      items["text"] = ocp.args.JsonRestore()
    out = manager.restore(step, args=ocp.args.Composite(**items))
  finally:
    manager.close()
  text = TextAssets.from_dict(out.text) if "text" in items else None
  return Saved(
    state=out.state, meta=RunMeta.from_dict(out.meta), text=text, source=f"{directory / str(step)}"
  )


def _normalise(v: Any) -> Any:
  return list(v) if isinstance(v, tuple) else v


def model_config_diff(
  saved: dict[str, Any], config: ml_collections.ConfigDict, keys: tuple[str, ...] = MODEL_KEYS
) -> list[str]:
  """Keys under `keys` whose values differ between a saved config and `config`."""
  now = traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")
  before = traverse_util.flatten_dict(saved, sep=".")
  diffs = []
  for key in sorted(set(now) | set(before)):
    if not any(key == m or key.startswith(m + ".") for m in keys) or key in EXECUTION_KEYS:
      continue
    a, b = _normalise(before.get(key)), _normalise(now.get(key))
    if a != b:
      diffs.append(f"{key}: checkpoint={a!r} config={b!r}")
  return diffs
