"""The fine-tuning update rule and learning-rate schedule, as EVAR builds them with timm.

EVAR's `finetune.py --optim lars` (the stage-1.1 command, m2d `util/ft-as2m.sh`) makes
`timm.optim.Lars(params, lr, momentum=0.9, weight_decay=0)` and
`timm.scheduler.CosineLRScheduler(t_initial=epochs, lr_min=1e-7, warmup_t=warmup_epochs,
warmup_lr_init=0)`, and calls `scheduler.step(epoch + iter / iters_per_epoch)` after every
update. timm's Lars applies its trust ratio (and the decay) only when weight_decay != 0
(or `always_adapt`), so the official update is SGD with momentum 0.9 (dampening 0, no
Nesterov, the momentum buffer starting as the first gradient) at lr 2.0.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("timm_lars", "lars")
SCHEDULES = ("timm_cosine", "warmup_cosine")


class TimmLarsState(NamedTuple):
  """Updates applied so far and the per-parameter momentum buffers."""

  count: jax.Array
  momentum: Any


def timm_lars(learning_rate: float | optax.Schedule, *, momentum: float = 0.9,
              dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
              trust_coeff: float = 0.001, eps: float = 1e-8, trust_clip: bool = False,
              always_adapt: bool = False) -> optax.GradientTransformation:
  """`timm.optim.Lars` as an optax transformation (every parameter treated alike, as
  EVAR passes them in one group); its arguments and defaults are timm's."""
  if nesterov and (momentum <= 0 or dampening != 0):
    raise ValueError("timm_lars: Nesterov momentum needs momentum > 0 and dampening 0")
  adapt = weight_decay != 0 or always_adapt  # Static: timm checks the group's value.

  def init(params):
    return TimmLarsState(count=jnp.zeros([], jnp.int32),
                         momentum=jax.tree_util.tree_map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def trust(g, p):
      w_norm, g_norm = jnp.linalg.norm(p.ravel()), jnp.linalg.norm(g.ravel())
      ratio = trust_coeff * w_norm / (g_norm + w_norm * weight_decay + eps)
      ratio = jnp.where((w_norm > 0) & (g_norm > 0), ratio, 1.0)
      if trust_clip:
        ratio = jnp.minimum(ratio / lr, 1.0)
      return ((g + weight_decay * p) * ratio).astype(g.dtype)

    if adapt:
      if params is None:
        raise ValueError("timm_lars with a trust ratio needs params in update()")
      grads = jax.tree_util.tree_map(trust, grads, params)
    buf = state.momentum
    if momentum != 0:
      first = state.count == 0  # timm starts the buffer as a copy of the first gradient.
      buf = jax.tree_util.tree_map(
          lambda b, g: jnp.where(first, g, momentum * b + (1 - dampening) * g), buf, grads)
      step = (jax.tree_util.tree_map(lambda g, b: g + momentum * b, grads, buf) if nesterov
              else buf)
    else:
      step = grads
    updates = jax.tree_util.tree_map(lambda s: (-lr * s).astype(s.dtype), step)
    return updates, TimmLarsState(count=state.count + 1, momentum=buf)

  return optax.GradientTransformation(init, update)


def timm_cosine(*, lr: float, epochs: float, warmup_epochs: float, lr_min: float = 1e-7,
                warmup_lr: float = 0.0, steps_per_epoch: float) -> optax.Schedule:
  """lr of update `count` (0-based) under timm's CosineLRScheduler as EVAR steps it.

  The cosine spans all `epochs` from t = 0 (warm-up is not a prefix: during the first
  `warmup_epochs` the linear ramp warmup_lr → lr replaces it); after `epochs`, lr_min.
  EVAR sets the lr at t = epoch + iter / iters after each update, so update k runs with
  the value at t = (k − 1) / steps_per_epoch, and update 0 with the value at t = 0.
  """
  if epochs <= 0 or steps_per_epoch <= 0:
    raise ValueError(f"timm_cosine: epochs={epochs} and steps_per_epoch={steps_per_epoch} "
                     "must be positive")

  def schedule(count):
    t = jnp.maximum(jnp.asarray(count, jnp.float32) - 1, 0) / steps_per_epoch
    warm = warmup_lr + t * (lr - warmup_lr) / max(warmup_epochs, 1e-12)
    cosine = lr_min + 0.5 * (lr - lr_min) * (1 + jnp.cos(math.pi * t / epochs))
    after = jnp.where(t < epochs, cosine, lr_min)  # cycle_limit=1: one cycle, then lr_min.
    return jnp.where(t < warmup_epochs, warm, after)

  return schedule


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, schedule) of a fine-tuning config for a run of `total_steps` updates.

  The schedule spans `config.epochs` over `total_steps` (when `max_steps` cuts a run
  short, warm-up and cosine keep their shares of it).
  """
  if config.schedule == "timm_cosine":
    schedule = timm_cosine(lr=config.lr, epochs=config.epochs,
                           warmup_epochs=config.warmup_epochs, lr_min=config.lr_min,
                           warmup_lr=config.warmup_lr,
                           steps_per_epoch=total_steps / config.epochs)
  elif config.schedule == "warmup_cosine":
    warmup = int(round(config.warmup_epochs / config.epochs * total_steps))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=config.warmup_lr, peak_value=config.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=config.lr_min)
  else:
    raise ValueError(f"finetune config: schedule={config.schedule!r}; expected one of "
                     f"{SCHEDULES}")
  if config.optimizer == "timm_lars":
    tx = timm_lars(schedule, momentum=config.momentum, weight_decay=config.weight_decay,
                   trust_coeff=config.trust_coefficient)
  elif config.optimizer == "lars":

    def matrices(params):
      return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)

    tx = optax.lars(schedule, weight_decay=config.weight_decay, weight_decay_mask=matrices,
                    trust_coefficient=config.trust_coefficient, trust_ratio_mask=matrices,
                    momentum=config.momentum)
  else:
    raise ValueError(f"finetune config: optimizer={config.optimizer!r}; expected one of "
                     f"{OPTIMIZERS}")
  return tx, schedule
