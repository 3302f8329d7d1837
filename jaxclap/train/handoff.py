"""Starting a stage from an earlier stage's checkpoint (stage 1 → 2 → 2.1): its parameters
laid into the new state (`checkpoint.load` reads it)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import traverse_util


def mismatches(current: Any, saved: Any, where: str) -> list[str]:
  """How `saved` differs from the tree `current` (arrays or shape structs) a model expects."""
  cur = traverse_util.flatten_dict(current, sep="/")
  sav = traverse_util.flatten_dict(saved, sep="/")
  # Shapes first: they say most about a wrong model size.
  errors = [
    f"shape of {where}/{k}: checkpoint {tuple(np.shape(sav[k]))} vs model {tuple(cur[k].shape)}"
    for k in sorted(set(cur) & set(sav))
    if tuple(np.shape(sav[k])) != tuple(cur[k].shape)
  ]
  errors.extend(f"missing {where}/{k}" for k in sorted(set(cur) - set(sav)))
  errors.extend(f"unexpected {where}/{k}" for k in sorted(set(sav) - set(cur)))
  return errors


def _fill(current: Any, saved: Any, where: str, errors: list[str]) -> Any:
  """`saved` laid into `current`'s structure and shardings; mismatches go to `errors`."""
  sav = traverse_util.flatten_dict(saved, sep="/")
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
      raise ValueError(
        f"{source} has no audio encoder (params/encoder); is it a jaxclap "
        "stage-1 or stage-2 checkpoint?"
      )
    home = "frozen" if "encoder" in state.frozen else "params"
    tree = dict(getattr(state, home))
    tree["encoder"] = _fill(tree["encoder"], saved_all["encoder"], "encoder", errors)
    state = state.replace(**{home: tree})
  else:
    mine = {**state.params, **state.frozen}
    filled = _fill(mine, saved_all, "params", errors)
    state = state.replace(
      params={k: filled[k] for k in state.params}, frozen={k: filled[k] for k in state.frozen}
    )
  if errors:
    shown = "; ".join(errors[:12]) + (f"; ... ({len(errors)} in all)" if len(errors) > 12 else "")
    raise ValueError(
      f"Cannot start from {source}: {shown}. Check model.size and the "
      "text/model settings against the earlier stage's config."
    )
  return state
