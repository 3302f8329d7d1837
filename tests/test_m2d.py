"""M2D stage-1 model: masks, EMA, init structure, loss, gradients, features."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap import losses
from jaxclap.audio import frontend
from jaxclap.models import features, m2d, patches
from jaxclap.train import objectives

FE = frontend.FrontendConfig()
NORM = (-7.1, 4.2)
TEST_CFG = dict(
  size="test",
  predictor_width=32,
  predictor_depth=2,
  predictor_heads=2,
  clap_dim=768,
  text_dim=768,
  input_frames=208,
)


def make_batch(batch: int, frames: int, text_dim: int, seed: int = 0) -> dict:
  s = (frames - 1) * FE.hop_length
  k1, k2 = jax.random.split(jax.random.key(seed))
  lens = np.full((batch,), s, np.int32)
  lens[-1] = s // 3  # one short, zero-padded clip
  audio = np.asarray(jax.random.normal(k1, (batch, s))) * 0.1
  audio[-1, lens[-1] :] = 0.0
  return {
    "audio": jnp.asarray(audio, jnp.float32),
    "audio_len": jnp.asarray(lens),
    "caption_embedding": jax.random.normal(k2, (batch, text_dim)),
  }


@pytest.fixture(scope="module")
def small():
  model = m2d.build_model(TEST_CFG)
  online, target = m2d.init_params(model, jax.random.key(0), n_frames=208, text_dim=768)
  return model, nn.unbox(online), nn.unbox(target)


def clap_embeddings(online, batch, *, model):
  """L2-normalised (audio, text) CLAP embeddings with all patches visible."""
  x = frontend.waveform_input(batch, FE, NORM)
  audio = features.clap_audio_embedding(online, x, model=model)
  text = model.apply({"params": online}, batch["caption_embedding"], method=m2d.M2D.project_text)
  return audio, losses.l2_normalize(text.astype(jnp.float32))


def loss_fn(model, target, batch, rng):
  return lambda o: objectives.stage1_loss(
    o, target, batch, rng, model=model, frontend_cfg=FE, norm_stats=NORM
  )


def abstract_batch(batch: int, frames: int, text_dim: int) -> dict:
  s = (frames - 1) * FE.hop_length
  return {
    "audio": jax.ShapeDtypeStruct((batch, s), jnp.float32),
    "audio_len": jax.ShapeDtypeStruct((batch,), jnp.int32),
    "caption_embedding": jax.ShapeDtypeStruct((batch, text_dim), jnp.float32),
  }


def test_sample_masks():
  vis, msk = m2d.sample_masks(jax.random.key(1), 16, 190, 0.7)
  vis, msk = np.asarray(vis), np.asarray(msk)
  assert vis.shape == (16, 57) and msk.shape == (16, 133)
  for v, m in zip(vis, msk):
    assert np.array_equal(np.sort(np.concatenate([v, m])), np.arange(190))  # disjoint, full
    assert np.all(np.diff(v) > 0) and np.all(np.diff(m) > 0)  # sorted
  assert len({tuple(v) for v in vis}) == 16  # per-example
  assert m2d.num_visible(190, 0.7) == int(190 * (1 - 0.7)) == 57
  with pytest.raises(ValueError, match="mask_ratio"):
    m2d.sample_masks(jax.random.key(0), 1, 10, 1.0)


def test_ema_decay_schedule_and_update():
  total = 1000
  for step in (0, 1, 250, 999, 1000, 5000):  # Official: interp = step / (total - 1).
    expected = 0.99995 + (0.99999 - 0.99995) * min(step / (total - 1), 1.0)
    # float32 resolution near 1 is 6e-8 (0.1% of 1 - decay; harmless for the EMA).
    assert float(objectives.ema_decay(step, total)) == pytest.approx(expected, abs=1e-7)
  rng = np.random.default_rng(0)
  tgt = {"a": rng.standard_normal((3, 4)), "b": {"c": rng.standard_normal(5)}}
  onl = {"a": rng.standard_normal((3, 4)), "b": {"c": rng.standard_normal(5)}}
  out = objectives.ema_update(jax.tree.map(jnp.asarray, tgt), jax.tree.map(jnp.asarray, onl), 0.9)
  np.testing.assert_allclose(out["a"], 0.9 * tgt["a"] + 0.1 * onl["a"], rtol=1e-6)
  np.testing.assert_allclose(out["b"]["c"], 0.9 * tgt["b"]["c"] + 0.1 * onl["b"]["c"], rtol=1e-6)


def test_clamp_logit_scale():
  for value, expected in ((-1.0, 0.0), (2.0, 2.0), (9.0, math.log(100))):
    out = objectives.clamp_logit_scale({"logit_scale": jnp.float32(value), "x": 1})
    assert float(out["logit_scale"]) == pytest.approx(expected, abs=1e-6) and out["x"] == 1


def test_init_structure(small):
  model, online, target = small
  assert set(online) == {"encoder", "predictor", "audio_proj", "logit_scale"}  # 768 → identity
  assert float(online["logit_scale"]) == pytest.approx(math.log(1 / 0.07), rel=1e-6)
  assert jax.tree.structure(target) == jax.tree.structure(online["encoder"]["body"])
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), target, online["encoder"]["body"])
  assert diff["block_0"]["attn"]["qkv"]["kernel"] > 0  # initialised independently
  assert not online["audio_proj"]["sem_token"].any()  # semantic token init 0
  model_p = m2d.build_model({**TEST_CFG, "text_dim": 48})
  online_p, _ = jax.eval_shape(
    lambda r: m2d.init_params(model_p, r, n_frames=208, text_dim=48), jax.random.key(0)
  )
  assert nn.unbox(online_p)["text_proj"]["proj"]["kernel"].shape == (48, 768)


def test_param_logical_specs(small):
  model, _, _ = small
  shapes = jax.eval_shape(
    lambda r: m2d.init_params(model, r, n_frames=208, text_dim=768), jax.random.key(0)
  )
  online_specs, target_specs = nn.get_partition_spec(shapes)
  assert tuple(online_specs["logit_scale"]) == ()
  assert tuple(target_specs["block_1"]["mlp"]["fc2"]["kernel"]) == ("mlp", "embed")
  assert tuple(online_specs["predictor"]["mask_token"]) == (None, None, "embed")


def test_stage1_loss_grads_and_clap_at_init(small):
  model, online, target = small
  batch = make_batch(8, 208, 768)
  grad_fn = jax.jit(
    jax.value_and_grad(
      lambda o, t: objectives.stage1_loss(
        o, t, batch, jax.random.key(2), model=model, frontend_cfg=FE, norm_stats=NORM
      ),
      argnums=(0, 1),
      has_aux=True,
    )
  )
  (loss, metrics), (grads, g_target) = grad_fn(online, target)
  assert set(metrics) >= {"loss", "loss_m2d", "loss_clap", "logit_scale"}
  np.testing.assert_allclose(
    float(loss), float(metrics["loss_m2d"]) + 0.01 * float(metrics["loss_clap"]), rtol=1e-6
  )
  assert abs(float(metrics["loss_clap"]) - math.log(8)) < 0.5
  assert 0.0 < float(metrics["loss_m2d"]) < 4.0
  for name, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.isfinite(np.asarray(g)).all(), name
  for key in ("encoder", "predictor", "audio_proj"):
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[key])) > 0, key
  assert float(grads["logit_scale"]) != 0.0
  # The target is under stop_gradient.
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_target))


def test_predictor_places_mask_tokens_at_masked_positions():
  """With zero blocks the prediction at a masked slot is pred(LN(mask_token + pos))."""
  pred = m2d.Predictor(width=16, depth=0, heads=2, out_dim=8)
  grid = (2, 5)
  z = jax.random.normal(jax.random.key(0), (2, 4, 8))  # cls + 3 visible
  vis = jnp.array([[0, 4, 7], [1, 2, 9]])
  msk = jnp.array([[1, 2, 3, 5, 6, 8, 9], [0, 3, 4, 5, 6, 7, 8]])
  params = nn.unbox(pred.init(jax.random.key(1), z, vis, msk, grid))["params"]
  params["mask_token"] = params["mask_token"] + 0.5
  out = np.asarray(pred.apply({"params": params}, z, vis, msk, grid))
  pos = patches.sincos_pos_embed(16, grid)[1:]
  p = jax.tree.map(np.asarray, params)
  for b in range(2):
    for j, idx in enumerate(np.asarray(msk[b])):
      h = p["mask_token"][0, 0] + pos[idx]
      h = (h - h.mean()) / np.sqrt(h.var() + 1e-6) * p["norm"]["scale"] + p["norm"]["bias"]
      np.testing.assert_allclose(
        out[b, j], h @ p["pred"]["kernel"] + p["pred"]["bias"], rtol=1e-4, atol=1e-5
      )


@pytest.mark.parametrize("frames", [208, 608])
def test_base_shapes(frames):
  model = m2d.build_model({"size": "base", "text_dim": 4096})
  shapes = jax.eval_shape(
    lambda r: m2d.init_params(model, r, n_frames=frames, text_dim=4096), jax.random.key(0)
  )
  online, target = nn.unbox(shapes)
  batch = abstract_batch(2, frames, 4096)
  n = 5 * (frames // 16)
  v = int(n * 0.3)
  out = jax.eval_shape(
    lambda o, b: model.apply(
      {"params": o},
      frontend.waveform_input(b, FE, NORM),
      *m2d.sample_masks(jax.random.key(0), 2, n, 0.7),
      b["caption_embedding"],
      method=m2d.M2D.stage1,
    ),
    online,
    batch,
  )
  assert out["pred"].shape == (2, n - v, 768)
  assert out["target_in"].shape == (2, 1 + n - v, 768)
  assert out["audio_emb"].shape == out["text_emb"].shape == (2, 768)
  loss = jax.eval_shape(
    lambda o, t, b: objectives.stage1_loss(
      o, t, b, jax.random.key(0), model=model, frontend_cfg=FE, norm_stats=NORM
    ),
    online,
    target,
    batch,
  )
  assert loss[0].shape == () and loss[1]["loss_clap"].shape == ()


def test_bf16_stage1_loss_runs(small):
  _, online, target = small  # float32 params, bfloat16 compute
  model16 = m2d.build_model({**TEST_CFG, "dtype": "bfloat16"})
  batch = make_batch(4, 208, 768)
  loss16, m16 = jax.jit(loss_fn(model16, target, batch, jax.random.key(3)))(online)
  assert loss16.dtype == jnp.float32
  assert 0.0 < float(m16["loss_m2d"]) < 4.0
  assert abs(float(m16["loss_clap"]) - math.log(4)) < 0.5
  with pytest.raises(ValueError, match="float16"):
    m2d.build_model({**TEST_CFG, "dtype": "float16"})


def test_clap_embeddings_and_features(small):
  model, online, _ = small
  batch = make_batch(3, 208, 768)
  audio, text = jax.jit(lambda o, b: clap_embeddings(o, b, model=model))(online, batch)
  assert audio.shape == text.shape == (3, 768)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(audio), axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(text), axis=-1), 1.0, rtol=1e-5)

  x = frontend.waveform_input(batch, FE, NORM)  # [3, 80, 208]
  tokens = np.asarray(
    jax.jit(lambda o, x: model.apply({"params": o}, x, method=m2d.M2D.encode))(online, x)
  )
  frame_fn = jax.jit(lambda o, x: features.frame_features(o, x, model=model))
  frames = np.asarray(frame_fn(online, x))
  assert tokens.shape == (3, 5 * 13, 64) and frames.shape == (3, 13, 5 * 64)
  for t in (0, 6, 12):
    expected = np.concatenate([tokens[:, f * 13 + t] for f in range(5)], axis=-1)
    np.testing.assert_allclose(frames[:, t], expected, rtol=1e-5, atol=1e-6)
  clip = jax.jit(lambda o, x: features.clip_features(o, x, model=model))(online, x)
  np.testing.assert_allclose(np.asarray(clip), frames.mean(1), rtol=1e-5, atol=1e-6)


def test_long_input_is_chunked(small):
  model, online, _ = small  # input_frames = 208
  x = jax.random.normal(jax.random.key(4), (2, 80, 500))  # 208 + 208 + 84 (→ 96)
  encode = jax.jit(lambda o, x: model.apply({"params": o}, x, method=m2d.M2D.encode))
  frames = np.asarray(jax.jit(lambda o, x: features.frame_features(o, x, model=model))(online, x))
  assert frames.shape == (2, 13 + 13 + 6, 5 * 64)
  first = patches.tokens_to_frames(encode(online, x[..., :208]), 5)
  np.testing.assert_allclose(frames[:, :13], first, rtol=1e-5, atol=1e-5)
  last = patches.tokens_to_frames(
    encode(online, jnp.pad(x[..., 416:], ((0, 0), (0, 0), (0, 12)))), 5
  )
  np.testing.assert_allclose(frames[:, 26:], last, rtol=1e-5, atol=1e-5)
  emb = jax.jit(lambda o, x: features.clap_audio_embedding(o, x, model=model))(online, x)
  assert emb.shape == (2, 768)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, rtol=1e-5)
