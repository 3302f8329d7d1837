"""Linear and few-shot probes on synthetic features with known structure."""

from __future__ import annotations

import numpy as np
import pytest

from jaxclap.score import probe

CLASSES = 5
FAST = probe.ProbeConfig(max_epochs=60, patience=10)


def _blobs(
  n_per_class: int, seed: int, *, spread: float = 1.0, dim: int = 16, offset: float = 50.0
) -> probe.Split:
  """Class means on random directions plus noise; a large shared offset and scale per
  feature, so that a probe without standardisation would struggle."""
  rng = np.random.default_rng(seed)
  means = np.random.default_rng(123).normal(size=(CLASSES, dim)) * 2.0
  y = np.repeat(np.arange(CLASSES), n_per_class)
  x = means[y] + spread * rng.normal(size=(y.size, dim))
  scale = np.geomspace(0.01, 100.0, dim)
  return probe.Split((x * scale + offset).astype(np.float32), y)


def test_standardize_uses_train_statistics():
  train = np.array([[0.0, 5.0], [2.0, 5.0]])
  other = np.array([[1.0, 6.0]])
  tr, ot = probe.standardize(train, other)
  np.testing.assert_allclose(tr, [[-1.0, 0.0], [1.0, 0.0]])
  np.testing.assert_allclose(ot, [[0.0, 1.0]])  # Constant feature: std 1, not 0.


def test_linear_probe_learns_separable_classes_and_is_deterministic():
  train, valid, test = _blobs(40, 0), _blobs(10, 1), _blobs(20, 2)
  out = probe.linear_probe(train, valid, test, num_classes=CLASSES, seed=3, config=FAST)
  assert out["accuracy"] > 0.9, out
  assert 1 <= out["best_epoch"] <= out["epochs"] <= FAST.max_epochs
  again = probe.linear_probe(train, valid, test, num_classes=CLASSES, seed=3, config=FAST)
  assert again == out


def test_linear_probe_is_at_chance_on_random_labels():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(600, 16)).astype(np.float32)
  y = rng.integers(0, CLASSES, size=600)
  split = lambda a, b: probe.Split(x[a:b], y[a:b])
  out = probe.linear_probe(
    split(0, 300), split(300, 400), split(400, 600), num_classes=CLASSES, config=FAST
  )
  assert out["accuracy"] < 0.35  # Chance is 0.2; nothing to learn.


def test_early_stopping_keeps_the_best_validation_epoch():
  train, valid, test = _blobs(20, 0, spread=3.0), _blobs(10, 1, spread=3.0), _blobs(10, 2)
  cfg = probe.ProbeConfig(max_epochs=200, patience=5, learning_rate=1e-2)
  out = probe.linear_probe(train, valid, test, num_classes=CLASSES, config=cfg)
  assert out["epochs"] - out["best_epoch"] == cfg.patience  # Stopped by patience.
  assert out["epochs"] < cfg.max_epochs


def test_multilabel_probe_reports_map():
  rng = np.random.default_rng(0)
  y = (rng.random((300, 4)) < 0.3).astype(np.float32)
  x = np.concatenate(
    [y * 2.0 + 0.5 * rng.normal(size=y.shape), rng.normal(size=(300, 4))], axis=1
  ).astype(np.float32)
  split = lambda a, b: probe.Split(x[a:b], y[a:b])
  out = probe.linear_probe(
    split(0, 200), split(200, 250), split(250, 300), num_classes=4, multilabel=True, config=FAST
  )
  assert set(out) == {"mAP", "val_mAP", "best_epoch", "epochs"}
  assert out["mAP"] > 0.85


def test_probe_rejects_bad_shapes_and_labels():
  good = _blobs(4, 0)
  with pytest.raises(ValueError, match=r"validation labels must have shape \(20,\)"):
    probe.linear_probe(good, probe.Split(good.x, good.y[:3]), good, num_classes=CLASSES)
  with pytest.raises(ValueError, match=r"test labels must lie in \[0, 5\)"):
    probe.linear_probe(good, good, probe.Split(good.x, good.y + 1), num_classes=CLASSES)
  with pytest.raises(ValueError, match="train features must be"):
    probe.linear_probe(probe.Split(good.x[:, 0], good.y), good, good, num_classes=CLASSES)


def test_sample_shots_draws_k_per_class_by_seed():
  labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
  idx = probe.sample_shots(labels, 5, seed=0)
  assert np.bincount(labels[idx]).tolist() == [5, 5, 2]  # Class 2 has only 2.
  assert len(set(idx.tolist())) == idx.size
  np.testing.assert_array_equal(idx, probe.sample_shots(labels, 5, seed=0))
  assert not np.array_equal(idx, probe.sample_shots(labels, 5, seed=1))
  with pytest.raises(ValueError, match="shots must be >= 1"):
    probe.sample_shots(labels, 0, seed=0)


def test_few_shot_improves_with_shots_and_averages_seeds():
  train, valid, test = (
    _blobs(30, 0, spread=2.0),
    _blobs(10, 1, spread=2.0),
    _blobs(20, 2, spread=2.0),
  )
  out = probe.few_shot(
    train, valid, test, num_classes=CLASSES, shots=(1, 10), seeds=(0, 1), config=FAST
  )
  assert set(out) == {
    "1shot_accuracy",
    "1shot_accuracy_std",
    "10shot_accuracy",
    "10shot_accuracy_std",
  }
  assert out["1shot_accuracy"] > 1 / CLASSES
  assert out["10shot_accuracy"] > out["1shot_accuracy"]
  assert out["10shot_accuracy_std"] >= 0.0
  # Multi-hot labels: k positives per class, scored by mAP.
  hot = lambda s: probe.Split(s.x, np.eye(CLASSES)[s.y])
  ml = probe.few_shot(
    hot(train), hot(valid), hot(test), num_classes=CLASSES, shots=(10,), seeds=(0,), config=FAST
  )
  assert set(ml) == {"10shot_mAP", "10shot_mAP_std"}
  assert ml["10shot_mAP"] > 0.5  # Chance mAP is about 1 / CLASSES.


def test_probe_without_validation_stops_on_training_loss():
  """Fold cross-validation has no validation split: the training loss decides when to stop."""
  train, test = _blobs(40, 0), _blobs(20, 2)
  out = probe.linear_probe(train, None, test, num_classes=CLASSES, seed=1, config=FAST)
  assert out["accuracy"] > 0.9 and not any(k.startswith("val_") for k in out)
  assert 1 <= out["best_epoch"] <= out["epochs"] <= FAST.max_epochs


def test_sample_shots_multi_hot_draws_positives_of_every_class():
  y = np.zeros((12, 3))
  y[:4, 0] = y[4:8, 1] = y[8:, 2] = 1
  y[0, 2] = 1  # A clip with two classes.
  idx = probe.sample_shots(y, 2, seed=0)
  assert np.all(y[idx].sum(axis=0) >= 2) and len(set(idx.tolist())) == idx.size
