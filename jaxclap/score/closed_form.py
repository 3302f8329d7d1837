"""Closed-form classifiers on frozen clip features: ridge and cosine k-NN, and k-fold plans.

Cheap enough to run inside training (the `ridge` and `knn` evaluator kinds, `kinds.py`):
no optimiser, one N×N eigendecomposition per fit. Pure numpy functions of arrays and a seed.
"""

from __future__ import annotations

import numpy as np

RIDGE_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)  # Ridge λ per clip, picked by leave-one-out.


def standardize(train_x: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
  """Standardises every array with the mean/std of `train_x` (constant dims: std 1)."""
  train_x = np.asarray(train_x, np.float64)
  mean, std = train_x.mean(axis=0), train_x.std(axis=0)
  std = np.where(std > 1e-8, std, 1.0)
  return [((np.asarray(a, np.float64) - mean) / std).astype(np.float32) for a in (train_x, *others)]


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
  """Fold id [N] per clip: each class's clips dealt round-robin over folds in a seeded order."""
  labels = np.asarray(labels).reshape(-1)
  rng = np.random.default_rng(seed)
  out = np.zeros(len(labels), np.int64)
  start = 0
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    # A rotating start spreads the classes' first clips over the folds.
    out[idx] = (start + np.arange(len(idx))) % folds
    start += len(idx)
  return out


def ridge_loo_and_scores(
  x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, num_classes: int, grid
) -> tuple[np.ndarray, list[np.ndarray]]:
  """Leave-one-out accuracy on `x_tr` and class scores of `x_te`, for each ridge λ in `grid`.

  Ridge regression of one-hot targets on features standardised with `x_tr`'s statistics,
  unpenalised intercept, penalty λ·n. One eigendecomposition of the n×n kernel serves every λ,
  and leave-one-out predictions come in closed form from the hat matrix's diagonal (the
  standardisation keeps all n clips), so no refit is needed.
  """
  xs, xt = (a.astype(np.float64) for a in standardize(x_tr, x_te))
  y = np.eye(num_classes)[y_tr]
  y_mean = y.mean(axis=0)
  n = len(xs)
  s, u = np.linalg.eigh(xs @ xs.T)
  s = np.maximum(s, 0.0)
  uty, proj = u.T @ (y - y_mean), (xt @ xs.T) @ u
  loo_acc, scores = [], []
  for lam in grid:
    shrink = s / (s + lam * n)
    fitted = u @ (shrink[:, None] * uty) + y_mean
    hat = (u**2) @ shrink + 1.0 / n  # Diagonal of the hat matrix, intercept included.
    loo = (fitted - hat[:, None] * y) / np.maximum(1.0 - hat, 1e-9)[:, None]
    loo_acc.append(np.mean(np.argmax(loo, axis=1) == y_tr))
    scores.append(proj @ (uty / (s + lam * n)[:, None]) + y_mean)
  return np.asarray(loo_acc), scores


def ridge_scores(
  x_tr: np.ndarray,
  y_tr: np.ndarray,
  x_te: np.ndarray,
  num_classes: int,
  grid: tuple[float, ...] = RIDGE_GRID,
) -> np.ndarray:
  """Class scores of `x_te` from a ridge classifier fitted on `x_tr`, λ picked by leave-one-out."""
  x_tr, x_te = np.asarray(x_tr, np.float64), np.asarray(x_te, np.float64)
  loo_acc, scores = ridge_loo_and_scores(x_tr, np.asarray(y_tr, np.int64), x_te, num_classes, grid)
  return scores[int(np.argmax(loo_acc))]


def knn_scores(x_tr, y_tr, x_te, num_classes: int, k: int) -> np.ndarray:
  """Similarity-weighted votes of the k nearest training clips (cosine, standardised)."""
  x_tr, x_te = standardize(x_tr, x_te)
  x_tr = x_tr / np.maximum(np.linalg.norm(x_tr, axis=1, keepdims=True), 1e-8)
  x_te = x_te / np.maximum(np.linalg.norm(x_te, axis=1, keepdims=True), 1e-8)
  sim = x_te @ x_tr.T
  k = min(k, len(y_tr))
  top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
  votes = np.zeros((len(x_te), num_classes))
  rows = np.repeat(np.arange(len(x_te)), k)
  # Weights 1 + cosine stay positive, and the nearest clip breaks ties.
  np.add.at(
    votes, (rows, y_tr[top].reshape(-1)), (1.0 + np.take_along_axis(sim, top, 1)).reshape(-1)
  )
  return votes
