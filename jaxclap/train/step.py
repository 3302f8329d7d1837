"""The train step and validation functions of every stage, pure and jitted with shardings."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxclap import sharding as shd
from jaxclap.text import tokenize
from jaxclap.train.state import TrainState


def device_batch(batch: dict[str, Any], objective, mesh) -> dict[str, jax.Array]:
  """The arrays a stage's step reads, tokenising the captions on the host when it needs."""
  out = {k: batch[k] for k in objective.batch_keys if k in batch}
  missing = [k for k in objective.batch_keys if k not in out]
  if missing:
    out.update(same_length(objective.text_inputs([str(c) for c in batch["caption"]])))
  return shd.global_batch(out, mesh)


def same_length(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Token arrays padded to the longest length bucket over processes (one global shape)."""
  if not inputs or "input_ids" not in inputs or jax.process_count() == 1:
    return inputs
  width = np.int32(inputs["input_ids"].shape[1])
  longest = int(np.max(multihost_utils.process_allgather(width)))
  return {**inputs, **tokenize.pad_to(inputs, longest)}


def _split_micro(batch: dict[str, jax.Array], n: int) -> dict[str, jax.Array]:
  return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  objective,
  tx: optax.GradientTransformation,
  schedule: Callable,
  grad_accum: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update: the stage's loss and gradients, AdamW, then its post-update rule.

  Stage 1's rule clamps the logit scale and moves the EMA target; stage 2's clamps only;
  fine-tuning's loss also updates its BatchNorm statistics (in `frozen`).
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, micro, key):
    return objective.loss(params, state.frozen, micro, key, state.norm_stats)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  frozen = state.frozen
  if getattr(objective, "updates_frozen", False):
    # The loss also returns its new frozen tree (fine-tuning's BatchNorm statistics).
    if grad_accum != 1:
      raise ValueError("an objective that updates its frozen tree takes grad_accum=1")
    (_, (metrics, frozen)), grads = grad_fn(state.params, batch, rng)
  elif grad_accum == 1:
    (_, metrics), grads = grad_fn(state.params, batch, rng)
  else:
    # Each micro-batch's InfoNCE sees only its own negatives (documented in the README).
    def body(carry, xs):
      micro, i = xs
      (_, m), g = grad_fn(state.params, micro, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (g, m)), None

    micro = _split_micro(batch, grad_accum)
    shapes = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda v: v[0], micro), rng)
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[1], shapes[0][1]))
    (grads, metrics), _ = jax.lax.scan(body, init, (micro, jnp.arange(grad_accum)))
    grads, metrics = jax.tree.map(lambda x: x / grad_accum, (grads, metrics))

  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params, frozen, extra = objective.after_update(
    optax.apply_updates(state.params, updates), frozen, state.step
  )
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
  metrics = dict(
    metrics,
    **extra,
    grad_norm=grad_norm,
    lr=schedule(state.step),
    param_norm=optax.tree.norm(params),
  )
  new_state = state.replace(
    step=state.step + 1, params=params, frozen=frozen, opt_state=opt_state, bad_step=bad_step
  )
  return new_state, metrics


def eval_step(
  state: TrainState, batch: dict[str, jax.Array], *, objective
) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
  """Validation loss with fixed masks, and unmasked (audio, text) embeddings for retrieval."""
  key = jax.random.PRNGKey(0)  # Same masks at every validation, so losses compare.
  _, metrics = objective.loss(state.params, state.frozen, batch, key, state.norm_stats)
  audio = objective.audio_embed(state.params, state.frozen, batch, state.norm_stats)
  text = objective.text_embed(state.params, state.frozen, batch)
  return metrics, audio, text


def jit_steps(
  *, mesh: Mesh, state_sh: TrainState, objective, tx, schedule, grad_accum: int = 1
) -> dict[str, Callable]:
  """Train, eval and embedding functions jitted once with explicit shardings.

  The train step donates the state. Returns {"train", "eval", "audio", "text"}.
  """
  repl = shd.replicated(mesh)
  batch_sh = shd.batch_sharding(mesh)
  train = functools.partial(
    train_step, objective=objective, tx=tx, schedule=schedule, grad_accum=grad_accum
  )
  audio = lambda st, b: objective.audio_embed(st.params, st.frozen, b, st.norm_stats)
  text = lambda st, t: objective.text_embed(st.params, st.frozen, t)
  return {
    "train": jax.jit(
      train, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl), donate_argnums=(0,)
    ),
    "eval": jax.jit(
      functools.partial(eval_step, objective=objective),
      in_shardings=(state_sh, batch_sh),
      out_shardings=(repl, repl, repl),
    ),
    "audio": jax.jit(audio, in_shardings=(state_sh, batch_sh), out_shardings=repl),
    "text": jax.jit(text, in_shardings=(state_sh, repl), out_shardings=repl),
  }
