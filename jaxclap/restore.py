"""A trained model back from a jaxclap checkpoint: the network, its params and its facts.

Inference, evaluation, fine-tuning and conversion all start here. The checkpoint's
metadata (config, norm_stats, stage, position-table width, sentence model) rebuilds the
exact network that was trained; nothing is taken from the caller's config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxclap.audio import frontend as fe
from jaxclap.train import config as config_lib
from jaxclap.train import handoff
from jaxclap.train import objectives


@dataclasses.dataclass(frozen=True)
class Restored:
  """A trained network and what is needed to feed it."""

  stage: str  # "stage1" (M2D + CLAP heads) or "stage2" (CLAP with a text tower).
  step: int  # Updates applied when the checkpoint was written.
  config: ml_collections.ConfigDict  # The run's config, as saved.
  meta: dict[str, Any]  # The run metadata (norm_stats, text_models, input_frames, ...).
  objective: Any  # objectives.Stage1 | Stage2: model, text_inputs/text_embed.
  params: dict[str, Any]  # Everything `objective.model` applies (numpy arrays).
  target: dict[str, Any] | None  # Stage 1: the EMA target body; else None.
  frontend_cfg: fe.FrontendConfig
  norm_stats: tuple[float, float]  # Log-mel (mean, std) the encoder was trained with.
  source: str  # The checkpoint step directory.

  @property
  def model(self) -> nn.Module:
    """The Flax module (M2D or CLAP); `encode`/`project_audio` work on both."""
    return self.objective.model

  @property
  def sentence_model(self) -> str | None:
    """Stage 1: the sentence model whose embeddings the text head was trained on."""
    return _sentence_model(self.meta)


def _sentence_model(meta: dict[str, Any]) -> str | None:
  """The (first) sentence model of the run's datasets, from its metadata."""
  models = sorted(set((meta.get("text_models") or {}).values()))
  return models[0] if models else None


def config_from_meta(meta: dict[str, Any], where: str) -> ml_collections.ConfigDict:
  """The saved run config, overlaid on today's defaults (new knobs keep their default)."""
  if "config" not in meta:
    raise ValueError(f"{where}: checkpoint metadata has no 'config'; not written by jaxclap")
  config = config_lib.base_config()
  saved = meta["config"]
  config.stage = saved.get("stage", "stage1")
  with config.unlocked():
    _overlay(config, saved)
  return config


def _overlay(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> None:
  for key, value in saved.items():
    if key not in config:
      continue  # A knob that no longer exists: ignore, the model keys are checked below.
    if isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
      _overlay(config[key], value)
    else:
      config[key] = tuple(value) if isinstance(value, list) and isinstance(
          config[key], tuple) else value


def restore(path: str, *, text_model: str | None = None) -> Restored:
  """Loads a workdir, its checkpoints dir or one step dir (latest complete step).

  `text_model` overrides the stage-2 text tower's folder (tokenizer and config) when the
  path saved in the checkpoint is not present on this machine.
  """
  state, meta, source = handoff.load(path)
  config = config_from_meta(meta, source)
  if text_model:
    config.text.model = text_model
  fcfg = fe.FrontendConfig.for_sample_rate(config.frontend.sample_rate)
  input_frames = int(meta.get("input_frames", config.data.crop_frames))
  # The grid the model was trained on (its last stage's crop): inference and export use it.
  unit_frames = int(meta.get("unit_frames", config.data.crop_frames))
  objective = objectives.build(config, frontend_cfg=fcfg,
                               total_steps=int(meta.get("total_steps", 1)),
                               input_frames=input_frames, sentence_model=_sentence_model(meta),
                               unit_frames=unit_frames)
  params, frozen = state["params"], state["frozen"]
  if config.stage == "stage1":
    merged, target = dict(params), dict(frozen)
  else:
    merged, target = {**frozen, **params}, None
  _check_tree(objective, merged, source)
  return Restored(stage=config.stage, step=int(np.asarray(state["step"])), config=config,
                  meta=meta, objective=objective, params=merged, target=target,
                  frontend_cfg=fcfg,
                  norm_stats=tuple(float(x) for x in np.asarray(state["norm_stats"])),
                  source=source)


def _check_tree(objective: Any, params: dict[str, Any], source: str) -> None:
  """Saved params must match the rebuilt network exactly (names and shapes)."""
  params_shape, frozen_shape = jax.eval_shape(objective.init, jax.random.key(0))
  expected = ({**frozen_shape, **params_shape} if isinstance(objective, objectives.Stage2)
              else dict(params_shape))
  problems = handoff.mismatches(nn.unbox(expected), params, "params")
  if problems:
    raise ValueError(f"{source}: parameters do not match the network its config describes: "
                     + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else ""))
