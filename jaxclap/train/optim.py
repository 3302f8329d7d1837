"""Update rules and learning-rate schedules of every trainer.

Pre-training (stages 1 and 2): AdamW with warm-up + cosine, decay mask and gradient
clipping (the paper's). Fine-tuning (stage 1.1): timm's Lars and cosine schedule as EVAR
builds them: `finetune.py --optim lars` (m2d `util/ft-as2m.sh`) makes
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

# Which parameters get weight decay (`optim.decay_rule`). The official scripts call timm's
# `add_weight_decay(model, wd)` (no skip list), which exempts exactly 1-D tensors and names
# ending in ".bias": the cls/mask/semantic tokens (3-D) and the 0-d `logit_scale` decay.
# With a timm that lacks it they fall back to `param_groups_weight_decay`, which exempts
# `ndim <= 1` (so `logit_scale` too). "jaxclap" also exempts tokens, positions and the scale.
DECAY_RULES = ("timm045", "timm_new", "jaxclap")
_JAXCLAP_NO_DECAY = ("cls_token", "mask_token", "sem_token", "pos", "pos_embed", "logit_scale")
# The stored encoder position table (model.pos_table="stored") is frozen as the official
# `pos_embed` (requires_grad=False, so in no optimizer group): never decayed, by any rule.
_FROZEN_PATHS = (("encoder", "pos_embed"),)


def _names(path) -> tuple[str, ...]:
  """Dict keys along a pytree path (boxing wrappers such as nn.Partitioned skipped)."""
  return tuple(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))


def decays(names: tuple[str, ...], ndim: int, rule: str = "timm045") -> bool:
  """Whether the parameter at `names` (e.g. ("encoder", "cls_token")) with `ndim` decays.

  Flax biases are named "bias" (the torch ".bias"; BERT's are [heads, head_dim] here, 1-D
  in torch); LayerNorm scales and biases are 1-D in both.
  """
  if rule not in DECAY_RULES:
    raise ValueError(f"optim.decay_rule={rule!r}; expected one of {DECAY_RULES}")
  if names in _FROZEN_PATHS:
    return False
  if rule == "jaxclap":
    return ndim > 1 and not any(n in _JAXCLAP_NO_DECAY for n in names)
  if names and names[-1] == "bias":
    return False
  return ndim != 1 if rule == "timm045" else ndim > 1


def decay_mask(params: Any, rule: str = "timm045") -> Any:
  """Pytree of bools, True where weight decay applies under `rule` (see DECAY_RULES)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: decays(_names(path), leaf.ndim, rule), params
  )


