"""What each stage trains: its loss, post-update rule and embeddings.

The one trainer (`loop.py`, `step.py`) calls these; stages differ only here. The network
comes from `models/network.py`; `params` are trained by the optimizer, `frozen` are not
(stage 1: the EMA target; stage 2: the audio encoder unless it is fine-tuned).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxclap import losses
from jaxclap.audio import frontend as fe
from jaxclap.models import clap, features, m2d, masks, patches
from jaxclap.models import network as network_lib
from jaxclap.run_meta import RunMeta


@dataclasses.dataclass(frozen=True)
class _Objective:
  """What every stage takes from its network: the model, initial parameters, text side."""

  net: network_lib.Network

  @property
  def model(self) -> Any:
    return self.net.model

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    return self.net.init(rng)

  def text_embed(self, params, frozen, text_inputs):
    return self.net.text_embed(params, frozen, text_inputs)

  def text_inputs(self, captions: list[str]) -> dict[str, np.ndarray] | None:
    return self.net.text_inputs(captions)


@dataclasses.dataclass(frozen=True)
class Stage1(_Objective):
  """M2D + λ·CLAP against precomputed sentence embeddings; EMA target update."""

  net: network_lib.M2DNetwork
  clap_weight: float
  clap_grad_divisor: float
  ema_start: float
  ema_end: float
  total_steps: int
  batch_keys: tuple[str, ...] = ("audio", "audio_len", "caption_embedding")

  def loss(self, params, frozen, batch, rng, norm_stats):
    return stage1_loss(
      params,
      frozen,
      batch,
      rng,
      model=self.model,
      frontend_cfg=self.net.frontend_cfg,
      norm_stats=norm_stats,
      clap_weight=self.clap_weight,
      clap_grad_divisor=self.clap_grad_divisor,
    )

  def after_update(self, params, frozen, step):
    params = clamp_logit_scale(params)
    decay = ema_decay(step, self.total_steps, self.ema_start, self.ema_end)
    frozen = ema_update(frozen, params["encoder"]["body"], decay)
    return params, frozen, {"ema_decay": decay}

  def audio_embed(self, params, frozen, batch, norm_stats):
    x = fe.waveform_input(batch, self.net.frontend_cfg, norm_stats)
    return features.clap_audio_embedding(params, x, model=self.model)  # Chunks long input.


@dataclasses.dataclass(frozen=True)
class Stage2(_Objective):
  """CLAP between the (frozen) stage-1 audio encoder + fresh pooler and a text tower."""

  net: network_lib.CLAPNetwork
  # Structured masking: (rows, columns, probability) per batch draw, `masks.stage2_variants`;
  # the drawn counts of whole frequency rows and time columns are dropped per example.
  mask_variants: tuple[tuple[int, int, float], ...] = ((0, 0, 1.0),)
  batch_keys: tuple[str, ...] = ("audio", "audio_len", "input_ids", "attention_mask")

  def masked_audio(self, p, x, key) -> tuple[jax.Array, jax.Array]:
    """CLAP audio embeddings [B, C] under this batch's structured mask, and its kept tokens.

    The (rows, columns) variant is drawn per batch (`masks.with_drawn_mask`).
    """
    gf, gt = patches.grid_size(x.shape[1], x.shape[2], self.model.patch_size)
    emb, idx = masks.with_drawn_mask(
      key,
      self.mask_variants,
      x.shape[0],
      (gf, gt),
      lambda keep, _: self.model.apply({"params": p}, x, keep, method=clap.CLAP.audio),
    )
    kept = jnp.asarray([(gf - r) * (gt - c) for r, c, _ in self.mask_variants], jnp.int32)
    return emb, kept[idx]

  def loss(self, params, frozen, batch, rng, norm_stats):
    mask_key, dropout_key = jax.random.split(rng)
    p = self.net.merged(params, frozen)
    x = fe.waveform_input(batch, self.net.frontend_cfg, norm_stats)
    audio, kept = self.masked_audio(p, x, mask_key)
    text = self.model.apply(
      {"params": p},
      batch["input_ids"],
      batch["attention_mask"],
      deterministic=False,
      method=clap.CLAP.text,
      rngs={"dropout": dropout_key},
    )
    scale = p["logit_scale"]
    loss = losses.clip_infonce(audio_emb=audio, text_emb=text, logit_scale=scale)
    return loss, {
      "loss": loss,
      "loss_clap": loss,
      "logit_scale": scale,
      "kept_tokens": kept.astype(jnp.float32),
    }

  def after_update(self, params, frozen, step):
    del step
    return clamp_logit_scale(params), frozen, {}

  def audio_embed(self, params, frozen, batch, norm_stats):
    x = fe.waveform_input(batch, self.net.frontend_cfg, norm_stats)
    emb = self.model.apply({"params": self.net.merged(params, frozen)}, x, method=clap.CLAP.audio)
    return losses.l2_normalize(emb.astype(jnp.float32))


def build(
  config: ml_collections.ConfigDict, meta: RunMeta, *, sentence_model: str | None = None
) -> Stage1 | Stage2:
  """The objective of `config.stage` on the network `models.network` makes of (config, meta);
  `meta.total_steps` sets stage 1's EMA schedule."""
  net = network_lib.build(config, meta, sentence_model=sentence_model)
  if config.stage == "stage1":
    return Stage1(
      net=net,
      clap_weight=config.train.clap_weight,
      clap_grad_divisor=config.train.clap_grad_divisor,
      ema_start=config.train.ema_start,
      ema_end=config.train.ema_end,
      total_steps=int(meta.total_steps or 1),
    )
  gf, gt = patches.grid_size(
    net.frontend_cfg.n_mels, config.data.crop_frames, patches.of_config(config.model)
  )
  variants = masks.stage2_variants(
    gf, gt, config.model.structured_mask, config.model.structured_mask_counts
  )
  return Stage2(net=net, mask_variants=variants)


