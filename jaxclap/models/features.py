"""Feature extraction with a trained M2D encoder (official runtime layout).

Inputs are normalised log-mels [B, F, T]. Inputs longer than the trained length
(`unit_frames(model)`: the input grid the model was trained on, e.g. 1001 frames for a stage
2 trained on 10 s crops over a 608-frame stage-1 table) are encoded in chunks of that
length (`patches.encode_chunks`, the one chunked encoder) and concatenated along time;
the last chunk is zero-padded to a whole patch, as the official runtime's `encode_lms`.
`model` is any Flax module with `encode(x) -> [B, F'·T', D]` and `project_audio(tokens)`
methods (jaxclap.models.m2d.M2D); `params` is its parameter tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxclap import losses
from jaxclap.models import patches


def unit_frames(model: Any) -> int:
  """The input length `model` was trained on: its chunk length for inference and export."""
  return int(getattr(model, "unit_frames", 0) or model.input_frames)


def _encoder(params: Any, model: Any) -> Callable[[jax.Array], jax.Array]:
  """Chunk [B, F, t] → patch tokens [B, F'·t', D] of `model` with `params`."""
  return lambda chunk: model.apply({"params": params}, chunk, method="encode")


def encode_tokens(params: Any, x: jax.Array, *, model: Any) -> list[jax.Array]:
  """Patch tokens [B, F'·t', D] (no cls) of each time chunk of `x`."""
  return patches.encode_chunks(_encoder(params, model), x, unit_frames(model), model.patch_size)


def frame_features(params: Any, x: jax.Array, *, model: Any) -> jax.Array:
  """Frame-level features [B, T', F'·D]: per time patch, frequency patches concatenated."""
  return patches.encode_in_chunks(_encoder(params, model), x, unit_frames(model), model.patch_size)


def clip_features(params: Any, x: jax.Array, *, model: Any) -> jax.Array:
  """Clip-level features [B, F'·D]: frame features averaged over time."""
  return jnp.mean(frame_features(params, x, model=model).astype(jnp.float32), axis=1)


def _project(params: Any, chunks: list[jax.Array], model: Any, normalize: bool) -> jax.Array:
  """CLAP audio embedding [B, C] from the patch tokens of all chunks."""
  tokens = jnp.concatenate(chunks, axis=1)
  emb = model.apply({"params": params}, tokens, method="project_audio").astype(jnp.float32)
  return losses.l2_normalize(emb) if normalize else emb


def clap_audio_embedding(
  params: Any, x: jax.Array, *, model: Any, normalize: bool = True
) -> jax.Array:
  """CLAP audio embedding [B, C] from all patch tokens of all chunks (L2-normalised)."""
  return _project(params, encode_tokens(params, x, model=model), model, normalize)


def clip_features_and_clap(params: Any, x: jax.Array, *, model: Any) -> tuple[jax.Array, jax.Array]:
  """(`clip_features`, `clap_audio_embedding`) of `x` from one encoder pass."""
  chunks = encode_tokens(params, x, model=model)
  frames = patches.chunks_to_frames(chunks, x.shape[1] // patches.hw(model.patch_size)[0])
  return jnp.mean(frames.astype(jnp.float32), axis=1), _project(params, chunks, model, True)
