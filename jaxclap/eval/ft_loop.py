"""The fine-tuning loop: epochs of updates, a validation pass after each, the best kept.

The host does not wait on the device between updates: the jitted step also keeps the
first non-finite loss (and its step) on the device, and the host reads it, with the
current loss, only every `log_every` steps and at the end of an epoch. A non-finite loss
then stops the run with a message naming its step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxclap.eval import ft_data, ft_step


@dataclasses.dataclass(frozen=True)
class EvalData:
  """How a split is read for evaluation."""

  sources: dict[str, Any]  # Split name → random-access source.
  samples: int  # Every clip padded (or cut) to this many samples.
  batch: int
  num_classes: int
  dataset: str


@dataclasses.dataclass
class Outcome:
  """A finished loop: per-epoch history and the best epoch's host copies."""

  history: list[dict[str, Any]]
  best: dict[str, Any]  # {"val", "epoch", "step", "params", "batch_stats"}.
  epochs: int
  steps: int


def evaluate(
  eval_fn: Callable, params: Any, batch_stats: Any, data: EvalData, split: str, multi_label: bool
) -> float:
  """Score (mAP or accuracy) of whole clips of `split`; logits fetched once at the end."""
  outs, truth = [], []
  for b, n in ft_data.eval_batches(
    data.sources[split],
    samples=data.samples,
    batch=data.batch,
    num_classes=data.num_classes,
    where=f"{data.dataset}:{split}",
  ):
    outs.append((eval_fn(params, batch_stats, b), n))
    truth.append(b["target"][:n])
  scores = np.concatenate([np.asarray(o)[:n] for o, n in outs])
  return ft_step.score(scores, np.concatenate(truth), multi_label)


def new_track() -> dict[str, jax.Array]:
  """On-device record of the first non-finite loss: none yet."""
  return {"bad_step": jnp.asarray(-1, jnp.int32), "bad_loss": jnp.asarray(0.0, jnp.float32)}


def track_loss(
  track: dict[str, jax.Array], loss: jax.Array, step: jax.Array
) -> dict[str, jax.Array]:
  """`track` after update `step` (0-based) with `loss`: keeps the first non-finite one."""
  first = (track["bad_step"] < 0) & ~jnp.isfinite(loss)
  return {
    "bad_step": jnp.where(first, step + 1, track["bad_step"]),
    "bad_loss": jnp.where(first, loss, track["bad_loss"]),
  }


def make_step(
  setup: ft_step.Setup, tx: optax.GradientTransformation, base_key: jax.Array
) -> Callable:
  """The jitted update (params, batch_stats, opt_state donated) with on-device tracking:
  (…, batch, step, track) → (params, batch_stats, opt_state, out, track); update `step`
  (0-based) draws its augmentation key as fold_in(base_key, step)."""

  def step_fn(params, batch_stats, opt_state, batch, step, track):
    rng = jax.random.fold_in(base_key, step)
    params, batch_stats, opt_state, out = ft_step.train_step(
      setup, tx, params, batch_stats, opt_state, batch, rng
    )
    return params, batch_stats, opt_state, out, track_loss(track, out["loss"], step)

  return jax.jit(step_fn, donate_argnums=(0, 1, 2))


def _check(track: dict[str, jax.Array], steps_per_epoch: int) -> None:
  """Raises FloatingPointError naming the first update whose loss was not finite."""
  bad = int(track["bad_step"])
  if bad >= 0:
    raise FloatingPointError(
      f"fine-tuning loss is {float(track['bad_loss'])} at step {bad} "
      f"(epoch {(bad - 1) // steps_per_epoch + 1})"
    )


def train(
  *,
  step_fn: Callable,
  eval_fn: Callable,
  schedule: optax.Schedule,
  params: Any,
  batch_stats: Any,
  opt_state: Any,
  batches: Iterator[dict[str, np.ndarray]],
  total: int,
  steps_per_epoch: int,
  log_every: int,
  eval_data: EvalData,
  val_split: str,
  multi_label: bool,
) -> Outcome:
  """Runs `total` updates in epochs of `steps_per_epoch`; after each epoch scores
  `val_split` and keeps a host copy of the best epoch (the first of the best score, as
  EVAR)."""
  track = new_track()
  history, best, step, epoch = [], None, 0, 0
  while step < total:
    epoch += 1
    for _ in range(min(steps_per_epoch, total - step)):
      params, batch_stats, opt_state, out, track = step_fn(
        params, batch_stats, opt_state, next(batches), step, track
      )
      step += 1
      if step % log_every == 0:
        _check(track, steps_per_epoch)
        logging.info(
          "step %d loss %.4f grad_norm %.3f lr %.4g",
          step,
          float(out["loss"]),
          float(out["grad_norm"]),
          float(schedule(step - 1)),
        )
    _check(track, steps_per_epoch)
    loss, lr = float(out["loss"]), float(schedule(step - 1))
    val = evaluate(eval_fn, params, batch_stats, eval_data, val_split, multi_label)
    history.append({"epoch": epoch, "step": step, "loss": loss, "val": val, "lr": lr})
    logging.info(
      "epoch %d step %d loss %.4f val %s %.4f",
      epoch,
      step,
      loss,
      "mAP" if multi_label else "accuracy",
      val,
    )
    if best is None or val > best["val"]:  # EVAR keeps the first epoch of the best score.
      host = jax.tree_util.tree_map(lambda a: np.array(a, copy=True), (params, batch_stats))
      best = {"val": val, "epoch": epoch, "step": step, "params": host[0], "batch_stats": host[1]}
  return Outcome(history=history, best=best, epochs=epoch, steps=step)
