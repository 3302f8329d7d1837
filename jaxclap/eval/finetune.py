"""Supervised fine-tuning of a trained jaxclap audio encoder (the stage-1.1 recipe).

The whole encoder and a head (BatchNorm without affine + Linear on the time-averaged
F'·D feature, or the D-dim mean token; `ft_model`) are trained as EVAR's `finetune.py`
does: timm's Lars and cosine schedule (`train.optim`), epochs of a shuffled pass or of
weighted draws (`sampling`, read through `data.pipeline` by `ft_data`), mixup, SpecAugment
and structured patch masking drawn per batch (`ft_step`); every epoch ends with a
validation pass, the best epoch's parameters are kept (`ft_loop`), scored on the test
split and written as an Orbax workdir (`ft_checkpoint`) that stage 2's `init.workdir`,
`jaxclap.load` and `convert to_torch` accept. This module runs it: config checks, the
dataset's splits and labels, reuse of a finished workdir, the result.

  from configs import finetune as ft_config
  run_finetune("/runs/stage1", data_dir="~/jaxclap_data", dataset="jaxclap_demo",
               config=ft_config.get_config(), workdir="/runs/ft")
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import tensorflow_datasets as tfds
from absl import logging

from jaxclap import restore as restore_lib
from jaxclap.data import build, pipeline
from jaxclap.eval import augment, ft_checkpoint, ft_data, ft_loop, sampling
from jaxclap.eval.ft_model import FinetuneNet, build_net, init_variables
from jaxclap.eval.ft_step import Setup, eval_logits, score
from jaxclap.models import features, patches
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import optim

# The pieces a caller of `load_classifier` needs, and the network's builders.
__all__ = [
  "FinetuneNet",
  "Setup",
  "build_net",
  "eval_logits",
  "init_variables",
  "load_classifier",
  "run_finetune",
  "score",
  "validate",
]


def load_classifier(workdir: str) -> tuple[Setup, dict[str, Any], dict[str, Any]]:
  """(Setup, {"params", "batch_stats"}, meta["finetune"]) of a fine-tuning workdir: the
  whole fine-tuned classifier, for `eval_logits`."""
  saved = ckpt.load(workdir)
  state, meta, source = saved.state, saved.meta, saved.source
  facts = meta.finetune
  if facts is None or ft_checkpoint.HEAD not in state:
    raise ValueError(
      f"{source}: not a fine-tuning checkpoint (no meta 'finetune' or state '{ft_checkpoint.HEAD}')"
    )
  restored = restore_lib.restore(workdir)
  head = state[ft_checkpoint.HEAD]
  model, frames = restored.model, int(meta.input_frames)
  net = FinetuneNet(
    size=model.size,
    num_classes=len(facts["class_names"]),
    patch_size=model.patch_size,
    n_mels=model.n_mels,
    input_frames=frames,
    unit_frames=frames,
    head_input=facts["head_input"],
    dtype=model.dtype,
    pos_table=restored.config.model.pos_table,
  )
  setup = Setup(
    net=net,
    frontend_cfg=restored.frontend_cfg,
    norm_stats=restored.norm_stats,
    multi_label=bool(facts["multi_label"]),
    freq_mask=0,
    time_mask=0,
  )
  variables = {
    "params": {"encoder": restored.params["encoder"], "classifier": head["classifier"]},
    "batch_stats": head["batch_stats"],
  }
  return setup, variables, facts


def _splits(dataset: str, data_dir: str, config) -> tuple[dict[str, Any], str]:
  """Dataset facts and the split that picks the best epoch (val_split "": the test split,
  as EVAR does for AudioSet, which has no validation split)."""
  info = build.dataset_info(dataset, data_dir)
  for role, split in (("train", config.train_split), ("test", config.test_split)):
    if info["splits"].get(split, 0) == 0:
      raise ValueError(
        f"{dataset} under {data_dir} has no (or an empty) {role} split "
        f"{split!r}; it has {info['splits']}"
      )
  if not info["class_names"]:
    raise ValueError(f"{dataset} under {data_dir} has no class names: not a labelled set")
  if not config.val_split:
    return info, config.test_split
  val = config.val_split if info["splits"].get(config.val_split, 0) else config.test_split
  if val != config.val_split:
    logging.warning("No %r split: the test split picks the best epoch", config.val_split)
  return info, val


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad knob."""
  checks = [
    ("lr", config.lr > 0),
    ("batch", config.batch >= 1),
    ("epochs", config.epochs >= 1),
    ("eval_batch", config.eval_batch >= 1),
    ("max_steps", config.max_steps >= 0),
    ("warmup_epochs", 0 <= config.warmup_epochs <= config.epochs),
    ("lr_min", 0 <= config.lr_min <= config.lr),
    ("warmup_lr", config.warmup_lr >= 0),
    ("optimizer", config.optimizer in optim.FINETUNE_OPTIMIZERS),
    ("schedule", config.schedule in optim.FINETUNE_SCHEDULES),
    ("epoch_clips", config.epoch_clips >= 0),
    ("sample_weights", config.sample_weights in sampling.WEIGHTINGS),
    ("mixup", config.mixup >= 0),
    ("mask_ratio", 0 <= config.mask_ratio < 1),
    ("freq_mask", config.freq_mask >= 0),
    ("time_mask", config.time_mask >= 0),
    ("crop_seconds", config.crop_seconds >= 0),
    ("eval_seconds", config.eval_seconds >= 0),
    ("head_input", config.head_input in augment.HEAD_INPUTS),
  ]
  for key, ok in checks:
    if not ok:
      raise ValueError(f"finetune config: bad {key}={config[key]!r}")


