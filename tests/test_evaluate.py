"""Evaluation suite end to end: CLI outputs, plots, and scores well above chance."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib import image as mpimg

from jaxclap import evaluate
from jaxclap.eval import data as eval_data
from jaxclap.eval import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANCE = 1 / 13


def _assert_png(path: str) -> None:
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE, path
  img = mpimg.imread(path)
  assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, img.shape
  assert img.std() > 0.01  # Not a blank canvas.


@pytest.fixture(scope="module")
def eval_data_dir(demo400_data_dir) -> str:
  """The session's 400-clip `jaxclap_demo` (MiniLM embeddings)."""
  return demo400_data_dir


# ---- plots on synthetic arrays ---------------------------------------------------------------


def test_plot_writers_write_pngs(tmp_path):
  rng = np.random.default_rng(0)
  names = ["a", "b", "c"]
  labels = np.repeat(np.arange(3), 4)
  emb = rng.normal(size=(12, 8)) + 3 * np.eye(3, 8)[labels]
  paths = [
    plots.embedding_map(emb, labels, names, str(tmp_path / "m" / "map.png")),
    plots.similarity_matrix(
      rng.normal(size=(3, 3)),
      str(tmp_path / "sim.png"),
      row_labels=["x", "y", "z"],
      col_labels=names,
    ),
    plots.zero_shot_timeline(
      np.arange(5) + 0.5,
      rng.normal(size=(3, 5)),
      names,
      str(tmp_path / "timeline.png"),
      boundaries=[2.0],
    ),
  ]
  assert paths[0] == str(tmp_path / "m" / "map.png")
  for p in paths:
    _assert_png(p)
  with pytest.raises(ValueError, match=r"sims shape \(2, 3\) does not match 3 row"):
    plots.similarity_matrix(
      np.zeros((2, 3)), str(tmp_path / "x.png"), row_labels=["x", "y", "z"], col_labels=names
    )
  with pytest.raises(ValueError, match="12 embeddings but 11 labels"):
    plots.embedding_map(emb, labels[:11], names, str(tmp_path / "y.png"))


def test_tsne_is_deterministic_with_small_n():
  emb = np.random.default_rng(0).normal(size=(5, 4))  # Perplexity must drop below N.
  np.testing.assert_allclose(plots.tsne_2d(emb, seed=1), plots.tsne_2d(emb, seed=1))
  with pytest.raises(ValueError, match="N>=3"):
    plots.tsne_2d(emb[:2])


def test_sliding_zero_shot_windows():
  sr = 100

  class Probe:
    """Embeds a window as [its first sample's time, its non-zero length] (seconds)."""

    unit_frames = 301  # (301 - 1) * hop 1 / 100 Hz = a 3 s window.
    frontend_cfg = SimpleNamespace(hop_length=1, sample_rate=sr)

    def audio_embedding(self, audio, sample_rate):
      assert sample_rate == sr
      return np.stack([[w[0] / sr, np.count_nonzero(w) / sr] for w in np.asarray(audio)])

  audio = np.arange(1, 10 * sr + 1, dtype=np.float32)  # 10 s, sample i holds i+1.
  times, scores = plots.sliding_zero_shot(
    Probe(), audio, sample_rate=sr, class_emb=np.eye(2), hop_s=2.0
  )
  np.testing.assert_allclose(scores[0], [0.01, 2.01, 4.01, 6.01])  # Starts 0, 2, 4, 6 s.
  np.testing.assert_allclose(scores[1], 3.0)  # Every window is the full 3 s.
  np.testing.assert_allclose(times, [1.5, 3.5, 5.5, 7.5])
  # Shorter than a window: one zero-padded window centred on the clip.
  times, scores = plots.sliding_zero_shot(
    Probe(), audio[:150], sample_rate=sr, class_emb=np.eye(2), window_s=2.0
  )
  np.testing.assert_allclose(times, [0.75])
  np.testing.assert_allclose(scores[:, 0], [0.01, 1.5])