# ----------------------------------------------------------------------------------------------
# The stage-1 loss and the update rules the stages apply after each optimizer step.


def stage1_loss(
  online: Any,
  target: Any,
  batch: Mapping[str, jax.Array],
  rng: jax.Array,
  *,
  model: m2d.M2D,
  frontend_cfg: fe.FrontendConfig,
  norm_stats: Sequence[float],
  clap_weight: float = 0.01,
  clap_grad_divisor: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Stage-1 loss: norm_mse(prediction, EMA target) + clap_weight · symmetric InfoNCE.

  `clap_grad_divisor` k divides the CLAP gradient that flows through the audio and text
  embeddings (not the one reaching `logit_scale`) by k, leaving every value unchanged: the
  official DDP run gathers the other ranks' embeddings without a gradient path and averages
  gradients over its k GPUs, which is exactly this (see configs/stage1.py).
  """
  x = fe.waveform_input(batch, frontend_cfg, norm_stats)
  grid = patches.grid_size(x.shape[1], x.shape[2], model.patch_size)
  visible_idx, masked_idx = m2d.sample_masks(rng, x.shape[0], grid[0] * grid[1], model.mask_ratio)
  out = model.apply(
    {"params": online},
    x,
    visible_idx,
    masked_idx,
    batch["caption_embedding"],
    method=m2d.M2D.stage1,
  )
  target_out = m2d.target_body(model).apply(
    {"params": target}, jax.lax.stop_gradient(out["target_in"])
  )
  loss_m2d = losses.norm_mse(pred=out["pred"], target=jax.lax.stop_gradient(target_out[:, 1:]))
  feature_scale = 1.0 / clap_grad_divisor
  loss_clap = losses.clip_infonce(
    audio_emb=losses.scale_gradient(out["audio_emb"], feature_scale),
    text_emb=losses.scale_gradient(out["text_emb"], feature_scale),
    logit_scale=out["logit_scale"],
  )
  loss = loss_m2d + clap_weight * loss_clap
  return loss, {
    "loss": loss,
    "loss_m2d": loss_m2d,
    "loss_clap": loss_clap,
    "logit_scale": out["logit_scale"],
  }


def ema_decay(
  step: jax.Array, total_steps: int, start: float = 0.99995, end: float = 0.99999
) -> jax.Array:
  """EMA decay rising linearly from `start` (update 0) to `end` (update total_steps − 1).

  As the official `ema_decay_sched`: interp = step / (total_steps − 1), where `step` counts
  updates from 0 (the train step passes the pre-increment step). A 1-step run, where the
  official formula divides by zero, uses `start`; steps past the end stay at `end`.
  """
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps - 1, 1), 0.0, 1.0)
  return start + (end - start) * frac


def ema_update(target: Any, online_encoder_body: Any, decay: jax.Array) -> Any:
  """target ← decay · target + (1 − decay) · online body (same tree structure)."""
  return jax.tree.map(lambda t, o: decay * t + (1.0 - decay) * o, target, online_encoder_body)


def clamp_logit_scale(online: dict) -> dict:
  """Clamp the CLAP log scale to [0, log 100] (after each optimizer update)."""
  clamp = lambda s: jnp.clip(s, 0.0, m2d.LOGIT_SCALE_MAX)
  return {**online, "logit_scale": jax.tree.map(clamp, online["logit_scale"])}
