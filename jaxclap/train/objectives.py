"""What each stage trains: its parameters, loss, post-update rule and embeddings.

The one trainer (`loop.py`, `step.py`) calls these; stages differ only here. `params` are
trained by the optimizer; `frozen` are not (stage 1: the EMA target; stage 2: the audio
encoder unless it is fine-tuned).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxclap import losses
from jaxclap.models import features
from jaxclap.audio import frontend as fe
from jaxclap.models import clap, m2d, masks, patches
from jaxclap.text import sentence
from jaxclap.text import tower as text_tower


@dataclasses.dataclass(frozen=True)
class Stage1:
  """M2D + λ·CLAP against precomputed sentence embeddings; EMA target update."""

  model: m2d.M2D
  frontend_cfg: fe.FrontendConfig
  n_frames: int
  clap_weight: float
  clap_grad_divisor: float
  ema_start: float
  ema_end: float
  total_steps: int
  sentence_embedder: Callable[[list[str]], np.ndarray] | None = None  # Zero-shot prompts.
  batch_keys: tuple[str, ...] = ("audio", "audio_len", "text_embedding")

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    return m2d.init_params(self.model, rng, n_frames=self.n_frames,
                           n_mels=self.frontend_cfg.n_mels, text_dim=self.model.text_dim)

  def loss(self, params, frozen, batch, rng, norm_stats):
    return m2d.stage1_loss(params, frozen, batch, rng, model=self.model,
                           frontend_cfg=self.frontend_cfg, norm_stats=norm_stats,
                           clap_weight=self.clap_weight,
                           clap_grad_divisor=self.clap_grad_divisor)

  def after_update(self, params, frozen, step):
    params = m2d.clamp_logit_scale(params)
    decay = m2d.ema_decay(step, self.total_steps, self.ema_start, self.ema_end)
    frozen = m2d.ema_update(frozen, params["encoder"]["body"], decay)
    return params, frozen, {"ema_decay": decay}

  def audio_embed(self, params, frozen, batch, norm_stats):
    x = fe.waveform_input(batch, self.frontend_cfg, norm_stats)
    return features.clap_audio_embedding(params, x, model=self.model)  # Chunks long input.

  def text_embed(self, params, frozen, text_inputs):
    text = self.model.apply({"params": params}, text_inputs["text_embedding"],
                            method=m2d.M2D.project_text)
    return losses.l2_normalize(text.astype(jnp.float32))

  def text_inputs(self, captions: list[str]) -> dict[str, np.ndarray] | None:
    """Host-side text inputs for captions/prompts (None: no sentence model at hand)."""
    if self.sentence_embedder is None:
      return None
    return {"text_embedding": np.asarray(self.sentence_embedder(captions), np.float32)}


@dataclasses.dataclass(frozen=True)
class Stage2:
  """CLAP between the (frozen) stage-1 audio encoder + fresh pooler and a text tower."""

  model: clap.CLAP
  frontend_cfg: fe.FrontendConfig
  n_frames: int
  tokenizer: Callable[[list[str]], dict[str, np.ndarray]]
  init_text: Callable[[jax.Array], Any]  # Pretrained (or fresh) text-tower params.
  # Structured masking: (rows, columns, probability) per batch draw, `masks.stage2_variants`;
  # the drawn counts of whole frequency rows and time columns are dropped per example.
  mask_variants: tuple[tuple[int, int, float], ...] = ((0, 0, 1.0),)
  finetune_audio: bool = False
  batch_keys: tuple[str, ...] = ("audio", "audio_len", "input_ids", "attention_mask")

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    audio_key, text_key = jax.random.split(rng)
    ids = self.tokenizer(["a"])
    x = jnp.zeros((1, self.frontend_cfg.n_mels, self.n_frames), jnp.float32)
    params = dict(self.model.init(audio_key, x, jnp.asarray(ids["input_ids"]),
                                  jnp.asarray(ids["attention_mask"]))["params"])
    params["text_tower"] = self.init_text(text_key)
    if self.finetune_audio:
      return params, {}
    return {k: v for k, v in params.items() if k != "encoder"}, {"encoder": params["encoder"]}

  def _merged(self, params, frozen):
    return {**params, **jax.lax.stop_gradient(frozen)}

  def masked_audio(self, p, x, key) -> tuple[jax.Array, jax.Array]:
    """CLAP audio embeddings [B, C] under this batch's structured mask, and its kept tokens.

    The (rows, columns) variant is drawn per batch (`masks.with_drawn_mask`).
    """
    gf, gt = patches.grid_size(x.shape[1], x.shape[2], self.model.patch_size)
    emb, idx = masks.with_drawn_mask(
        key, self.mask_variants, x.shape[0], (gf, gt),
        lambda keep, _: self.model.apply({"params": p}, x, keep, method=clap.CLAP.audio))
    kept = jnp.asarray([(gf - r) * (gt - c) for r, c, _ in self.mask_variants], jnp.int32)
    return emb, kept[idx]

  def loss(self, params, frozen, batch, rng, norm_stats):
    mask_key, dropout_key = jax.random.split(rng)
    p = self._merged(params, frozen)
    x = fe.waveform_input(batch, self.frontend_cfg, norm_stats)
    audio, kept = self.masked_audio(p, x, mask_key)
    text = self.model.apply({"params": p}, batch["input_ids"], batch["attention_mask"],
                            deterministic=False, method=clap.CLAP.text,
                            rngs={"dropout": dropout_key})
    scale = p["logit_scale"]
    loss = losses.clip_infonce(audio_emb=audio, text_emb=text, logit_scale=scale)
    return loss, {"loss": loss, "loss_clap": loss, "logit_scale": scale,
                  "kept_tokens": kept.astype(jnp.float32)}

  def after_update(self, params, frozen, step):
    del step
    return m2d.clamp_logit_scale(params), frozen, {}

  def audio_embed(self, params, frozen, batch, norm_stats):
    x = fe.waveform_input(batch, self.frontend_cfg, norm_stats)
    emb = self.model.apply({"params": self._merged(params, frozen)}, x, method=clap.CLAP.audio)
    return losses.l2_normalize(emb.astype(jnp.float32))

  def text_embed(self, params, frozen, text_inputs):
    emb = self.model.apply({"params": self._merged(params, frozen)}, text_inputs["input_ids"],
                           text_inputs["attention_mask"], method=clap.CLAP.text)
    return losses.l2_normalize(emb.astype(jnp.float32))

  def text_inputs(self, captions: list[str]) -> dict[str, np.ndarray]:
    return self.tokenizer(captions)


def build(config, *, frontend_cfg: fe.FrontendConfig, total_steps: int, input_frames: int,
          sentence_model: str | None, unit_frames: int | None = None):
  """The objective of `config.stage`; `input_frames` is the stage-1 position-table width,
  `unit_frames` the input length this stage trains on (default: `config.data.crop_frames`)."""
  unit_frames = int(unit_frames or config.data.crop_frames)
  model_cfg = {**config.model.to_dict(), "input_frames": input_frames,
               "unit_frames": unit_frames}
  if config.stage == "stage1":
    embedder = None
    if sentence_model:
      embedder = _lazy_sentence_embedder(sentence_model)
    return Stage1(model=m2d.build_model(model_cfg), frontend_cfg=frontend_cfg,
                  n_frames=config.data.crop_frames, clap_weight=config.train.clap_weight,
                  clap_grad_divisor=config.train.clap_grad_divisor,
                  ema_start=config.train.ema_start, ema_end=config.train.ema_end,
                  total_steps=total_steps, sentence_embedder=embedder)
  dtype = jnp.dtype(config.model.dtype)
  tower, tokenizer, init_text = text_tower.build_text_tower(
      config.text, out_dim=config.model.clap_dim, dtype=dtype)
  model = clap.CLAP(text_tower=tower, size=config.model.size,
                    patch_size=config.model.patch_size, n_mels=frontend_cfg.n_mels,
                    input_frames=input_frames, unit_frames=unit_frames,
                    clap_dim=config.model.clap_dim, dtype=dtype,
                    remat=config.model.remat, pos_table=config.model.pos_table)
  gf, gt = patches.grid_size(frontend_cfg.n_mels, config.data.crop_frames,
                             config.model.patch_size)
  variants = masks.stage2_variants(gf, gt, config.model.structured_mask,
                                   config.model.structured_mask_counts)
  return Stage2(model=model, frontend_cfg=frontend_cfg, n_frames=config.data.crop_frames,
                tokenizer=tokenizer, init_text=init_text, mask_variants=variants,
                finetune_audio=config.model.finetune_audio)


def _lazy_sentence_embedder(name: str) -> Callable[[list[str]], np.ndarray]:
  """Loads the dataset's sentence model on first use (zero-shot prompts of stage 1)."""
  cache: dict[str, Any] = {}

  def embed(texts: list[str]) -> np.ndarray:
    if "model" not in cache:
      cache["model"] = sentence.load_sentence_embedder(name)
    return cache["model"].embed(texts)

  return embed
