"""CLAP projection heads: audio tokens → audio embedding, sentence embedding → text space."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxclap.models import vit

Dtype = vit.Dtype


class SemanticPooler(nn.Module):
  """2025 head: a learnable "semantic token" (init 0, no position) + 1 block + LayerNorm.

  Returns the semantic token's output [B, D]. The optional `out_dim` projection exists only
  when the CLAP space differs from the encoder width (not in the official models).
  """

  heads: int = 1
  depth: int = 1
  mlp_ratio: float = 1.0
  out_dim: int | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    b, _, d = tokens.shape
    sem = self.param("sem_token", nn.with_logical_partitioning(nn.initializers.zeros,
                                                               (None, None, "embed")),
                     (1, 1, d), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(sem.astype(self.dtype), (b, 1, d)),
                         tokens.astype(self.dtype)], axis=1)
    for i in range(self.depth):
      x = vit.Block(self.heads, self.mlp_ratio, 1e-5, self.dtype, name=f"sem_block_{i}")(x)
    x = vit.layer_norm(1e-5, self.dtype, "norm")(x[:, 0])
    if self.out_dim is not None and self.out_dim != d:
      x = vit.dense(self.out_dim, ("embed", None), self.dtype, "out_proj")(x)
    return x


class MeanMlpHead(nn.Module):
  """2024 head: mean over tokens → Linear(D, D) → ReLU → Linear(D, out_dim or D)."""

  out_dim: int | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    d = tokens.shape[-1]
    x = jnp.mean(tokens.astype(jnp.float32), axis=1).astype(self.dtype)
    x = nn.relu(vit.dense(d, ("embed", "mlp"), self.dtype, "fc1")(x))
    return vit.dense(self.out_dim or d, ("mlp", "embed"), self.dtype, "fc2")(x)


def audio_head(kind: str, out_dim: int, dtype: Dtype, name: str = "audio_proj") -> nn.Module:
  """Audio head by name: "semantic" (2025 default) or "mlp" (2024)."""
  if kind == "semantic":
    return SemanticPooler(out_dim=out_dim, dtype=dtype, name=name)
  if kind == "mlp":
    return MeanMlpHead(out_dim=out_dim, dtype=dtype, name=name)
  raise ValueError(f"unknown clap_head {kind!r}; expected 'semantic' or 'mlp'")


class TextProjection(nn.Module):
  """Linear(d_text → out_dim) on precomputed sentence embeddings; identity when equal."""

  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, text_emb: jax.Array) -> jax.Array:
    if text_emb.shape[-1] == self.out_dim:
      return text_emb
    return vit.dense(self.out_dim, (None, "embed"), self.dtype, "proj")(
        text_emb.astype(self.dtype))
