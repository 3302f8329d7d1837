"""Evaluators in the training loop: closed-form probes, config checks, a short logged run."""

from __future__ import annotations

import glob
import json
import struct

import ml_collections
import numpy as np
import pytest
from conftest import small_config

from jaxclap.score import closed_form, crossval, kinds, probe
from jaxclap.train import config as config_lib
from jaxclap.train import evaluators


def _blobs(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int = 0):
  """Gaussian clusters around random class centres: features and labels."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim)) * 3.0
  y = np.repeat(np.arange(num_classes), n_per_class)
  return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def test_stratified_folds_spread_each_class():
  y = np.repeat(np.arange(4), [2, 5, 3, 10])
  fold = closed_form.stratified_folds(y, 5, seed=3)
  for c in range(4):
    counts = np.bincount(fold[y == c], minlength=5)
    assert counts.max() - counts.min() <= 1, (c, counts)


@pytest.mark.parametrize("dim", [6, 64])  # Primal (n > d) and dual (n <= d) ridge solves.
def test_ridge_and_knn_separate_clusters_and_not_noise(dim):
  x, y = _blobs(8, 5, dim, spread=0.5)
  noise = np.random.default_rng(1).normal(size=x.shape)
  for kind in ("ridge", "knn"):
    score = lambda f: kinds.score(  # noqa: E731
      kind, kinds.Inputs(crossval.kfold(y, 5), y, 5, features=f)
    )["accuracy"]
    assert score(x) > 0.95, kind
    assert score(noise) < 0.6, kind


def test_kfold_pooled_accuracy_counts_each_clip_once():
  """ridge/knn pool the folds' test clips: accuracy = hits over all clips, computed here by
  fitting each fold's model independently."""
  x, y = _blobs(6, 3, 4, spread=2.5, seed=2)
  plan = crossval.kfold(y, 4, seed=0)
  assert sorted(np.concatenate([r.test for r in plan]).tolist()) == list(range(len(y)))
  hits = 0
  fold = closed_form.stratified_folds(y, 4, seed=0)
  for f in range(4):
    te = fold == f
    scores = closed_form.knn_scores(x[~te], y[~te], x[te], 3, 3)
    hits += int(np.sum(np.argmax(scores, 1) == y[te]))
  got = kinds.score("knn", kinds.Inputs(plan, y, 3, features=x))["accuracy"]
  assert got == pytest.approx(hits / len(y))


def test_kinds_name_what_they_lack_and_probe_kinds_run_on_kfold_plans():
  x, y = _blobs(6, 3, 8, spread=0.3)
  with pytest.raises(ValueError, match="unknown evaluator kind 'svm'"):
    kinds.score("svm", kinds.Inputs())
  with pytest.raises(ValueError, match="'zero_shot' needs \\['audio', 'class_text'\\]"):
    kinds.score("zero_shot", kinds.Inputs(crossval.kfold(y, 3), y, 3))
  with pytest.raises(ValueError, match="no training clips"):
    kinds.score("ridge", kinds.Inputs(crossval.everything(len(y)), y, 3, features=x))
  fast = kinds.Options(probe_config=probe.ProbeConfig(max_epochs=30, patience=5), shots=(2,))
  plan = crossval.kfold(y, 3)
  lin = kinds.score("linear_probe", kinds.Inputs(plan, y, 3, features=x), fast)
  assert lin["accuracy"] > 0.9 and {f"fold{k}_accuracy" for k in (1, 2, 3)} <= set(lin)
  few = kinds.score("few_shot", kinds.Inputs(plan, y, 3, features=x), fast)
  assert set(few) == {"2shot_accuracy", "2shot_accuracy_std"}


def _ridge_fit(xs, y, lam_n, num_classes):
  """Weights [D + 1, C] of ridge with an unpenalised intercept, by the normal equations."""
  design = np.hstack([xs, np.ones((len(xs), 1))])
  penalty = lam_n * np.diag([1.0] * xs.shape[1] + [0.0])
  return np.linalg.solve(design.T @ design + penalty, design.T @ np.eye(num_classes)[y])


def test_ridge_scores_and_leave_one_out_match_normal_equations():
  x, y = _blobs(4, 3, 5, spread=3.0)  # Overlapping classes: LOO accuracy 7/12, not 0 or 1.
  x_te = x[:5] + 0.1
  loo_acc, scores = closed_form.ridge_loo_and_scores(x, y, x_te, 3, (0.5,))
  assert 0.0 < loo_acc[0] < 1.0
  xs, xt = (a.astype(np.float64) for a in closed_form.standardize(x, x_te))
  n = len(xs)
  w = _ridge_fit(xs, y, 0.5 * n, 3)
  np.testing.assert_allclose(scores[0], np.hstack([xt, np.ones((5, 1))]) @ w, atol=1e-6)
  # Leave-one-out by refitting n times (same standardisation and penalty λ·n).
  hits = 0
  for i in range(n):
    keep = np.arange(n) != i
    w_i = _ridge_fit(xs[keep], y[keep], 0.5 * n, 3)
    hits += int(np.argmax(np.append(xs[i], 1.0) @ w_i) == y[i])
  assert loo_acc[0] == pytest.approx(hits / n)


