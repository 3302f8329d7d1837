"""Stage 1.1 as an objective of the one trainer: supervised fine-tuning of a trained encoder.

The whole encoder and a head (BatchNorm without affine + Linear on the time-averaged F'·D
feature, or the D-dim mean token; `models.classifier`) are trained as EVAR's `finetune.py`
does: timm's Lars and cosine schedule (`train.optim`), epochs of a shuffled pass or of
weighted draws (`data.sampling`), mixup, SpecAugment and structured patch masking drawn per
batch (`train.augment`). `train.loop` runs it like every stage (mesh, multi-host, resume,
SIGTERM, NaN stop, TensorBoard); this module adds what only fine-tuning has: a validation
pass at every epoch end whose best epoch is kept *in the train state* (so a resumed run
keeps it bit-exactly), the test score of that epoch, and the stage-1.1 workdir it writes
(`train.export`) that stage 2's `init.workdir`, `jaxclap.load` and `convert to_torch` read.

State layout: params = {"encoder", "classifier"}; frozen = {"batch_stats" (BatchNorm
running statistics, updated by the step), "best": {"params", "batch_stats"} (the best
epoch's copy), "record": {"best_val", "best_epoch", "best_step", "history" [epochs, 4]:
(step, loss, val, lr) per epoch}}.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow_datasets as tfds
from absl import logging

from jaxclap import sharding as shd
from jaxclap.audio import frontend as fe
from jaxclap.data import info as data_info
from jaxclap.data import labelled, pipeline, sampling
from jaxclap.models import classifier, features, masks, patches
from jaxclap.models import network as network_lib
from jaxclap.run_meta import RunMeta
from jaxclap.score import kinds
from jaxclap.train import augment, export, optim
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import config as config_lib

RESULT_FILE = "finetune.json"  # Written last: a finished fine-tune.
BATCH_KEYS = ("audio", "audio_len", "target", "mix_lambda")


def loss_fn(
  logits: jax.Array, target: jax.Array, multi_label: bool, class_mean: bool = False
) -> jax.Array:
  """BCE averaged over classes and clips (multi-label) or soft-target softmax CE averaged
  over clips (and, `class_mean`, over classes: EVAR's loss_nll)."""
  if multi_label:
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
  loss = jnp.mean(optax.softmax_cross_entropy(logits, target))
  return loss / logits.shape[-1] if class_mean else loss


def score(y_score: np.ndarray, y_true: np.ndarray, multi_label: bool) -> float:
  """mAP (multi-label) or top-1 accuracy: the `finetune` evaluator kind."""
  labels = np.asarray(y_true) if multi_label else np.argmax(y_true, axis=1)
  (value,) = kinds.score("finetune", kinds.Inputs(labels=labels, logits=y_score)).values()
  return value


@dataclasses.dataclass(frozen=True)
class Finetune:
  """The fine-tuning objective: classifier loss under mixup, SpecAugment and patch masks."""

  net: classifier.FinetuneNet
  frontend_cfg: fe.FrontendConfig
  multi_label: bool
  freq_mask: int = 0
  time_mask: int = 0  # Already scaled to the crop length.
  # Structured masking: (rows, columns, probability), one drawn per batch
  # (augment.mask_variants); ((0, 0, 1.0),) is no masking.
  mask_variants: tuple[tuple[int, int, float], ...] = ((0, 0, 1.0),)
  rrc: bool = False  # Random resize crop after SpecAugment (augment.random_resize_crop).
  class_mean_loss: bool = False  # Single-label loss also averaged over classes (EVAR's).
  head_seed: int = 0  # Draws the classifier's initial kernel.
  epochs: int = 1  # Rows of the per-epoch history kept in the state.
  batch_keys: tuple[str, ...] = BATCH_KEYS
  updates_frozen: bool = True  # The loss also returns new BatchNorm statistics.

  @property
  def model(self) -> classifier.FinetuneNet:
    return self.net

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    """(params, frozen) boxed with logical axes: a zero encoder (the checkpoint's is laid
    in by `handoff`), a fresh head, unit BatchNorm statistics, an empty record."""
    del rng  # The head has its own seed; the encoder comes from the checkpoint.
    net = self.net
    shapes = jax.eval_shape(
      lambda r: net.init(
        r, jnp.zeros((2, net.n_mels, net.unit_frames)), jnp.full((2,), net.unit_frames)
      ),
      jax.random.key(0),
    )
    params = dict(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["params"]))
    width = nn.unbox(params["classifier"])["kernel"].shape[0]
    params["classifier"], stats = classifier.fresh_head(net, self.head_seed, width)
    record = {
      "best_val": jnp.full((), -jnp.inf, jnp.float32),
      "best_epoch": jnp.zeros((), jnp.int32),
      "best_step": jnp.zeros((), jnp.int32),
      "history": jnp.zeros((self.epochs, 4), jnp.float32),
    }
    frozen = {"batch_stats": stats, "best": {"params": params, "batch_stats": stats}}
    return params, {**frozen, "record": record}

  def loss(self, params, frozen, batch, rng, norm_stats):
    """One update's loss: log-mel → mixup (λ from the batch) → SpecAugment (→ random resize
    crop) → structured masking (a (rows, columns) variant drawn for the batch) → head.
    Returns (loss, (metrics, frozen with the new BatchNorm statistics))."""
    x = fe.waveform_input(batch, self.frontend_cfg, norm_stats)
    valid = fe.valid_frames(batch["audio_len"], self.frontend_cfg)
    mix_key, spec_key, mask_key = jax.random.split(rng, 3)
    lam = batch["mix_lambda"]
    x, y, perm = augment.mixup(mix_key, x, batch["target"], lam)
    valid = jnp.where(lam < 1, jnp.maximum(valid, valid[perm]), valid)  # Audio of either clip.
    x = augment.spec_augment(spec_key, x, self.freq_mask, self.time_mask)
    if self.rrc:
      x = augment.random_resize_crop(jax.random.fold_in(spec_key, 1), x)
    grid = patches.grid_size(x.shape[1], x.shape[2], self.net.patch_size)

    def masked(keep, kept):
      logits, updates = self.net.apply(
        {"params": params, "batch_stats": frozen["batch_stats"]},
        x,
        valid,
        keep,
        kept,
        train=True,
        mutable=["batch_stats"],
      )
      return loss_fn(logits, y, self.multi_label, self.class_mean_loss), updates["batch_stats"]

    (loss, stats), variant = masks.with_drawn_mask(
      mask_key, self.mask_variants, x.shape[0], grid, masked
    )
    out = {"loss": loss, "mask_variant": variant.astype(jnp.float32)}
    return loss, (out, {**frozen, "batch_stats": stats})

  def after_update(self, params, frozen, step):
    del step
    return params, frozen, {}

  def logits(self, params, batch_stats, batch, norm_stats) -> jax.Array:
    """Logits [B, classes] of whole (padded) clips, chunked, running BatchNorm statistics."""
    x = fe.waveform_input(batch, self.frontend_cfg, norm_stats)
    valid = fe.valid_frames(batch["audio_len"], self.frontend_cfg)
    return self.net.apply({"params": params, "batch_stats": batch_stats}, x, valid)


