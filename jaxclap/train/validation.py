"""Validation in training: losses, and the `retrieval` and `zero_shot` kinds (score/kinds.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxclap.score import crossval, kinds
from jaxclap.train import step


def _limited(loader: Iterable, n: int):
  for i, batch in enumerate(loader):
    if n and i >= n:
      return
    yield batch


def retrieval(
  steps: dict[str, Callable], state, loader, objective, mesh, max_batches: int
) -> dict[str, float]:
  """Validation loss (fixed masks); a→t / t→a R@1/5/10 and mAP@10, one caption per clip."""
  metrics, audio, text = [], [], []
  for batch in _limited(loader, max_batches):
    m, a, t = steps["eval"](state, step.device_batch(batch, objective, mesh))
    metrics.append(jax.device_get(m))
    audio.append(np.asarray(a))
    text.append(np.asarray(t))
  if not metrics:
    return {}
  out = {
    f"val_{k}": float(np.mean([m[k] for m in metrics])) for k in metrics[0] if k.startswith("loss")
  }
  inputs = kinds.Inputs(audio=np.concatenate(audio), captions=np.concatenate(text))
  out.update(kinds.score("retrieval", inputs))
  return out


def zero_shot(
  steps: dict[str, Callable],
  state,
  loader,
  objective,
  mesh,
  *,
  class_names: list[str],
  template: str,
) -> dict[str, float]:
  """Top-1 accuracy of "{class} can be heard"-style prompts on a labelled split."""
  prompts = objective.text_inputs([template.format(n) for n in class_names])
  if prompts is None or not class_names:
    return {}
  class_emb = np.asarray(steps["text"](state, prompts))
  audio, labels = [], []
  for batch in loader:
    audio.append(np.asarray(steps["audio"](state, step.device_batch(batch, objective, mesh))))
    # Embeddings come back for the global batch; labels are this process's slice.
    labels.append(np.asarray(multihost_utils.process_allgather(batch["label"], tiled=True)))
  if not audio:
    return {}
  labels = np.concatenate(labels)
  inputs = kinds.Inputs(
    plan=crossval.everything(labels.size),
    labels=labels,
    audio=np.concatenate(audio),
    class_text=class_emb,
  )
  acc = kinds.score("zero_shot", inputs)["accuracy"]
  return {"zero_shot_acc": acc, "zero_shot_chance": 1.0 / len(class_names)}
