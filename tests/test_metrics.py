"""Evaluation metrics against brute-force loops and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from jaxclap import metrics
from jaxclap.score import crossval, kinds


def _brute_retrieval(sims: np.ndarray, caption_clip: np.ndarray) -> dict[str, float]:
  """Obviously-correct loops: rank every candidate of every query one by one."""
  n_clips, n_caps = sims.shape
  out = {}
  a2t_hits = {k: 0 for k in (1, 5, 10)}
  a2t_ap = []
  for i in range(n_clips):
    ranked = sorted(range(n_caps), key=lambda j: -sims[i, j])
    own = [r + 1 for r, j in enumerate(ranked) if caption_clip[j] == i]  # 1-based ranks.
    for k in a2t_hits:
      a2t_hits[k] += int(min(own) <= k)
    total = 0.0
    for m, rank in enumerate(own, start=1):
      if rank <= 10:
        total += m / rank
    a2t_ap.append(total / min(len(own), 10))
  for k, v in a2t_hits.items():
    out[f"a2t_R@{k}"] = v / n_clips
  out["a2t_mAP@10"] = sum(a2t_ap) / n_clips
  t2a_hits = {k: 0 for k in (1, 5, 10)}
  t2a_ap = 0.0
  for j in range(n_caps):
    ranked = sorted(range(n_clips), key=lambda i: -sims[i, j])
    rank = ranked.index(caption_clip[j]) + 1
    for k in t2a_hits:
      t2a_hits[k] += int(rank <= k)
    t2a_ap += 1.0 / rank if rank <= 10 else 0.0
  for k, v in t2a_hits.items():
    out[f"t2a_R@{k}"] = v / n_caps
  out["t2a_mAP@10"] = t2a_ap / n_caps
  return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  n_clips = 30
  caption_clip = np.concatenate(
    [np.arange(n_clips), rng.integers(0, n_clips, size=50)]
  )  # 1 to ~6 per clip.
  rng.shuffle(caption_clip)
  # A weak signal so that ranks spread over 1..30; continuous values avoid ties.
  sims = rng.normal(size=(n_clips, caption_clip.size))
  sims[caption_clip, np.arange(caption_clip.size)] += 1.5
  got = metrics.retrieval(sims, caption_clip)
  want = _brute_retrieval(sims, caption_clip)
  assert set(got) == set(want)
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=1e-12), key
  assert 0.0 < got["a2t_R@1"] < 1.0 and 0.0 < got["t2a_mAP@10"] < 1.0


def test_retrieval_hand_case_and_several_captions():
  # Clip 0 owns captions 0, 2; clip 1 owns caption 1.
  sims = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]])
  got = metrics.retrieval(sims, np.array([0, 1, 0]))
  # a2t clip 0: order 1, 2, 0 -> own at ranks 2, 3: AP = (1/2 + 2/3) / 2.
  # a2t clip 1: order 0, 2, 1 -> own at rank 3: AP = 1/3.
  assert got["a2t_mAP@10"] == pytest.approx(((0.5 + 2 / 3) / 2 + 1 / 3) / 2)
  assert got["a2t_R@1"] == 0.0 and got["a2t_R@5"] == 1.0
  # t2a: caption 0 -> clips (1, 0): rank 2; caption 1 -> (0, 1): rank 2; caption 2 -> rank 1.
  assert got["t2a_R@1"] == pytest.approx(1 / 3)
  assert got["t2a_mAP@10"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_retrieval_ties_do_not_favour_the_correct_item():
  sims = np.zeros((4, 4))  # Every score tied: only index order ranks.
  got = metrics.retrieval(sims)
  assert got["a2t_R@1"] == 0.25 and got["t2a_R@1"] == 0.25


def test_retrieval_from_embeddings_default_is_diagonal():
  emb = np.eye(5)
  got = metrics.retrieval_from_embeddings(emb, emb)
  assert all(v == 1.0 for v in got.values())


def test_retrieval_rejects_bad_input():
  with pytest.raises(ValueError, match="caption_clip values"):
    metrics.retrieval(np.zeros((2, 3)), np.array([0, 1, 2]))
  with pytest.raises(ValueError, match="no relevant"):
    metrics.retrieval(np.zeros((3, 2)), np.array([0, 1]))  # Clip 2 has no caption.
  with pytest.raises(ValueError, match="2 entries for 3 captions"):
    metrics.retrieval(np.zeros((2, 3)), np.array([0, 1]))


def test_average_precision_is_sklearns_with_ties():
  """Our AP equals sklearn's average_precision_score, tied scores included."""
  from sklearn.metrics import average_precision_score

  rng = np.random.default_rng(0)
  for trial in range(200):
    n = int(rng.integers(2, 40))
    positive = rng.random(n) < rng.uniform(0.05, 0.9)
    positive[rng.integers(n)] = True
    # Few distinct values in half the trials: many ties across positives and negatives.
    score = rng.integers(0, 4, n) / 4 if trial % 2 else rng.standard_normal(n)
    ours = metrics.average_precision(positive, score)
    assert ours == pytest.approx(average_precision_score(positive, score), abs=1e-12), trial
  assert metrics.average_precision([False, True, True], [0.5, 0.5, 0.5]) == pytest.approx(2 / 3)


def test_mean_average_precision_hand_case():
  scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.6], [0.2, 0.2]])
  targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
  # Class 0: positives at ranks 1 and 3 -> AP = (1/1 + 2/3) / 2 = 5/6.
  # Class 1: one positive, ranked 1st (0.7) -> AP = 1.
  assert metrics.mean_average_precision(scores, targets) == pytest.approx((5 / 6 + 1) / 2)
  # A class without positives is left out of the mean.
  targets3 = np.concatenate([targets, np.zeros((4, 1))], axis=1)
  scores3 = np.concatenate([scores, np.ones((4, 1))], axis=1)
  assert metrics.mean_average_precision(scores3, targets3) == pytest.approx((5 / 6 + 1) / 2)
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.mean_average_precision(scores, targets[:, :1])


def test_accuracy_and_zero_shot():
  assert metrics.accuracy(
    np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.4]]), np.array([1, 0, 0])
  ) == pytest.approx(2 / 3)
  class_emb = np.eye(3)
  audio = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])

  def zero_shot(labels):
    inputs = kinds.Inputs(
      crossval.everything(2), np.asarray(labels), 3, audio=audio, class_text=class_emb
    )
    return kinds.score("zero_shot", inputs)

  assert zero_shot([0, 2]) == {"accuracy": 1.0, "clips": 2}
  assert zero_shot([1, 2])["accuracy"] == 0.5
  assert zero_shot([[1, 0, 0], [0, 0, 1]]) == {"mAP": 1.0, "clips": 2}
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    zero_shot([0, 3])


def test_flatten_captions():
  texts, owner = metrics.flatten_captions([["a", "b"], ["c"]])
  assert texts == ["a", "b", "c"] and owner.tolist() == [0, 0, 1]
  with pytest.raises(ValueError, match="clip 1 has no caption"):
    metrics.flatten_captions([["a"], []])