def keep_best(state, val, epoch, loss, lr):
  """The state after epoch `epoch`'s validation score `val`: its history row written and,
  on a better score than any before (the first of the best, as EVAR), its copy kept."""
  frozen = state.frozen
  record = frozen["record"]
  better = val > record["best_val"]
  pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(better, a, b), new, old)
  best = pick({"params": state.params, "batch_stats": frozen["batch_stats"]}, frozen["best"])
  row = jnp.stack([state.step.astype(jnp.float32), loss, val, lr]).astype(jnp.float32)
  record = {
    "best_val": jnp.where(better, val, record["best_val"]),
    "best_epoch": jnp.where(better, epoch, record["best_epoch"]),
    "best_step": jnp.where(better, state.step, record["best_step"]),
    "history": record["history"].at[epoch - 1].set(row),
  }
  return state.replace(frozen={**frozen, "best": best, "record": record})


@dataclasses.dataclass
class Plan:
  """A fine-tuning run's data, length, optimizer and objective, from its config."""

  config: ml_collections.ConfigDict
  saved: ckpt.Saved  # The checkpoint fine-tuned (`init.workdir`).
  source_config: ml_collections.ConfigDict
  source_network: network_lib.Network
  info: dict[str, Any]
  val_split: str
  objective: Finetune
  sources: dict[str, Any]
  weights: np.ndarray | None
  batch: int
  steps_per_epoch: int
  total_steps: int
  crop_samples: int
  eval_samples: int
  eval_batch: int
  tx: optax.GradientTransformation
  schedule: optax.Schedule

  @property
  def knobs(self) -> ml_collections.ConfigDict:
    return self.config.finetune

  @property
  def epochs(self) -> int:
    return self.objective.epochs

  def meta(self) -> RunMeta:
    """The starting checkpoint's metadata: the run describes the same encoder."""
    return self.saved.meta

  def train_loader(self, seed: int) -> pipeline.Loader:
    """Batches of labelled crops over the run's epochs (a stream in epoch order: endless,
    unshuffled, each process taking its interleaved share as stage 1 does)."""
    stream = sampling.EpochSource(
      self.sources["train"],
      per_epoch=self.steps_per_epoch * self.batch,
      epochs=self.epochs,
      seed=seed,
      weights=self.weights,
    )
    return pipeline.make_loader(
      stream,
      global_batch=self.batch,
      crop_samples=self.crop_samples,
      seed=seed,
      shuffle=False,
      num_workers=self.config.data.num_workers,
      num_classes=len(self.info["class_names"]),
      mixup=self.knobs.mixup,
      where=f"{self.knobs.dataset}:{self.knobs.train_split}",
    )

  def end_of_epoch(self, step: int) -> bool:
    return step % self.steps_per_epoch == 0 or step == self.total_steps

  def describe(self) -> str:
    """One log line of what runs."""
    return (
      f"Fine-tuning {self.saved.source} on {self.knobs.dataset}: "
      f"{len(self.info['class_names'])} classes "
      f"({'multi-label' if self.objective.multi_label else 'single-label'}), "
      f"{self.total_steps} steps of {self.batch} ({self.steps_per_epoch} per epoch, "
      f"{self.knobs.sample_weights} sampling), crop {self.objective.net.unit_frames} frames, "
      f"mask variants {self.objective.mask_variants}, eval clips {self.eval_samples} samples"
    )


