"""Pure loss functions of arrays (keyword-only), each tested against a numpy formula."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
  """Identity in the forward pass; multiplies the cotangent of `x` by `scale` (exactly)."""
  return x


def _scale_gradient_fwd(x, scale):
  return x, scale


def _scale_gradient_bwd(scale, g):
  return (g * jnp.asarray(scale, g.dtype), None)


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(‖x‖, eps) along the last axis (torch.nn.functional.normalize)."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def norm_mse(*, pred: jax.Array, target: jax.Array) -> jax.Array:
  """Official M2D loss: standardise each target token, then mean of 2 − 2·cos(pred, target).

  pred, target: [B, N, D]. Target variance is unbiased (torch.var), with 1e-6 added.
  """
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  mean = jnp.mean(target, axis=-1, keepdims=True)
  var = jnp.var(target, axis=-1, keepdims=True, ddof=1)
  target = (target - mean) / jnp.sqrt(var + 1e-6)
  cos = jnp.sum(l2_normalize(pred) * l2_normalize(target), axis=-1)
  return jnp.mean(2.0 - 2.0 * cos)


def clip_infonce(*, audio_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """Symmetric InfoNCE over the whole batch: (CE(audio→text) + CE(text→audio)) / 2.

  Embeddings [B, C] are L2-normalised here; `logit_scale` is the log scale s
  (logits = exp(s) · a · tᵀ), as the learnable parameter stores it.
  """
  a = l2_normalize(audio_emb.astype(jnp.float32))
  t = l2_normalize(text_emb.astype(jnp.float32))
  logits = jnp.exp(logit_scale) * jnp.einsum("ic,jc->ij", a, t, precision=jax.lax.Precision.HIGHEST)
  diag = jnp.diagonal(logits)
  loss_a = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  loss_t = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
  return (loss_a + loss_t) / 2.0
