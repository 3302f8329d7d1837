"""Effective CLAP weight: the official DDP gather-without-gradient rule, simulated rank by rank.

Official (nttcslab/m2d `ClipLoss` + `gather_features` in m2d/models_mae.py): each of k ranks
all-gathers the normalised embeddings, puts its own (with gradient) back in its slot, and
computes the loss over the global batch; DDP then averages the k gradients. Here the k
ranks are simulated with stop_gradient on every row but the rank's own, and compared with
jaxclap's `scale_gradient` form.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap import losses
from jaxclap.audio import frontend
from jaxclap.models import m2d
from jaxclap.train import config as config_lib
from jaxclap.train import objectives

FE = frontend.FrontendConfig()
NORM = (-7.1, 4.2)


def official_ddp_grads(a, t, s, ranks: int):
  """(1/k) Σ_r ∇ L_r, L_r with only rank r's rows of a and t carrying a gradient."""
  per_rank = a.shape[0] // ranks

  def rank_loss(a, t, s, r):
    mine = (jnp.arange(a.shape[0]) // per_rank == r)[:, None]
    a_r = jnp.where(mine, a, jax.lax.stop_gradient(a))
    t_r = jnp.where(mine, t, jax.lax.stop_gradient(t))
    return losses.clip_infonce(audio_emb=a_r, text_emb=t_r, logit_scale=s)

  grads = [jax.grad(rank_loss, argnums=(0, 1, 2))(a, t, s, r) for r in range(ranks)]
  return tuple(sum(g[i] for g in grads) / ranks for i in range(3))


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_scale_gradient_equals_official_ddp(ranks):
  ka, kt = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (8, 16))
  t = jax.random.normal(kt, (8, 16))
  s = jnp.asarray(np.log(1 / 0.07), jnp.float32)

  def ours(a, t, s):
    scale = 1.0 / ranks
    return losses.clip_infonce(
      audio_emb=losses.scale_gradient(a, scale),
      text_emb=losses.scale_gradient(t, scale),
      logit_scale=s,
    )

  ga, gt, gs = jax.grad(ours, argnums=(0, 1, 2))(a, t, s)
  oa, ot, os_ = official_ddp_grads(a, t, s, ranks)
  np.testing.assert_allclose(ga, oa, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gt, ot, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gs, os_, rtol=1e-5)
  # The feature path is divided by k, the shared temperature keeps the full gradient.
  na, _, ns = jax.grad(
    lambda a, t, s: losses.clip_infonce(audio_emb=a, text_emb=t, logit_scale=s), argnums=(0, 1, 2)
  )(a, t, s)
  np.testing.assert_allclose(ga, na / ranks, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(gs, ns, rtol=1e-6)
  # Values are untouched.
  assert float(ours(a, t, s)) == float(losses.clip_infonce(audio_emb=a, text_emb=t, logit_scale=s))


def test_stage1_loss_divides_only_the_clap_feature_path():
  model = m2d.build_model(
    dict(
      size="test",
      predictor_width=32,
      predictor_depth=1,
      predictor_heads=2,
      clap_dim=64,
      text_dim=48,
      input_frames=96,
    )
  )
  online, target = m2d.init_params(model, jax.random.key(0), n_frames=96, text_dim=48)
  online, target = nn.unbox(online), nn.unbox(target)
  s = 95 * FE.hop_length
  k1, k2 = jax.random.split(jax.random.key(1))
  batch = {
    "audio": jax.random.normal(k1, (4, s)) * 0.1,
    "audio_len": jnp.full((4,), s, jnp.int32),
    "caption_embedding": jax.random.normal(k2, (4, 48)),
  }

  def loss_fn(o, divisor):
    return objectives.stage1_loss(
      o,
      target,
      batch,
      jax.random.key(2),
      model=model,
      frontend_cfg=FE,
      norm_stats=NORM,
      clap_weight=0.5,
      clap_grad_divisor=divisor,
    )

  value_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))  # One compile.

  def grads(divisor):
    (loss, _), g = value_and_grad(online, jnp.float32(divisor))
    return loss, g

  loss1, g1 = grads(1.0)
  loss4, g4 = grads(4.0)
  assert float(loss1) == float(loss4)
  # Heads see only the CLAP loss: their gradient is divided by 4.
  for part in ("audio_proj", "text_proj"):
    jax.tree.map(
      lambda x, y: np.testing.assert_allclose(y, x / 4, rtol=1e-4, atol=1e-9), g1[part], g4[part]
    )
  # The temperature and the predictor (M2D loss only) are unchanged.
  np.testing.assert_allclose(g4["logit_scale"], g1["logit_scale"], rtol=1e-6)
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-9),
    g1["predictor"],
    g4["predictor"],
  )


def test_paper_config_matches_the_official_effective_weight():
  c = config_lib.base_config()
  # Official 2024 command: 4 GPUs, λ = 0.01 → 0.0025 through the embeddings.
  assert c.train.clap_weight == 0.01
  assert c.train.clap_weight / c.train.clap_grad_divisor == pytest.approx(0.0025)
  c.train.clap_grad_divisor = 0.0
  with pytest.raises(ValueError, match="train.clap_grad_divisor"):
    config_lib.validate(c)
