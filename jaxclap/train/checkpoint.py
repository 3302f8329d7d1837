"""Orbax checkpoints of a run: train state, input-iterator state, run metadata, text tower.

Layout: `<workdir>/checkpoints/<step>/{state,data,meta[,text]}`; `text` (stage 2) holds the
text tower's architecture and tokenizer (`text.assets`), so the model restores without the
pretrained folder. Orbax commits a step only after all its items are written (a temporary
folder renamed at the end), so a job killed during a save leaves the previous step as the
latest complete checkpoint. Everything is written and read through a CheckpointManager.

Integrity: once a step is committed, process 0 writes `<step>/integrity.json`, the size and
CRC-32 of each of the step's files (Orbax itself does not notice a flipped bit in an array
chunk). A resumed run takes the newest step whose files match their record and whose
metadata reads (`resume_step`), and, in a single process, falls back further if restoring it
raises (`restore_intact`); damaged steps are moved to `<checkpoints>/corrupt/<step>`, never
deleted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging as pylogging
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from jaxclap import paths
from jaxclap.data import iterator_state
from jaxclap.run_meta import RunMeta
from jaxclap.text.assets import TextAssets

# Config sections whose change alters the model or its inputs: resuming across them is refused.
MODEL_KEYS = ("model", "frontend.sample_rate", "data.crop_frames", "stage")
TEXT_KEYS = ("text",)  # Also model-defining in stage 2.
# How the model is computed, not what it is: these may change between runs of one workdir.
EXECUTION_KEYS = ("model.remat", "model.dtype")
MANIFEST = "integrity.json"  # In each step folder: {"files": {path: [bytes, crc32]}}.
CORRUPT = "corrupt"  # `<checkpoints>/corrupt/<step>`: damaged steps, moved aside at resume.
_CHUNK = 1 << 20  # Read size for the CRC: 1 MiB measured faster than 8 or 64 here.


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


@functools.cache  # Once per process.
def _write_replicas_whole_on_cpu() -> None:
  """On CPU devices, replicated arrays are written by one replica, not sliced among them.

  Orbax (0.12 on) splits a replicated array among its replicas so that hosts share the
  writing; on CPU the devices share one host's memory, so the split only adds an eager
  slice per array and replica, each compiled on first use: a 4-step run on 8 simulated
  devices took 39.7 s with it, 22.8 s without. The files are the same either way.
  Accelerators keep Orbax's default.
  """
  if jax.default_backend() != "cpu":
    return
  handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(pylogging.ERROR)  # Orbax warns that it replaces its default handler.
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.setLevel(level)


def make_manager(workdir: str, *, keep: int, async_save: bool) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the newest `keep` steps under `<workdir>/checkpoints`."""
  _write_replicas_whole_on_cpu()
  directory = paths.resolve(workdir) / "checkpoints"
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=True, enable_async_checkpointing=async_save
  )
  return _SealingManager(directory, options=options, item_handlers=_handlers())


class _SealingManager(ocp.CheckpointManager):
  """A CheckpointManager that writes each step's integrity manifest once it is committed."""

  def __init__(self, *args: Any, **kwargs: Any):
    super().__init__(*args, **kwargs)
    self._unsealed: list[int] = []  # Steps saved here whose manifest is not written yet.
    self._sealer: threading.Thread | None = None
    self._saving = False

  def save(self, step: int, *args: Any, **kwargs: Any) -> bool:
    """Orbax's save; the steps committed before it are sealed when it waits for them."""
    self._saving = True
    try:
      saved = super().save(step, *args, **kwargs)
    finally:
      self._saving = False
    if saved:
      self._unsealed.append(step)
    return saved

  def wait_until_finished(self) -> None:
    """Waits for the pending save, then seals the steps committed since the last call."""
    if self._sealer is not None:
      self._sealer.join()
      self._sealer = None
    steps, self._unsealed = self._unsealed, []
    super().wait_until_finished()  # Raises if the save failed: its step stays unsealed.
    if not steps or jax.process_index() != 0:
      return
    dirs = [epath.Path(self.directory) / str(s) for s in steps]
    # Called from save(), hashing overlaps training; only keep=1 deletes the step meanwhile.
    if self._saving and self._options.max_to_keep != 1:
      self._sealer = threading.Thread(target=_seal_all, args=(dirs,), name="ckpt_seal")
      self._sealer.start()
    else:
      _seal_all(dirs)


