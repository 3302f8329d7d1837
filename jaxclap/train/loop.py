"""`train_and_evaluate`: the one training loop, read top to bottom."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxclap import paths
from jaxclap import sharding as shd
from jaxclap.audio import frontend as fe
from jaxclap.audio import norm_stats as ns
from jaxclap.data import build as data_build
from jaxclap.data import info as data_info
from jaxclap.data import mixture, pipeline
from jaxclap.run_meta import RunMeta
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import config as config_lib
from jaxclap.train import distill as distill_lib
from jaxclap.train import eval_report, evaluators, handoff, objectives, optim, validation
from jaxclap.train import finetune as ft_lib
from jaxclap.train import state as state_lib
from jaxclap.train import step as step_lib
from jaxclap.train.progress import Progress


class PreemptionGuard:
  """Turns SIGTERM into a flag the loop polls, so it can save before exiting.

  Runs under `jax.distributed` (multi-host, or one SLURM task) leave signals to JAX, whose
  preemption notifier holds SIGTERM from `initialize()` on (a signal during start-up is
  not lost), and ask Orbax's preemption sync point, so that every host stops at the same
  step; so do TPU runs.
  """

  def __init__(self, manager):
    self._manager = manager
    self._flag = False
    self._own = not jax.distributed.is_initialized() and jax.default_backend() != "tpu"
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


def _open(specs, data_dir: str, facts: dict) -> list[Any]:
  return [
    pipeline.open_source(name, split, data_dir, facts[name].get("caption_table", ""))
    for name, split, *_ in specs
  ]


def _norm_stats(config, resume_meta, init_meta, stats_loader_fn, fcfg) -> tuple[float, float]:
  """Resume's > earlier stage's > config's > computed from random training crops."""
  for meta in (resume_meta, init_meta):
    if meta is not None:
      return tuple(float(x) for x in meta.norm_stats)
  if config.frontend.norm_stats is not None:
    return tuple(float(x) for x in config.frontend.norm_stats)
  stats = ns.compute_norm_stats(
    iter(stats_loader_fn()), fcfg, num_crops=config.frontend.norm_stats_crops
  )
  logging.info("Computed norm_stats %s", stats)
  return tuple(float(x) for x in stats)


def _report_evals(evals, workdir_path, config, started: float) -> dict[str, Any]:
  """Prints the final table and the evaluators' share of the wall time; writes the plot."""
  wall = time.perf_counter() - started
  table, rows = eval_report.final_table(evals.specs, evals.history, evals.baselines)
  plot = None
  if config.evaluate.plot and jax.process_index() == 0:
    plot = eval_report.plot_curves(
      os.fspath(workdir_path / "plots" / "learning_curve.png"),
      evals.specs,
      evals.history,
      evals.baselines,
    )
  share = evals.seconds / max(wall, 1e-9)
  if jax.process_index() == 0:
    print(table, flush=True)
    print(
      f"[eval] evaluators took {evals.seconds:.1f} s of {wall:.1f} s wall time "
      f"({100 * share:.1f}%)",
      flush=True,
    )
  return {
    "table": rows,
    "history": evals.history,
    "baselines": evals.baselines,
    "seconds": evals.seconds,
    "wall_seconds": wall,
    "time_share": share,
    "plot": plot,
  }