def learning_rate(optim_cfg, *, global_batch: int, steps_per_epoch: int, total_steps: int):
  """lr = base_lr × batch/256, linear warm-up for warmup_epochs, then half-cosine to 0."""
  peak = optim_cfg.base_lr * global_batch / 256
  warmup = min(int(round(optim_cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak,
    warmup_steps=warmup,
    decay_steps=max(total_steps, warmup + 1),
    end_value=0.0,
  )


def make_optimizer(optim_cfg, schedule) -> optax.GradientTransformation:
  """Clip → AdamW(β1, β2, decoupled decay on `decay_mask` under `optim.decay_rule`)."""
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  rule = optim_cfg.get("decay_rule", "timm045")  # Configs saved before the knob: the default.
  if rule not in DECAY_RULES:
    raise ValueError(f"optim.decay_rule={rule!r}; expected one of {DECAY_RULES}")
  parts.append(
    optax.adamw(
      schedule,
      b1=optim_cfg.b1,
      b2=optim_cfg.b2,
      weight_decay=optim_cfg.weight_decay,
      mask=lambda params: decay_mask(params, rule),
    )
  )
  return optax.chain(*parts)


# ------------------------------------------------------------------ fine-tuning (timm)

FINETUNE_OPTIMIZERS = ("timm_lars", "lars", "adamw")
FINETUNE_SCHEDULES = ("timm_cosine", "warmup_cosine")


class TimmLarsState(NamedTuple):
  """Updates applied so far and the per-parameter momentum buffers."""

  count: jax.Array
  momentum: Any


def timm_lars(
  learning_rate: float | optax.Schedule,
  *,
  momentum: float = 0.9,
  dampening: float = 0.0,
  weight_decay: float = 0.0,
  nesterov: bool = False,
  trust_coeff: float = 0.001,
  eps: float = 1e-8,
  trust_clip: bool = False,
  always_adapt: bool = False,
) -> optax.GradientTransformation:
  """`timm.optim.Lars` as an optax transformation (every parameter treated alike, as
  EVAR passes them in one group); its arguments and defaults are timm's."""
  if nesterov and (momentum <= 0 or dampening != 0):
    raise ValueError("timm_lars: Nesterov momentum needs momentum > 0 and dampening 0")
  adapt = weight_decay != 0 or always_adapt  # Static: timm checks the group's value.

  def init(params):
    return TimmLarsState(
      count=jnp.zeros([], jnp.int32), momentum=jax.tree_util.tree_map(jnp.zeros_like, params)
    )

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
        lambda b, g: jnp.where(first, g, momentum * b + (1 - dampening) * g), buf, grads
      )
      step = jax.tree_util.tree_map(lambda g, b: g + momentum * b, grads, buf) if nesterov else buf
    else:
      step = grads
    updates = jax.tree_util.tree_map(lambda s: (-lr * s).astype(s.dtype), step)
    return updates, TimmLarsState(count=state.count + 1, momentum=buf)

  return optax.GradientTransformation(init, update)


def timm_cosine(
  *,
  lr: float,
  epochs: float,
  warmup_epochs: float,
  lr_min: float = 1e-7,
  warmup_lr: float = 0.0,
  steps_per_epoch: float,
) -> optax.Schedule:
  """lr of update `count` (0-based) under timm's CosineLRScheduler as EVAR steps it.

  The cosine spans all `epochs` from t = 0 (warm-up is not a prefix: during the first
  `warmup_epochs` the linear ramp warmup_lr → lr replaces it); after `epochs`, lr_min.
  EVAR sets the lr at t = epoch + iter / iters after each update, so update k runs with
  the value at t = (k − 1) / steps_per_epoch, and update 0 with the value at t = 0.
  """
  if epochs <= 0 or steps_per_epoch <= 0:
    raise ValueError(
      f"timm_cosine: epochs={epochs} and steps_per_epoch={steps_per_epoch} must be positive"
    )

  def schedule(count):
    t = jnp.maximum(jnp.asarray(count, jnp.float32) - 1, 0) / steps_per_epoch
    warm = warmup_lr + t * (lr - warmup_lr) / max(warmup_epochs, 1e-12)
    cosine = lr_min + 0.5 * (lr - lr_min) * (1 + jnp.cos(math.pi * t / epochs))
    after = jnp.where(t < epochs, cosine, lr_min)  # cycle_limit=1: one cycle, then lr_min.
    return jnp.where(t < warmup_epochs, warm, after)

  return schedule


def finetune_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The fine-tuning config's lr schedule over a run of `total_steps` updates.

  It spans `config.epochs` over `total_steps` (when `max_steps` cuts a run short, warm-up
  and cosine keep their shares of it).
  """
  if config.schedule == "timm_cosine":
    return timm_cosine(
      lr=config.lr,
      epochs=config.epochs,
      warmup_epochs=config.warmup_epochs,
      lr_min=config.lr_min,
      warmup_lr=config.warmup_lr,
      steps_per_epoch=total_steps / config.epochs,
    )
  if config.schedule == "warmup_cosine":
    warmup = int(round(config.warmup_epochs / config.epochs * total_steps))
    return optax.warmup_cosine_decay_schedule(
      init_value=config.warmup_lr,
      peak_value=config.lr,
      warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=config.lr_min,
    )
  raise ValueError(
    f"finetune config: schedule={config.schedule!r}; expected one of {FINETUNE_SCHEDULES}"
  )


class TorchAmsgradState(NamedTuple):
  """Step count, first and second moments, and the running max of the raw second moment."""

  count: jax.Array
  mu: Any
  nu: Any
  nu_max: Any


def torch_amsgrad(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """torch.optim.Adam(W)'s amsgrad=True step direction: the max is kept of the raw second
  moment and bias-corrected at the current step (optax.scale_by_amsgrad keeps the max of the
  corrected one, which differs once the second moment shrinks)."""

  def init(params):
    zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731
    return TorchAmsgradState(jnp.zeros([], jnp.int32), zeros(), zeros(), zeros())

  def update(grads, state, params=None):
    del params
    count = state.count + 1
    mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
    nu_max = jax.tree_util.tree_map(jnp.maximum, state.nu_max, nu)
    c1 = 1 - b1 ** count.astype(jnp.float32)
    c2 = jnp.sqrt(1 - b2 ** count.astype(jnp.float32))
    updates = jax.tree_util.tree_map(lambda m, v: (m / c1) / (jnp.sqrt(v) / c2 + eps), mu, nu_max)
    return updates, TorchAmsgradState(count, mu, nu, nu_max)

  return optax.GradientTransformation(init, update)


def _matrices(params: Any) -> Any:
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_finetune_optimizer(
  config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, schedule) of a fine-tuning config for a run of `total_steps` updates:
  "timm_lars" (EVAR's), "lars" (optax; trust ratio and decay on matrices only) or "adamw"."""
  schedule = finetune_schedule(config, total_steps)
  if config.optimizer == "timm_lars":
    tx = timm_lars(
      schedule,
      momentum=config.momentum,
      weight_decay=config.weight_decay,
      trust_coeff=config.trust_coefficient,
    )
  elif config.optimizer == "lars":
    tx = optax.lars(
      schedule,
      weight_decay=config.weight_decay,
      weight_decay_mask=_matrices,
      trust_coefficient=config.trust_coefficient,
      trust_ratio_mask=_matrices,
      momentum=config.momentum,
    )
  elif config.optimizer == "adamw":
    # EVAR finetune.py's torch.optim.AdamW(betas=(0.9, 0.95), eps=1e-8, amsgrad=True):
    # p ← p − lr·(amsgrad step + weight_decay·p).
    tx = optax.chain(
      torch_amsgrad(b1=config.momentum, b2=0.95, eps=1e-8),
      optax.add_decayed_weights(config.weight_decay),
      optax.scale_by_learning_rate(schedule),
    )
  else:
    raise ValueError(
      f"finetune config: optimizer={config.optimizer!r}; expected one of {FINETUNE_OPTIMIZERS}"
    )
  return tx, schedule
