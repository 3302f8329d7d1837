"""Stage 1 → 2 → 2.1 handoff through Orbax checkpoints, frozen encoder, clear errors."""

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxclap.train import handoff, loop
from conftest import small_config


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
def chain(demo_data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("chain")
  loop.train_and_evaluate(_stage1(demo_data_dir), str(root / "s1"))
  loop.train_and_evaluate(_stage2(demo_data_dir, root / "s1"), str(root / "s2"))
  return root


@pytest.mark.slow
def test_stage2_takes_encoder_bit_exactly_and_keeps_it_frozen(chain):
  s1, s2 = _state(chain / "s1", 3), _state(chain / "s2", 2)
  # Trained for 2 steps, yet the frozen encoder still equals stage 1's, bit for bit.
  assert _equal(s2["frozen"]["encoder"], s1["params"]["encoder"])
  assert "encoder" not in s2["params"]
  # The pooler and the text tower did train.
  assert set(s2["params"]) >= {"audio_proj", "text_tower", "logit_scale"}
  assert float(s2["params"]["logit_scale"]) <= np.log(100) + 1e-6


@pytest.mark.slow
def test_stage2_1_starts_from_stage2(chain, demo_data_dir):
  cfg = _stage2(demo_data_dir, chain / "s2", stage="stage2_1")
  saved, meta, source = handoff.load(str(chain / "s2"))
  assert meta["stage"] == "stage2" and meta["input_frames"] == 64
  summary = loop.train_and_evaluate(cfg, str(chain / "s21"))
  assert summary["start_step"] == 0 and summary["end_step"] == 2
  s21 = _state(chain / "s21", 2)
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
  c = _stage2(demo_data_dir, chain / "s1")
  c.model.size = "tiny"
  c.model.clap_dim = 192
  with pytest.raises(ValueError, match=r"Cannot start from .*shape of encoder/"):
    loop.train_and_evaluate(c, str(tmp_path / "w"))