def _patch_embed(params: Any) -> Any:
  """True on the encoder's patch-embedding leaves (what freeze_patch_embed holds still)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: [getattr(k, "key", None) for k in path[:2]] == ["encoder", "patch_embed"],
    params,
  )


def _multi_label(config, dataset: str, data_dir: str) -> bool:
  if config.multi_label is not None:
    return bool(config.multi_label)
  return bool(
    (tfds.builder(dataset, data_dir=data_dir).info.metadata or {}).get("multi_label", False)
  )


# Knobs that change how a run executes, not what it computes: a finished workdir is
# reused whatever their values.
_EXECUTION_KNOBS = ("num_workers", "log_every", "eval_batch")


# Knobs added after runs were stored, at the value those runs had: a finished workdir
# whose finetune.json lacks them still matches.
_LATER_KNOBS = {
  "class_mean_loss": False,
  "freeze_patch_embed": False,
  "time_mask_as_is": False,
  "rrc": False,
}


def _comparable(config_json: dict[str, Any]) -> dict[str, Any]:
  return {
    k: v
    for k, v in config_json.items()
    if k not in _EXECUTION_KNOBS and not (k in _LATER_KNOBS and v == _LATER_KNOBS[k])
  }


def _finished(
  workdir: str, source: str, dataset: str, config_json: dict[str, Any]
) -> dict[str, Any] | None:
  """The stored result of the same fine-tune finished in `workdir`, else None."""
  path = os.path.join(workdir, "finetune.json")
  if not os.path.isfile(path):
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
      raise ValueError(
        f"{workdir} holds checkpoints but no finetune.json (an interrupted "
        "or foreign run); use a new workdir"
      )
    return None
  with open(path) as f:
    done = json.load(f)
  same = (
    done.get("checkpoint") == source
    and done.get("dataset") == dataset
    and _comparable(done.get("config", {})) == _comparable(config_json)
  )
  if not same:
    raise ValueError(
      f"{path} is a finished fine-tune of {done.get('checkpoint')!r} on "
      f"{done.get('dataset')!r} with another config; use a new workdir"
    )
  logging.info("%s: fine-tuning already finished; returning its result", path)
  return done


def _sample_weights(
  config, source: Any, num_classes: int, where: str, workdir: str | None
) -> np.ndarray | None:
  """Per-clip sampling weights of the training split (cached in the workdir: computing
  them reads every record once)."""
  if config.sample_weights == "none":
    return None
  cache = os.path.join(workdir, "sample_weights.npy") if workdir else None
  if cache and os.path.isfile(cache):
    weights = np.load(cache)
    if weights.shape == (len(source),):
      return weights
  start = time.time()
  weights = sampling.audioset_weights(sampling.record_labels(source, where), num_classes)
  logging.info("AudioSet sampling weights of %d clips in %.1f s", len(source), time.time() - start)
  if cache:
    os.makedirs(workdir, exist_ok=True)
    np.save(cache, weights)
  return weights


def run_finetune(
  checkpoint: str,
  *,
  data_dir: str,
  dataset: str,
  config: ml_collections.ConfigDict,
  workdir: str | None = None,
) -> dict[str, Any]:
  """Fine-tunes `checkpoint`'s encoder on `dataset`; returns the result dict.

  With a workdir: writes the best epoch as an Orbax checkpoint (`ft_checkpoint`, when
  `config.save_checkpoint`) and then finetune.json {"task", "metric", "val", "test",
  "epochs", "steps", "best_epoch", ..., "workdir_checkpoint"}; rerun on a finished
  workdir, returns its finetune.json instead of training again.
  """
  validate(config)
  data_dir = os.path.expanduser(data_dir)
  config_json = json.loads(config.to_json_best_effort())
  directory, source_step = ckpt.locate(checkpoint)
  if workdir:
    workdir = os.path.expanduser(workdir)
    done = _finished(workdir, str(directory / str(source_step)), dataset, config_json)
    if done is not None:
      return done
  restored = restore_lib.restore(checkpoint)
  info, val_split = _splits(dataset, data_dir, config)
  classes = info["class_names"]
  multi_label = _multi_label(config, dataset, data_dir)
  fcfg = restored.frontend_cfg
  build.check_sample_rate(info, fcfg.sample_rate, f"the front end of {checkpoint}")
  if config.crop_seconds > 0:
    crop_samples = int(round(config.crop_seconds * fcfg.sample_rate))
  else:
    # The grid the checkpoint was trained on (its last stage's crop).
    crop_samples = (features.unit_frames(restored.model) - 1) * fcfg.hop_length
  unit_frames = fcfg.num_frames(crop_samples)
  net = build_net(restored, len(classes), unit_frames, config)
  gf, gt = patches.grid_size(net.n_mels, unit_frames, net.patch_size)
  variants = augment.mask_variants(config.head_input, gf, gt, config.mask_ratio)
  setup = Setup(
    net=net,
    frontend_cfg=fcfg,
    norm_stats=restored.norm_stats,
    multi_label=multi_label,
    freq_mask=config.freq_mask,
    time_mask=(
      config.time_mask
      if config.time_mask_as_is
      else augment.scaled_time_mask(config.time_mask, unit_frames)
    ),
    mask_variants=variants,
    rrc=config.rrc,
    class_mean_loss=config.class_mean_loss,
  )

  sources = {
    s: pipeline.open_source(dataset, s, data_dir)
    for s in {config.train_split, val_split, config.test_split}
  }
  train_source = sources[config.train_split]
  n_train = len(train_source)
  if config.epoch_clips > n_train:
    raise ValueError(
      f"finetune config: epoch_clips={config.epoch_clips} exceeds the "
      f"{n_train} clips of {dataset}:{config.train_split} (drawn without "
      "replacement)"
    )
  per_epoch = config.epoch_clips or n_train
  batch = min(config.batch, per_epoch)
  if batch < config.batch:
    logging.warning("Batch %d > %d clips per epoch: using %d", config.batch, per_epoch, batch)
  steps_per_epoch = per_epoch // batch
  total = config.epochs * steps_per_epoch
  total = min(total, config.max_steps) if config.max_steps > 0 else total
  tx, schedule = optim.make_finetune_optimizer(config, total)
  if config.freeze_patch_embed:  # EVAR's freeze_embed: zero gradients, so no update.
    tx = optax.chain(optax.masked(optax.set_to_zero(), _patch_embed), tx)
  eval_samples = (
    int(round(config.eval_seconds * fcfg.sample_rate))
    if config.eval_seconds > 0
    else ft_data.longest_clip([sources[val_split], sources[config.test_split]])
  )
  weights = _sample_weights(
    config, train_source, len(classes), f"{dataset}:{config.train_split}", workdir
  )

  params, batch_stats = init_variables(net, restored.params["encoder"], config.seed)
  opt_state = tx.init(params)
  base_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  step_fn = ft_loop.make_step(setup, tx, base_key)
  eval_fn = jax.jit(lambda *a: eval_logits(setup, *a))
  eval_data = ft_loop.EvalData(
    sources=sources,
    samples=eval_samples,
    batch=config.eval_batch,
    num_classes=len(classes),
    dataset=dataset,
  )
  batches = ft_data.train_batches(
    train_source,
    batch=batch,
    crop_samples=crop_samples,
    num_classes=len(classes),
    seed=config.seed,
    where=f"{dataset}:{config.train_split}",
    mixup=config.mixup,
    num_workers=config.num_workers,
    steps_per_epoch=steps_per_epoch,
    epochs=-(-total // steps_per_epoch),
    weights=weights,
  )
  logging.info(
    "Fine-tuning %s on %s: %d classes (%s), %d steps of %d (%d per epoch, %s "
    "sampling), crop %d frames, mask variants %s, eval clips %d samples",
    restored.source,
    dataset,
    len(classes),
    "multi-label" if multi_label else "single-label",
    total,
    batch,
    steps_per_epoch,
    config.sample_weights,
    unit_frames,
    variants,
    eval_samples,
  )
  start = time.time()
  run = ft_loop.train(
    step_fn=step_fn,
    eval_fn=eval_fn,
    schedule=schedule,
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    batches=batches,
    total=total,
    steps_per_epoch=steps_per_epoch,
    log_every=config.log_every,
    eval_data=eval_data,
    val_split=val_split,
    multi_label=multi_label,
  )
  best = run.best
  test = (
    best["val"]
    if val_split == config.test_split
    else ft_loop.evaluate(
      eval_fn, best["params"], best["batch_stats"], eval_data, config.test_split, multi_label
    )
  )
  result = {
    "task": "finetune",
    "metric": "mAP" if multi_label else "accuracy",
    "val": best["val"],
    "test": test,
    "epochs": run.epochs,
    "steps": run.steps,
    "best_epoch": best["epoch"],
    "best_step": best["step"],
    "dataset": dataset,
    "train_split": config.train_split,
    "val_split": val_split,
    "test_split": config.test_split,
    "checkpoint": restored.source,
    "multi_label": multi_label,
    "class_names": classes,
    "unit_frames": unit_frames,
    "input_frames": int(net.input_frames),
    "size": net.size,
    "head_input": net.head_input,
    "steps_per_epoch": steps_per_epoch,
    "batch": batch,
    "mask_variants": [list(v) for v in variants],
    "norm_stats": list(restored.norm_stats),
    "seconds": round(time.time() - start, 1),
    "history": run.history,
    "config": config_json,
  }
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    if config.save_checkpoint:
      facts = {
        k: result[k]
        for k in (
          "dataset",
          "train_split",
          "val_split",
          "test_split",
          "metric",
          "val",
          "test",
          "best_epoch",
          "best_step",
          "epochs",
          "steps",
          "multi_label",
          "class_names",
          "head_input",
          "unit_frames",
          "checkpoint",
        )
      }
      facts["trained_input_frames"] = result["input_frames"]
      facts["config"] = config_json
      result["workdir_checkpoint"] = ft_checkpoint.write(
        workdir,
        restored=restored,
        net=net,
        params=best["params"],
        batch_stats=best["batch_stats"],
        step=best["step"],
        facts=facts,
      )
    with open(os.path.join(workdir, "finetune.json"), "w") as f:  # Written last: "done".
      json.dump(result, f, indent=1)
  return result