def _pretrain_data(config: ml_collections.ConfigDict, data_dir: str):
  """A pretraining run's dataset specs and facts; builds the demo set when asked."""
  train, val, zs = data_info.run_sources(config)
  names = {n for n, *_ in train} | {n for n, _ in val} | {n for n, _ in zs}
  if "jaxclap_demo" in names and config.data.build_demo:
    data_build.ensure_demo_dataset(
      data_dir, text_model=config.data.text_model, num_clips=config.data.demo_clips, seed=0
    )
  return train, val, zs, data_info.run_facts(config, data_dir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.stage` in `workdir`, resuming from its latest complete checkpoint.

  Start order: the workdir's own latest checkpoint > `init.workdir` (an earlier stage)
  > from scratch. Stage "finetune" (1.1) always starts from `init.workdir`'s encoder; its
  finished workdir returns the stored result.
  """
  config_lib.validate(config)
  started = time.perf_counter()  # The evaluators' share of the wall time is reported.
  workdir_path = paths.resolve(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  workdir = os.fspath(workdir_path)
  data_dir = paths.data_dir(config.data.data_dir)
  finetuning = config.stage == "finetune"
  if finetuning:
    done = ft_lib.finished(workdir, config)
    if done is not None:
      return done
  distilling, teacher = config.stage == "distill", None
  if distilling:
    done = distill_lib.finished(workdir)
    if done is not None:
      return done
    teacher = distill_lib.load_teacher(config.distill.teacher, config.distill.teacher_name)
    config = distill_lib.student_config(config, teacher)  # The teacher's front end and crop.

  mesh = shd.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp)
  rules = [tuple(r) for r in config.mesh.rules]
  n_dev = mesh.size
  # The data is read and checked before anything is written to the workdir.
  if finetuning:
    ft = ft_lib.make_plan(config, data_dir=data_dir, workdir=workdir, n_devices=n_dev)
  else:
    ft, pretrain_data = None, _pretrain_data(config, data_dir)
  manager = ckpt.make_manager(
    workdir, keep=config.train.keep_checkpoints, async_save=config.train.async_checkpoint
  )
  latest = ckpt.resume_step(manager)  # The newest intact step; damaged ones are set aside.
  resume_meta = init_meta = init = None
  if latest is not None:
    resume_meta = ckpt.read_meta(manager, latest)
    if finetuning and resume_meta.finetune:  # Exported, then stopped before finetune.json.
      out = ft_lib.result_of_export(resume_meta, f"{manager.directory / str(latest)}")
      ft_lib.finished_check(out, config, workdir)
      ft_lib.write_result(workdir, out)
      manager.close()
      return out
    if distilling and resume_meta.distill:  # The student written, then stopped before the result.
      manager.close()
      return _finish_distill(workdir, resume_meta.distill)
    keys = ckpt.MODEL_KEYS + (ckpt.TEXT_KEYS if config.stage == "stage2" else ())
    diffs = ckpt.model_config_diff(resume_meta.config, config, keys)
    if diffs:
      raise ValueError(
        f"Refusing to resume {workdir} (step {latest}) with a config that changes "
        "the model: " + "; ".join(diffs) + ". Use a new --workdir."
      )

  notes: list[str] = []  # Warnings about the run's set-up, kept in summary.json.
  if ft:
    logging.info("%s", ft.describe())
    init, init_meta = (ft.saved, ft.saved.meta) if latest is None else (None, None)
    global_batch, steps_per_epoch, total_steps = ft.batch, ft.steps_per_epoch, ft.total_steps
    crop_samples = ft.crop_samples
    tx, schedule, seed = ft.tx, ft.schedule, config.seed
    train_loader = ft.train_loader
    facts, mixture_shares, fcfg = {}, None, ft.objective.frontend_cfg
    eval_specs = evaluators.parse(config)  # Probes of the encoder being fine-tuned.
    val_specs = zs_specs = []
  else:
    train_specs, val_specs, zs_specs, facts = pretrain_data
    global_batch, seed = config.train.global_batch, config.seed
    if global_batch % n_dev:
      raise ValueError(
        f"train.global_batch={global_batch} must be a multiple of the device count {n_dev}"
      )
    fcfg = fe.FrontendConfig.for_sample_rate(config.frontend.sample_rate)
    crop_samples = (config.data.crop_frames - 1) * fcfg.hop_length
    # An epoch is one pass of the mixture as the loader draws it (pipeline.MixedSource).
    sizes = [facts[name]["splits"][split] for name, split, _ in train_specs]
    weights = mixture.spec_weights(train_specs)
    epoch_size = int(mixture.epoch_counts(sizes, weights).sum())
    steps_per_epoch = max(epoch_size // global_batch, 1)
    total_steps = (
      config.train.num_steps
      if config.train.num_steps > 0
      else int(round(config.train.epochs * steps_per_epoch))
    )
    mixture_shares = mixture.log_shares(
      train_specs, sizes, total_steps * global_batch, printer=jax.process_index() == 0
    )
    schedule = optim.learning_rate(
      config.optim,
      global_batch=global_batch,
      steps_per_epoch=steps_per_epoch,
      total_steps=total_steps,
    )
    tx = optim.make_optimizer(config.optim, schedule)
    eval_specs = evaluators.parse(config)

    def train_loader(seed: int):
      return pipeline.make_loader(
        _open(train_specs, data_dir, facts),
        weights,
        global_batch=global_batch,
        crop_samples=crop_samples,
        seed=seed,
        num_workers=config.data.num_workers,
        min_samples=int(config.data.min_seconds * fcfg.sample_rate),
      )

    if latest is None and config.init.workdir:
      init = ckpt.load(config.init.workdir)
      init_meta = init.meta
      if config.stage == "stage2" and init_meta.stage == "stage1" and not init_meta.finetune:
        # The official chain is 1 -> 1.1 -> 2: stage 2 starts from the fine-tuned encoder.
        message = (
          f"stage 2 starts from {init.source}, a stage-1 checkpoint that was not fine-tuned; "
          "the official chain starts it from stage 1.1 (configs/finetune.py:as2m)"
        )
        logging.warning("%s", message)
        notes.append(message)
        if jax.process_index() == 0:
          print(f"WARNING: {message}", flush=True)
  eval_facts = {
    s.dataset: data_info.eval_facts(s.dataset, facts, config, data_dir) for s in eval_specs
  }

  pos_table = config.model.pos_table
  if init is not None:
    logging.info("Starting from %s (%s)", init.source, "finetune" if ft else config.init.parts)
    # A stored (imported) position table is part of the encoder: the next stage keeps it.
    table = init_meta.pos_table or "sincos"
    if table != pos_table:
      logging.info("model.pos_table=%r from %s", table, init.source)
      pos_table = table
  # The trained position table's width comes from stage 1 and travels with the checkpoints.
  input_frames, _ = (resume_meta or init_meta or RunMeta()).frames(config.data.crop_frames)

  iterator = ckpt.IteratorSnapshot(iter(train_loader(seed)))
  if ft:
    norm_stats = tuple(float(x) for x in ft.saved.state["norm_stats"])  # The encoder's own.
  else:
    norm_stats = _norm_stats(config, resume_meta, init_meta, lambda: train_loader(seed + 1), fcfg)
  saved_config = json.loads(config.to_json_best_effort())
  saved_config["model"]["pos_table"] = pos_table  # The config the checkpoints describe.
  meta = RunMeta(
    config=saved_config,
    norm_stats=norm_stats,
    # With caption tables: the tables' model, the one prompts must go through.
    text_models={
      n: f["text_model"]
      for n, f in facts.items()
      if "caption_table" in f or not config.data.caption_table
    },
    text_runtime=next((f["text_runtime"] for f in facts.values() if "text_runtime" in f), None),
    input_frames=input_frames,
    unit_frames=config.data.crop_frames,
    stage=config.stage,
    total_steps=total_steps,
    steps_per_epoch=steps_per_epoch,
  )
  if ft:
    objective, text_assets = ft.objective, None
  else:
    sentence_model = next(
      (f["text_model"] for n, f in facts.items() if n in meta.text_models), None
    )
    objective = (
      distill_lib.build(config, teacher)
      if distilling
      else objectives.build(config, meta, sentence_model=sentence_model)
    )
    # Stage 2 saves its text tower's architecture and tokenizer: restoring needs no folder.
    text_assets = objective.net.text_assets() if config.stage == "stage2" else None
  state, state_sh = state_lib.create_sharded_state(
    init_params=objective.init,
    tx=tx,
    seed=seed,
    norm_stats=norm_stats,
    mesh=mesh,
    rules=rules,
  )
  if distilling:  # The frozen teacher (a resumed run restores the same arrays).
    state = objective.lay_in(state)
  init_state = state  # The encoder at initialisation: an evaluator baseline.
  if ft and latest is None and init is not None:
    # Fine-tuning's baseline is the encoder it starts from (the init above is all zeros).
    state = init_state = handoff.apply(state, init.state, parts="audio_encoder", source=init.source)
    init = None
  if latest is not None:
    state, latest = ckpt.restore_intact(
      manager, latest, abstract_state=state_lib.abstract_state(state_sh, state), iterator=iterator
    )
    logging.info("Resumed from %s at step %d", workdir, latest)
  elif init is not None:
    parts = "audio_encoder" if ft else config.init.parts
    state = handoff.apply(state, init.state, parts=parts, source=init.source)
  steps = step_lib.jit_steps(
    mesh=mesh,
    state_sh=state_sh,
    objective=objective,
    tx=tx,
    schedule=schedule,
    grad_accum=config.train.grad_accum,
  )
  ft_steps = ft_lib.jit_evaluation(ft, mesh, state_sh) if ft else None
  evals = None
  if eval_specs:
    evals = evaluators.Evaluators(
      eval_specs,
      config=config,
      facts=eval_facts,
      data_dir=data_dir,
      objective=objective,
      mesh=mesh,
      state_sh=state_sh,
      crop_samples=crop_samples,
      fcfg=fcfg,
    )
    evals.run_baselines(init_state, steps)
  del init_state  # A fresh run's first step donates these buffers.

  def eval_loader(specs):
    name, split = specs[0]
    n = facts[name]["splits"][split]
    batch = min(global_batch, (n // n_dev) * n_dev)
    if batch < 2:
      return None
    return pipeline.make_loader(
      _open(specs, data_dir, facts),
      None,
      global_batch=batch,
      crop_samples=crop_samples,
      seed=0,
      shuffle=False,
      num_epochs=1,
      random_crop=False,
      caption="first",
    )

  val_loader = eval_loader(val_specs) if val_specs and config.train.val_every > 0 else None
  zs_loader = eval_loader(zs_specs) if zs_specs and config.train.val_every > 0 else None

  def run_validation(step: int) -> dict[str, float]:
    out: dict[str, float] = {}
    if val_loader is not None:
      out.update(
        validation.retrieval(steps, state, val_loader, objective, mesh, config.train.val_batches)
      )
    if zs_loader is not None:
      out.update(
        validation.zero_shot(
          steps,
          state,
          zs_loader,
          objective,
          mesh,
          class_names=facts[zs_specs[0][0]]["class_names"],
          template=config.data.zero_shot_template,
        )
      )
    if out:
      progress.log_scalars(step, out)
      print(
        f"[validation] step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in out.items()),
        flush=True,
      )
    return out

  def end_epoch(step: int, metrics: dict[str, jax.Array]) -> None:
    """Fine-tuning: the epoch's validation score, and the best epoch kept in the state."""
    nonlocal state
    epoch = -(-step // ft.steps_per_epoch)
    val = ft_lib.evaluate_split(ft, "val", state, ft_steps["current"], mesh)
    state = ft_steps["keep_best"](
      state, np.float32(val), np.int32(epoch), metrics["loss"], schedule(step - 1)
    )
    progress.log_scalars(step, {"finetune_val": val})
    print(
      f"[finetune] epoch {epoch} step {step}: loss {float(metrics['loss']):.4f} "
      f"val {'mAP' if ft.objective.multi_label else 'accuracy'} {val:.4f}",
      flush=True,
    )

  start = int(jax.device_get(state.step))
  stop_at = (
    total_steps if config.train.stop_after <= 0 else min(config.train.stop_after, total_steps)
  )
  progress = Progress(workdir, start=start, total=total_steps, global_batch=global_batch)
  summary: dict[str, Any] = {
    "stage": config.stage,
    "start_step": start,
    "total_steps": total_steps,
    "norm_stats": list(norm_stats),
    "mixture": mixture_shares,
    "warnings": notes,
  }
  if start == 0:
    summary["initial_validation"] = run_validation(0)
  guard = PreemptionGuard(manager)

  def check_finite() -> None:
    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
      manager.wait_until_finished()
      raise FloatingPointError(
        f"Non-finite loss or gradient at step {bad}; stopped without saving. The last good "
        f"checkpoint is step {manager.latest_step()} in {workdir}."
      )

  def save(step: int) -> None:
    check_finite()
    ckpt.save(
      manager,
      step,
      state=state,
      iterator=iterator,
      meta=meta.replace(step=step),
      text=text_assets,
      evals=evals.latest() if evals else None,
    )

  step = start
  preempted = False
  try:
    while step < stop_at:
      batch = next(iterator.live)
      if step == config.debug.nan_at_step:
        batch["audio"] = np.full_like(batch["audio"], np.nan)
      state, metrics = steps["train"](state, step_lib.device_batch(batch, objective, mesh))
      step += 1
      progress.record(step, metrics)
      if config.debug.step_sleep_s > 0:
        time.sleep(config.debug.step_sleep_s)
      if step % config.train.log_every == 0 or step == stop_at:
        check_finite()
        progress.flush(step)
      if ft and ft.end_of_epoch(step):  # Before a preemption save: the epoch is whole.
        check_finite()
        end_epoch(step, metrics)
      if guard.should_stop(step):
        preempted = True
        break
      if evals and step < stop_at:  # Before the save, which keeps the newest results.
        evals.run(step, state, steps, progress)
      if step % config.train.checkpoint_every == 0 and step < stop_at:
        save(step)
      if config.train.val_every and step % config.train.val_every == 0 and step < stop_at:
        run_validation(step)
    if evals and not preempted:
      evals.run(step, state, steps, progress, specs=evals.specs)  # Every evaluator at the end.
    if not ((ft or distilling) and step == total_steps):  # Finished: the export instead.
      save(step)
    manager.wait_until_finished()
  finally:
    guard.close()
  if preempted:
    print(f"SIGTERM: saved step {step} in {workdir}; rerun the same command to resume.", flush=True)
  elif step == total_steps and not ft:
    summary["final_validation"] = run_validation(step)
  summary.update(progress.summary(), end_step=step, preempted=preempted)
  if evals:
    summary["evaluators"] = _report_evals(evals, workdir_path, config, started)
  progress.close()
  manager.close()
  if ft and step == total_steps:
    return _finish_finetune(ft, ft_steps, state, mesh, workdir, summary, started)
  if distilling and step == total_steps:
    facts = {**distill_lib.facts(objective, state), "summary": summary}
    distill_lib.write_student(objective, state, workdir=workdir, step=step, facts=facts)
    return _finish_distill(workdir, facts)
  if jax.process_index() == 0:
    (workdir_path / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary


def _finish_distill(workdir: str, facts: dict[str, Any]) -> dict[str, Any]:
  """A finished distillation: summary.json and distill.json from the student's facts."""
  out = {**facts["summary"], "distill": {k: v for k, v in facts.items() if k != "summary"}}
  if jax.process_index() == 0:
    (paths.resolve(workdir) / "summary.json").write_text(json.dumps(out, indent=2))
  distill_lib.write_result(workdir, out)
  return out


def _finish_finetune(ft, ft_steps, state, mesh, workdir: str, summary, started: float) -> dict:
  """Scores the best epoch on the test split, writes it as the workdir's final checkpoint
  and finetune.json (the run's result, also summary.json's "finetune")."""
  record = ft_lib.history(state)
  if ft.val_split == ft.knobs.test_split:
    test = record[1]["val"]
  else:
    test = ft_lib.evaluate_split(ft, "test", state, ft_steps["best"], mesh)
  out = ft_lib.result(ft, state, test, time.perf_counter() - started, record)
  out["workdir_checkpoint"] = ft_lib.write_export(ft, state, out, workdir)
  print(
    f"[finetune] best epoch {out['best_epoch']} (step {out['best_step']}): val {out['val']:.4f}"
    f" test {out['metric']} {test:.4f}",
    flush=True,
  )
  if jax.process_index() == 0:
    summary = {**summary, "finetune": {k: v for k, v in out.items() if k != "history"}}
    (paths.resolve(workdir) / "summary.json").write_text(json.dumps(summary, indent=2))
  ft_lib.write_result(workdir, out)
  return out
