"""Starting a stage from an earlier stage's Orbax checkpoint (stage 1 → 2 → 2.1)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxclap.train import checkpoint as ckpt


def locate(path: str) -> tuple[epath.Path, int]:
  """(checkpoints dir, step) for a workdir, its checkpoints dir or one step's dir."""
  p = epath.Path(path).expanduser()
  if not p.exists():
    raise ValueError(f"init.workdir={path!r} does not exist")
  for directory in (p / "checkpoints", p):
    steps = sorted(int(c.name) for c in directory.iterdir() if c.name.isdigit()) \
        if directory.is_dir() else []
    if steps:
      return directory, steps[-1]
  if p.name.isdigit() and (p / "state").exists():
    return p.parent, int(p.name)
  raise ValueError(f"init.workdir={path!r} holds no complete checkpoint (expected "
                   "<workdir>/checkpoints/<step>/state, as jaxclap.main writes)")


def load(path: str) -> tuple[dict[str, Any], dict[str, Any], str]:
  """The saved state (host arrays), run metadata and a description of where they came from."""
  directory, step = locate(path)
  manager = ocp.CheckpointManager(directory, item_handlers={"meta": ocp.JsonCheckpointHandler()},
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  meta = ckpt.read_meta(manager, step)
  manager.close()
  return _host_state(directory / str(step) / "state"), meta, f"{directory / str(step)}"


def _host_state(path: epath.Path) -> dict[str, Any]:
  """A saved train state as numpy arrays, whatever device layout wrote it."""
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def _paths(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_paths(v, f"{prefix}/{k}" if prefix else str(k)))
    return out
  return {prefix: tree}


def mismatches(current: Any, saved: Any, where: str) -> list[str]:
  """How `saved` differs from the tree `current` (arrays or shape structs) a model expects."""
  cur, sav = _paths(current), _paths(saved)
  # Shapes first: they say most about a wrong model size.
  errors = [f"shape of {where}/{k}: checkpoint {tuple(np.shape(sav[k]))} vs model "
            f"{tuple(cur[k].shape)}" for k in sorted(set(cur) & set(sav))
            if tuple(np.shape(sav[k])) != tuple(cur[k].shape)]
  errors.extend(f"missing {where}/{k}" for k in sorted(set(cur) - set(sav)))
  errors.extend(f"unexpected {where}/{k}" for k in sorted(set(sav) - set(cur)))
  return errors


def _fill(current: Any, saved: Any, where: str, errors: list[str]) -> Any:
  """`saved` laid into `current`'s structure and shardings; mismatches go to `errors`."""
  sav = _paths(saved)
  errors.extend(mismatches(current, saved, where))

  def put(path, leaf):
    key = "/".join(str(getattr(p, "key", p)) for p in path)
    if key in sav and tuple(np.shape(sav[key])) == tuple(leaf.shape):
      return jax.device_put(np.asarray(sav[key], leaf.dtype), leaf.sharding)
    return leaf

  return jax.tree_util.tree_map_with_path(put, current)


def apply(state: Any, saved: dict[str, Any], *, parts: str, source: str) -> Any:
  """Copies the audio encoder (parts="audio_encoder") or every parameter ("all")."""
  errors: list[str] = []
  saved_all = {**saved.get("params", {}), **saved.get("frozen", {})}
  if parts == "audio_encoder":
    if "encoder" not in saved_all:
      raise ValueError(f"{source} has no audio encoder (params/encoder); is it a jaxclap "
                       "stage-1 or stage-2 checkpoint?")
    home = "frozen" if "encoder" in state.frozen else "params"
    tree = dict(getattr(state, home))
    tree["encoder"] = _fill(tree["encoder"], saved_all["encoder"], "encoder", errors)
    state = state.replace(**{home: tree})
  else:
    mine = {**state.params, **state.frozen}
    filled = _fill(mine, saved_all, "params", errors)
    state = state.replace(params={k: filled[k] for k in state.params},
                          frozen={k: filled[k] for k in state.frozen})
  if errors:
    shown = "; ".join(errors[:12]) + (f"; ... ({len(errors)} in all)" if len(errors) > 12 else "")
    raise ValueError(f"Cannot start from {source}: {shown}. Check model.size and the "
                     "text/model settings against the earlier stage's config.")
  return state
