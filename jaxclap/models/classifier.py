"""The fine-tuning network: the pre-trained ViT encoder under a BatchNorm + Linear head.

Input length: training crops of `unit_frames` frames; the encoder's position table is
resized from its trained width to the crop's columns (bicubic, `patches.fit_pos_embed`),
shorter input takes its first columns. Whole clips are cut into `unit_frames` chunks (the
last one zero-padded to a whole unit) that the shared chunked encoder
(`patches.encode_chunks`) runs as one batch; the head averages only the time patches that
hold audio.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxclap.models import patches, sizes, vit


class FinetuneNet(nn.Module):
  """Pre-trained ViT encoder + BatchNorm (no scale/bias) + Linear on the pooled feature."""

  size: str
  num_classes: int
  patch_size: patches.Patch = 16  # Square side, or (freq, time) as the encoder's.
  n_mels: int = 80
  input_frames: int = 608  # Width of the pre-trained position table (frames).
  unit_frames: int = 608  # Fine-tuning input length: the table is fitted to it.
  head_input: str = "frames"  # "frames" (F'·D) or "tokens" (D); see augment.mask_counts.
  bn_momentum: float = 0.9
  head_init_std: float = 0.01
  dtype: vit.Dtype = jnp.float32
  pos_table: str = "sincos"  # The encoder's table kind (vit.ViTEncoder.pos_table).

  def setup(self):
    self.encoder = vit.ViTEncoder.of_model(self)
    self.norm = nn.BatchNorm(
      momentum=self.bn_momentum, epsilon=1e-5, use_bias=False, use_scale=False
    )
    self.classifier = nn.Dense(
      self.num_classes,
      kernel_init=nn.initializers.normal(self.head_init_std),
      bias_init=nn.initializers.zeros,
    )

  def tokens(self, x: jax.Array, keep: jax.Array | None = None) -> jax.Array:
    """Normalised log-mel [B, F, t ≤ unit] → encoded patch tokens [B, K, D] (no cls)."""
    if x.shape[1] != self.n_mels:
      raise ValueError(f"FinetuneNet: expected {self.n_mels} mel bins, got input {x.shape}")
    gf, gt = patches.grid_size(x.shape[1], x.shape[2], self.patch_size)
    unit_t = self.unit_frames // patches.hw(self.patch_size)[1]
    if gt > unit_t:
      raise ValueError(
        f"FinetuneNet.tokens: {x.shape[2]} frames exceed the unit length "
        f"{self.unit_frames}; encode in chunks"
      )
    table = self.encoder.pos_embed((gf, unit_t)).reshape(gf, unit_t, -1)[:, :gt]
    tok = self.encoder.patch_embed(patches.patchify(x.astype(self.dtype), self.patch_size))
    tok = tok + table.reshape(gf * gt, -1).astype(tok.dtype)
    if keep is not None:
      tok = jnp.take_along_axis(tok, keep[..., None], axis=1)
    return self.encoder.encode_tokens(tok)[:, 1:]

  def features(
    self,
    x: jax.Array,
    valid_frames: jax.Array,
    keep: jax.Array | None = None,
    kept_grid: tuple[int, int] | None = None,
  ) -> jax.Array:
    """Head input [B, F'·D] ("frames") or [B, D] ("tokens"): the mean over the time
    patches that hold audio (frame < valid_frames) of the kept tokens.

    `keep` [B, rows·cols] sorted token indices of a `kept_grid` = (rows, cols) sub-grid
    (structured masking; x is one crop); None encodes all of x in unit-length chunks.
    """
    b, d = x.shape[0], sizes.get_size(self.size).width
    ph, pw = patches.hw(self.patch_size)
    gf = x.shape[1] // ph
    if keep is not None:
      rows, cols = kept_grid
      grid = self.tokens(x, keep).reshape(b, rows, cols, d)
      start = (keep[:, :cols] % (x.shape[2] // pw)) * pw  # First frame of each kept column.
    else:
      # Whole unit-length chunks go through the encoder as one batch; padded patches get
      # no weight below.
      unit, t = self.unit_frames, self.unit_frames // pw
      chunks = patches.encode_chunks(self.tokens, x, unit, self.patch_size, one_batch=True)
      grid = jnp.concatenate([c.reshape(b, gf, t, d) for c in chunks], axis=2)
      starts = (unit * np.arange(len(chunks))[:, None] + pw * np.arange(t)[None, :]).reshape(-1)
      start = jnp.broadcast_to(jnp.asarray(starts), (b, starts.size))
    w = (start < valid_frames[:, None]).astype(jnp.float32)
    w = jnp.where(jnp.sum(w, axis=1, keepdims=True) > 0, w, 1.0)  # No audio: plain mean.
    pooled = (
      jnp.einsum("brtd,bt->brd", grid.astype(jnp.float32), w) / jnp.sum(w, axis=1)[:, None, None]
    )
    if self.head_input == "tokens":
      return jnp.mean(pooled, axis=1)
    return pooled.reshape(b, -1)

  def head(self, feature: jax.Array, train: bool) -> jax.Array:
    """BatchNorm (batch statistics when training, running ones otherwise) → logits."""
    return self.classifier(self.norm(feature, use_running_average=not train))

  def __call__(
    self,
    x: jax.Array,
    valid_frames: jax.Array,
    keep: jax.Array | None = None,
    kept_grid: tuple[int, int] | None = None,
    *,
    train: bool = False,
  ) -> jax.Array:
    return self.head(self.features(x, valid_frames, keep, kept_grid), train)


def fresh_head(net: FinetuneNet, seed: int, width: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """(classifier {kernel, bias}, batch_stats {norm: {mean, var}}) of a new head on a
  `width`-d feature: the kernel drawn from N(0, head_init_std²) with `seed`, bias 0,
  BatchNorm statistics mean 0, var 1."""
  kernel = nn.initializers.normal(net.head_init_std)(
    jax.random.key(seed), (width, net.num_classes), jnp.float32
  )
  head = {"kernel": kernel, "bias": jnp.zeros((net.num_classes,), jnp.float32)}
  stats = {"norm": {"mean": jnp.zeros(width, jnp.float32), "var": jnp.ones(width, jnp.float32)}}
  return head, stats


def init_variables(net: FinetuneNet, encoder_params: Any, seed: int) -> tuple[Any, Any]:
  """(params, batch_stats): a fresh head on the pre-trained encoder parameters.

  The head is drawn directly (the network is only traced for its shapes: compiling its
  init would cost as much as a training step).
  """
  shapes = jax.eval_shape(
    lambda r: net.init(
      r, jnp.zeros((2, net.n_mels, net.unit_frames)), jnp.full((2,), net.unit_frames)
    ),
    jax.random.key(seed),
  )
  shapes = nn.unbox(shapes)
  have = jax.tree_util.tree_map(np.shape, encoder_params)
  if jax.tree_util.tree_map(lambda a: a.shape, shapes["params"]["encoder"]) != have:
    raise ValueError(f"checkpoint encoder parameters do not fit a {net.size!r} ViT encoder")
  head, stats = fresh_head(net, seed, shapes["params"]["classifier"]["kernel"].shape[0])
  params = {
    # Copies: the step donates its inputs, which must not alias the caller's arrays.
    "encoder": jax.tree_util.tree_map(jnp.array, encoder_params),
    "classifier": head,
  }
  expected = jax.tree_util.tree_map(lambda a: a.shape, {**shapes["params"]})
  if jax.tree_util.tree_map(np.shape, params) != expected or jax.tree_util.tree_map(
    np.shape, stats
  ) != jax.tree_util.tree_map(lambda a: a.shape, shapes["batch_stats"]):
    raise AssertionError("FinetuneNet's head layout changed; update init_variables")
  return params, stats
