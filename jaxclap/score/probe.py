"""Linear and few-shot probes on frozen clip features (EVAR-style linear evaluation).

Features are standardised with the training split's statistics; one linear layer is
trained with Adam on cross-entropy (single-label) or binary cross-entropy (multi-label);
the epoch with the best validation accuracy / mAP is kept (early stopping) and scored
on the test split. Without a validation split (cross-validation over official folds, as
EVAR does it) training stops when the training loss has not improved for `patience`
epochs and the last epoch is scored. Everything is a pure function of arrays and a seed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxclap import metrics
from jaxclap.score.closed_form import standardize  # One copy, shared with the ridge and k-NN kinds.


class Split(NamedTuple):
  """Features [N, D] and labels: int [N] (single-label) or multi-hot [N, classes]."""

  x: np.ndarray
  y: np.ndarray


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """Optimisation knobs of the linear probe."""

  learning_rate: float = 1e-3
  batch_size: int = 64
  max_epochs: int = 200
  patience: int = 20  # Epochs without a better validation score before stopping.
  weight_decay: float = 0.0  # Decoupled (AdamW) decay on the weights.


def _loss(params, x, y, w, multilabel: bool):
  logits = x @ params["w"] + params["b"]
  if multilabel:
    per = optax.sigmoid_binary_cross_entropy(logits, y).mean(axis=-1)
  else:
    per = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


def _optimizer(config: ProbeConfig) -> optax.GradientTransformation:
  return optax.adamw(
    config.learning_rate, weight_decay=config.weight_decay, mask={"w": True, "b": False}
  )


@functools.partial(jax.jit, static_argnames=("config", "multilabel"))
def _epoch(params, opt_state, x, y, batches, weights, *, config: ProbeConfig, multilabel: bool):
  """One pass over the index `batches` [nb, bs] (padding rows carry weight 0)."""
  tx = _optimizer(config)

  def body(carry, inputs):
    params, opt_state = carry
    idx, w = inputs
    loss, grads = jax.value_and_grad(_loss)(params, x[idx], y[idx], w, multilabel)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (batches, weights))
  return params, opt_state, losses.mean()


def _epoch_batches(
  rng: np.random.Generator, n: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
  """A shuffled order cut into [nb, bs] index batches with 0/1 weights for the padding."""
  bs = min(batch_size, n)
  nb = -(-n // bs)
  order = np.zeros(nb * bs, np.int32)
  order[:n] = rng.permutation(n)
  weights = (np.arange(nb * bs) < n).astype(np.float32)
  return order.reshape(nb, bs), weights.reshape(nb, bs)


def _score(scores: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
  if multilabel:
    return metrics.mean_average_precision(scores, y)
  return metrics.accuracy(scores, y)


def _check(split: Split, name: str, multilabel: bool, num_classes: int) -> None:
  x, y = np.asarray(split.x), np.asarray(split.y)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"{name} features must be [N>0, D], got shape {x.shape}")
  want = (x.shape[0], num_classes) if multilabel else (x.shape[0],)
  if y.shape != want:
    raise ValueError(f"{name} labels must have shape {want}, got {y.shape}")
  if not multilabel and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(
      f"{name} labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]"
    )


def linear_probe(
  train: Split,
  valid: Split | None,
  test: Split,
  *,
  num_classes: int,
  multilabel: bool = False,
  seed: int = 0,
  config: ProbeConfig = ProbeConfig(),
) -> dict[str, float]:
  """Trains a linear classifier on `train`, early-stops on `valid`, scores `test`.

  Returns {"accuracy"|"mAP": test score, "val_<metric>": best validation score,
  "best_epoch", "epochs"}. The model starts at zero and batches are shuffled with
  `seed`, so the result is a deterministic function of the arrays and the seed. A tie
  in validation score is broken by the lower validation loss. `valid=None`: no early
  stopping on held-out data (see the module docstring); no "val_" entry.
  """
  named = [(train, "train"), (test, "test")] + ([(valid, "validation")] if valid else [])
  for split, name in named:
    _check(split, name, multilabel, num_classes)
  x_tr, x_te, *x_va = standardize(train.x, test.x, *([valid.x] if valid else []))
  ydt = np.float32 if multilabel else np.int32
  y_tr = np.asarray(train.y, ydt)
  y_va = np.asarray(valid.y, ydt) if valid else None
  params = {
    "w": jnp.zeros((x_tr.shape[1], num_classes), jnp.float32),
    "b": jnp.zeros((num_classes,), jnp.float32),
  }
  opt_state = _optimizer(config).init(params)
  rng = np.random.default_rng(seed)
  x_tr_dev, y_tr_dev = jnp.asarray(x_tr), jnp.asarray(y_tr)
  # Best so far, larger is better: (validation score, -validation loss), or without a
  # validation split (-training loss,): the stopping rule's only input.
  best, best_params, best_epoch, epoch = None, None, 0, 0
  host = jax.device_get(params)
  for epoch in range(1, config.max_epochs + 1):
    batches, weights = _epoch_batches(rng, x_tr.shape[0], config.batch_size)
    params, opt_state, loss = _epoch(
      params, opt_state, x_tr_dev, y_tr_dev, batches, weights, config=config, multilabel=multilabel
    )
    host = jax.device_get(params)
    if valid is None:
      key = (-float(loss),)
    else:
      va = x_va[0]
      val_loss = float(_loss(host, va, y_va, np.ones(len(y_va), np.float32), multilabel))
      key = (_score(va @ host["w"] + host["b"], y_va, multilabel), -val_loss)
    if best is None or key > best:
      best, best_params, best_epoch = key, host, epoch
    elif epoch - best_epoch >= config.patience:
      break
  name = "mAP" if multilabel else "accuracy"
  final = best_params if valid else host  # Without validation: the last epoch.
  out = {
    name: _score(x_te @ final["w"] + final["b"], np.asarray(test.y), multilabel),
    "best_epoch": best_epoch,
    "epochs": epoch,
  }
  if valid:
    out[f"val_{name}"] = float(best[0])
  return out


def sample_shots(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
  """Sorted indices of k examples per class (all of a class that has fewer), drawn by seed.

  Multi-hot labels [N, classes]: k clips among each class's positives, the union of the
  draws (a clip drawn for two classes counts once).
  """
  if k < 1:
    raise ValueError(f"shots must be >= 1, got {k}")
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  if labels.ndim == 2:
    members = [np.flatnonzero(labels[:, c] > 0) for c in range(labels.shape[1])]
  else:
    labels = labels.reshape(-1)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  picks = [rng.choice(m, size=min(k, m.size), replace=False) for m in members if m.size]
  return np.unique(np.concatenate(picks))


def few_shot(
  train: Split,
  valid: Split | None,
  test: Split,
  *,
  num_classes: int,
  shots: Sequence[int] = (1, 5),
  seeds: Sequence[int] = (0, 1, 2),
  config: ProbeConfig = ProbeConfig(),
) -> dict[str, float]:
  """Linear probes on k training examples per class, averaged over `seeds`.

  Features are standardised with the k-shot subset's statistics (it is the training
  set); early stopping uses the whole validation split. Returns, per k,
  "{k}shot_accuracy" (mean over seeds) and "{k}shot_accuracy_std"; multi-hot labels
  [N, classes] give "{k}shot_mAP" and "{k}shot_mAP_std".
  """
  multilabel = np.asarray(train.y).ndim == 2
  if not seeds:
    raise ValueError("few_shot needs at least one seed")
  name = "mAP" if multilabel else "accuracy"
  out = {}
  for k in shots:
    scores = []
    for seed in seeds:
      idx = sample_shots(train.y, k, seed)
      sub = Split(np.asarray(train.x)[idx], np.asarray(train.y)[idx])
      result = linear_probe(
        sub, valid, test, num_classes=num_classes, multilabel=multilabel, seed=seed, config=config
      )
      scores.append(result[name])
    out[f"{k}shot_{name}"] = float(np.mean(scores))
    out[f"{k}shot_{name}_std"] = float(np.std(scores))
  return out
