"""Evaluation metrics on host arrays: accuracy, multi-label mAP, audio↔text retrieval.

Pure numpy (average precision is sklearn's `average_precision_score` formula, pinned to it
by tests; sklearn itself takes over a second to import in every process that runs this).
Training's validation and the evaluation CLI both call these, so their numbers mean the
same thing.

Ranking convention (retrieval): candidates are sorted by score, highest first; equal
scores keep index order (a stable sort), so a tie never favours the correct item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10)
MAP_CUTOFF = 10


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
  return x


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 accuracy: fraction of rows whose argmax (first on ties) equals the label."""
  scores = _as_2d(scores, "scores")
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  if labels.shape[0] != scores.shape[0]:
    raise ValueError(f"{scores.shape[0]} score rows but {labels.shape[0]} labels")
  if labels.size == 0:
    raise ValueError("accuracy of an empty set")
  if labels.min() < 0 or labels.max() >= scores.shape[1]:
    raise ValueError(
      f"labels must lie in [0, {scores.shape[1]}); got range [{labels.min()}, {labels.max()}]"
    )
  return float(np.mean(np.argmax(scores, axis=1) == labels))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  """Multi-label mAP: per-class average precision, macro-averaged.

  AP of class c ranks all clips by `scores[:, c]` and averages the precision at the
  rank of every positive clip (sklearn's `average_precision_score`, no interpolation).
  Classes with no positive clip have no AP and are left out of the mean.
  """
  scores, targets = _as_2d(scores, "scores"), _as_2d(targets, "targets")
  if scores.shape != targets.shape:
    raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
  present = np.flatnonzero(targets.sum(axis=0) > 0)
  if present.size == 0:
    raise ValueError("mean_average_precision: no class has a positive example")
  aps = [average_precision(targets[:, c] > 0, scores[:, c]) for c in present]
  return float(np.mean(aps))


def average_precision(positive: np.ndarray, score: np.ndarray) -> float:
  """AP of one class: sum over distinct score thresholds, highest first, of
  (recall gained) x (precision at that threshold); tied scores form one threshold
  (sklearn's `average_precision_score`)."""
  score = np.asarray(score, np.float64)
  order = np.argsort(-score, kind="stable")
  score, positive = score[order], np.asarray(positive, bool)[order]
  last = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]  # Each threshold's last clip.
  tp = np.cumsum(positive)[last]
  precision, recall = tp / (last + 1), tp / tp[-1]
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def zero_shot_scores(audio_emb: np.ndarray, class_emb: np.ndarray) -> np.ndarray:
  """Cosine-similarity scores [N, classes] of (L2-normalised) audio and prompt embeddings."""
  return _as_2d(audio_emb, "audio_emb") @ _as_2d(class_emb, "class_emb").T


def _ranked_metrics(
  scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int], prefix: str
) -> dict[str, float]:
  """R@k and mAP@10 of queries (rows) over candidates (columns) with a relevance mask."""
  n_rel = relevant.sum(axis=1)
  if np.any(n_rel == 0):
    raise ValueError(f"{prefix}: query {int(np.argmin(n_rel))} has no relevant candidate")
  order = np.argsort(-scores, axis=1, kind="stable")
  hits = np.take_along_axis(relevant, order, axis=1)  # hits[q, r]: rank r+1 is relevant.
  out = {f"{prefix}_R@{k}": float(np.mean(hits[:, :k].any(axis=1))) for k in ks}
  top = hits[:, :MAP_CUTOFF]
  precision = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1)
  ap = (precision * top).sum(axis=1) / np.minimum(n_rel, MAP_CUTOFF)
  out[f"{prefix}_mAP@{MAP_CUTOFF}"] = float(np.mean(ap))
  return out


def retrieval(
  sims: np.ndarray, caption_clip: np.ndarray | None = None, *, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
  """Audio→text and text→audio retrieval from a [clips, captions] similarity matrix.

  `caption_clip[j]` is the clip that caption j describes (default: caption i ↔ clip i).
  a2t: each clip queries all captions; a hit is any of its own captions.
    a2t_R@k = fraction of clips with at least one own caption in the top k;
    a2t_mAP@10 = mean over clips of (1/min(n_rel, 10)) · Σ precision@r over the ranks
    r ≤ 10 that hold an own caption (average precision truncated at 10).
  t2a: each caption queries all clips; exactly one is relevant, at rank r.
    t2a_R@k = fraction of captions with r ≤ k; t2a_mAP@10 = mean of 1/r if r ≤ 10 else 0
    (DCASE 2022 task 6b).
  """
  sims = _as_2d(sims, "sims").astype(np.float64)
  n_clips, n_caps = sims.shape
  caption_clip = (
    np.arange(n_caps)
    if caption_clip is None
    else np.asarray(caption_clip).astype(np.int64).reshape(-1)
  )
  if caption_clip.shape[0] != n_caps:
    raise ValueError(f"caption_clip has {caption_clip.shape[0]} entries for {n_caps} captions")
  if caption_clip.size and (caption_clip.min() < 0 or caption_clip.max() >= n_clips):
    raise ValueError(
      f"caption_clip values must lie in [0, {n_clips}); got range "
      f"[{caption_clip.min()}, {caption_clip.max()}]"
    )
  relevant = caption_clip[None, :] == np.arange(n_clips)[:, None]  # [clips, captions]
  out = _ranked_metrics(sims, relevant, ks, "a2t")
  out.update(_ranked_metrics(sims.T, relevant.T, ks, "t2a"))
  return out


def retrieval_from_embeddings(
  audio_emb: np.ndarray,
  text_emb: np.ndarray,
  caption_clip: np.ndarray | None = None,
  *,
  ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
  """`retrieval` on cosine similarities of L2-normalised audio [N, C] and text [M, C]."""
  audio_emb, text_emb = _as_2d(audio_emb, "audio_emb"), _as_2d(text_emb, "text_emb")
  return retrieval(audio_emb @ text_emb.T, caption_clip, ks=ks)


def flatten_captions(captions: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
  """Per-clip caption lists → (all captions, caption_clip index of each)."""
  texts, owner = [], []
  for i, caps in enumerate(captions):
    if not caps:
      raise ValueError(f"clip {i} has no caption")
    texts.extend(caps)
    owner.extend([i] * len(caps))
  return texts, np.asarray(owner, np.int64)
