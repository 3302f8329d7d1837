"""Pooling token states into one vector per text, over the valid (unmasked) tokens."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")  # sentence-transformers' names.


def pool(hidden: jax.Array, mask: jax.Array, modes: str | Sequence[str]) -> jax.Array:
  """[B, L, D] → [B, D·len(modes)]: each mode over valid tokens, concatenated in order.

  "cls" is the first token (BERT's [CLS] or SentencePiece's BOS); the others follow
  sentence-transformers' Pooling module. Computed in ``hidden``'s dtype.
  """
  modes = (modes,) if isinstance(modes, str) else tuple(modes)
  unknown = [m for m in modes if m not in MODES]
  if unknown or not modes:
    raise ValueError(f"pooling={list(modes)}; expected modes from {MODES}")
  m = mask[..., None].astype(hidden.dtype)
  count = jnp.maximum(m.sum(axis=1), 1e-9)
  total = (hidden * m).sum(axis=1)
  out = {
    "cls": lambda: hidden[:, 0],
    "max": lambda: jnp.where(m > 0, hidden, -jnp.inf).max(axis=1),
    "mean": lambda: total / count,
    "mean_sqrt_len_tokens": lambda: total / jnp.sqrt(count),
  }
  return jnp.concatenate([out[mode]() for mode in modes], axis=-1)
