"""AdamW with warm-up + cosine schedule, decay mask and gradient clipping (the paper's)."""

from __future__ import annotations

from typing import Any

import jax
import optax

# Parameters that are tokens, positions or the temperature are never decayed.
_NO_DECAY_NAMES = ("cls_token", "mask_token", "sem_token", "pos", "pos_embed", "logit_scale")


def decay_mask(params: Any) -> Any:
  """True where weight decay applies: matrices and kernels, not biases/norms/tokens."""

  def keep(path, leaf) -> bool:
    names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
    if any(n in _NO_DECAY_NAMES for n in names):
      return False
    return leaf.ndim > 1

  return jax.tree_util.tree_map_with_path(keep, params)


def learning_rate(optim_cfg, *, global_batch: int, steps_per_epoch: int, total_steps: int):
  """lr = base_lr × batch/256, linear warm-up for warmup_epochs, then half-cosine to 0."""
  peak = optim_cfg.base_lr * global_batch / 256
  warmup = min(int(round(optim_cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=0.0)


def make_optimizer(optim_cfg, schedule) -> optax.GradientTransformation:
  """Clip → AdamW(β1, β2, decoupled decay on `decay_mask`)."""
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
                           weight_decay=optim_cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
