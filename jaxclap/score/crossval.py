"""Evaluation rounds over official folds or fixed splits, EVAR's protocols on arrays.

A fold task (ESC-50's 5 folds, US8K's 10) runs one round per fold: that fold's clips are
the test set and every other fold trains, with no validation split. A split task runs one
round: train, validation (when the source has one) and test. Linear evaluation averages
the rounds' scores (each the mean over seeds); zero-shot pools every round's test clips
into one score, as EVAR's `zeroshot.py` does. Multi-hot labels are scored by mAP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxclap import metrics
from jaxclap.score import closed_form, probe

VALID_NAMES = ("valid", "validation", "val")  # Names sources give their validation split.


@dataclasses.dataclass(frozen=True)
class Round:
  """Clip indices of one train/test round; `valid` None when there is no validation split."""

  name: str  # "fold3" or "split".
  train: np.ndarray
  valid: np.ndarray | None
  test: np.ndarray


def rounds(
  folds: Sequence[int] | None, splits: Sequence[str] | None, *, train: bool = True
) -> list[Round]:
  """The rounds of a task: one per fold when `folds` (ids > 0) are given, else one split.

  `train=False` (zero-shot, retrieval): a split task needs only its test clips.
  """
  if folds is not None and np.any(np.asarray(folds) > 0):
    folds = np.asarray(folds)
    ids = sorted(int(f) for f in np.unique(folds[folds > 0]))
    if len(ids) < 2:
      raise ValueError(f"fold cross-validation needs two folds or more, got {ids}")
    return [
      Round(
        f"fold{k}", np.flatnonzero((folds != k) & (folds > 0)), None, np.flatnonzero(folds == k)
      )
      for k in ids
    ]
  if splits is None:
    raise ValueError("a task needs folds or train/test split names")
  splits, want_train = np.asarray(splits), train
  train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
  valid = np.flatnonzero(np.isin(splits, VALID_NAMES))
  if not test.size or (want_train and not train.size):
    raise ValueError(f"a split task needs train and test clips, got splits {sorted(set(splits))}")
  return [Round("split", train, valid if valid.size else None, test)]


def kfold(labels: np.ndarray, folds: int, seed: int = 0) -> list[Round]:
  """k stratified rounds over one labelled split (`closed_form.stratified_folds`): each fold
  is scored once by a model fitted on the others; the in-training probes' plan."""
  return rounds(closed_form.stratified_folds(labels, folds, seed) + 1, None)


def everything(n: int) -> list[Round]:
  """One round scoring all `n` clips and training on none (zero-shot, retrieval)."""
  return [Round("all", np.zeros(0, np.int64), None, np.arange(n))]


def targets(
  label_sets: Sequence[Sequence[int]], num_classes: int, multilabel: bool | None = None
) -> tuple[np.ndarray, bool]:
  """Labels for the probes: int [N] when every clip has one class, else multi-hot [N, C].

  A set is multi-label when any clip carries several classes (EVAR's rule); pass
  `multilabel` when that was decided on the whole set rather than on these clips.
  """
  if multilabel is None:
    multilabel = any(len(s) != 1 for s in label_sets)
  if not multilabel:
    return np.asarray([s[0] for s in label_sets], np.int64), False
  y = np.zeros((len(label_sets), num_classes), np.float32)
  for i, s in enumerate(label_sets):
    y[i, list(s)] = 1.0
  return y, True


def metric_name(multilabel: bool) -> str:
  """The score a task reports: accuracy, or mAP on a multi-label set."""
  return "mAP" if multilabel else "accuracy"


def linear_eval(
  x: np.ndarray,
  y: np.ndarray,
  plan: Sequence[Round],
  *,
  num_classes: int,
  seeds: Sequence[int] = (0,),
  config: probe.ProbeConfig = probe.ProbeConfig(),
) -> dict[str, float]:
  """Linear probe per round and seed: each output (score, validation score, epochs) is the
  mean over rounds of its seed means; several rounds also report each round's score."""
  multilabel = np.asarray(y).ndim == 2
  name = metric_name(multilabel)
  per_round = []
  for r in plan:
    valid = None if r.valid is None else probe.Split(x[r.valid], y[r.valid])
    runs = [
      probe.linear_probe(
        probe.Split(x[r.train], y[r.train]),
        valid,
        probe.Split(x[r.test], y[r.test]),
        num_classes=num_classes,
        multilabel=multilabel,
        seed=seed,
        config=config,
      )
      for seed in seeds
    ]
    per_round.append({k: float(np.mean([o[k] for o in runs])) for k in runs[0]})
  out: dict[str, float] = {k: float(np.mean([o[k] for o in per_round])) for k in per_round[0]}
  if len(plan) > 1:
    out.update({f"{r.name}_{name}": o[name] for r, o in zip(plan, per_round)})
  return out


def few_shot(
  x: np.ndarray,
  y: np.ndarray,
  plan: Sequence[Round],
  *,
  num_classes: int,
  shots: Sequence[int],
  seeds: Sequence[int],
  config: probe.ProbeConfig = probe.ProbeConfig(),
) -> dict[str, float]:
  """`probe.few_shot` per round, each key averaged over rounds."""
  outs = [
    probe.few_shot(
      probe.Split(x[r.train], y[r.train]),
      None if r.valid is None else probe.Split(x[r.valid], y[r.valid]),
      probe.Split(x[r.test], y[r.test]),
      num_classes=num_classes,
      shots=shots,
      seeds=seeds,
      config=config,
    )
    for r in plan
  ]
  return {k: float(np.mean([o[k] for o in outs])) for k in outs[0]}


def zero_shot(
  audio_emb: np.ndarray, y: np.ndarray, class_emb: np.ndarray, plan: Sequence[Round]
) -> dict[str, float]:
  """Class-prompt scores of every round's test clips pooled into one accuracy (or mAP)."""
  idx = np.concatenate([r.test for r in plan])
  scores = metrics.zero_shot_scores(np.asarray(audio_emb)[idx], class_emb)
  if np.asarray(y).ndim == 2:
    return {"mAP": metrics.mean_average_precision(scores, y[idx]), "clips": int(idx.size)}
  return {"accuracy": metrics.accuracy(scores, y[idx]), "clips": int(idx.size)}
