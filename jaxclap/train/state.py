"""The train state and its sharded initialisation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from jaxclap import sharding as shd


@struct.dataclass
class TrainState:
  """Everything a step reads and writes; saved whole in every checkpoint."""

  step: jax.Array  # int32 scalar: updates applied so far.
  params: Any  # Trained (online) parameters, logit scale included.
  frozen: Any  # Untrained params: EMA target (stage 1) or frozen audio encoder (stage 2).
  opt_state: Any  # Optimizer state of `params`.
  rng: jax.Array  # uint32[2] base key; each step folds in its step number.
  norm_stats: jax.Array  # float32[2]: log-mel (mean, std).
  bad_step: jax.Array  # int32: first step whose loss or gradient was not finite, else -1.


def _init_and_shardings(
  init_params: Callable[[jax.Array], tuple[Any, Any]],
  tx: optax.GradientTransformation,
  seed: int,
  mesh: Mesh,
  rules,
) -> tuple[Callable, jax.Array, TrainState]:
  """(init(key, norm_stats) -> TrainState, its key, the state's shardings); nothing is made."""
  key = jax.random.PRNGKey(seed)
  init_key, state_key = jax.random.split(key)
  boxed_params, boxed_frozen = jax.eval_shape(init_params, init_key)
  params_sh = shd.logical_shardings(boxed_params, mesh, rules)
  frozen_sh = shd.logical_shardings(boxed_frozen, mesh, rules)
  repl = shd.replicated(mesh)

  def init(k, stats):
    params, frozen = nn.unbox(init_params(k))
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      frozen=frozen,
      opt_state=tx.init(params),
      rng=state_key,
      norm_stats=jnp.asarray(stats, jnp.float32),
      bad_step=jnp.full((), -1, jnp.int32),
    )

  abstract = jax.eval_shape(init, init_key, jnp.zeros(2, jnp.float32))
  opt_sh = optax.tree_map_params(
    tx,
    lambda _, s: s,
    abstract.opt_state,
    params_sh,
    transform_non_params=lambda _: repl,
    is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
  )
  state_sh = TrainState(
    step=repl,
    params=params_sh,
    frozen=frozen_sh,
    opt_state=opt_sh,
    rng=repl,
    norm_stats=repl,
    bad_step=repl,
  )
  return init, init_key, state_sh


def create_sharded_state(
  *,
  init_params: Callable[[jax.Array], tuple[Any, Any]],
  tx: optax.GradientTransformation,
  seed: int,
  norm_stats: tuple[float, float],
  mesh: Mesh,
  rules,
) -> tuple[TrainState, TrainState]:
  """Initialises the state directly into its shardings; returns (state, shardings).

  `init_params(rng)` returns (params, frozen), possibly boxed with logical axis names;
  the names decide how parameters, their optimizer moments and frozen trees are sharded.
  """
  init, init_key, state_sh = _init_and_shardings(init_params, tx, seed, mesh, rules)
  state = jax.jit(init, out_shardings=state_sh)(init_key, jnp.asarray(norm_stats, jnp.float32))
  return state, state_sh


def abstract_sharded_state(
  *,
  init_params: Callable[[jax.Array], tuple[Any, Any]],
  tx: optax.GradientTransformation,
  mesh: Mesh,
  rules,
  seed: int = 0,
) -> tuple[TrainState, TrainState]:
  """(ShapeDtypeStructs carrying shardings, the shardings) of the state; no array is made.

  The same shapes and shardings as `create_sharded_state`, for lowering and compiling the
  steps ahead of time (the mesh's devices may be compile-only TPU devices).
  """
  init, init_key, state_sh = _init_and_shardings(init_params, tx, seed, mesh, rules)
  shapes = jax.eval_shape(init, init_key, jax.ShapeDtypeStruct((2,), jnp.float32))
  return abstract_state(state_sh, shapes), state_sh


def abstract_state(state_sh: TrainState, state: TrainState) -> TrainState:
  """ShapeDtypeStructs carrying shardings, the restore target of a checkpoint."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh
  )
