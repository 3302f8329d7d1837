"""AdamW with warm-up + cosine schedule, decay mask and gradient clipping (the paper's)."""

from __future__ import annotations

from typing import Any

import jax
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
      lambda path, leaf: decays(_names(path), leaf.ndim, rule), params)


def learning_rate(optim_cfg, *, global_batch: int, steps_per_epoch: int, total_steps: int):
  """lr = base_lr × batch/256, linear warm-up for warmup_epochs, then half-cosine to 0."""
  peak = optim_cfg.base_lr * global_batch / 256
  warmup = min(int(round(optim_cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=0.0)


def make_optimizer(optim_cfg, schedule) -> optax.GradientTransformation:
  """Clip → AdamW(β1, β2, decoupled decay on `decay_mask` under `optim.decay_rule`)."""
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  rule = optim_cfg.get("decay_rule", "timm045")  # Configs saved before the knob: the default.
  if rule not in DECAY_RULES:
    raise ValueError(f"optim.decay_rule={rule!r}; expected one of {DECAY_RULES}")
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
                           weight_decay=optim_cfg.weight_decay,
                           mask=lambda params: decay_mask(params, rule)))
  return optax.chain(*parts)
