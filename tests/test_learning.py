"""Stage 1 learns on the demo data: M2D loss falls, validation retrieval rises (2 seeds)."""

import pytest

from configs import demo
from jaxclap.data import build as data_build
from jaxclap.train import loop


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, text_embedder):
  d = str(tmp_path_factory.mktemp("learning_data"))
  data_build.build_dataset(data_build.DEMO, d, num_clips=400, embedder=text_embedder)
  return d


def _config(data_dir, seed):
  c = demo.stage1()  # Demo-sized EMA decay and CLAP weight; a smaller model and crop.
  c.seed = seed
  c.data.data_dir = data_dir
  c.data.build_demo = False
  c.data.crop_frames = 96
  c.model.size = "test"
  c.model.predictor_width = 64
  c.model.predictor_depth = 1
  c.model.predictor_heads = 2
  c.model.clap_dim = 64
  c.train.global_batch = 32
  c.train.num_steps = 400
  c.train.log_every = 50
  c.train.val_every = 1000
  c.train.checkpoint_every = 1000
  c.frontend.norm_stats_crops = 128
  return c


@pytest.mark.slow
def test_m2d_loss_falls_and_retrieval_rises(data_dir, tmp_path):
  runs = [
    loop.train_and_evaluate(_config(data_dir, seed), str(tmp_path / f"s{seed}")) for seed in (0, 1)
  ]
  for r in runs:
    first, last = r["first_logged"], r["last_logged"]
    assert last["loss_m2d"] < 0.6 * first["loss_m2d"], (first, last)
    assert r["final_validation"]["val_loss_m2d"] < 0.6 * r["initial_validation"]["val_loss_m2d"]
  init = sum(r["initial_validation"]["a2t_R@1"] for r in runs) / len(runs)
  final = sum(r["final_validation"]["a2t_R@1"] for r in runs) / len(runs)
  init5 = sum(r["initial_validation"]["a2t_R@5"] for r in runs) / len(runs)
  final5 = sum(r["final_validation"]["a2t_R@5"] for r in runs) / len(runs)
  # 32 validation clips: chance R@1 is 1/32, R@5 is 5/32.
  assert final >= init + 0.08 and final >= 4 / 32, (init, final)
  assert final5 >= init5 + 0.25, (init5, final5)
