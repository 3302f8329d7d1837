"""Validation during training: losses, audio↔text retrieval and zero-shot accuracy."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxclap import sharding as shd
from jaxclap import metrics as eval_metrics
from jaxclap.text import tokenize


def device_batch(batch: dict[str, Any], objective, mesh) -> dict[str, jax.Array]:
  """The arrays a stage's step reads, tokenising the captions on the host when it needs."""
  out = {k: batch[k] for k in objective.batch_keys if k in batch}
  missing = [k for k in objective.batch_keys if k not in out]
  if missing:
    out.update(same_length(objective.text_inputs([str(c) for c in batch["caption"]])))
  return shd.global_batch(out, mesh)


def same_length(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Token arrays padded to the longest length bucket over processes (one global shape)."""
  if not inputs or "input_ids" not in inputs or jax.process_count() == 1:
    return inputs
  width = np.int32(inputs["input_ids"].shape[1])
  longest = int(np.max(multihost_utils.process_allgather(width)))
  return {**inputs, **tokenize.pad_to(inputs, longest)}


def _limited(loader: Iterable, n: int):
  for i, batch in enumerate(loader):
    if n and i >= n:
      return
    yield batch


def retrieval(steps: dict[str, Callable], state, loader, objective, mesh,
              max_batches: int) -> dict[str, float]:
  """Validation loss (fixed masks); a→t / t→a R@1/5/10 and mAP@10, one caption per clip."""
  metrics, audio, text = [], [], []
  for batch in _limited(loader, max_batches):
    m, a, t = steps["eval"](state, device_batch(batch, objective, mesh))
    metrics.append(jax.device_get(m))
    audio.append(np.asarray(a))
    text.append(np.asarray(t))
  if not metrics:
    return {}
  out = {f"val_{k}": float(np.mean([m[k] for m in metrics]))
         for k in metrics[0] if k.startswith("loss")}
  out.update(eval_metrics.retrieval_from_embeddings(np.concatenate(audio), np.concatenate(text)))
  return out


def zero_shot(steps: dict[str, Callable], state, loader, objective, mesh, *,
              class_names: list[str], template: str) -> dict[str, float]:
  """Top-1 accuracy of "{class} can be heard"-style prompts on a labelled split."""
  prompts = objective.text_inputs([template.format(n) for n in class_names])
  if prompts is None or not class_names:
    return {}
  class_emb = np.asarray(steps["text"](state, prompts))
  audio, labels = [], []
  for batch in loader:
    audio.append(np.asarray(steps["audio"](state, device_batch(batch, objective, mesh))))
    # Embeddings come back for the global batch; labels are this process's slice.
    labels.append(np.asarray(multihost_utils.process_allgather(batch["label"], tiled=True)))
  if not audio:
    return {}
  acc = eval_metrics.zero_shot_accuracy(np.concatenate(audio), np.concatenate(labels), class_emb)
  return {"zero_shot_acc": acc, "zero_shot_chance": 1.0 / len(class_names)}
