"""The network of a stage, built from a run config and its metadata.

Training, restore, conversion and fine-tuning all build through `build`: stage 1 is M2D
(with its CLAP heads), stage 2 is CLAP with a text tower and its tokenizer. The metadata
says what the config does not: the position table's width and kind, the input grid the
run trained on and the sentence model of the stage-1 data. `params` and `frozen` split the
parameters as training does (stage 1: online and EMA target; stage 2: all but the audio
encoder, and the audio encoder unless it is fine-tuned).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxclap import losses
from jaxclap.audio import frontend as fe
from jaxclap.models import clap, m2d, patches
from jaxclap.run_meta import RunMeta
from jaxclap.text import sentence
from jaxclap.text import tower as text_tower
from jaxclap.text.assets import TextAssets


@dataclasses.dataclass(frozen=True)
class M2DNetwork:
  """Stage 1: M2D, and the sentence model that feeds its text head (prompts)."""

  model: m2d.M2D
  frontend_cfg: fe.FrontendConfig
  n_frames: int  # Input frames the parameters are initialised with (the training crop).
  sentence_embedder: Callable[[list[str]], np.ndarray] | None = None

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    """(online params, EMA target), boxed with logical axis names."""
    return m2d.init_params(
      self.model,
      rng,
      n_frames=self.n_frames,
      n_mels=self.frontend_cfg.n_mels,
      text_dim=self.model.text_dim,
    )

  def text_inputs(self, captions: list[str]) -> dict[str, np.ndarray] | None:
    """Host-side text inputs for captions/prompts (None: no sentence model at hand)."""
    if self.sentence_embedder is None:
      return None
    return {"caption_embedding": np.asarray(self.sentence_embedder(captions), np.float32)}

  def text_embed(self, params, frozen, text_inputs) -> jax.Array:
    """L2-normalised CLAP text embeddings [N, C]."""
    del frozen
    text = self.model.apply(
      {"params": params}, text_inputs["caption_embedding"], method=m2d.M2D.project_text
    )
    return losses.l2_normalize(text.astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class CLAPNetwork:
  """Stage 2: CLAP with its text tower and tokenizer."""

  model: clap.CLAP
  frontend_cfg: fe.FrontendConfig
  n_frames: int
  tokenizer: Callable[[list[str]], dict[str, np.ndarray]]
  init_text: Callable[[jax.Array], Any]  # Pretrained (or fresh) text-tower params.
  finetune_audio: bool = False  # The audio encoder is trained (else frozen).
  restored_assets: TextAssets | None = None  # The checkpoint's, when built by restore.

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    """(trained params, frozen params), boxed with logical axis names."""
    audio_key, text_key = jax.random.split(rng)
    ids = self.tokenizer(["a"])
    x = jnp.zeros((1, self.frontend_cfg.n_mels, self.n_frames), jnp.float32)
    params = dict(
      self.model.init(
        audio_key, x, jnp.asarray(ids["input_ids"]), jnp.asarray(ids["attention_mask"])
      )["params"]
    )
    params["text_tower"] = self.init_text(text_key)
    if self.finetune_audio:
      return params, {}
    return {k: v for k, v in params.items() if k != "encoder"}, {"encoder": params["encoder"]}

  def text_inputs(self, captions: list[str]) -> dict[str, np.ndarray]:
    return self.tokenizer(captions)

  def text_assets(self) -> TextAssets:
    """The tower's architecture and tokenizer, saved with every stage-2 checkpoint."""
    return self.restored_assets or TextAssets.of(self.model.text_tower, self.tokenizer)

  def merged(self, params, frozen) -> dict[str, Any]:
    """The model's whole parameter tree; the frozen part passes no gradient."""
    return {**params, **jax.lax.stop_gradient(frozen)}

  def text_embed(self, params, frozen, text_inputs) -> jax.Array:
    """L2-normalised CLAP text embeddings [N, C]."""
    emb = self.model.apply(
      {"params": self.merged(params, frozen)},
      text_inputs["input_ids"],
      text_inputs["attention_mask"],
      method=clap.CLAP.text,
    )
    return losses.l2_normalize(emb.astype(jnp.float32))


Network = M2DNetwork | CLAPNetwork


def build(
  config: ml_collections.ConfigDict,
  meta: RunMeta,
  *,
  text_assets: TextAssets | None = None,
  sentence_model: str | None = None,
) -> Network:
  """The network of `config.stage` as `meta` describes it.

  `text_assets` (stage 2, a restored checkpoint's): the text tower's architecture and
  tokenizer, so the pretrained folder is not read. `sentence_model` overrides the one
  `meta.text_models` names (stage 1).
  """
  fcfg = fe.FrontendConfig.for_sample_rate(config.frontend.sample_rate)
  input_frames, unit_frames = meta.frames(config.data.crop_frames)
  pos_table = meta.pos_table or config.model.pos_table  # The meta's: inherited or imported.
  if config.stage == "stage1":
    model_cfg = {
      **config.model.to_dict(),
      "input_frames": input_frames,
      "unit_frames": unit_frames,
      "pos_table": pos_table,
    }
    name = sentence_model or meta.sentence_model
    return M2DNetwork(
      model=m2d.build_model(model_cfg),
      frontend_cfg=fcfg,
      n_frames=config.data.crop_frames,
      sentence_embedder=_lazy_sentence_embedder(name, meta.text_runtime) if name else None,
    )
  dtype = jnp.dtype(config.model.dtype)
  tower, tokenizer, init_text = text_tower.build_text_tower(
    config.text, out_dim=config.model.clap_dim, dtype=dtype, assets=text_assets
  )
  model = clap.CLAP(
    text_tower=tower,
    size=config.model.size,
    patch_size=patches.of_config(config.model),
    n_mels=fcfg.n_mels,
    input_frames=input_frames,
    unit_frames=unit_frames,
    clap_dim=config.model.clap_dim,
    dtype=dtype,
    remat=config.model.remat,
    pos_table=pos_table,
  )
  return CLAPNetwork(
    model=model,
    frontend_cfg=fcfg,
    n_frames=config.data.crop_frames,
    tokenizer=tokenizer,
    init_text=init_text,
    finetune_audio=config.model.finetune_audio,
    restored_assets=text_assets,
  )


def _lazy_sentence_embedder(
  name: str, runtime: dict[str, Any] | None = None
) -> Callable[[list[str]], np.ndarray]:
  """Loads the dataset's sentence model on first use (zero-shot prompts of stage 1), in the
  runtime that embedded the captions (`RunMeta.text_runtime`; default: 'auto')."""
  runtime = runtime or {}
  backend = runtime.get("backend") if runtime.get("backend") in ("jax", "st") else "auto"
  kwargs = {"trust_remote_code": True} if runtime.get("trust_remote_code") else {}
  cache: dict[str, Any] = {}

  def embed(texts: list[str]) -> np.ndarray:
    if "model" not in cache:
      cache["model"] = sentence.load_sentence_embedder(name, backend, **kwargs)
    return cache["model"].embed(texts)

  return embed