# ---- evaluation on checkpoints ----------------------------------------------------------------


def test_evaluate_rejects_unknown_tasks_and_missing_data(tmp_path, demo_data_dir):
  with pytest.raises(ValueError, match=r"unknown or no task\(s\) \['nope'\]"):
    evaluate.evaluate(
      "unused", data_dir=demo_data_dir, workdir=str(tmp_path), tasks=["zero_shot", "nope"]
    )
  with pytest.raises(ValueError, match="must contain '{}' exactly once"):
    evaluate.evaluate("unused", data_dir=demo_data_dir, workdir=str(tmp_path), template="no slot")
  with pytest.raises(FileNotFoundError, match="not built under"):
    evaluate.evaluate("unused", data_dir=str(tmp_path), workdir=str(tmp_path), tasks=["zero_shot"])


def test_load_split_reads_whole_clips(demo_data_dir):
  ev = eval_data.load_split("jaxclap_demo", "test", demo_data_dir)
  assert len(ev) == len(ev.labels) == len(ev.captions) == len(ev.ids) > 0
  assert ev.sample_rate == 16000 and all(a.dtype == np.float32 for a in ev.audio)
  assert len({len(a) for a in ev.audio}) > 1  # Lengths vary: no crop, no padding.
  assert all(c and all(isinstance(t, str) for t in c) for c in ev.captions)
  with pytest.raises(ValueError, match="has no split 'dev'"):
    eval_data.load_split("jaxclap_demo", "dev", demo_data_dir)


def test_barely_trained_encoder_probe_beats_chance(stage1_workdir, eval_data_dir, tmp_path):
  """The 3-step fixture: frozen clip features already carry the class (EVAR linear eval)."""
  report = evaluate.evaluate(
    stage1_workdir, data_dir=eval_data_dir, workdir=str(tmp_path), tasks=["linear_probe"]
  )
  acc = report["results"]["linear_probe"]["accuracy"]
  print(f"3-step stage 1: linear probe {acc:.3f} on 40 test clips (chance {CHANCE:.3f})")
  assert acc > 4 * CHANCE


def test_stage2_retrieval_counts_every_caption(stage2_workdir, demo_data_dir, tmp_path):
  report = evaluate.evaluate(
    stage2_workdir, data_dir=demo_data_dir, workdir=str(tmp_path), tasks=["retrieval"]
  )
  ev = eval_data.load_split("jaxclap_demo", "test", demo_data_dir)
  res = report["results"]["retrieval"]
  assert res["clips"] == len(ev) and res["captions"] == sum(len(c) for c in ev.captions)
  assert res["captions"] > res["clips"]  # Several captions per clip.
  for key in ("a2t_R@1", "a2t_R@5", "a2t_R@10", "a2t_mAP@10", "t2a_R@1", "t2a_mAP@10"):
    assert 0.0 <= res[key] <= 1.0
  assert res["t2a_R@10"] == 1.0  # Fewer than 10 clips: the right one is always in the top 10.
  assert report["stage"] == "stage2"


@pytest.mark.slow
def test_zero_shot_and_probes_well_above_chance(learned_workdir, eval_data_dir, tmp_path):
  """The session's 400-step stage 1 (conftest.LEARNED): measured zero-shot 0.33, probe 0.70,
  5-shot 0.46, t2a R@10 0.98."""
  start = time.perf_counter()
  report = evaluate.evaluate(
    learned_workdir, data_dir=eval_data_dir, workdir=str(tmp_path), shots=(5,), seeds=(0, 1)
  )
  res = report["results"]
  print(f"evaluation in {time.perf_counter() - start:.1f} s:\n{report['table']}")
  assert res["zero_shot"]["chance"] == pytest.approx(CHANCE)
  assert res["zero_shot"]["accuracy"] > 2.5 * CHANCE
  assert res["linear_probe"]["accuracy"] > 4 * CHANCE
  assert res["few_shot"]["5shot_accuracy"] > 2.5 * CHANCE
  assert res["retrieval"]["t2a_R@10"] > 10 / 40  # Chance R@10 over 40 clips.
  assert report["splits"]["test"] == {"name": "test", "clips": 40}
  saved = json.loads((tmp_path / "eval.json").read_text())
  assert saved["results"] == json.loads(json.dumps(res))


