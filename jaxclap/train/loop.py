"""`train_and_evaluate`: the one training loop, read top to bottom."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxclap import sharding as shd
from jaxclap.audio import frontend as fe
from jaxclap.audio import norm_stats as ns
from jaxclap.data import build as data_build
from jaxclap.data import pipeline
from jaxclap.models import m2d
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import config as config_lib
from jaxclap.train import optim
from jaxclap.train import state as state_lib
from jaxclap.train import step as step_lib
from jaxclap.train.progress import Progress


class PreemptionGuard:
  """Turns SIGTERM into a flag the loop polls, so it can save before exiting.

  Multi-process (TPU pod) runs leave signals to JAX and ask Orbax's preemption sync
  point instead, so that every host stops at the same step.
  """

  def __init__(self, manager):
    self._manager = manager
    self._flag = False
    self._own = jax.process_count() == 1 and jax.default_backend() != "tpu"
    if self._own:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._flag = True

  def should_stop(self, step: int) -> bool:
    if self._own:
      return self._flag
    return self._manager.reached_preemption(step)

  def close(self) -> None:
    if self._own:
      signal.signal(signal.SIGTERM, self._previous)


def _data_facts(config: ml_collections.ConfigDict) -> tuple[list, list, dict]:
  """Builds the demo set if asked, then checks every source's embedding dim and sizes."""
  data_dir = os.path.expanduser(config.data.data_dir)
  train = config_lib.parse_sources(config.data.train, with_weight=True)
  val = config_lib.parse_sources(config.data.val, with_weight=False) if config.data.val else []
  names = {n for n, *_ in train} | {n for n, _ in val}
  if "jaxclap_demo" in names and config.data.build_demo:
    data_build.ensure_demo_dataset(data_dir, text_model=config.data.text_model,
                                   num_clips=config.data.demo_clips, seed=0)
  facts = {}
  for name in sorted(names):
    info = data_build.dataset_info(name, data_dir)
    if info["embedding_dim"] != config.model.text_dim:
      raise ValueError(
          f"Dataset {name!r} in {data_dir} holds {info['embedding_dim']}-d sentence embeddings "
          f"({info['text_model']}) but config.model.text_dim={config.model.text_dim}; set "
          f"--config.model.text_dim={info['embedding_dim']} or rebuild the dataset with a "
          f"{config.model.text_dim}-d text model.")
    facts[name] = info
  return train, val, facts


def _open(specs, data_dir: str) -> list[Any]:
  return [pipeline.open_source(name, split, data_dir) for name, split, *_ in specs]


