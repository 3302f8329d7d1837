"""Stage 2's structured mask under jit: counts drawn per batch, one static branch per count."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap.audio import frontend as fe
from jaxclap.models import clap, masks, network
from jaxclap.run_meta import RunMeta
from jaxclap.train import config as config_lib
from jaxclap.train import objectives

GRID_F, GRID_T = 5, 8  # 80 mel bins × 128 frames, 16×16 patches.
N_FRAMES = 128
BATCH = 4


class _TinyText(nn.Module):
  """Stand-in text tower: mean of token embeddings → Linear (no pretrained weights)."""

  out_dim: int = 64

  @nn.compact
  def __call__(self, input_ids, attention_mask, deterministic: bool = True):
    del attention_mask, deterministic
    return nn.Dense(self.out_dim)(jnp.mean(nn.Embed(50, 16)(input_ids), axis=1))


def _tokenize(texts):
  ids = np.asarray([[1 + (hash(t) + i) % 40 for i in range(6)] for t in texts], np.int32)
  return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def _stage2(variants) -> objectives.Stage2:
  model = clap.CLAP(text_tower=_TinyText(), size="test", input_frames=N_FRAMES, clap_dim=64)
  net = network.CLAPNetwork(
    model=model,
    frontend_cfg=fe.FrontendConfig(),
    n_frames=N_FRAMES,
    tokenizer=_tokenize,
    init_text=None,
  )
  return objectives.Stage2(net=net, mask_variants=variants)


@pytest.fixture(scope="module")
def setup():
  obj = _stage2(masks.official_variants(GRID_F, GRID_T, 0.3))
  rng = np.random.default_rng(0)
  samples = (N_FRAMES - 1) * 160
  batch = {
    "audio": (0.1 * rng.standard_normal((BATCH, samples))).astype(np.float32),
    "audio_len": np.full(BATCH, samples, np.int32),
    **_tokenize([f"caption {i}" for i in range(BATCH)]),
  }
  x = jnp.zeros((1, 80, N_FRAMES))
  ids = _tokenize(["a"])
  init = jax.jit(lambda k: obj.model.init(k, x, ids["input_ids"], ids["attention_mask"]))
  params = nn.unbox(init(jax.random.PRNGKey(0))["params"])
  frozen = {"encoder": params.pop("encoder")}
  return obj, params, frozen, batch


def test_variants_of_this_grid_have_distinct_token_counts():
  variants = masks.official_variants(GRID_F, GRID_T, 0.3)
  assert [(r, c) for r, c, _ in variants] == [(0, 2), (1, 1), (2, 0)]
  assert len({(GRID_F - r) * (GRID_T - c) for r, c, _ in variants}) == 3


def test_loss_under_jit_draws_different_token_counts(setup):
  obj, params, frozen, batch = setup
  loss = jax.jit(obj.loss)
  seen = set()
  for i in range(10):
    value, metrics = loss(params, frozen, batch, jax.random.PRNGKey(i), (-7.1, 4.2))
    assert np.isfinite(float(value))
    seen.add(int(metrics["kept_tokens"]))
  expected = {(GRID_F - r) * (GRID_T - c) for r, c, _ in obj.mask_variants}
  assert seen == expected  # Every branch taken at least once, and no other count.


def test_each_branch_keeps_the_drawn_rows_and_columns(setup):
  obj, params, frozen, _ = setup
  p = {**params, **frozen}
  x = jax.random.normal(jax.random.PRNGKey(9), (BATCH, 80, N_FRAMES))
  run = jax.jit(obj.masked_audio)
  reference = jax.jit(lambda keep: obj.model.apply({"params": p}, x, keep, method=clap.CLAP.audio))
  # One key per variant: which variant a key draws is the test's own computation.
  keys = jax.random.split(jax.random.PRNGKey(100), 40)
  drawn = jax.jit(
    jax.vmap(lambda k: masks.draw_variant(jax.random.split(k)[0], obj.mask_variants))
  )(keys)
  first_key = {}
  for idx, key in zip(np.asarray(drawn).tolist(), keys):
    first_key.setdefault(idx, key)
  assert sorted(first_key) == list(range(len(obj.mask_variants)))
  for idx, key in first_key.items():
    emb, kept = run(p, x, key)
    rows, cols, _ = obj.mask_variants[idx]
    assert int(kept) == (GRID_F - rows) * (GRID_T - cols) and emb.shape == (BATCH, 64)
    if (rows, cols) == (1, 1):  # Both axes masked: the embedding of exactly these tokens.
      keep = masks.structured_keep(jax.random.split(key)[1], BATCH, GRID_F, GRID_T, 1, 1)
      assert keep.shape == (BATCH, int(kept))
      np.testing.assert_allclose(np.asarray(emb), np.asarray(reference(keep)), rtol=1e-5, atol=1e-5)


def test_fixed_option_keeps_one_count(setup):
  _, params, frozen, _ = setup
  rows, cols = masks.structured_counts(GRID_F, GRID_T, 0.3)
  obj = _stage2(masks.stage2_variants(GRID_F, GRID_T, 0.3, "fixed"))
  run = jax.jit(obj.masked_audio)
  x = jax.random.normal(jax.random.PRNGKey(9), (BATCH, 80, N_FRAMES))
  kept = {int(run({**params, **frozen}, x, jax.random.PRNGKey(i))[1]) for i in range(4)}
  assert kept == {(GRID_F - rows) * (GRID_T - cols)}


@pytest.mark.parametrize("counts", ["official", "fixed"])
def test_build_takes_the_counts_knob(counts, monkeypatch):
  from jaxclap.text import tower as text_tower

  monkeypatch.setattr(
    text_tower,
    "build_text_tower",
    lambda cfg, out_dim, dtype, assets: (_TinyText(out_dim), _tokenize, None),
  )
  c = config_lib.base_config()
  c.stage = "stage2"
  c.model.size = "test"
  c.model.clap_dim = 64
  c.data.crop_frames = N_FRAMES
  c.model.structured_mask = 0.3
  c.model.structured_mask_counts = counts
  obj = objectives.build(c, RunMeta(total_steps=1, input_frames=N_FRAMES))
  assert obj.mask_variants == masks.stage2_variants(GRID_F, GRID_T, 0.3, counts)
  assert config_lib.base_config().model.structured_mask_counts == "official"
  c.model.structured_mask_counts = "per_example"
  with pytest.raises(ValueError, match="model.structured_mask_counts"):
    config_lib.validate(c)
