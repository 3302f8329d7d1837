"""Transformer layers shared by the audio ViT, the heads and the scratch text tower.

timm/MAE conventions: xavier-uniform kernels, zero biases, pre-norm blocks, a fused qkv
projection and exact GELU. Parameters are float32 with logical axis names ('embed', 'mlp',
'qkv', 'heads') for sharding rules.

`dtype` is the matmul operand dtype. float32: plain float32 everywhere. bfloat16: every
matmul (dense layers and both attention products) takes bfloat16 operands and accumulates
and returns float32, in the backward pass too (`mixed_einsum`); the residual stream, layer
norms, softmax, GELU and everything downstream stay float32. That is how bf16 hardware is
fast (a bf16 dot returning bf16 is slower than f32 on CPU) and keeps f32 numerics elsewhere.
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
ATTENTION_BACKENDS = ("einsum", "xla")


def _einsum_f32(out: str, x: jax.Array, sx: str, y: jax.Array, sy: str) -> jax.Array:
  """einsum(sx, sy -> out) accumulating in float32, operands ordered so that the dot's
  natural output order (batch, lhs free, rhs free) is `out` where one order gives it.

  XLA:CPU runs bf16 x bf16 -> f32 dots in its XNNPACK fusions but not in its fallback dot
  (an "Unsupported element type for DotThunk" error), which it picks when a transpose is
  folded into the dot's layout; natural order avoids that.
  """
  for a, sa, b, sb in ((x, sx, y, sy), (y, sy, x, sx)):
    batch = [c for c in sa if c in sb and c in out]
    free = [c for c in sa if c not in sb] + [c for c in sb if c not in sa]
    if "".join(batch + free) == out:
      return jnp.einsum(f"{sa},{sb}->{out}", a, b, preferred_element_type=jnp.float32)
  return jnp.einsum(f"{sx},{sy}->{out}", x, y, preferred_element_type=jnp.float32)


def mixed_einsum(spec: str, a: jax.Array, b: jax.Array, dtype: Dtype) -> jax.Array:
  """Two-operand einsum with `dtype` operands and a float32 result and accumulation.

  The backward products also take `dtype` operands (the cotangent is cast) and accumulate
  in float32; JAX's own transpose would upcast the bf16 operand and run the gradient dots in
  f32. Gradients come back in the inputs' dtypes. Every index of an operand must appear in
  the other operand or the output (true of dense layers and attention).
  """
  ins, out = spec.split("->")
  sa, sb = ins.split(",")

  @jax.custom_vjp
  def f(a, b):
    return _einsum_f32(out, a.astype(dtype), sa, b.astype(dtype), sb)

  def fwd(a, b):
    return f(a, b), (a.astype(dtype), b.astype(dtype))

  def bwd(res, g):
    a16, b16 = res
    g16 = g.astype(dtype)
    da = _einsum_f32(sa, g16, out, b16, sb)
    db = _einsum_f32(sb, a16, sa, g16, out)
    return da.astype(a.dtype), db.astype(b.dtype)

  f.defvjp(fwd, bwd)
  return f(a, b)


def mixed_dot_general(dtype: Dtype):
  """A `dot_general` for `nn.Dense`: `dtype` operands, float32 accumulation and result."""

  def dot_general(x, kernel, dimension_numbers, precision=None, preferred_element_type=None):
    del precision, preferred_element_type  # Fixed by design: `dtype` in, float32 out.
    if dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())) or kernel.ndim != 2:
      raise ValueError(f"mixed_dot_general: unsupported dimension numbers {dimension_numbers}")
    return mixed_einsum("...i,io->...o", x, kernel, dtype)

  return dot_general


def dense(
  features: int,
  names: tuple[str | None, str | None],
  dtype: Dtype,
  name: str,
  kernel_init: nn.initializers.Initializer = _xavier,
  bias_init: nn.initializers.Initializer = _zeros,
) -> nn.Dense:
  """Dense layer with logical axis names; xavier-uniform kernel and zero bias unless told.

  float32 `dtype`: a plain float32 layer. Otherwise `dtype` operands, float32 result (see
  the module docstring); the bias is added in float32.
  """
  mixed = jnp.dtype(dtype) != jnp.float32
  return nn.Dense(
    features,
    dtype=jnp.float32 if mixed else dtype,
    dot_general=mixed_dot_general(dtype) if mixed else None,
    param_dtype=jnp.float32,
    name=name,
    kernel_init=nn.with_logical_partitioning(kernel_init, names),
    bias_init=nn.with_logical_partitioning(bias_init, names[1:]),
  )


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
  """LayerNorm over 'embed' with logical axis names on scale and bias; computes in float32.

  `dtype` is the matmul operand dtype of the caller, kept for symmetry with `dense`: norms
  run and return float32 in every mode (the following dense casts its own operands).
  """
  del dtype
  return nn.LayerNorm(
    epsilon=eps,
    dtype=jnp.float32,
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
  dtype: Dtype = jnp.float32,
  backend: str = "einsum",
) -> jax.Array:
  """Softmax attention: q [B, Q, H, d], k and v [B, N, H, d] → [B, Q, H, d] (float32 if mixed).

  Logits and softmax are float32. `key_mask` [B, N] (1 = real token) hides padding keys.
  With `dropout_rng`, attention weights drop at `dropout_rate` with one keep mask shared by
  batch and heads: flax `dot_product_attention`'s draws, which BERT training used.
  `dtype`: the products' operand dtype (see the module docstring). `backend`: "einsum" (the
  reference) or "xla" (`jax.nn.dot_product_attention`; cuDNN's fused kernel on GPU where it
  applies, XLA elsewhere), the latter without dropout.
  """
  if backend not in ATTENTION_BACKENDS:
    raise ValueError(f"attention backend {backend!r}; expected one of {ATTENTION_BACKENDS}")
  dropout = dropout_rng is not None and dropout_rate > 0
  if backend == "xla":
    if dropout:
      raise ValueError("attention backend 'xla' has no attention dropout; use 'einsum'")
    return _xla_attention(q, k, v, key_mask, dtype)
  mixed = jnp.dtype(dtype) != jnp.float32
  if mixed:
    # Heads-major operands, so every product and its gradients are plain batched matmuls.
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    logits = mixed_einsum("bhqd,bhkd->bhqk", q, k, dtype)
  else:
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  logits = logits * (q.shape[-1] ** -0.5)
  if key_mask is not None:
    # A finite fill keeps a row with no valid key finite (our tokenizers never make one).
    logits = jnp.where(key_mask[:, None, None, :].astype(bool), logits, -1e9)
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout:
    keep_prob = 1.0 - dropout_rate
    keep = jax.random.bernoulli(dropout_rng, keep_prob, (1, 1, *probs.shape[-2:]))
    probs = probs * (keep.astype(probs.dtype) / keep_prob)
  if mixed:
    return mixed_einsum("bhqk,bhkd->bhqd", probs, v, dtype).transpose(0, 2, 1, 3)
  return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def _xla_attention(
  q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, dtype: Dtype
) -> jax.Array:
  """`jax.nn.dot_product_attention` on `dtype` operands (implementation chosen by JAX)."""
  mask = None if key_mask is None else key_mask[:, None, None, :].astype(bool)
  q, k, v = (t.astype(dtype) for t in (q, k, v))
  return jax.nn.dot_product_attention(q, k, v, mask=mask).astype(jnp.float32)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (rows q|k|v, as timm).

  With `num_queries`, only the first that many tokens attend (over all keys) and are
  returned: a pooling token's output in O(N) instead of every token's in O(N²).
  """

  heads: int
  dtype: Dtype = jnp.float32
  attention: str = "einsum"  # Backend of the softmax(q·k)·v product (ATTENTION_BACKENDS).

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
    out = attention(
      q, k[:, :, 0], v[:, :, 0], key_mask, dtype=self.dtype, backend=self.attention
    ).reshape(b, q.shape[1], d)
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
  attention: str = "einsum"  # See Attention.

  @nn.compact
  def __call__(
    self, x: jax.Array, key_mask: jax.Array | None = None, num_queries: int | None = None
  ) -> jax.Array:
    d = x.shape[-1]
    h = Attention(self.heads, self.dtype, self.attention, name="attn")(
      layer_norm(self.eps, self.dtype, "norm1")(x), key_mask, num_queries
    )
    x = x[:, :num_queries] + h
    return x + Mlp(int(d * self.mlp_ratio), self.dtype, name="mlp")(
      layer_norm(self.eps, self.dtype, "norm2")(x)
    )
