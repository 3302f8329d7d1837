"""The fine-tuning update and the evaluation forward pass (what gets jitted), and the score.

One update: log-mel → mixup (λ from the batch) → SpecAugment (→ random resize crop) →
structured masking (a (rows, columns) variant drawn per batch) → head → loss. Evaluation
runs whole (padded) clips through the chunked network with running BatchNorm statistics.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxclap import metrics
from jaxclap.audio import frontend as fe
from jaxclap.eval import augment
from jaxclap.eval.ft_model import FinetuneNet
from jaxclap.models import masks, patches


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the jitted steps close over (static for a run)."""

  net: FinetuneNet
  frontend_cfg: fe.FrontendConfig
  norm_stats: tuple[float, float]
  multi_label: bool
  freq_mask: int
  time_mask: int  # Already scaled to the crop length.
  # Structured masking: (rows, columns, probability), one drawn per batch
  # (augment.mask_variants); ((0, 0, 1.0),) is no masking.
  mask_variants: tuple[tuple[int, int, float], ...] = ((0, 0, 1.0),)
  rrc: bool = False  # Random resize crop after SpecAugment (augment.random_resize_crop).
  class_mean_loss: bool = False  # Single-label loss also averaged over classes (EVAR's).


def loss_fn(
  logits: jax.Array, target: jax.Array, multi_label: bool, class_mean: bool = False
) -> jax.Array:
  """BCE averaged over classes and clips (multi-label) or soft-target softmax CE averaged
  over clips (and, `class_mean`, over classes: EVAR's loss_nll)."""
  if multi_label:
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
  loss = jnp.mean(optax.softmax_cross_entropy(logits, target))
  return loss / logits.shape[-1] if class_mean else loss


def train_step(
  setup: Setup,
  tx: optax.GradientTransformation,
  params: Any,
  batch_stats: Any,
  opt_state: Any,
  batch: dict[str, jax.Array],
  rng: jax.Array,
):
  """One update: log-mel → mixup (λ from the batch) → SpecAugment (→ random resize crop)
  → structured masking (a (rows, columns) variant drawn for the batch, one `lax.switch`
  branch per variant, each with its own static token count) → head → loss."""
  x = fe.waveform_input(batch, setup.frontend_cfg, setup.norm_stats)
  valid = fe.valid_frames(batch["audio_len"], setup.frontend_cfg)
  mix_key, spec_key, mask_key = jax.random.split(rng, 3)
  lam = batch["mix_lambda"]
  x, y, perm = augment.mixup(mix_key, x, batch["target"], lam)
  valid = jnp.where(lam < 1, jnp.maximum(valid, valid[perm]), valid)  # Audio of either clip.
  x = augment.spec_augment(spec_key, x, setup.freq_mask, setup.time_mask)
  if setup.rrc:
    x = augment.random_resize_crop(jax.random.fold_in(spec_key, 1), x)
  grid = patches.grid_size(x.shape[1], x.shape[2], setup.net.patch_size)

  def objective(p):
    def masked(keep, kept):
      logits, updates = setup.net.apply(
        {"params": p, "batch_stats": batch_stats},
        x,
        valid,
        keep,
        kept,
        train=True,
        mutable=["batch_stats"],
      )
      loss = loss_fn(logits, y, setup.multi_label, setup.class_mean_loss)
      return loss, updates["batch_stats"]

    (loss, stats), variant = masks.with_drawn_mask(
      mask_key, setup.mask_variants, x.shape[0], grid, masked
    )
    return loss, (stats, variant)

  (loss, (batch_stats, variant)), grads = jax.value_and_grad(objective, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return (
    params,
    batch_stats,
    opt_state,
    {"loss": loss, "grad_norm": optax.tree.norm(grads), "mask_variant": variant},
  )


def eval_logits(
  setup: Setup, params: Any, batch_stats: Any, batch: dict[str, jax.Array]
) -> jax.Array:
  """Logits [B, classes] of whole (padded) clips, chunked, running BatchNorm statistics."""
  x = fe.waveform_input(batch, setup.frontend_cfg, setup.norm_stats)
  valid = fe.valid_frames(batch["audio_len"], setup.frontend_cfg)
  return setup.net.apply({"params": params, "batch_stats": batch_stats}, x, valid)


def score(y_score: np.ndarray, y_true: np.ndarray, multi_label: bool) -> float:
  """mAP (multi-label) or top-1 accuracy."""
  if multi_label:
    return metrics.mean_average_precision(y_score, y_true)
  return metrics.accuracy(y_score, np.argmax(y_true, axis=1))