def _validate(eval_step, state, val_loader, mesh) -> dict[str, float]:
  """Validation loss over the split's first-caption batches and audio→text recall."""
  losses, audio, text = [], [], []
  for batch in val_loader:
    batch = {k: v for k, v in batch.items() if k in ("audio", "audio_len", "text_embedding")}
    metrics, a, t = eval_step(state, shd.global_batch(batch, mesh))
    losses.append(jax.device_get(metrics))
    audio.append(np.asarray(jax.device_get(a)))
    text.append(np.asarray(jax.device_get(t)))
  if not losses:
    return {}
  out = {f"val_{k}": float(np.mean([m[k] for m in losses])) for k in ("loss", "loss_m2d",
                                                                        "loss_clap")}
  out.update(step_lib.retrieval_recall(np.concatenate(audio), np.concatenate(text)))
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains stage 1 in `workdir`, resuming from its latest complete checkpoint."""
  config_lib.validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  data_dir = os.path.expanduser(config.data.data_dir)
  train_specs, val_specs, facts = _data_facts(config)

  mesh = shd.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp)
  rules = [tuple(r) for r in config.mesh.rules]
  n_dev = mesh.size
  if config.train.global_batch % n_dev:
    raise ValueError(f"train.global_batch={config.train.global_batch} must be a multiple of "
                     f"the device count {n_dev}")
  fcfg = fe.FrontendConfig.for_sample_rate(config.frontend.sample_rate)
  crop_samples = (config.data.crop_frames - 1) * fcfg.hop_length
  # The trained crop fixes the position table's width and the chunk length of long inputs.
  model = m2d.build_model({**config.model.to_dict(), "input_frames": config.data.crop_frames})

  epoch_size = sum(facts[name]["splits"][split] for name, split, _ in train_specs)
  steps_per_epoch = max(epoch_size // config.train.global_batch, 1)
  total_steps = (config.train.num_steps if config.train.num_steps > 0
                 else int(round(config.train.epochs * steps_per_epoch)))
  schedule = optim.learning_rate(config.optim, global_batch=config.train.global_batch,
                                 steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  tx = optim.make_optimizer(config.optim, schedule)

  manager = ckpt.make_manager(workdir, keep=config.train.keep_checkpoints,
                              async_save=config.train.async_checkpoint)
  latest = manager.latest_step()
  loader = pipeline.make_loader(
      _open(train_specs, data_dir), [w for *_, w in train_specs],
      global_batch=config.train.global_batch, crop_samples=crop_samples, seed=config.seed,
      num_workers=config.data.num_workers)
  iterator = ckpt.IteratorSnapshot(iter(loader))

  if latest is not None:
    meta = ckpt.read_meta(manager, latest)
    diffs = ckpt.model_config_diff(meta["config"], config)
    if diffs:
      raise ValueError(f"Refusing to resume {workdir} (step {latest}) with a config that changes "
                       "the model: " + "; ".join(diffs) + ". Use a new --workdir.")
    norm_stats = tuple(meta["norm_stats"])
  elif config.frontend.norm_stats is not None:
    norm_stats = tuple(config.frontend.norm_stats)
  else:
    stats_loader = pipeline.make_loader(
        _open(train_specs, data_dir), [w for *_, w in train_specs],
        global_batch=config.train.global_batch, crop_samples=crop_samples,
        seed=config.seed + 1, num_workers=config.data.num_workers)
    norm_stats = ns.compute_norm_stats(iter(stats_loader), fcfg,
                                       num_crops=config.frontend.norm_stats_crops)
    logging.info("Computed norm_stats %s", norm_stats)
  norm_stats = tuple(float(x) for x in norm_stats)

  init_params = lambda k: m2d.init_params(model, k, n_frames=config.data.crop_frames,
                                          n_mels=fcfg.n_mels, text_dim=config.model.text_dim)
  state, state_sh = state_lib.create_sharded_state(
      init_params=init_params, tx=tx, seed=config.seed, norm_stats=norm_stats, mesh=mesh,
      rules=rules)
  if latest is not None:
    state, _ = ckpt.restore(manager, latest, abstract_state=state_lib.abstract_state(
        state_sh, state), iterator=iterator)
    logging.info("Resumed from %s at step %d", workdir, latest)
  train_step, eval_step = step_lib.jit_steps(
      mesh=mesh, state_sh=state_sh, model=model, frontend_cfg=fcfg, tx=tx, schedule=schedule,
      total_steps=total_steps, train_cfg=config.train)

  meta = {"config": json.loads(config.to_json_best_effort()), "norm_stats": list(norm_stats),
          "text_models": {n: f["text_model"] for n, f in facts.items()},
          "total_steps": total_steps, "steps_per_epoch": steps_per_epoch}
  val_loader = None
  if val_specs and config.train.val_every > 0:
    vname, vsplit = val_specs[0]
    n_val = facts[vname]["splits"][vsplit]
    eval_batch = min(config.train.global_batch, (n_val // n_dev) * n_dev)
    if eval_batch >= 2:
      val_loader = pipeline.make_loader(
          _open(val_specs, data_dir), None, global_batch=eval_batch, crop_samples=crop_samples,
          seed=0, shuffle=False, num_epochs=1, random_crop=False, caption="first")

  def run_validation(step: int) -> dict[str, float]:
    if val_loader is None:
      return {}
    out = _validate(eval_step, state, _limited(val_loader, config.train.val_batches), mesh)
    progress.log_scalars(step, out)
    print(f"[validation] step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in out.items()),
          flush=True)
    return out

  start = int(jax.device_get(state.step))
  stop_at = total_steps if config.train.stop_after <= 0 else min(config.train.stop_after,
                                                                 total_steps)
  progress = Progress(workdir, start=start, total=total_steps,
                      global_batch=config.train.global_batch)
  summary: dict[str, Any] = {"start_step": start, "total_steps": total_steps,
                             "norm_stats": list(norm_stats)}
  if start == 0:
    summary["initial_validation"] = run_validation(0)
  guard = PreemptionGuard(manager)

  def check_finite() -> None:
    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
      manager.wait_until_finished()
      raise FloatingPointError(
          f"Non-finite loss or gradient at step {bad}; stopped without saving. The last good "
          f"checkpoint is step {manager.latest_step()} in {workdir}.")

  def save(step: int) -> None:
    check_finite()
    ckpt.save(manager, step, state=state, iterator=iterator, meta=dict(meta, step=step))

  step = start
  preempted = False
  try:
    while step < stop_at:
      batch = next(iterator._iterator)
      batch = {k: batch[k] for k in ("audio", "audio_len", "text_embedding")}
      if step == config.train.inject_nan_at:
        batch["audio"] = np.full_like(batch["audio"], np.nan)
      state, metrics = train_step(state, shd.global_batch(batch, mesh))
      step += 1
      progress.record(step, metrics)
      if step % config.train.log_every == 0 or step == stop_at:
        check_finite()
        progress.flush(step)
      if guard.should_stop(step):
        preempted = True
        break
      if step % config.train.checkpoint_every == 0 and step < stop_at:
        save(step)
      if config.train.val_every and step % config.train.val_every == 0 and step < stop_at:
        run_validation(step)
    save(step)
    manager.wait_until_finished()
  finally:
    guard.close()
  if preempted:
    print(f"SIGTERM: saved step {step} in {workdir}; rerun the same command to resume.",
          flush=True)
  elif step == total_steps:
    summary["final_validation"] = run_validation(step)
  summary.update(progress.summary(), end_step=step, preempted=preempted)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  progress.close()
  manager.close()
  return summary


def _limited(loader, n: int):
  for i, batch in enumerate(loader):
    if n and i >= n:
      return
    yield batch