def test_eval_batch_size_drops_fewest_clips():
  assert evaluators.eval_batch_size(496, 64, 1) == 62
  assert evaluators.eval_batch_size(100, 64, 4) == 20  # Divides 100: no clip dropped.
  assert evaluators.eval_batch_size(7, 64, 2) == 6
  assert evaluators.eval_batch_size(10, 64, 2) == 10


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
  """(step, value) per tag of TensorBoard event files (TFRecord framing, tensorboardX protos)."""
  from tensorboardX.proto import event_pb2

  out: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(glob.glob(str(logdir / "events.*"))):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 16 + length  # Length, its CRC, the record, its CRC.
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def _with_evaluators(c: ml_collections.ConfigDict, every: int) -> ml_collections.ConfigDict:
  c.evaluate.evaluators = ml_collections.ConfigDict(
    {
      "probe": {"kind": "ridge", "data": "jaxclap_demo:train", "every": every},
      "knn": {"kind": "knn", "data": "jaxclap_demo:train", "every": every},
      "zs": {"kind": "zero_shot", "data": "jaxclap_demo:train", "every": 2 * every},
      "ret": {"kind": "retrieval", "data": "jaxclap_demo:train", "every": 2 * every},
    }
  )
  return c


def test_bad_evaluator_config_names_the_key():
  c = _with_evaluators(config_lib.base_config(), 2)
  c.evaluate.evaluators.knn.kind = "svm"
  with pytest.raises(ValueError, match="evaluate.evaluators.knn.kind"):
    config_lib.validate(c)
  c.evaluate.evaluators.knn.kind = "knn"
  c.evaluate.evaluators.knn.every = 0
  with pytest.raises(ValueError, match="evaluate.evaluators.knn.every"):
    config_lib.validate(c)


def test_short_run_logs_every_evaluator_with_baselines(demo_data_dir, tmp_path, capsys):
  from jaxclap.train import loop

  c = _with_evaluators(small_config("stage1", demo_data_dir), every=1)
  c.train.num_steps = 2
  summary = loop.train_and_evaluate(c, str(tmp_path))
  out = capsys.readouterr().out
  want_steps = {"probe": [1, 2], "knn": [1, 2], "zs": [2], "ret": [2]}
  for name, steps in want_steps.items():
    for step in steps:
      line = next(ln for ln in out.splitlines() if ln.startswith(f"[eval] step {step} {name} "))
      assert "initial encoder" in line, line
      assert ("log-mel stats" in line) == (name in ("probe", "knn")), line
  assert "[eval] evaluators took" in out
  scalars = _scalars(tmp_path / "tensorboard")
  for name in ("probe", "knn"):
    for suffix in ("", "_logmel", "_init"):
      events = scalars[f"eval/{name}/accuracy{suffix}"]
      assert [s for s, _ in events] == [1, 2], (name, suffix)
      assert all(0.0 <= v <= 1.0 for _, v in events)
  assert [s for s, _ in scalars["eval/zs/accuracy_init"]] == [2]
  # tensorboardX writes "@" in a tag as "_".
  assert "eval/ret/a2t_R_1" in scalars and "eval/ret/a2t_R_1_init" in scalars
  assert "eval/zs/accuracy_logmel" not in scalars
  ev = summary["evaluators"]
  assert 0.0 < ev["time_share"] < 1.0
  assert {r["evaluator"] for r in ev["table"]} == set(want_steps)
  saved = json.loads((tmp_path / "checkpoints" / "2" / "evals" / "metadata").read_text())
  assert saved["latest"]["probe"]["step"] == 2
  assert set(saved["baselines"]["probe"]) == {"logmel", "init"}
  # The same checkpoint scored offline (python -m jaxclap.evaluate --run_evaluators runs this)
  # gives the numbers the loop logged at its last step.
  offline = evaluators.score_checkpoint(str(tmp_path))
  in_loop = {h["name"]: h for h in ev["history"] if h["step"] == 2}
  assert set(offline) == set(want_steps)
  for name, got in offline.items():
    want = {k: v for k, v in in_loop[name].items() if k not in ("step", "name")}
    assert got == pytest.approx(want, abs=1e-6), name
