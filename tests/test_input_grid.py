"""One input grid per trained model: what training validated is what `jaxclap.load` returns.

A stage 2 trained on crops longer than its stage-1 position table (the paper: 10 s = 1001
frames over a 608-frame table, resized) records that grid; inference, evaluation and export
then encode in chunks of it instead of the table's width.
"""

import jax
import numpy as np
import pytest
from conftest import small_config

import jaxclap
from jaxclap import convert
from jaxclap import restore as restore_lib
from jaxclap.audio import frontend as fe
from jaxclap.data import pipeline
from jaxclap.run_meta import RunMeta
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import objectives

STAGE1_FRAMES = 64  # small_config's crop: the stage-1 table is 4 patch columns wide.
STAGE2_FRAMES = 96  # Stage 2 trains on 6 columns (the table resized), as 608 → 1001.


@pytest.fixture(scope="module")
def wide_stage2(stage1_workdir, demo_data_dir, tmp_path_factory):
  from jaxclap.train import loop

  c = small_config("stage2", demo_data_dir)
  c.init.workdir = stage1_workdir
  c.data.crop_frames = STAGE2_FRAMES
  c.train.num_steps = 1
  workdir = str(tmp_path_factory.mktemp("wide_stage2"))
  loop.train_and_evaluate(c, workdir)
  return c, workdir


def _validation_embeddings(config, workdir, data_dir):
  """Audio embeddings computed as the trainer's validation computes them."""
  fcfg = fe.FrontendConfig.for_sample_rate(config.frontend.sample_rate)
  saved = ckpt.load(workdir)
  state, meta = saved.state, saved.meta
  # The trainer builds its objective with the stage-1 table width and its own crop.
  objective = objectives.build(config, RunMeta(total_steps=1, input_frames=meta.input_frames))
  crop = (config.data.crop_frames - 1) * fcfg.hop_length
  loader = pipeline.make_loader(
    [pipeline.open_source("jaxclap_demo", "train", data_dir)],
    None,
    global_batch=16,
    crop_samples=crop,
    seed=0,
    shuffle=False,
    num_epochs=1,
    random_crop=False,
    caption="first",
  )
  batch = next(iter(loader))
  emb = jax.jit(objective.audio_embed)(
    state["params"],
    state["frozen"],
    {k: batch[k] for k in ("audio", "audio_len")},
    np.asarray(state["norm_stats"]),
  )
  return batch, np.asarray(emb)


def test_validation_embedding_equals_loaded_model(wide_stage2, demo_data_dir):
  config, workdir = wide_stage2
  batch, val_emb = _validation_embeddings(config, workdir, demo_data_dir)
  crop = (STAGE2_FRAMES - 1) * 160
  whole = np.asarray(batch["audio_len"]) == crop  # Clips that fill the crop.
  assert whole.sum() >= 4
  model = jaxclap.load(workdir, progress=False)
  assert model.unit_frames == STAGE2_FRAMES
  assert model.model.input_frames == STAGE1_FRAMES  # The table keeps its width ...
  waves = [np.asarray(batch["audio"][i], np.float32) for i in np.flatnonzero(whole)]
  emb = model.audio_embedding(waves, sample_rate=16000)
  # ... and is fitted to the trained grid: one chunk of 96 frames, not 64 + 32.
  np.testing.assert_allclose(emb, val_emb[whole], atol=1e-5)


def test_meta_records_the_grid_and_export_uses_it(wide_stage2, tmp_path):
  _, workdir = wide_stage2
  meta = ckpt.load(workdir).meta
  assert meta.input_frames == STAGE1_FRAMES and meta.unit_frames == STAGE2_FRAMES
  restored = restore_lib.restore(workdir)
  state, name, notes = convert.export_state(restored)
  assert name.frames == STAGE2_FRAMES
  grid_t = STAGE2_FRAMES // 16
  assert state["pos_embed"].shape[1] == 1 + 5 * grid_t
  assert any(f"{STAGE1_FRAMES} frames to {STAGE2_FRAMES}" in n for n in notes)


def test_stage1_grid_is_its_crop(stage1_workdir):
  meta = ckpt.load(stage1_workdir).meta
  assert meta.unit_frames == meta.input_frames == STAGE1_FRAMES
  assert jaxclap.load(stage1_workdir, progress=False).unit_frames == STAGE1_FRAMES