def _files(step_dir: epath.Path, rel: str = "") -> dict[str, epath.Path]:
  """The files under a step folder by relative path, its manifest left out."""
  out = {}
  for f in (step_dir / rel).iterdir():
    name = f"{rel}/{f.name}" if rel else f.name
    if f.is_dir():
      out.update(_files(step_dir, name))
    elif not name.startswith(MANIFEST):
      out[name] = f
  return dict(sorted(out.items()))


def _crc32(path: epath.Path) -> str:
  """The CRC-32 of a file as 8 hex digits."""
  crc = 0
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return f"{crc:08x}"


def _seal(step_dir: epath.Path) -> None:
  """Writes `step_dir`'s manifest (atomically: a temporary file renamed)."""
  if not step_dir.exists():
    return  # Its save failed, or it was already removed.
  start = time.perf_counter()
  files = {rel: [f.stat().length, _crc32(f)] for rel, f in _files(step_dir).items()}
  tmp = step_dir / f"{MANIFEST}.tmp"
  tmp.write_text(json.dumps({"algorithm": "crc32", "files": files}))
  tmp.replace(step_dir / MANIFEST)
  logging.info(
    "Recorded the integrity of %s: %d files, %.3f GB in %.2f s",
    step_dir,
    len(files),
    sum(size for size, _ in files.values()) / 1e9,
    time.perf_counter() - start,
  )


def _seal_all(dirs: list[epath.Path]) -> None:
  """Seals each step folder; a failure only leaves that step without a manifest."""
  for d in dirs:
    try:
      _seal(d)
    except Exception as e:  # Never stop training over a manifest.
      logging.warning("Could not record the integrity of %s: %s", d, e)


def manifest_problem(step_dir: epath.Path) -> str | None:
  """What differs from the step's manifest (None when all matches or it has none)."""
  record = step_dir / MANIFEST
  if not record.exists():
    return None  # Saved before manifests existed, or killed before writing it.
  try:
    files = json.loads(record.read_text())["files"]
  except (ValueError, KeyError, TypeError) as e:
    return f"its integrity record {record} does not read ({e})"
  for rel, (size, crc) in files.items():
    path = step_dir / rel
    if not path.exists():
      return f"{rel} is missing"
    if (actual := path.stat().length) != size:
      return f"{rel} has {actual} bytes, {size} when saved"
    if _crc32(path) != crc:
      return f"{rel} differs from its saved CRC-32"
  return None


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


