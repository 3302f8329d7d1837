"""The stage-1 train step and validation functions, pure and jitted with shardings."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxclap import sharding as shd
from jaxclap.models import m2d
from jaxclap.train.state import TrainState


def _split_micro(batch: dict[str, jax.Array], n: int) -> dict[str, jax.Array]:
  return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model, frontend_cfg,
               tx: optax.GradientTransformation, schedule: Callable, total_steps: int,
               clap_weight: float, ema_start: float, ema_end: float,
               grad_accum: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update: M2D + λ·CLAP gradients, AdamW, logit-scale clamp, EMA target update."""
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, micro, key):
    return m2d.stage1_loss(params, state.target, micro, key, model=model,
                           frontend_cfg=frontend_cfg, norm_stats=state.norm_stats,
                           clap_weight=clap_weight)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum == 1:
    (_, metrics), grads = grad_fn(state.params, batch, rng)
  else:
    # Each micro-batch's InfoNCE sees only its own negatives (documented in the README).
    def body(carry, xs):
      micro, i = xs
      (_, m), g = grad_fn(state.params, micro, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (g, m)), None

    zeros = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda v: v[0], _split_micro(
        batch, grad_accum)), rng)
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (zeros[1], zeros[0][1]))
    (grads, metrics), _ = jax.lax.scan(
        body, init, (_split_micro(batch, grad_accum), jnp.arange(grad_accum)))
    grads, metrics = jax.tree.map(lambda x: x / grad_accum, (grads, metrics))

  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = m2d.clamp_logit_scale(optax.apply_updates(state.params, updates))
  decay = m2d.ema_decay(state.step, total_steps, ema_start, ema_end)
  target = m2d.ema_update(state.target, params["encoder"]["body"], decay)
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
  metrics = dict(metrics, grad_norm=grad_norm, lr=schedule(state.step), ema_decay=decay,
                 param_norm=optax.tree.norm(params))
  new_state = state.replace(step=state.step + 1, params=params, target=target,
                            opt_state=opt_state, bad_step=bad_step)
  return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model, frontend_cfg,
              clap_weight: float) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
  """Validation loss with fixed masks, and unmasked CLAP embeddings for retrieval."""
  key = jax.random.PRNGKey(0)  # Same masks at every validation, so losses compare.
  _, metrics = m2d.stage1_loss(state.params, state.target, batch, key, model=model,
                               frontend_cfg=frontend_cfg, norm_stats=state.norm_stats,
                               clap_weight=clap_weight)
  audio_emb, text_emb = m2d.clap_embeddings(state.params, batch, model=model,
                                            frontend_cfg=frontend_cfg,
                                            norm_stats=state.norm_stats)
  return metrics, audio_emb, text_emb


def jit_steps(*, mesh: Mesh, state_sh: TrainState, model, frontend_cfg, tx, schedule,
              total_steps: int, train_cfg) -> tuple[Callable, Callable]:
  """The train and eval steps jitted once with explicit shardings; the state is donated."""
  repl = shd.replicated(mesh)
  batch_sh = shd.batch_sharding(mesh)
  train = functools.partial(
      train_step, model=model, frontend_cfg=frontend_cfg, tx=tx, schedule=schedule,
      total_steps=total_steps, clap_weight=train_cfg.clap_weight,
      ema_start=train_cfg.ema_start, ema_end=train_cfg.ema_end,
      grad_accum=train_cfg.grad_accum)
  train_jit = jax.jit(train, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl),
                      donate_argnums=(0,))
  evaluate = functools.partial(eval_step, model=model, frontend_cfg=frontend_cfg,
                               clap_weight=train_cfg.clap_weight)
  eval_jit = jax.jit(evaluate, in_shardings=(state_sh, batch_sh),
                     out_shardings=(repl, repl, repl))
  return train_jit, eval_jit


def retrieval_recall(audio_emb: Any, text_emb: Any, ks=(1, 5, 10)) -> dict[str, float]:
  """Audio→text recall@k where clip i's caption is text i (host-side numpy)."""
  import numpy as np
  sims = np.asarray(audio_emb) @ np.asarray(text_emb).T
  ranks = (sims > np.diag(sims)[:, None]).sum(axis=1)  # Captions scored above the true one.
  return {f"a2t_R@{k}": float((ranks < k).mean()) for k in ks}
