"""A trained model back from a jaxclap checkpoint: the network, its params and its facts.

Inference, evaluation, fine-tuning and conversion all start here. The checkpoint's
metadata (config, norm_stats, stage, position-table width, sentence model) and, for stage 2,
its text tower's architecture and tokenizer rebuild the exact network that was trained
(`models.network`); nothing is taken from the caller's config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxclap.audio import frontend as fe
from jaxclap.models import network as network_lib
from jaxclap.run_meta import RunMeta
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import config as config_lib
from jaxclap.train import handoff


@dataclasses.dataclass(frozen=True)
class Restored:
  """A trained network and what is needed to feed it."""

  stage: str  # "stage1" (M2D + CLAP heads) or "stage2" (CLAP with a text tower).
  step: int  # Updates applied when the checkpoint was written.
  config: ml_collections.ConfigDict  # The run's config, as saved.
  meta: RunMeta  # The run metadata (norm_stats, text_models, input_frames, ...).
  network: network_lib.Network  # model, init, text_inputs/text_embed.
  params: dict[str, Any]  # Everything `network.model` applies (numpy arrays).
  target: dict[str, Any] | None  # Stage 1: the EMA target body; else None.
  frontend_cfg: fe.FrontendConfig
  norm_stats: tuple[float, float]  # Log-mel (mean, std) the encoder was trained with.
  source: str  # The checkpoint step directory.

  @property
  def model(self) -> nn.Module:
    """The Flax module (M2D or CLAP); `encode`/`project_audio` work on both."""
    return self.network.model

  @property
  def sentence_model(self) -> str | None:
    """Stage 1: the sentence model whose embeddings the text head was trained on."""
    return self.meta.sentence_model


def restore(path: str, *, text_model: str | None = None) -> Restored:
  """Loads a workdir, its checkpoints dir or one step dir (latest complete step).

  A stage-2 checkpoint holds its text tower's architecture and tokenizer; one written before
  they were saved reads them from the folder the config names, or from `text_model` when
  that folder is not present on this machine.
  """
  saved = ckpt.load(path)
  meta, source, state = saved.meta, saved.source, saved.state
  config = config_lib.config_from_meta(meta, source)
  if text_model:
    config.text.model = text_model
  network = network_lib.build(config, meta, text_assets=saved.text)
  params, frozen = state["params"], state["frozen"]
  if config.stage == "stage1":
    merged, target = dict(params), dict(frozen)
  else:
    merged, target = {**frozen, **params}, None
  _check_tree(network, merged, source)
  return Restored(
    stage=config.stage,
    step=int(np.asarray(state["step"])),
    config=config,
    meta=meta,
    network=network,
    params=merged,
    target=target,
    frontend_cfg=network.frontend_cfg,
    norm_stats=tuple(float(x) for x in np.asarray(state["norm_stats"])),
    source=source,
  )


def _check_tree(network: network_lib.Network, params: dict[str, Any], source: str) -> None:
  """Saved params must match the rebuilt network exactly (names and shapes)."""
  params_shape, frozen_shape = jax.eval_shape(network.init, jax.random.key(0))
  expected = (
    {**frozen_shape, **params_shape}
    if isinstance(network, network_lib.CLAPNetwork)
    else dict(params_shape)
  )
  problems = handoff.mismatches(nn.unbox(expected), params, "params")
  if problems:
    raise ValueError(
      f"{source}: parameters do not match the network its config describes: "
      + "; ".join(problems[:10])
      + (" ..." if len(problems) > 10 else "")
    )
