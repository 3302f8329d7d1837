"""Supervised fine-tuning of a trained jaxclap audio encoder (the stage-1.1 recipe).

The whole encoder and a head (BatchNorm without affine + Linear on the time-averaged
F'·D feature, or the D-dim mean token) are trained as EVAR's `finetune.py` does: timm's
Lars and cosine schedule (`ft_optim`), epochs of a shuffled pass or of weighted draws
(`sampling`), mixup, SpecAugment and structured patch masking drawn per batch; every
epoch ends with a validation pass, the best epoch's parameters are kept, scored on the
test split and written as an Orbax workdir (`ft_checkpoint`) that stage 2's
`init.workdir`, `jaxclap.load` and `convert to_torch` accept.

Input length: training crops of `unit_frames` frames; the encoder's position table is
resized from its trained width to the crop's columns (bicubic, `patches.fit_pos_embed`),
shorter input takes its first columns. Evaluation pads whole clips to one length, cuts
them into `unit_frames` chunks (the last one zero-padded to a whole unit, as the official
runtime's `encode_lms`), encodes all chunks as one batch, and averages only the time
patches that hold audio.

  from configs import finetune as ft_config
  run_finetune("/runs/stage1", data_dir="~/jaxclap_data", dataset="jaxclap_demo",
               config=ft_config.get_config(), workdir="/runs/ft")
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxclap.models import features
from jaxclap import restore as restore_lib
from jaxclap.audio import frontend as fe
from jaxclap.data import build, pipeline
from jaxclap import metrics
from jaxclap.eval import augment, ft_checkpoint, ft_data, ft_optim, sampling
from jaxclap.models import m2d, masks, patches, sizes, vit
from jaxclap.train import handoff


class FinetuneNet(nn.Module):
  """Pre-trained ViT encoder + BatchNorm (no scale/bias) + Linear on the pooled feature."""

  size: str
  num_classes: int
  patch_size: int = 16
  n_mels: int = 80
  input_frames: int = 608  # Width of the pre-trained position table (frames).
  unit_frames: int = 608  # Fine-tuning input length: the table is fitted to it.
  head_input: str = "frames"  # "frames" (F'·D) or "tokens" (D); see augment.mask_counts.
  bn_momentum: float = 0.9
  head_init_std: float = 0.01
  dtype: vit.Dtype = jnp.float32
  pos_table: str = "sincos"  # The encoder's table kind (vit.ViTEncoder.pos_table).

  def setup(self):
    w, d, h = sizes.get_size(self.size)
    self.encoder = vit.ViTEncoder(w, d, h, self.patch_size, self.n_mels, self.input_frames,
                                  dtype=self.dtype, pos_table=self.pos_table)
    self.norm = nn.BatchNorm(momentum=self.bn_momentum, epsilon=1e-5, use_bias=False,
                             use_scale=False)
    self.classifier = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(
        self.head_init_std), bias_init=nn.initializers.zeros)

  def tokens(self, x: jax.Array, keep: jax.Array | None = None) -> jax.Array:
    """Normalised log-mel [B, F, t ≤ unit] → encoded patch tokens [B, K, D] (no cls)."""
    if x.shape[1] != self.n_mels:
      raise ValueError(f"FinetuneNet: expected {self.n_mels} mel bins, got input {x.shape}")
    gf, gt = patches.grid_size(x.shape[1], x.shape[2], self.patch_size)
    unit_t = self.unit_frames // self.patch_size
    if gt > unit_t:
      raise ValueError(f"FinetuneNet.tokens: {x.shape[2]} frames exceed the unit length "
                       f"{self.unit_frames}; encode in chunks")
    table = self.encoder.pos_embed((gf, unit_t)).reshape(gf, unit_t, -1)[:, :gt]
    tok = self.encoder.patch_embed(patches.patchify(x.astype(self.dtype), self.patch_size))
    tok = tok + table.reshape(gf * gt, -1).astype(tok.dtype)
    if keep is not None:
      tok = jnp.take_along_axis(tok, keep[..., None], axis=1)
    return self.encoder.encode_tokens(tok)[:, 1:]

  def features(self, x: jax.Array, valid_frames: jax.Array, keep: jax.Array | None = None,
               kept_grid: tuple[int, int] | None = None) -> jax.Array:
    """Head input [B, F'·D] ("frames") or [B, D] ("tokens"): the mean over the time
    patches that hold audio (frame < valid_frames) of the kept tokens.

    `keep` [B, rows·cols] sorted token indices of a `kept_grid` = (rows, cols) sub-grid
    (structured masking; x is one crop); None encodes all of x in unit-length chunks.
    """
    b, d = x.shape[0], sizes.get_size(self.size).width
    p = self.patch_size
    gf = x.shape[1] // p
    if keep is not None:
      rows, cols = kept_grid
      grid = self.tokens(x, keep).reshape(b, rows, cols, d)
      start = (keep[:, :cols] % (x.shape[2] // p)) * p  # First frame of each kept column.
    else:
      # Whole unit-length chunks (the last one zero-padded, as the official runtime) go
      # through the encoder as one batch; padded patches get no weight below.
      unit, n = self.unit_frames, -(-x.shape[2] // self.unit_frames)
      x = jnp.pad(x, ((0, 0), (0, 0), (0, n * unit - x.shape[2])))
      chunks = x.reshape(b, x.shape[1], n, unit).transpose(0, 2, 1, 3).reshape(b * n, -1, unit)
      t = unit // p
      grid = self.tokens(chunks).reshape(b, n, gf, t, d).transpose(0, 2, 1, 3, 4)
      grid = grid.reshape(b, gf, n * t, d)
      starts = (unit * np.arange(n)[:, None] + p * np.arange(t)[None, :]).reshape(-1)
      start = jnp.broadcast_to(jnp.asarray(starts), (b, n * t))
    w = (start < valid_frames[:, None]).astype(jnp.float32)
    w = jnp.where(jnp.sum(w, axis=1, keepdims=True) > 0, w, 1.0)  # No audio: plain mean.
    pooled = jnp.einsum("brtd,bt->brd", grid.astype(jnp.float32), w) / jnp.sum(
        w, axis=1)[:, None, None]
    if self.head_input == "tokens":
      return jnp.mean(pooled, axis=1)
    return pooled.reshape(b, -1)

  def head(self, feature: jax.Array, train: bool) -> jax.Array:
    """BatchNorm (batch statistics when training, running ones otherwise) → logits."""
    return self.classifier(self.norm(feature, use_running_average=not train))

  def __call__(self, x: jax.Array, valid_frames: jax.Array, keep: jax.Array | None = None,
               kept_grid: tuple[int, int] | None = None, *, train: bool = False) -> jax.Array:
    return self.head(self.features(x, valid_frames, keep, kept_grid), train)


# ---------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the jitted steps close over (static for a run)."""

  net: FinetuneNet
  frontend_cfg: fe.FrontendConfig
  norm_stats: tuple[float, float]
  multi_label: bool
  freq_mask: int
  time_mask: int  # Already scaled to the crop length.
  # Structured masking: (rows, columns, probability), one drawn per batch
  # (augment.mask_variants); ((0, 0, 1.0),) is no masking.
  mask_variants: tuple[tuple[int, int, float], ...] = ((0, 0, 1.0),)


def loss_fn(logits: jax.Array, target: jax.Array, multi_label: bool) -> jax.Array:
  """BCE averaged over classes and clips (multi-label) or soft-target softmax CE."""
  if multi_label:
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
  return jnp.mean(optax.softmax_cross_entropy(logits, target))


def train_step(setup: Setup, tx: optax.GradientTransformation, params: Any, batch_stats: Any,
               opt_state: Any, batch: dict[str, jax.Array], rng: jax.Array):
  """One update: log-mel → mixup (λ from the batch) → SpecAugment → structured masking
  (a (rows, columns) variant drawn for the batch, one `lax.switch` branch per variant,
  each with its own static token count) → head → loss."""
  x = fe.waveform_input(batch, setup.frontend_cfg, setup.norm_stats)
  valid = fe.valid_frames(batch["audio_len"], setup.frontend_cfg)
  mix_key, spec_key, mask_key = jax.random.split(rng, 3)
  lam = batch["mix_lambda"]
  x, y, perm = augment.mixup(mix_key, x, batch["target"], lam)
  valid = jnp.where(lam < 1, jnp.maximum(valid, valid[perm]), valid)  # Audio of either clip.
  x = augment.spec_augment(spec_key, x, setup.freq_mask, setup.time_mask)
  grid = patches.grid_size(x.shape[1], x.shape[2], setup.net.patch_size)

  def objective(p):
    def masked(keep, kept):
      logits, updates = setup.net.apply({"params": p, "batch_stats": batch_stats}, x, valid,
                                        keep, kept, train=True, mutable=["batch_stats"])
      return loss_fn(logits, y, setup.multi_label), updates["batch_stats"]

    (loss, stats), variant = masks.with_drawn_mask(mask_key, setup.mask_variants, x.shape[0],
                                                   grid, masked)
    return loss, (stats, variant)

  (loss, (batch_stats, variant)), grads = jax.value_and_grad(objective, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return params, batch_stats, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                                          "mask_variant": variant}


def eval_logits(setup: Setup, params: Any, batch_stats: Any, batch: dict[str, jax.Array]
                ) -> jax.Array:
  """Logits [B, classes] of whole (padded) clips, chunked, running BatchNorm statistics."""
  x = fe.waveform_input(batch, setup.frontend_cfg, setup.norm_stats)
  valid = fe.valid_frames(batch["audio_len"], setup.frontend_cfg)
  return setup.net.apply({"params": params, "batch_stats": batch_stats}, x, valid)


def score(y_score: np.ndarray, y_true: np.ndarray, multi_label: bool) -> float:
  """mAP (multi-label) or top-1 accuracy."""
  if multi_label:
    return metrics.mean_average_precision(y_score, y_true)
  return metrics.accuracy(y_score, np.argmax(y_true, axis=1))


# ------------------------------------------------------------------------------- run


def build_net(restored: restore_lib.Restored, num_classes: int, unit_frames: int,
              config: ml_collections.ConfigDict) -> FinetuneNet:
  """The fine-tuning network around the restored encoder's architecture."""
  model = restored.model
  return FinetuneNet(size=model.size, num_classes=num_classes, patch_size=model.patch_size,
                     n_mels=model.n_mels, input_frames=model.input_frames,
                     unit_frames=unit_frames, head_input=config.head_input,
                     bn_momentum=config.bn_momentum, head_init_std=config.head_init_std,
                     dtype=model.dtype, pos_table=restored.config.model.pos_table)


def init_variables(net: FinetuneNet, encoder_params: Any, seed: int) -> tuple[Any, Any]:
  """(params, batch_stats): a fresh head on the pre-trained encoder parameters.

  The head is drawn directly (the network is only traced for its shapes: compiling its
  init would cost as much as a training step).
  """
  shapes = jax.eval_shape(lambda r: net.init(
      r, jnp.zeros((2, net.n_mels, net.unit_frames)), jnp.full((2,), net.unit_frames)),
      jax.random.key(seed))
  shapes = nn.unbox(shapes)
  have = jax.tree_util.tree_map(np.shape, encoder_params)
  if jax.tree_util.tree_map(lambda a: a.shape, shapes["params"]["encoder"]) != have:
    raise ValueError(f"checkpoint encoder parameters do not fit a {net.size!r} ViT encoder")
  kernel = shapes["params"]["classifier"]["kernel"]
  params = {
      # Copies: the step donates its inputs, which must not alias the caller's arrays.
      "encoder": jax.tree_util.tree_map(jnp.array, encoder_params),
      "classifier": {
          "kernel": nn.initializers.normal(net.head_init_std)(
              jax.random.key(seed), kernel.shape, kernel.dtype),
          "bias": jnp.zeros((net.num_classes,), jnp.float32)},
  }
  stats = {"norm": {"mean": jnp.zeros(kernel.shape[0], jnp.float32),
                    "var": jnp.ones(kernel.shape[0], jnp.float32)}}
  expected = jax.tree_util.tree_map(lambda a: a.shape, {**shapes["params"]})
  if jax.tree_util.tree_map(np.shape, params) != expected or jax.tree_util.tree_map(
      np.shape, stats) != jax.tree_util.tree_map(lambda a: a.shape, shapes["batch_stats"]):
    raise AssertionError("FinetuneNet's head layout changed; update init_variables")
  return params, stats


def load_classifier(workdir: str) -> tuple[Setup, dict[str, Any], dict[str, Any]]:
  """(Setup, {"params", "batch_stats"}, meta["finetune"]) of a fine-tuning workdir: the
  whole fine-tuned classifier, for `eval_logits`."""
  state, meta, source = handoff.load(workdir)
  facts = meta.get("finetune")
  if facts is None or ft_checkpoint.HEAD not in state:
    raise ValueError(f"{source}: not a fine-tuning checkpoint (no meta 'finetune' or "
                     f"state '{ft_checkpoint.HEAD}')")
  restored = restore_lib.restore(workdir)
  head = state[ft_checkpoint.HEAD]
  model, frames = restored.model, int(meta["input_frames"])
  net = FinetuneNet(size=model.size, num_classes=len(facts["class_names"]),
                    patch_size=model.patch_size, n_mels=model.n_mels, input_frames=frames,
                    unit_frames=frames, head_input=facts["head_input"], dtype=model.dtype,
                    pos_table=restored.config.model.pos_table)
  setup = Setup(net=net, frontend_cfg=restored.frontend_cfg, norm_stats=restored.norm_stats,
                multi_label=bool(facts["multi_label"]), freq_mask=0, time_mask=0)
  variables = {"params": {"encoder": restored.params["encoder"],
                          "classifier": head["classifier"]},
               "batch_stats": head["batch_stats"]}
  return setup, variables, facts


def _splits(dataset: str, data_dir: str, config) -> tuple[dict[str, Any], str]:
  """Dataset facts and the split that picks the best epoch (val_split "": the test split,
  as EVAR does for AudioSet, which has no validation split)."""
  info = build.dataset_info(dataset, data_dir)
  for role, split in (("train", config.train_split), ("test", config.test_split)):
    if info["splits"].get(split, 0) == 0:
      raise ValueError(f"{dataset} under {data_dir} has no (or an empty) {role} split "
                       f"{split!r}; it has {info['splits']}")
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
      ("lr", config.lr > 0), ("batch", config.batch >= 1), ("epochs", config.epochs >= 1),
      ("eval_batch", config.eval_batch >= 1), ("max_steps", config.max_steps >= 0),
      ("warmup_epochs", 0 <= config.warmup_epochs <= config.epochs),
      ("lr_min", 0 <= config.lr_min <= config.lr), ("warmup_lr", config.warmup_lr >= 0),
      ("optimizer", config.optimizer in ft_optim.OPTIMIZERS),
      ("schedule", config.schedule in ft_optim.SCHEDULES),
      ("epoch_clips", config.epoch_clips >= 0),
      ("sample_weights", config.sample_weights in sampling.WEIGHTINGS),
      ("mixup", config.mixup >= 0), ("mask_ratio", 0 <= config.mask_ratio < 1),
      ("freq_mask", config.freq_mask >= 0), ("time_mask", config.time_mask >= 0),
      ("crop_seconds", config.crop_seconds >= 0), ("eval_seconds", config.eval_seconds >= 0),
      ("head_input", config.head_input in augment.HEAD_INPUTS),
  ]
  for key, ok in checks:
    if not ok:
      raise ValueError(f"finetune config: bad {key}={config[key]!r}")


