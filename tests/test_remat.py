"""Activation rematerialisation: the same loss and gradients; the forward is recomputed."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap.audio import frontend as fe
from jaxclap.models import m2d
from jaxclap.train import objectives


@functools.cache  # The "none" reference serves every test in a worker.
def _loss_and_grad(remat: str, batch: int = 2, size: str = "test"):
  model = m2d.build_model(
    {
      "size": size,
      "text_dim": 16,
      "clap_dim": 32,
      "input_frames": 96,
      "predictor_width": 32,
      "predictor_depth": 2,
      "predictor_heads": 2,
      "remat": remat,
    }
  )
  online, target = m2d.init_params(model, jax.random.key(0), n_frames=96, text_dim=16)
  online, target = m2d.nn.unbox(online), m2d.nn.unbox(target)
  rng = np.random.default_rng(0)
  samples = 95 * 160
  data = {
    "audio": jnp.asarray(rng.standard_normal((batch, samples)), jnp.float32) * 0.1,
    "audio_len": jnp.full((batch,), samples, jnp.int32),
    "caption_embedding": jnp.asarray(rng.standard_normal((batch, 16)), jnp.float32),
  }

  def loss(p):
    return objectives.stage1_loss(
      p,
      target,
      data,
      jax.random.key(1),
      model=model,
      frontend_cfg=fe.FrontendConfig(),
      norm_stats=(-7.1, 4.2),
      clap_weight=0.01,
    )[0]

  fn = jax.jit(jax.value_and_grad(loss))
  hlo = fn.lower(online).compile().as_text()
  value, grads = fn(online)
  return float(value), grads, hlo


@pytest.mark.parametrize("policy", ["full", "save_dots"])
def test_remat_keeps_loss_and_gradients(policy):
  ref_loss, ref_grads, _ = _loss_and_grad("none")
  loss, grads, _ = _loss_and_grad(policy)
  assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss)
  for a, b in zip(jax.tree.leaves(ref_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_full_remat_recomputes_the_forward_matmuls():
  """The backward pass recomputes block matmuls instead of keeping their outputs.

  (XLA's CPU scheduler does not turn this into a smaller peak, so memory is measured on
  accelerators in bench/, not here.)
  """
  *_, plain = _loss_and_grad("none")
  *_, remat = _loss_and_grad("full")
  dots = lambda hlo: hlo.count(" dot(")
  assert dots(remat) > dots(plain) > 0, (dots(remat), dots(plain))


def test_unknown_policy_is_named():
  with pytest.raises(ValueError, match="model.remat='sometimes'"):
    _loss_and_grad("sometimes")