def _brief(e: BaseException) -> str:
  """An exception as one short line."""
  return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _everyone(ok: bool) -> bool:
  """Whether `ok` holds on every process."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _step_problem(manager: ocp.CheckpointManager, step: int) -> str | None:
  """Why `step` cannot be resumed: its manifest (checked by process 0), then its metadata."""
  step_dir = epath.Path(manager.directory) / str(step)
  problem = manifest_problem(step_dir) if jax.process_index() == 0 else None
  if not _everyone(problem is None):
    return problem or "process 0 found it damaged"
  try:
    read_meta(manager, step)
  except Exception as e:  # Any failure to read makes the step unusable.
    problem = f"its metadata does not read ({_brief(e)})"
  if not _everyone(problem is None):
    return problem or "its metadata does not read on another process"
  return None


def _next_intact(
  manager: ocp.CheckpointManager, steps: Iterator[int], damaged: list[tuple[int, str]]
) -> int | None:
  """The first of `steps` without a problem; the ones before it are added to `damaged`."""
  for step in steps:
    problem = _step_problem(manager, step)
    if problem is None:
      return step
    damaged.append((step, problem))
  return None


def _warn(message: str) -> None:
  """Logs a warning and prints it."""
  logging.warning("%s", message)
  print(message, flush=True)


def _set_aside(manager: ocp.CheckpointManager, damaged: list[tuple[int, str]], step: int) -> None:
  """Moves damaged steps to `<checkpoints>/corrupt/` (process 0), saying so, then reloads."""
  if not damaged:
    return
  directory = epath.Path(manager.directory)
  if jax.process_index() == 0:
    for bad, problem in damaged:
      target, n = directory / CORRUPT / str(bad), 0
      while target.exists():
        n += 1
        target = directory / CORRUPT / f"{bad}.{n}"
      target.parent.mkdir(parents=True, exist_ok=True)
      (directory / str(bad)).rename(target)
      _warn(
        f"Checkpoint step {bad} in {directory} is damaged: {problem}. Moved it to {target} "
        f"(nothing deleted); resuming from step {step}."
      )
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxclap: damaged checkpoints set aside")
  manager.reload()


def _nothing_intact(manager: ocp.CheckpointManager, damaged: list[tuple[int, str]]) -> Exception:
  """The error when no step can be resumed."""
  steps = "; ".join(f"step {s}: {p}" for s, p in damaged)
  return RuntimeError(
    f"No intact checkpoint to resume in {manager.directory} ({steps}). Nothing was moved "
    "or deleted: move the damaged steps away (or use a new --workdir) to start afresh."
  )


def resume_step(manager: ocp.CheckpointManager) -> int | None:
  """The newest intact step (None when there is none); damaged newer steps are moved aside."""
  damaged: list[tuple[int, str]] = []
  step = _next_intact(manager, iter(sorted(manager.all_steps(), reverse=True)), damaged)
  if damaged:
    if step is None:
      raise _nothing_intact(manager, damaged)
    _set_aside(manager, damaged, step)
  return step


def restore_intact(
  manager: ocp.CheckpointManager,
  step: int,
  *,
  abstract_state: Any,
  iterator: IteratorSnapshot | None,
) -> tuple[Any, int]:
  """`restore` of `step`, else of the newest older intact step: (state, restored step).

  Steps whose restore raised are moved aside only once an older one restored. With several
  processes a failed restore is not retried: one process may fail where the others read
  on into Orbax's collectives, which a retry would mismatch.
  """
  damaged: list[tuple[int, str]] = []
  older = iter(sorted((s for s in manager.all_steps() if s < step), reverse=True))
  first_error = None
  while True:
    try:
      state, _ = restore(manager, step, abstract_state=abstract_state, iterator=iterator)
      break
    except Exception as e:  # A damaged step raises anything.
      if jax.process_count() > 1:
        raise _unrecoverable(manager, step, e) from e
      first_error = first_error or e
      damaged.append((step, f"restoring it raised {_brief(e)}"))
    step = _next_intact(manager, older, damaged)
    if step is None:
      raise _nothing_intact(manager, damaged) from first_error
  _set_aside(manager, damaged, step)
  return state, step


def _unrecoverable(manager: ocp.CheckpointManager, step: int, error: Exception) -> Exception:
  """The error when a multi-process restore of `step` raised."""
  directory = epath.Path(manager.directory)
  return RuntimeError(
    f"Restoring checkpoint step {step} in {directory} raised {_brief(error)}. A run of "
    f"several processes does not fall back by itself: move {directory / str(step)} to "
    f"{directory / CORRUPT / str(step)} and rerun to resume from the step before."
  )


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


class _ReadOnlyNotice(pylogging.Filter):
  """Drops Orbax's "Given directory is read only" warning: reading a checkpoint is what
  `load` is for, and the notice printed a line per read on the demo's console."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")


logging.get_absl_logger().addFilter(_ReadOnlyNotice())


# Read-only, with the options a read-only manager forces stated (Orbax warns when it changes
# them itself).
def _read_only() -> ocp.CheckpointManagerOptions:
  return ocp.CheckpointManagerOptions(
    read_only=True, save_interval_steps=0, create=False, cleanup_tmp_directories=False
  )


def load(path: str) -> Saved:
  """The latest complete step of a workdir, its checkpoints dir or one step dir, on the host
  (numpy arrays, whatever device layout wrote them), read through a CheckpointManager."""
  directory, step = locate(path)
  handlers = _handlers()
  handlers["state"] = ocp.PyTreeCheckpointHandler()  # Its restore can ask for numpy.
  manager = ocp.CheckpointManager(directory, item_handlers=handlers, options=_read_only())
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
