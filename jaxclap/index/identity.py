"""Which model made an index's embeddings: name, weights hash, front end and text side.

Vectors of two models live in unrelated spaces, so an index records its model and a build
or search with another one is refused, with the differing facts named. The weights hash
covers every parameter (audio encoder, heads and, for stage 2, the text tower); the text
side is also fingerprinted by the model's embeddings of fixed prompts, which catches what
the weights do not hold: stage 1's external sentence model, stage 2's tokenizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import jax
import numpy as np

from jaxclap import inference

# Prompts whose text embeddings fingerprint the text side (any fixed strings would do).
PROBE_PROMPTS = ("a dog barking", "rain on a window", "a piano melody")
_PROBE_TOLERANCE = 1e-3  # Max |difference| of probe embeddings across machines and BLAS.


def weights_sha256(params: Any) -> str:
  """sha256 over every parameter's path, dtype, shape and bytes, in path order."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    arr = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
    digest.update(arr.tobytes())
  return digest.hexdigest()


def text_probe(model: inference.Model) -> list[list[float]] | None:
  """The model's text embeddings of PROBE_PROMPTS, or None where it has no text side."""
  try:
    emb = model.text_embedding(list(PROBE_PROMPTS))
  except ValueError:  # No sentence model recorded, or no text objective: audio-only model.
    return None
  return np.round(emb.astype(np.float64), 6).tolist()


def of_model(model: inference.Model, name: str, *, text: bool = True) -> dict[str, Any]:
  """The identity an index records: what makes two models' embeddings comparable
  (`text=False` leaves out the text probe, which may load a sentence model)."""
  facts = {
    "name": name,
    "stage": model.stage,
    "step": model.step,
    "weights_sha256": weights_sha256(model.params),
    "frontend": dataclasses.asdict(model.frontend_cfg),
    "norm_stats": list(model.norm_stats),
    "unit_frames": model.unit_frames,
    "patch_frames": model.patch_size,
    "embedding_dim": model.embedding_dim,
  }
  if text:
    facts["text_probe"] = text_probe(model)
  return json.loads(json.dumps(facts))  # As the manifest will read back (tuples → lists).


def mismatch(recorded: dict[str, Any], model: inference.Model, name: str) -> list[str]:
  """What differs between an index's recorded model and `model`; the text side is probed
  only when everything else agrees (a refusal then needs no sentence model)."""
  cheap = of_model(model, name, text=False)
  diff = differences({k: v for k, v in recorded.items() if k != "text_probe"}, cheap)
  if diff:
    return diff
  return differences(recorded, {**cheap, "text_probe": text_probe(model)})


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """What differs between two identities, one 'key: recorded → current' per fact.

  The name and step may differ (a moved workdir, a copied release) as long as the weights
  and everything else are the same.
  """
  out = []
  for key in sorted(set(recorded) | set(current)):
    a, b = recorded.get(key), current.get(key)
    if key in ("name", "step"):
      continue
    if key == "text_probe" and a is not None and b is not None:
      if np.shape(a) != np.shape(b) or np.max(np.abs(np.subtract(a, b))) > _PROBE_TOLERANCE:
        out.append("text_probe: the text side embeds the probe prompts differently")
      continue
    if a != b:
      out.append(f"{key}: {_brief(key, a)} → {_brief(key, b)}")
  return out


def _brief(key: str, value: Any) -> str:
  """A fact as the error shows it (a hash by its first 12 digits)."""
  if key == "weights_sha256" and isinstance(value, str):
    return value[:12]
  if key == "text_probe":
    return "a text side" if value is not None else "no text side"
  return repr(value)