def _patch_embed(params: Any) -> Any:
  """True on the encoder's patch-embedding leaves (what freeze_patch_embed holds still)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: [getattr(k, "key", None) for k in path[:2]] == ["encoder", "patch_embed"],
    params,
  )


def _multi_label(knobs, data_dir: str) -> bool:
  if knobs.multi_label is not None:
    return bool(knobs.multi_label)
  builder = tfds.builder(knobs.dataset, data_dir=data_dir)
  return bool((builder.info.metadata or {}).get("multi_label", False))


def _sample_weights(knobs, source: Any, num_classes: int, workdir: str) -> np.ndarray | None:
  """Per-clip sampling weights of the training split (cached in the workdir: computing
  them reads every record once)."""
  if knobs.sample_weights == "none":
    return None
  cache = os.path.join(workdir, "sample_weights.npy")
  if os.path.isfile(cache):
    weights = np.load(cache)
    if weights.shape == (len(source),):
      return weights
  start = time.time()
  where = f"{knobs.dataset}:{knobs.train_split}"
  weights = sampling.audioset_weights(sampling.record_labels(source, where), num_classes)
  logging.info("AudioSet sampling weights of %d clips in %.1f s", len(source), time.time() - start)
  if jax.process_index() == 0:
    np.save(cache, weights)
  return weights


def classifier_net(
  model: Any, pos_table: str, num_classes: int, unit_frames: int, knobs
) -> classifier.FinetuneNet:
  """The fine-tuning network around the source encoder's architecture."""
  dtype = model.dtype if not knobs.dtype else jnp.dtype(knobs.dtype)
  return classifier.FinetuneNet(
    size=model.size,
    num_classes=num_classes,
    patch_size=model.patch_size,
    n_mels=model.n_mels,
    input_frames=model.input_frames,
    unit_frames=unit_frames,
    head_input=knobs.head_input,
    bn_momentum=knobs.bn_momentum,
    head_init_std=knobs.head_init_std,
    dtype=dtype,
    pos_table=pos_table,
  )


