"""Stage 1 → 2 → 2.1 handoff through Orbax checkpoints, frozen encoder, clear errors."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import small_config

from jaxclap import restore
from jaxclap.text.registry import DEFAULT_TEXT_MODEL, resolve_text_model
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import loop


def _stage1(data_dir):
  return small_config("stage1", data_dir)


def _stage2(data_dir, init, stage="stage2"):
  c = small_config(stage, data_dir)
  c.init.workdir = str(init)
  return c


def _state(workdir, step):
  return ocp.StandardCheckpointer().restore(Path(workdir) / "checkpoints" / str(step) / "state")


def _equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 0
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def chain(stage1_workdir, stage2_workdir) -> dict[str, Path]:
  """The session's stage 1 (3 steps) and the stage 2 started from it (2 steps); read-only."""
  return {"s1": Path(stage1_workdir), "s2": Path(stage2_workdir)}


@pytest.mark.slow
def test_stage2_takes_encoder_bit_exactly_and_keeps_it_frozen(chain):
  s1, s2 = _state(chain["s1"], 3), _state(chain["s2"], 2)
  # Trained for 2 steps, yet the frozen encoder still equals stage 1's, bit for bit.
  assert _equal(s2["frozen"]["encoder"], s1["params"]["encoder"])
  assert "encoder" not in s2["params"]
  # The pooler and the text tower did train.
  assert set(s2["params"]) >= {"audio_proj", "text_tower", "logit_scale"}
  assert float(s2["params"]["logit_scale"]) <= np.log(100) + 1e-6
  # Stage 1 was not fine-tuned (stage 1.1): the run says it departs from the official chain.
  (note,) = json.loads((chain["s2"] / "summary.json").read_text())["warnings"]
  assert "not fine-tuned" in note and "stage 1.1" in note


@pytest.mark.slow
def test_stage2_1_starts_from_stage2(chain, demo_data_dir, tmp_path):
  cfg = _stage2(demo_data_dir, chain["s2"], stage="stage2_1")
  s2 = ckpt.load(str(chain["s2"]))
  saved, meta = s2.state, s2.meta
  assert meta.stage == "stage2" and meta.input_frames == 64
  summary = loop.train_and_evaluate(cfg, str(tmp_path / "s21"))
  assert summary["start_step"] == 0 and summary["end_step"] == 2
  s21 = _state(tmp_path / "s21", 2)
  assert _equal(s21["frozen"]["encoder"], saved["frozen"]["encoder"])
  # Continued, not restarted: the text tower is near stage 2's, not MiniLM's fresh copy.
  s2_proj = np.asarray(saved["params"]["text_tower"]["proj"]["kernel"])
  s21_proj = np.asarray(s21["params"]["text_tower"]["proj"]["kernel"])
  assert np.abs(s21_proj - s2_proj).max() < 0.05 * np.abs(s2_proj).max()


def test_missing_init_path_is_named(demo_data_dir, tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    loop.train_and_evaluate(_stage2(demo_data_dir, tmp_path / "nope"), str(tmp_path / "w"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no complete checkpoint"):
    loop.train_and_evaluate(_stage2(demo_data_dir, tmp_path / "empty"), str(tmp_path / "w2"))


@pytest.mark.slow
def test_mismatched_model_size_lists_parameters(chain, demo_data_dir, tmp_path):
  c = _stage2(demo_data_dir, chain["s1"])
  c.model.size = "tiny"
  c.model.clap_dim = 192
  with pytest.raises(ValueError, match=r"Cannot start from .*shape of encoder/"):
    loop.train_and_evaluate(c, str(tmp_path / "w"))


@pytest.mark.slow
def test_stage2_restores_from_its_checkpoint_alone(chain, demo_data_dir, tmp_path):
  """The text tower's config and tokenizer travel with the checkpoint: no folder is read."""
  folder = tmp_path / "minilm"
  shutil.copytree(resolve_text_model(DEFAULT_TEXT_MODEL), folder)
  c = _stage2(demo_data_dir, chain["s1"])
  c.text.model = str(folder)
  workdir = str(tmp_path / "s2")
  loop.train_and_evaluate(c, workdir)
  before = restore.restore(workdir)
  captions = ["a dog barks", "rain falls on a tin roof"]
  want = np.asarray(
    before.network.text_embed(before.params, {}, before.network.text_inputs(captions))
  )
  shutil.rmtree(folder)
  after = restore.restore(workdir)
  inputs = after.network.text_inputs(captions)
  np.testing.assert_array_equal(
    inputs["input_ids"], before.network.text_inputs(captions)["input_ids"]
  )
  np.testing.assert_allclose(
    np.asarray(after.network.text_embed(after.params, {}, inputs)), want, rtol=0, atol=1e-6
  )
  # A checkpoint written before the text assets were saved still reads the folder: gone here.
  step_dir = Path(after.source)
  shutil.rmtree(step_dir / "text")
  with pytest.raises(FileNotFoundError, match="minilm"):
    restore.restore(workdir)
  shutil.copytree(resolve_text_model(DEFAULT_TEXT_MODEL), folder)
  old = restore.restore(workdir)
  np.testing.assert_allclose(
    np.asarray(old.network.text_embed(old.params, {}, inputs)), want, rtol=0, atol=1e-6
  )
