"""A fine-tuned encoder as a jaxclap Orbax workdir (stage 1.1, the start of stage 2).

Layout: `<workdir>/checkpoints/<last step>/{state,meta}` (the best epoch's parameters,
written when the run ends; meta["finetune"] names the best step), the checkpoint kind that
`convert.from_torch` writes, so `jaxclap.load`, a later stage's `init.workdir` and
`python -m jaxclap.convert to_torch` read it:

  state = {"step", "params", "frozen", "rng", "norm_stats", "bad_step", "head"}

`params`/`frozen` are the starting checkpoint's tree (stage 1: predictor, CLAP heads,
logit scale, EMA target; stage 2: its text side) with the fine-tuned encoder in place.
The encoder's position table is written as a stored parameter (model.pos_table="stored")
fitted to the fine-tuning input (as the official 80x1001 release, resized bicubically
from 38 to 62 columns), and meta's input_frames/unit_frames are that input's frames.
`head` = {"classifier": {"kernel" [d, classes], "bias"}, "batch_stats": {"norm": {"mean",
"var"}}} is the classifier (BatchNorm running statistics + Linear) of the same epoch; the
other readers ignore it, `eval.finetune_task.load_classifier` rebuilds the whole classifier.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxclap.models import patches
from jaxclap.run_meta import RunMeta
from jaxclap.train import checkpoint as ckpt

HEAD = "head"  # State item holding the classifier head and its BatchNorm statistics.


def _host(tree: Any) -> Any:
  return jax.tree_util.tree_map(lambda a: np.array(a, copy=True), tree)


def stored_encoder(net: Any, encoder_params: dict[str, Any]) -> dict[str, Any]:
  """Encoder params with the position table fine-tuning used (fitted to the unit's grid)
  as a stored `pos_embed` [F'·T', D]: a pos_table="stored" encoder of `net.unit_frames`."""
  grid = patches.grid_size(net.n_mels, net.unit_frames, net.patch_size)
  table = net.apply(
    {"params": {"encoder": encoder_params}}, method=lambda m: m.encoder.pos_embed(grid)
  )
  return {**_host(encoder_params), "pos_embed": np.asarray(table, np.float32)}


def _source_trees(saved: ckpt.Saved, stage: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
  """(everything the source network applies, stage 1's EMA target or None) of a checkpoint."""
  params, frozen = saved.state["params"], saved.state["frozen"]
  if stage == "stage1":
    return dict(params), dict(frozen)
  return {**frozen, **params}, None


def write(
  workdir: str,
  *,
  saved: ckpt.Saved,
  source_config: ml_collections.ConfigDict,
  network: Any,
  net: Any,
  params: dict[str, Any],
  batch_stats: dict[str, Any],
  step: int,
  facts: dict[str, Any],
) -> str:
  """Writes the fine-tuned `params`/`batch_stats` over the checkpoint `saved` (its config
  `source_config`, its network `network`) as step `step`; returns the step dir.

  `facts` goes to meta["finetune"] (dataset, scores, best epoch, ...).
  """
  config = ml_collections.ConfigDict(source_config.to_dict())
  config.model.pos_table = "stored"
  stage = config.stage
  merged, target = _source_trees(saved, stage)
  tree = {**_host(merged), "encoder": stored_encoder(net, params["encoder"])}
  if stage == "stage1":
    trained, frozen = tree, _host(target)
  else:  # Stage 2 keeps its own split (the audio encoder is frozen unless finetune_audio).
    want_params, want_frozen = jax.eval_shape(network.init, jax.random.key(0))
    trained = {k: tree[k] for k in want_params}
    frozen = {k: tree[k] for k in want_frozen}
  frames = int(net.unit_frames)
  source_meta = saved.meta
  norm_stats = tuple(float(v) for v in np.asarray(saved.state["norm_stats"]))
  meta = RunMeta(
    config=json.loads(config.to_json_best_effort()),
    norm_stats=norm_stats,
    text_models=dict(source_meta.text_models),
    text_runtime=source_meta.text_runtime,  # Prompts keep the caption table's runtime.
    input_frames=frames,  # Width of the stored position table.
    unit_frames=frames,  # The input grid fine-tuning trained on.
    stage=stage,
    total_steps=int(source_meta.total_steps or 1),
    steps_per_epoch=int(source_meta.steps_per_epoch or 1),
    step=int(step),
    finetune={
      **facts,
      "head": f"state/{HEAD}: classifier {{kernel, bias}}, batch_stats {{norm: {{mean, var}}}}",
    },
  )
  state = {
    "step": np.asarray(step, np.int32),
    "params": trained,
    "frozen": frozen,
    "rng": np.asarray(jax.random.PRNGKey(0)),
    "norm_stats": np.asarray(norm_stats, np.float32),
    "bad_step": np.asarray(-1, np.int32),
    HEAD: {"classifier": _host(params["classifier"]), "batch_stats": _host(batch_stats)},
  }
  text = network.text_assets() if stage == "stage2" else None
  return str(ckpt.write_params_checkpoint(workdir, int(step), state, meta, text))
