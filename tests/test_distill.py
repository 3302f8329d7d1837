"""Distillation (train/distill.py) on the one trainer: the student learns its teacher, is a
normal jaxclap model in the teacher's space, names its teacher, resumes bit-exactly, and
exports to PyTorch and ONNX (jaxclap/onnx_export.py) with the JAX student's outputs."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import jaxclap
from configs import distill as distill_config
from jaxclap import onnx_export
from jaxclap.models import features
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import config as config_lib
from jaxclap.train import distill, loop

HELD_OUT = "jaxclap_demo:test"


def small_distill(teacher: str, data_dir: str, steps: int = 12) -> ml_collections.ConfigDict:
  """configs/distill.py's demo preset shrunk for tests: a `nano` student, batch 8."""
  c = distill_config.get_config("demo")
  c.distill.teacher = teacher
  c.distill.infonce_weight = 0.0  # Fidelity from the cosine and feature terms alone.
  c.data.data_dir = data_dir
  c.data.build_demo = False
  c.data.val = ""
  c.data.zero_shot = ""
  c.model.size = "nano"
  c.train.global_batch = 8
  c.train.num_steps = steps
  c.train.log_every = 1
  c.train.val_every = 0
  c.train.checkpoint_every = 1000
  c.optim.base_lr = 0.02  # Per 256 clips: 6e-4 at batch 8.
  c.optim.warmup_epochs = 0.0
  c.evaluate.evaluators = ml_collections.ConfigDict(
    {
      "fidelity": {"kind": "fidelity", "data": HELD_OUT, "every": 1000},
      "zero_shot": {"kind": "zero_shot", "data": HELD_OUT, "every": 1000},
    }
  )
  c.evaluate.max_clips = 48
  c.evaluate.batch = 16
  c.evaluate.plot = False
  return c


def test_distilled_student_end_to_end(stage2_workdir, demo_data_dir, tmp_path):
  """12 steps into a `nano` student; then the student as a model, and its exports."""
  workdir = str(tmp_path / "run")
  out = loop.train_and_evaluate(small_distill(stage2_workdir, demo_data_dir), workdir)
  evals = out["evaluators"]
  final = {h["name"]: h for h in evals["history"]}
  base = evals["baselines"]
  # The student's embeddings move towards the teacher's: well above its initial cosine.
  fid, fid0 = final["fidelity"]["cosine"], base["fidelity"]["init"]["cosine"]
  assert fid > fid0 + 0.2, (fid, fid0)
  # Zero-shot of the teacher is scored beside the student's (same prompts, same clips).
  assert set(base["zero_shot"]) == {"init", "teacher"}
  teacher = jaxclap.load(stage2_workdir, progress=False)
  student = jaxclap.load(workdir, progress=False)
  meta = ckpt.load(workdir).meta
  assert meta.distill["teacher"] == stage2_workdir
  assert meta.distill["student_size"] == "nano"
  assert meta.distill["student_encoder_params"] * 3 < meta.distill["teacher_encoder_params"]
  assert student.stage == teacher.stage == "stage2"
  # The teacher's text side and temperature: the same text embeddings, bit for bit.
  prompts = ["a dog barks", "rain can be heard"]
  np.testing.assert_array_equal(student.text_embedding(prompts), teacher.text_embedding(prompts))
  assert student.logit_scale == teacher.logit_scale
  rng = np.random.default_rng(0)
  wave = rng.normal(0, 0.1, (3, 16000)).astype(np.float32)
  assert student.audio_embedding(wave, sample_rate=16000).shape == (3, teacher.embedding_dim)
  assert student.feature_dim < teacher.feature_dim
  probs = student.zero_shot(wave, ["dog", "rain"], sample_rate=16000)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
  # distill.json marks the finished run; a rerun returns it without training.
  with open(os.path.join(workdir, distill.RESULT_FILE)) as f:
    assert json.load(f)["distill"]["teacher_stage"] == "stage2"
  again = loop.train_and_evaluate(small_distill(stage2_workdir, ""), workdir)
  assert again["distill"] == out["distill"]

  # PyTorch (the official-layout .pth, strictly loaded) and ONNX Runtime match JAX.
  exported = onnx_export.export(workdir, str(tmp_path / "export"))
  assert all(size > 0 for size in exported["bytes"].values()), exported
  onnx.checker.check_model(exported["onnx"])
  assert student.embedding_dim != student.token_dim  # The pooler's out_proj is exported.
  x = rng.normal(size=(3, 80, student.unit_frames)).astype(np.float32)
  frames = np.asarray(features.frame_features(student.params, x, model=student.model))
  emb = np.asarray(features.clap_audio_embedding(student.params, x, model=student.model))
  module, norm_stats = onnx_export.load_torch(exported["pth"])
  np.testing.assert_allclose(norm_stats, student.norm_stats, rtol=1e-6)
  with torch.inference_mode():
    t_frames, t_emb = (v.numpy() for v in module(torch.from_numpy(x)))
  np.testing.assert_allclose(t_frames, frames, atol=1e-4)
  np.testing.assert_allclose(t_emb, emb, atol=1e-4)
  session = ort.InferenceSession(exported["onnx"], providers=["CPUExecutionProvider"])
  o_frames, o_emb = session.run(None, {"log_mel": x})
  assert o_frames.shape == (3, student.unit_frames // 16, 80 // 16 * student.token_dim)
  np.testing.assert_allclose(o_frames, frames, atol=1e-4)
  np.testing.assert_allclose(o_emb, emb, atol=1e-4)


def test_resume_is_bit_exact(stage1_workdir, demo_data_dir, tmp_path):
  """A stage-1 teacher, InfoNCE on, another patch grid: 2 steps straight equal 1 + resume."""

  def config(stop_after: int = -1) -> ml_collections.ConfigDict:
    c = small_distill(stage1_workdir, demo_data_dir, steps=2)
    c.model.patch_time = 8  # 16x8 patches: the adapter resizes to the teacher's 16x16 grid.
    c.distill.infonce_weight = 0.5
    c.evaluate.evaluators = ml_collections.ConfigDict()
    c.train.stop_after = stop_after
    return c

  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  loop.train_and_evaluate(config(), straight)
  first = loop.train_and_evaluate(config(stop_after=1), split)
  assert first["end_step"] == 1
  assert loop.train_and_evaluate(config(), split)["start_step"] == 1
  a, b = ckpt.load(straight), ckpt.load(split)
  assert a.meta.stage == "stage1" and a.meta.distill["weights"]["infonce"] == 0.5
  for x, y in zip(jax.tree.leaves(a.state["params"]), jax.tree.leaves(b.state["params"])):
    np.testing.assert_array_equal(x, y)
  student = jaxclap.load(split, progress=False)
  assert student.patch_size == 8


def test_bad_configs_name_the_key(stage2_workdir, demo_data_dir, tmp_path):
  c = small_distill("", demo_data_dir)
  with pytest.raises(ValueError, match="distill.teacher"):
    config_lib.validate(c)
  c = small_distill(stage2_workdir, demo_data_dir)
  c.distill.captions = False
  c.distill.infonce_weight = 1.0
  with pytest.raises(ValueError, match="distill.infonce_weight"):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="distill.teacher='/nonexistent/run'"):
    distill.load_teacher("/nonexistent/run")
  c = small_distill(stage2_workdir, demo_data_dir)
  c.stage = "stage1"  # A fidelity evaluator has no teacher to compare with.
  c.data.crop_frames = 64
  with pytest.raises(ValueError, match="evaluate.evaluators.fidelity.kind"):
    config_lib.validate(c)