def test_cli_writes_eval_json_md_and_plots(stage1_workdir, demo_data_dir, tmp_path):
  out = tmp_path / "eval"
  cmd = [
    sys.executable,
    "-m",
    "jaxclap.evaluate",
    f"--checkpoint={stage1_workdir}",
    f"--data_dir={demo_data_dir}",
    "--dataset=jaxclap_demo",
    f"--workdir={out}",
    "--tasks=zero_shot,retrieval,linear_probe,few_shot",
    "--shots=1,5",
    "--seeds=0",
    "--template=the sound of {}",
    "--plots",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| zero_shot | accuracy |" in proc.stdout
  report = json.loads((out / "eval.json").read_text())
  assert set(report) >= {"checkpoint", "dataset", "stage", "template", "splits", "results", "plots"}
  assert report["template"] == "the sound of {}" and report["stage"] == "stage1"
  res = report["results"]
  assert list(res) == ["zero_shot", "retrieval", "linear_probe", "few_shot"]
  assert set(res["zero_shot"]) == {"accuracy", "clips", "chance"}
  assert set(res["retrieval"]) == {
    f"{d}_{m}" for d in ("a2t", "t2a") for m in ("R@1", "R@5", "R@10", "mAP@10")
  } | {"clips", "captions"}
  assert set(res["linear_probe"]) == {"accuracy", "val_accuracy", "best_epoch", "epochs", "chance"}
  assert set(res["few_shot"]) == {
    "1shot_accuracy",
    "1shot_accuracy_std",
    "5shot_accuracy",
    "5shot_accuracy_std",
    "chance",
  }
  md = (out / "eval.md").read_text()
  assert md.count("\n| ") == sum(len(v) for v in res.values()) + 1  # Header + one per metric.
  assert set(report["plots"]) == {"embedding_map", "similarity", "timeline"}
  for path in report["plots"].values():
    _assert_png(path)


def test_cli_user_error_is_one_line(tmp_path, demo_data_dir):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxclap.evaluate",
      f"--checkpoint={tmp_path}",
      f"--data_dir={demo_data_dir}",
      f"--workdir={tmp_path}",
      "--tasks=zero_shot,bogus",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown or no task(s)")


def test_finetune_is_reported_beside_the_linear_probe(stage1_workdir, demo_data_dir, tmp_path):
  """Task "finetune" runs the stage-1.1 recipe and lands in the same table as the probe."""
  from configs import finetune as ft_config

  config = ft_config.get_config()
  f = config.finetune
  f.batch, f.epochs, f.warmup_epochs, f.max_steps = 8, 2, 0.5, 4
  report = evaluate.evaluate(
    stage1_workdir,
    data_dir=demo_data_dir,
    workdir=str(tmp_path),
    tasks=["linear_probe", "finetune"],
    finetune_config=config,
  )
  res = report["results"]
  assert list(res) == ["linear_probe", "finetune"]
  assert set(res["finetune"]) >= {"accuracy", "val_accuracy", "epochs", "steps", "chance"}
  assert 0.0 <= res["finetune"]["accuracy"] <= 1.0 and res["finetune"]["steps"] == 4
  assert "| finetune | accuracy |" in report["table"]
  assert "| linear_probe | accuracy |" in report["table"]
  saved = json.loads((tmp_path / "finetune" / "finetune.json").read_text())
  assert saved["test"] == res["finetune"]["accuracy"]
  with pytest.raises(ValueError, match="needs a fine-tuning config"):
    evaluate.evaluate(
      stage1_workdir, data_dir=demo_data_dir, workdir=str(tmp_path), tasks=["finetune"]
    )