def make_plan(
  config: ml_collections.ConfigDict, *, data_dir: str, workdir: str, n_devices: int
) -> Plan:
  """Everything a fine-tuning run needs before its state exists; checks the data."""
  knobs = config.finetune
  saved = ckpt.load(config.init.workdir)
  source_config = config_lib.config_from_meta(saved.meta, saved.source)
  network = network_lib.build(source_config, saved.meta, text_assets=saved.text)
  model = network.model
  fcfg = network.frontend_cfg
  info, val_split = data_info.finetune_splits(knobs, data_dir)
  data_info.check_sample_rate(info, fcfg.sample_rate, f"the front end of {saved.source}")
  classes = info["class_names"]
  if knobs.crop_seconds > 0:
    crop_samples = int(round(knobs.crop_seconds * fcfg.sample_rate))
  else:
    # The grid the checkpoint was trained on (its last stage's crop).
    crop_samples = (features.unit_frames(model) - 1) * fcfg.hop_length
  unit_frames = fcfg.num_frames(crop_samples)
  pos_table = saved.meta.pos_table or source_config.model.pos_table
  net = classifier_net(model, pos_table, len(classes), unit_frames, knobs)
  gf, gt = patches.grid_size(net.n_mels, unit_frames, net.patch_size)
  splits = {"train": knobs.train_split, "val": val_split, "test": knobs.test_split}
  sources = {role: pipeline.open_source(knobs.dataset, s, data_dir) for role, s in splits.items()}
  n_train = len(sources["train"])
  if knobs.epoch_clips > n_train:
    raise ValueError(
      f"finetune.epoch_clips={knobs.epoch_clips} exceeds the {n_train} clips of "
      f"{knobs.dataset}:{knobs.train_split} (drawn without replacement)"
    )
  per_epoch = knobs.epoch_clips or n_train
  batch = min(knobs.batch, per_epoch)
  if batch < knobs.batch:
    logging.warning("Batch %d > %d clips per epoch: using %d", knobs.batch, per_epoch, batch)
  if batch % n_devices:
    raise ValueError(f"finetune.batch={batch} must be a multiple of the device count {n_devices}")
  steps_per_epoch = per_epoch // batch
  total = knobs.epochs * steps_per_epoch
  total = min(total, knobs.max_steps) if knobs.max_steps > 0 else total
  tx, schedule = optim.make_finetune_optimizer(knobs, total)
  if knobs.freeze_patch_embed:  # EVAR's freeze_embed: zero gradients, so no update.
    tx = optax.chain(optax.masked(optax.set_to_zero(), _patch_embed), tx)
  eval_samples = (
    int(round(knobs.eval_seconds * fcfg.sample_rate))
    if knobs.eval_seconds > 0
    else labelled.longest_clip([sources["val"], sources["test"]])
  )
  multi_label = _multi_label(knobs, data_dir)
  objective = Finetune(
    net=net,
    frontend_cfg=fcfg,
    multi_label=multi_label,
    freq_mask=knobs.freq_mask,
    time_mask=(
      knobs.time_mask
      if knobs.time_mask_as_is
      else augment.scaled_time_mask(knobs.time_mask, unit_frames)
    ),
    mask_variants=augment.mask_variants(knobs.head_input, gf, gt, knobs.mask_ratio),
    rrc=knobs.rrc,
    class_mean_loss=knobs.class_mean_loss,
    head_seed=config.seed,
    epochs=-(-total // steps_per_epoch),
  )
  return Plan(
    config=config,
    saved=saved,
    source_config=source_config,
    source_network=network,
    info=info,
    val_split=val_split,
    objective=objective,
    sources=sources,
    weights=_sample_weights(knobs, sources["train"], len(classes), workdir),
    batch=batch,
    steps_per_epoch=steps_per_epoch,
    total_steps=total,
    crop_samples=crop_samples,
    eval_samples=eval_samples,
    # Every evaluation batch splits evenly over the devices.
    eval_batch=math.ceil(knobs.eval_batch / n_devices) * n_devices,
    tx=tx,
    schedule=schedule,
  )


def jit_evaluation(plan: Plan, mesh, state_sh) -> dict[str, Callable]:
  """Jitted logits of the current ("current") and the kept best ("best") parameters, one
  compiled program for both, and the best-epoch update ("keep_best", state donated)."""
  repl = shd.replicated(mesh)
  obj = plan.objective
  variables_sh = {"params": state_sh.params, "batch_stats": state_sh.frozen["batch_stats"]}
  logits = jax.jit(
    lambda v, norm_stats, batch: obj.logits(v["params"], v["batch_stats"], batch, norm_stats),
    in_shardings=(variables_sh, repl, shd.batch_sharding(mesh)),
    out_shardings=repl,
  )
  current = lambda st: {"params": st.params, "batch_stats": st.frozen["batch_stats"]}
  return {
    "current": lambda st, batch: logits(current(st), st.norm_stats, batch),
    "best": lambda st, batch: logits(st.frozen["best"], st.norm_stats, batch),
    "keep_best": jax.jit(
      keep_best,
      in_shardings=(state_sh, repl, repl, repl, repl),
      out_shardings=state_sh,
      donate_argnums=(0,),
    ),
  }


def evaluate_split(plan: Plan, role: str, state, logits_fn: Callable, mesh) -> float:
  """Score (mAP or accuracy) of the whole clips of the split in `role` ("val" or "test")."""
  source = plan.sources[role]
  split = plan.val_split if role == "val" else plan.knobs.test_split
  count, index = jax.process_count(), jax.process_index()
  share = plan.eval_batch // count  # Each process feeds its rows of every batch.
  outs, truth = [], []
  for b, n in labelled.eval_batches(
    source,
    samples=plan.eval_samples,
    batch=plan.eval_batch,
    num_classes=len(plan.info["class_names"]),
    where=f"{plan.knobs.dataset}:{split}",
  ):
    local = {k: b[k][index * share : (index + 1) * share] for k in ("audio", "audio_len")}
    outs.append((logits_fn(state, shd.global_batch(local, mesh)), n))
    truth.append(b["target"][:n])
  scores = np.concatenate([np.asarray(o)[:n] for o, n in outs])
  return score(scores, np.concatenate(truth), plan.objective.multi_label)


def _f32(x: Any) -> float:
  """A float32 kept in the state as the shortest decimal that reads back to it (an accuracy
  of 6/30 stored as float32 reports 0.2, not 0.20000000298)."""
  return float(str(np.float32(x)))


def history(state) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """(per-epoch history, best-epoch record) read from the state on the host."""
  record = jax.device_get(state.frozen["record"])
  rows = [
    {"epoch": e + 1, "step": int(r[0]), "loss": _f32(r[1]), "val": _f32(r[2]), "lr": _f32(r[3])}
    for e, r in enumerate(np.asarray(record["history"]))
    if r[0] > 0
  ]
  best = {
    "val": _f32(record["best_val"]),
    "epoch": int(record["best_epoch"]),
    "step": int(record["best_step"]),
  }
  return rows, best


def result(plan: Plan, state, test: float, seconds: float, record: tuple) -> dict[str, Any]:
  """The run's result (finetune.json): scores, best epoch, history (`record`, as `history`
  reads it from the state), what ran."""
  rows, best = record
  net = plan.objective.net
  return {
    "task": "finetune",
    "metric": "mAP" if plan.objective.multi_label else "accuracy",
    "val": best["val"],
    "test": test,
    "epochs": len(rows),
    "steps": int(jax.device_get(state.step)),
    "best_epoch": best["epoch"],
    "best_step": best["step"],
    "dataset": plan.knobs.dataset,
    "train_split": plan.knobs.train_split,
    "val_split": plan.val_split,
    "test_split": plan.knobs.test_split,
    "checkpoint": plan.saved.source,
    "multi_label": plan.objective.multi_label,
    "class_names": list(plan.info["class_names"]),
    "unit_frames": int(net.unit_frames),
    "input_frames": int(net.input_frames),
    "size": net.size,
    "head_input": net.head_input,
    "steps_per_epoch": plan.steps_per_epoch,
    "batch": plan.batch,
    "mask_variants": [list(v) for v in plan.objective.mask_variants],
    "norm_stats": [float(v) for v in jax.device_get(state.norm_stats)],
    "seconds": round(seconds, 1),
    "history": rows,
    "config": comparable(plan.config),
  }


def write_export(plan: Plan, state, out: dict[str, Any], workdir: str) -> str:
  """Writes the best epoch as the workdir's final checkpoint (step = the run's last) and
  returns its directory; meta["finetune"] holds the result `out` (a run killed before
  finetune.json was written finishes from it: `result_of_export`)."""
  facts = {**out, "trained_input_frames": out["input_frames"]}
  best = jax.device_get(state.frozen["best"])
  return export.write(
    workdir,
    saved=plan.saved,
    source_config=plan.source_config,
    network=plan.source_network,
    net=plan.objective.net,
    params=best["params"],
    batch_stats=best["batch_stats"],
    step=out["steps"],
    facts=facts,
  )


# How a run executes, not what it computes: a finished workdir is reused whatever they are.
_EXECUTION = ("train", "mesh", "evaluate", "debug", "data.num_workers", "finetune.eval_batch")


def comparable(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The parts of a fine-tuning config that decide its result (seed, start, recipe)."""
  flat = json.loads(config.to_json_best_effort())
  keep = {"seed": flat.get("seed"), "init": flat.get("init"), "finetune": flat.get("finetune")}
  keep["finetune"] = {
    k: v for k, v in keep["finetune"].items() if f"finetune.{k}" not in _EXECUTION
  }
  return keep


def finished(workdir: str, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The stored result of the same fine-tune finished in `workdir`, else None; another
  config's finished run is refused."""
  path = os.path.join(workdir, RESULT_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    done = json.load(f)
  finished_check(done, config, path)
  logging.info("%s: fine-tuning already finished; returning its result", path)
  return done


def finished_check(done: dict[str, Any], config: ml_collections.ConfigDict, where: str) -> None:
  """Refuses a finished result of another config."""
  if done.get("config") != json.loads(json.dumps(comparable(config))):
    raise ValueError(
      f"{where} is a finished fine-tune of {done.get('checkpoint')!r} on "
      f"{done.get('dataset')!r} with another config; use a new workdir"
    )


def result_of_export(meta: RunMeta, source: str) -> dict[str, Any]:
  """The result a finished run's export holds in its metadata."""
  drop = ("head", "trained_input_frames")
  return {**{k: v for k, v in meta.finetune.items() if k not in drop}, "workdir_checkpoint": source}


def write_result(workdir: str, out: dict[str, Any]) -> None:
  """finetune.json, written last (its presence marks a finished run)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RESULT_FILE), "w") as f:
      json.dump(out, f, indent=1)
