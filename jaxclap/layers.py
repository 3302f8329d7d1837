"""Transformer layers shared by the audio ViT, the heads and the scratch text tower.

timm/MAE conventions: xavier-uniform kernels, zero biases, pre-norm blocks, a fused qkv
projection and exact GELU. Parameters are float32 with logical axis names ('embed', 'mlp',
'qkv', 'heads') for sharding rules; `dtype` sets the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones


def dense(
  features: int,
  names: tuple[str | None, str | None],
  dtype: Dtype,
  name: str,
  kernel_init: nn.initializers.Initializer = _xavier,
  bias_init: nn.initializers.Initializer = _zeros,
) -> nn.Dense:
  """Dense layer with logical axis names; xavier-uniform kernel and zero bias unless told."""
  return nn.Dense(
    features,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
    kernel_init=nn.with_logical_partitioning(kernel_init, names),
    bias_init=nn.with_logical_partitioning(bias_init, names[1:]),
  )


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
  """LayerNorm over 'embed' with logical axis names on scale and bias."""
  return nn.LayerNorm(
    epsilon=eps,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
    scale_init=nn.with_logical_partitioning(_ones, ("embed",)),
    bias_init=nn.with_logical_partitioning(_zeros, ("embed",)),
  )


def attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  key_mask: jax.Array | None = None,
  *,
  dropout_rate: float = 0.0,
  dropout_rng: jax.Array | None = None,
) -> jax.Array:
  """Softmax attention: q [B, Q, H, d], k and v [B, N, H, d] → [B, Q, H, d].

  Logits and softmax are float32. `key_mask` [B, N] (1 = real token) hides padding keys.
  With `dropout_rng`, attention weights drop at `dropout_rate` with one keep mask shared by
  batch and heads: flax `dot_product_attention`'s draws, which BERT training used.
  """
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits * (q.shape[-1] ** -0.5)
  if key_mask is not None:
    # A finite fill keeps a row with no valid key finite (our tokenizers never make one).
    logits = jnp.where(key_mask[:, None, None, :].astype(bool), logits, -1e9)
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout_rng is not None and dropout_rate > 0:
    keep_prob = 1.0 - dropout_rate
    keep = jax.random.bernoulli(dropout_rng, keep_prob, (1, 1, *probs.shape[-2:]))
    probs = probs * (keep.astype(probs.dtype) / keep_prob)
  return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (rows q|k|v, as timm).

  With `num_queries`, only the first that many tokens attend (over all keys) and are
  returned: a pooling token's output in O(N) instead of every token's in O(N²).
  """

  heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x: jax.Array, key_mask: jax.Array | None = None, num_queries: int | None = None
  ) -> jax.Array:
    b, n, d = x.shape
    if d % self.heads:
      raise ValueError(f"Attention: width {d} not divisible by heads {self.heads}")
    qkv = dense(3 * d, ("embed", "qkv"), self.dtype, "qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, n, 3, self.heads, d // self.heads), 3, axis=2)
    q = q[:, :num_queries, 0]
    out = attention(q, k[:, :, 0], v[:, :, 0], key_mask).reshape(b, q.shape[1], d)
    return dense(d, ("heads", "embed"), self.dtype, "proj")(out)


class Mlp(nn.Module):
  """fc1 → exact GELU → fc2."""

  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = dense(self.hidden, ("embed", "mlp"), self.dtype, "fc1")(x)
    h = nn.gelu(h, approximate=False)
    return dense(x.shape[-1], ("mlp", "embed"), self.dtype, "fc2")(h)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x)).

  `num_queries`: see `Attention`; the block then returns only those first tokens.
  """

  heads: int
  mlp_ratio: float = 4.0
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x: jax.Array, key_mask: jax.Array | None = None, num_queries: int | None = None
  ) -> jax.Array:
    d = x.shape[-1]
    h = Attention(self.heads, self.dtype, name="attn")(
      layer_norm(self.eps, self.dtype, "norm1")(x), key_mask, num_queries
    )
    x = x[:, :num_queries] + h
    return x + Mlp(int(d * self.mlp_ratio), self.dtype, name="mlp")(
      layer_norm(self.eps, self.dtype, "norm2")(x)
    )
