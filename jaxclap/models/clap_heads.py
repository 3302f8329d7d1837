"""CLAP projection heads: audio tokens → audio embedding, sentence embedding → text space.

Initialisation follows the official models. The 2025 semantic pooler applies MAE's
`_init_weights` to itself (xavier-uniform Linear, zero bias, LayerNorm 1/0, zero token).
The 2024 MLP head (`audio_proj`) and `text_proj` are created in `M2D_CLAP_ViT.__init__`
*after* the base class ran `initialize_weights`, and nothing re-initialises them, so they
keep PyTorch's `nn.Linear` default: weight and bias both U(−1/√fan_in, 1/√fan_in).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxclap import layers
from jaxclap.models import vit

Dtype = vit.Dtype


def torch_linear_init(fan_in: int) -> nn.initializers.Initializer:
  """U(−1/√fan_in, 1/√fan_in): PyTorch `nn.Linear`'s default (kaiming_uniform a=√5)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(
  features: int, fan_in: int, names: tuple[str | None, str | None], dtype: Dtype, name: str
) -> nn.Dense:
  """Dense layer initialised as a fresh PyTorch `nn.Linear(fan_in, features)`."""
  init = torch_linear_init(fan_in)
  return layers.dense(features, names, dtype, name, kernel_init=init, bias_init=init)


class SemanticPooler(nn.Module):
  """2025 head: a learnable "semantic token" (init 0, no position) + 1 block + LayerNorm.

  Returns the semantic token's output [B, D]. The last block computes only that token's
  output (its other outputs are never read), so pooling is O(N) in the number of tokens;
  `key_mask` [B, N] (1 = real token) lets padded tokens be ignored. The optional `out_dim`
  projection exists only when the CLAP space differs from the encoder width (not in the
  official models).
  """

  heads: int = 1
  depth: int = 1
  mlp_ratio: float = 1.0
  out_dim: int | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    b, _, d = tokens.shape
    sem = self.param(
      "sem_token",
      nn.with_logical_partitioning(nn.initializers.zeros, (None, None, "embed")),
      (1, 1, d),
      jnp.float32,
    )
    # A float32 residual stream in every mode (`dtype` is the matmul operand dtype).
    x = jnp.concatenate([jnp.broadcast_to(sem, (b, 1, d)), tokens.astype(jnp.float32)], axis=1)
    if key_mask is not None:
      key_mask = jnp.concatenate([jnp.ones((b, 1), bool), key_mask.astype(bool)], axis=1)
    for i in range(self.depth):
      last = i == self.depth - 1
      x = layers.Block(self.heads, self.mlp_ratio, 1e-5, self.dtype, name=f"sem_block_{i}")(
        x, key_mask, 1 if last else None
      )
    x = layers.layer_norm(1e-5, self.dtype, "norm")(x[:, 0])
    if self.out_dim is not None and self.out_dim != d:
      x = layers.dense(self.out_dim, ("embed", None), self.dtype, "out_proj")(x)
    return x


class MeanMlpHead(nn.Module):
  """2024 head: mean over tokens → Linear(D, D) → ReLU → Linear(D, out_dim or D).

  `key_mask` [B, N] (1 = real token) averages only real tokens. PyTorch-default
  initialisation, as the official head (see the module docstring).
  """

  out_dim: int | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    d = tokens.shape[-1]
    tokens = tokens.astype(jnp.float32)
    if key_mask is None:
      x = jnp.mean(tokens, axis=1)
    else:
      w = key_mask.astype(jnp.float32)[..., None]
      x = jnp.sum(tokens * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
    x = nn.relu(torch_dense(d, d, ("embed", "mlp"), self.dtype, "fc1")(x.astype(self.dtype)))
    return torch_dense(self.out_dim or d, d, ("mlp", "embed"), self.dtype, "fc2")(x)


def audio_head(kind: str, out_dim: int, dtype: Dtype, name: str = "audio_proj") -> nn.Module:
  """Audio head by name: "semantic" (2025 default) or "mlp" (2024)."""
  if kind == "semantic":
    return SemanticPooler(out_dim=out_dim, dtype=dtype, name=name)
  if kind == "mlp":
    return MeanMlpHead(out_dim=out_dim, dtype=dtype, name=name)
  raise ValueError(f"unknown clap_head {kind!r}; expected 'semantic' or 'mlp'")


class TextProjection(nn.Module):
  """Linear(d_text → out_dim) on precomputed sentence embeddings; identity when equal.

  PyTorch-default initialisation, as the official `text_proj` (see the module docstring).
  """

  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, text_emb: jax.Array) -> jax.Array:
    if text_emb.shape[-1] == self.out_dim:
      return text_emb
    return torch_dense(self.out_dim, text_emb.shape[-1], (None, "embed"), self.dtype, "proj")(
      text_emb.astype(self.dtype)
    )
