"""Losses vs numpy reference formulas."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxclap import losses


def np_norm_mse(pred: np.ndarray, target: np.ndarray) -> float:
  mean = target.mean(-1, keepdims=True)
  var = target.var(-1, keepdims=True, ddof=1)
  target = (target - mean) / np.sqrt(var + 1e-6)
  pred = pred / np.linalg.norm(pred, axis=-1, keepdims=True)
  target = target / np.linalg.norm(target, axis=-1, keepdims=True)
  return float(np.mean(2 - 2 * (pred * target).sum(-1)))


def np_infonce(a: np.ndarray, t: np.ndarray, s: float) -> float:
  a = a / np.linalg.norm(a, axis=-1, keepdims=True)
  t = t / np.linalg.norm(t, axis=-1, keepdims=True)
  logits = np.exp(s) * a @ t.T

  def ce(lg):
    lg = lg - lg.max(1, keepdims=True)
    logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
    return -np.mean(np.diag(logp))

  return float((ce(logits) + ce(logits.T)) / 2)


def test_norm_mse_matches_numpy():
  rng = np.random.default_rng(0)
  pred = rng.standard_normal((3, 5, 16))
  target = 3.0 + 2.0 * rng.standard_normal((3, 5, 16))  # offset: standardisation matters
  got = float(
    losses.norm_mse(pred=jnp.asarray(pred, jnp.float32), target=jnp.asarray(target, jnp.float32))
  )
  np.testing.assert_allclose(got, np_norm_mse(pred, target), rtol=1e-5)
  # Without the per-token standardisation the value is clearly different.
  naive = float(
    np.mean(
      2
      - 2
      * np.sum(
        pred
        / np.linalg.norm(pred, axis=-1, keepdims=True)
        * target
        / np.linalg.norm(target, axis=-1, keepdims=True),
        -1,
      )
    )
  )
  assert abs(naive - got) > 0.05
  # Prediction equal to the standardised target gives zero loss.
  std_t = (target - target.mean(-1, keepdims=True)) / target.std(-1, ddof=1, keepdims=True)
  assert float(losses.norm_mse(pred=jnp.asarray(7 * std_t), target=jnp.asarray(target))) < 1e-5


def test_clip_infonce_matches_numpy():
  rng = np.random.default_rng(1)
  a = rng.standard_normal((6, 12))
  t = rng.standard_normal((6, 12))
  t[:3] += 2 * a[:3]  # some correlated pairs
  for s in (0.0, np.log(1 / 0.07), np.log(100.0)):
    got = float(
      losses.clip_infonce(
        audio_emb=jnp.asarray(a, jnp.float32),
        text_emb=jnp.asarray(t, jnp.float32),
        logit_scale=jnp.float32(s),
      )
    )
    np.testing.assert_allclose(got, np_infonce(a, t, s), rtol=1e-4)


def test_clip_infonce_is_log_batch_for_identical_logits():
  a = jnp.ones((8, 4))
  got = float(losses.clip_infonce(audio_emb=a, text_emb=a, logit_scale=jnp.float32(2.0)))
  np.testing.assert_allclose(got, np.log(8), rtol=1e-6)


def test_gradients_finite():
  rng = np.random.default_rng(2)
  pred, target = (jnp.asarray(rng.standard_normal((2, 4, 8)), jnp.float32) for _ in range(2))
  g = jax.grad(lambda p: losses.norm_mse(pred=p, target=target))(pred)
  assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0
  a, t = (jnp.asarray(rng.standard_normal((4, 8)), jnp.float32) for _ in range(2))
  ga, gs = jax.grad(
    lambda a, s: losses.clip_infonce(audio_emb=a, text_emb=t, logit_scale=s), argnums=(0, 1)
  )(a, jnp.float32(2.6))
  assert np.isfinite(np.asarray(ga)).all() and np.isfinite(float(gs)) and float(gs) != 0.0