def _multi_label(config, dataset: str, data_dir: str) -> bool:
  if config.multi_label is not None:
    return bool(config.multi_label)
  import tensorflow_datasets as tfds  # Metadata only.

  return bool((tfds.builder(dataset, data_dir=data_dir).info.metadata or {}).get(
      "multi_label", False))


# Knobs that change how a run executes, not what it computes: a finished workdir is
# reused whatever their values.
_EXECUTION_KNOBS = ("num_workers", "log_every", "eval_batch")


def _comparable(config_json: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in config_json.items() if k not in _EXECUTION_KNOBS}


def _finished(workdir: str, source: str, dataset: str, config_json: dict[str, Any]
              ) -> dict[str, Any] | None:
  """The stored result of the same fine-tune finished in `workdir`, else None."""
  path = os.path.join(workdir, "finetune.json")
  if not os.path.isfile(path):
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
      raise ValueError(f"{workdir} holds checkpoints but no finetune.json (an interrupted "
                       "or foreign run); use a new workdir")
    return None
  with open(path) as f:
    done = json.load(f)
  same = (done.get("checkpoint") == source and done.get("dataset") == dataset
          and _comparable(done.get("config", {})) == _comparable(config_json))
  if not same:
    raise ValueError(f"{path} is a finished fine-tune of {done.get('checkpoint')!r} on "
                     f"{done.get('dataset')!r} with another config; use a new workdir")
  logging.info("%s: fine-tuning already finished; returning its result", path)
  return done


