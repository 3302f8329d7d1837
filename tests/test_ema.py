"""EMA decay schedule as the official `ema_decay_sched`, through the real train step.

Official (train_audio.py / engine_pretrain_m2d.py): after each optimizer step,
global_step = len(loader)·epoch + data_iter_step (0 for the first update) and
decay = init + (end − init) · global_step / (total_steps − 1), so the last of
total_steps updates uses exactly `end`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxclap.run_meta import RunMeta
from jaxclap.train import config as config_lib
from jaxclap.train import objectives
from jaxclap.train import step as step_lib
from jaxclap.train.state import TrainState

INIT, END = 0.9, 0.99


def _official_decays(total: int) -> np.ndarray:
  """The official schedule at each update k = 0..total−1 (total 1: its only update, init)."""
  if total == 1:  # The official formula divides by zero here; jaxclap defines it as init.
    return np.asarray([INIT])
  k = np.arange(total)
  return INIT + (END - INIT) * k / (total - 1)


@dataclasses.dataclass(frozen=True)
class _Quadratic:
  """A cheap loss around the real stage-1 post-update rule (EMA + logit clamp)."""

  inner: Any

  def loss(self, params, frozen, batch, rng, norm_stats):
    value = sum(jnp.sum(x**2) for x in jax.tree.leaves(params))
    return value, {"loss": value}

  def after_update(self, params, frozen, step):
    return self.inner.after_update(params, frozen, step)


def _stage1(total: int) -> objectives.Stage1:
  c = config_lib.base_config()
  c.model.size = "test"
  c.model.text_dim = 8
  c.train.ema_start, c.train.ema_end = INIT, END
  return objectives.build(c, RunMeta(total_steps=total, input_frames=64))


@pytest.mark.parametrize("total", [1, 2, 10])
def test_ema_decay_per_update_matches_official(total):
  objective = _Quadratic(_stage1(total))
  params = {"encoder": {"body": {"w": jnp.ones(3)}}, "logit_scale": jnp.zeros(())}
  tx = optax.sgd(0.1)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    frozen={"w": jnp.zeros(3)},
    opt_state=tx.init(params),
    rng=jax.random.PRNGKey(0),
    norm_stats=jnp.asarray([0.0, 1.0]),
    bad_step=jnp.full((), -1, jnp.int32),
  )
  train = jax.jit(
    lambda s, b: step_lib.train_step(s, b, objective=objective, tx=tx, schedule=lambda n: 0.1)
  )
  decays, target, online = [], np.zeros(3), np.ones(3)
  for _ in range(total):
    state, metrics = train(state, {"x": jnp.zeros(1)})
    decays.append(float(metrics["ema_decay"]))
    # Numpy replay: SGD on Σw² (w ← 0.8·w), then the target moves with the official decay.
    online = online * 0.8
    d = _official_decays(total)[len(decays) - 1]
    target = d * target + (1 - d) * online
  np.testing.assert_allclose(decays, _official_decays(total), rtol=0, atol=1e-6)
  assert decays[-1] == pytest.approx(END if total > 1 else INIT, abs=1e-6)
  np.testing.assert_allclose(np.asarray(state.frozen["w"]), target, rtol=1e-5)


def test_ema_decay_function_endpoints():
  for total in (2, 10, 1000):
    assert float(objectives.ema_decay(0, total, INIT, END)) == pytest.approx(INIT, abs=1e-7)
    assert float(objectives.ema_decay(total - 1, total, INIT, END)) == pytest.approx(END, abs=1e-7)
    assert float(objectives.ema_decay(total + 5, total, INIT, END)) == pytest.approx(END, abs=1e-7)
  assert float(objectives.ema_decay(0, 1, INIT, END)) == pytest.approx(INIT, abs=1e-7)