def _sample_weights(config, source: Any, num_classes: int, where: str, workdir: str | None
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
  logging.info("AudioSet sampling weights of %d clips in %.1f s", len(source),
               time.time() - start)
  if cache:
    os.makedirs(workdir, exist_ok=True)
    np.save(cache, weights)
  return weights


def run_finetune(checkpoint: str, *, data_dir: str, dataset: str,
                 config: ml_collections.ConfigDict, workdir: str | None = None
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
  directory, source_step = handoff.locate(checkpoint)
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
  if config.crop_seconds > 0:
    crop_samples = int(round(config.crop_seconds * fcfg.sample_rate))
  else:
    # The grid the checkpoint was trained on (its last stage's crop).
    crop_samples = (features.unit_frames(restored.model) - 1) * fcfg.hop_length
  unit_frames = fcfg.num_frames(crop_samples)
  net = build_net(restored, len(classes), unit_frames, config)
  gf, gt = patches.grid_size(net.n_mels, unit_frames, net.patch_size)
  variants = augment.mask_variants(config.head_input, gf, gt, config.mask_ratio)
  setup = Setup(net=net, frontend_cfg=fcfg, norm_stats=restored.norm_stats,
                multi_label=multi_label, freq_mask=config.freq_mask,
                time_mask=augment.scaled_time_mask(config.time_mask, unit_frames),
                mask_variants=variants)

  sources = {s: pipeline.open_source(dataset, s, data_dir)
             for s in {config.train_split, val_split, config.test_split}}
  train_source = sources[config.train_split]
  n_train = len(train_source)
  if config.epoch_clips > n_train:
    raise ValueError(f"finetune config: epoch_clips={config.epoch_clips} exceeds the "
                     f"{n_train} clips of {dataset}:{config.train_split} (drawn without "
                     "replacement)")
  per_epoch = config.epoch_clips or n_train
  batch = min(config.batch, per_epoch)
  if batch < config.batch:
    logging.warning("Batch %d > %d clips per epoch: using %d", config.batch, per_epoch, batch)
  steps_per_epoch = per_epoch // batch
  total = config.epochs * steps_per_epoch
  total = min(total, config.max_steps) if config.max_steps > 0 else total
  tx, schedule = ft_optim.make_optimizer(config, total)
  eval_samples = (int(round(config.eval_seconds * fcfg.sample_rate)) if config.eval_seconds > 0
                  else ft_data.longest_clip([sources[val_split], sources[config.test_split]]))
  weights = _sample_weights(config, train_source, len(classes),
                            f"{dataset}:{config.train_split}", workdir)

  params, batch_stats = init_variables(net, restored.params["encoder"], config.seed)
  opt_state = tx.init(params)
  step_fn = jax.jit(lambda *a: train_step(setup, tx, *a), donate_argnums=(0, 1, 2))
  eval_fn = jax.jit(lambda *a: eval_logits(setup, *a))

  def evaluate(split: str, p, bs) -> float:
    scores, truth = [], []
    for b, n in ft_data.eval_batches(sources[split], samples=eval_samples,
                                     batch=config.eval_batch, num_classes=len(classes),
                                     where=f"{dataset}:{split}"):
      scores.append(np.asarray(eval_fn(p, bs, b))[:n])
      truth.append(b["target"][:n])
    return score(np.concatenate(scores), np.concatenate(truth), multi_label)

  batches = ft_data.train_batches(
      train_source, batch=batch, crop_samples=crop_samples, num_classes=len(classes),
      seed=config.seed, where=f"{dataset}:{config.train_split}", mixup=config.mixup,
      num_workers=config.num_workers, steps_per_epoch=steps_per_epoch,
      epochs=-(-total // steps_per_epoch), weights=weights)
  base_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  logging.info("Fine-tuning %s on %s: %d classes (%s), %d steps of %d (%d per epoch, %s "
               "sampling), crop %d frames, mask variants %s, eval clips %d samples",
               restored.source, dataset, len(classes),
               "multi-label" if multi_label else "single-label", total, batch, steps_per_epoch,
               config.sample_weights, unit_frames, variants, eval_samples)
  history, best, step, start = [], None, 0, time.time()
  epoch = 0
  while step < total:
    epoch += 1
    for _ in range(min(steps_per_epoch, total - step)):
      lr = float(schedule(step))
      params, batch_stats, opt_state, out = step_fn(
          params, batch_stats, opt_state, next(batches), jax.random.fold_in(base_key, step))
      step += 1
      loss = float(out["loss"])
      if not np.isfinite(loss):
        raise FloatingPointError(f"fine-tuning loss is {loss} at step {step} (epoch {epoch})")
      if step % config.log_every == 0:
        logging.info("step %d loss %.4f grad_norm %.3f lr %.4g", step, loss,
                     float(out["grad_norm"]), lr)
    val = evaluate(val_split, params, batch_stats)
    history.append({"epoch": epoch, "step": step, "loss": loss, "val": val, "lr": lr})
    logging.info("epoch %d step %d loss %.4f val %s %.4f", epoch, step, loss,
                 "mAP" if multi_label else "accuracy", val)
    if best is None or val > best["val"]:  # EVAR keeps the first epoch of the best score.
      host = jax.tree_util.tree_map(lambda a: np.array(a, copy=True), (params, batch_stats))
      best = {"val": val, "epoch": epoch, "step": step, "params": host[0],
              "batch_stats": host[1]}
  test = (best["val"] if val_split == config.test_split
          else evaluate(config.test_split, best["params"], best["batch_stats"]))
  result = {
      "task": "finetune", "metric": "mAP" if multi_label else "accuracy",
      "val": best["val"], "test": test, "epochs": epoch, "steps": step,
      "best_epoch": best["epoch"], "best_step": best["step"], "dataset": dataset,
      "train_split": config.train_split, "val_split": val_split,
      "test_split": config.test_split, "checkpoint": restored.source,
      "multi_label": multi_label, "class_names": classes, "unit_frames": unit_frames,
      "input_frames": int(net.input_frames), "size": net.size, "head_input": net.head_input,
      "steps_per_epoch": steps_per_epoch, "batch": batch,
      "mask_variants": [list(v) for v in variants],
      "norm_stats": list(restored.norm_stats), "seconds": round(time.time() - start, 1),
      "history": history, "config": config_json,
  }
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    if config.save_checkpoint:
      facts = {k: result[k] for k in (
          "dataset", "train_split", "val_split", "test_split", "metric", "val", "test",
          "best_epoch", "best_step", "epochs", "steps", "multi_label", "class_names",
          "head_input", "unit_frames", "checkpoint")}
      facts["trained_input_frames"] = result["input_frames"]
      facts["config"] = config_json
      result["workdir_checkpoint"] = ft_checkpoint.write(
          workdir, restored=restored, net=net, params=best["params"],
          batch_stats=best["batch_stats"], step=best["step"], facts=facts)
    with open(os.path.join(workdir, "finetune.json"), "w") as f:  # Written last: "done".
      json.dump(result, f, indent=1)
  return result
