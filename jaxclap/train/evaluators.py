"""Evaluators run inside training: any evaluator kind (`score/kinds.py`) on labelled splits.

big_vision style: `config.evaluate.evaluators` names each with a kind, a "dataset:split" and
a period in steps. Per evaluation every split passes once (bounded to `max_clips`) through
one jitted, batch-sharded function that returns clip features (mean-pooled frozen encoder
features, as the linear-probe eval), log-mel statistics and CLAP embeddings; the kinds score
them, the probes over `evaluate.folds` stratified folds of the split. The baselines (log-mel
statistics, the encoder at initialisation) go through the same code once per run and are
logged beside the model at every evaluation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import threadpoolctl
from jax.experimental import multihost_utils

from jaxclap import paths
from jaxclap import sharding as shd
from jaxclap.audio import frontend as fe
from jaxclap.data import info as data_info
from jaxclap.data import pipeline
from jaxclap.models import features
from jaxclap.score import crossval, kinds
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import config as config_lib
from jaxclap.train import distill_eval, handoff, objectives, step
from jaxclap.train import state as state_lib

# What each baseline can be scored on: log-mel statistics have no text side.
BASELINES = {"logmel": kinds.FEATURE_KINDS, "init": config_lib.EVAL_KINDS}
# A distillation also scores its teacher (train/distill_eval.py); other runs have no column.
BASELINE_NAMES = {"logmel": "log-mel stats", "init": "initial encoder", "teacher": "teacher"}


@dataclasses.dataclass(frozen=True)
class Spec:
  """One evaluator: its name, kind, labelled split and period in steps."""

  name: str
  kind: str
  dataset: str
  split: str
  every: int


def parse(config: ml_collections.ConfigDict) -> list[Spec]:
  """The config's evaluators, by name (ConfigDict keeps its keys sorted)."""
  out = []
  for name, e in config.evaluate.evaluators.items():
    ((dataset, split),) = config_lib.parse_sources(e.data, with_weight=False)
    out.append(Spec(name=name, kind=e.kind, dataset=dataset, split=split, every=int(e.every)))
  return out


def eval_batch_size(n: int, cap: int, n_dev: int) -> int:
  """The multiple of `n_dev` up to `cap` that drops the fewest of `n` clips (larger on ties)."""
  sizes = range(n_dev, max(min(cap, n), n_dev) + 1, n_dev)
  return min(sizes, key=lambda b: (n % b, -b))


def _outputs_fn(objective, fcfg: fe.FrontendConfig, stage: str) -> Callable:
  """(state, batch) -> clip features, log-mel statistics, CLAP audio and text embeddings."""

  if stage == "distill":  # The student and its teacher.
    return distill_eval.outputs_fn(objective, fcfg)

  def fn(state, batch):
    x = fe.waveform_input(batch, fcfg, state.norm_stats)
    model = objective.model
    logmel = jnp.concatenate([x.mean(axis=-1), x.std(axis=-1)], axis=-1)
    if stage == "finetune":  # The classifier's pooled head input; no text side.
      valid = fe.valid_frames(batch["audio_len"], fcfg)
      variables = {"params": state.params, "batch_stats": state.frozen["batch_stats"]}
      clip = model.apply(variables, x, valid, method="features")
      return {"features": clip, "logmel": logmel}
    if stage == "stage1":
      clip, audio = features.clip_features_and_clap(state.params, x, model=model)
    else:
      clip = features.clip_features(
        objective.net.merged(state.params, state.frozen), x, model=model
      )
      audio = objective.audio_embed(state.params, state.frozen, batch, state.norm_stats)
    return {
      "features": clip,
      # Per-band mean and std over time of the normalised log-mel: the free baseline.
      "logmel": logmel,
      "audio": audio,
      "text": objective.text_embed(state.params, state.frozen, batch),
    }

  return fn


def _one_blas_thread():
  """Caps numpy's BLAS at one thread: on small matrices its spinning threads fight XLA's
  (a probe took 50 s instead of 3 s on a loaded 2-core machine)."""
  return threadpoolctl.threadpool_limits(limits=1, user_api="blas")


class Evaluators:
  """The config's evaluators, their baselines and their history; runs on every process."""

  def __init__(
    self,
    specs: list[Spec],
    *,
    config: ml_collections.ConfigDict,
    facts: dict[str, dict],
    data_dir: str,
    objective,
    mesh,
    state_sh,
    crop_samples: int,
    fcfg: fe.FrontendConfig,
  ):
    self.specs = specs
    self._cfg = config.evaluate
    self._template = config.data.zero_shot_template
    self._facts = facts
    self._data_dir = data_dir
    self._objective = objective
    self._mesh = mesh
    self._crop = crop_samples
    self._stage = config.stage
    self._outputs = jax.jit(
      _outputs_fn(objective, fcfg, config.stage),
      in_shardings=(state_sh, shd.batch_sharding(mesh)),
      out_shardings=shd.replicated(mesh),
    )
    self.baselines: dict[str, dict[str, dict[str, float]]] = {}  # name -> baseline -> metrics
    self.history: list[dict[str, Any]] = []  # {"step", "name", metric: value}
    self.seconds = 0.0  # Wall time spent here, baselines included.
    self._printer = jax.process_index() == 0

  def _pass(self, state, dataset: str, split: str) -> dict[str, np.ndarray]:
    """One bounded pass over a split: the outputs of `_outputs_fn`, labels and captions."""
    n = self._facts[dataset]["splits"][split]
    if self._cfg.max_clips > 0:
      n = min(n, self._cfg.max_clips)
    batch = eval_batch_size(n, self._cfg.batch, self._mesh.size)
    loader = pipeline.make_loader(
      pipeline.open_source(
        dataset, split, self._data_dir, self._facts[dataset].get("caption_table", "")
      ),
      None,
      global_batch=batch,
      crop_samples=self._crop,
      seed=0,
      shuffle=False,
      num_epochs=1,
      random_crop=False,
      caption="first",
    )
    out: dict[str, list] = {}
    for i, b in enumerate(loader):
      if i * batch >= n:
        break
      got = jax.device_get(self._outputs(state, self._device_batch(b)))
      got["label"] = multihost_utils.process_allgather(np.asarray(b["label"]), tiled=True)
      for k, v in got.items():
        out.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in out.items()}

  def _device_batch(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
    """What the outputs read: audio (fine-tuning), or the stage's own inputs."""
    if self._stage == "finetune":
      return shd.global_batch({k: batch[k] for k in ("audio", "audio_len")}, self._mesh)
    return step.device_batch(batch, self._objective, self._mesh)

  def _class_names(self, spec: Spec) -> list[str]:
    return list(self._facts[spec.dataset]["class_names"])

  def _score(self, spec: Spec, outs: dict[str, np.ndarray], state, steps, feats: str) -> dict:
    """The metrics of one evaluator on one pass; `feats` picks the features probed."""
    kind = kinds.KINDS[spec.kind]
    if spec.kind == "retrieval":  # Every clip against its first caption.
      inputs = kinds.Inputs(audio=outs["audio"], captions=outs["text"])
    elif spec.kind == "fidelity":  # A distillation's student against its teacher.
      inputs = kinds.Inputs(audio=outs["audio"], teacher_audio=outs["teacher_audio"])
    else:
      keep = outs["label"] >= 0
      y = outs["label"][keep]
      names = self._class_names(spec)
      class_text = None
      if "class_text" in kind.needs:
        prompts = self._objective.text_inputs([self._template.format(c) for c in names])
        class_text = np.asarray(steps["text"](state, prompts))
      plan = crossval.kfold(y, self._cfg.folds) if kind.trains else crossval.everything(y.size)
      inputs = kinds.Inputs(
        plan=plan,
        labels=y,
        num_classes=len(names) or int(y.max()) + 1,
        features=outs[feats][keep],
        audio=outs["audio"][keep] if "audio" in outs else None,
        class_text=class_text,
      )
    options = kinds.Options(knn_k=self._cfg.knn_k)
    with _one_blas_thread():
      got = kinds.score(spec.kind, inputs, options)
    return {k: v for k, v in got.items() if k != "clips"}

  def _passes(self, state, specs: list[Spec]) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """Each split the `specs` read, passed once (features shared by its evaluators)."""
    splits = dict.fromkeys((s.dataset, s.split) for s in specs)  # Unique, in order.
    return {key: self._pass(state, *key) for key in splits}

  def run_baselines(self, init_state, steps) -> None:
    """Scores log-mel statistics and the encoder at initialisation, once per run."""
    t0 = time.perf_counter()
    passes = self._passes(init_state, self.specs)
    for s in self.specs:
      outs = passes[(s.dataset, s.split)]
      self.baselines[s.name] = {
        base: self._score(s, outs, init_state, steps, "logmel" if base == "logmel" else "features")
        for base, allowed in BASELINES.items()
        if s.kind in allowed
      }
      if self._stage == "distill" and s.kind != "fidelity":
        teacher = distill_eval.as_teacher(outs)
        self.baselines[s.name]["teacher"] = self._score(s, teacher, init_state, steps, "features")
    self.seconds += time.perf_counter() - t0

  def due(self, step_: int) -> list[Spec]:
    return [s for s in self.specs if step_ % s.every == 0]

  def run(self, step_: int, state, steps, progress, specs: list[Spec] | None = None) -> dict:
    """Runs `specs` (default: those due), logs them beside their baselines; returns scalars."""
    specs = self.due(step_) if specs is None else specs
    if not specs:
      return {}
    t0 = time.perf_counter()
    passes = self._passes(state, specs)
    scalars: dict[str, float] = {}
    for s in specs:
      got = self._score(s, passes[(s.dataset, s.split)], state, steps, "features")
      self.history.append({"step": step_, "name": s.name, **got})
      line = []
      for metric, value in got.items():
        scalars[f"eval/{s.name}/{metric}"] = value
        shown = [f"{metric} {value:.4f}"]
        for base, vals in self.baselines.get(s.name, {}).items():
          scalars[f"eval/{s.name}/{metric}_{base}"] = vals[metric]
          shown.append(f"{BASELINE_NAMES[base]} {vals[metric]:.4f}")
        line.append(" | ".join(shown))
      if self._printer:
        print(
          f"[eval] step {step_} {s.name} ({s.kind}, {s.dataset}:{s.split}): " + "; ".join(line),
          flush=True,
        )
    self.seconds += time.perf_counter() - t0
    progress.log_scalars(step_, scalars)
    return scalars

  def latest(self) -> dict[str, Any]:
    """The newest result of each evaluator and the baselines: saved with the checkpoint."""
    newest = {h["name"]: h for h in self.history}
    return {"latest": newest, "baselines": self.baselines}


class _NoProgress:
  """`Evaluators.run`'s progress sink outside training: nothing is logged."""

  def log_scalars(self, step_: int, scalars: dict[str, float]) -> None:
    del step_, scalars


def score_checkpoint(path: str, *, data_dir: str | None = None) -> dict[str, dict[str, float]]:
  """A stage-1/2 checkpoint scored by its run's evaluators (`config.evaluate`), with the
  code, inputs and jitted function the training loop uses: {evaluator name: metrics}.

  `data_dir` overrides the run's (the datasets moved); the mesh takes every device.
  """
  saved = ckpt.load(path)
  config = config_lib.config_from_meta(saved.meta, saved.source)
  if config.stage not in ("stage1", "stage2"):
    raise ValueError(f"{saved.source}: stage {config.stage!r} has no in-loop evaluators to rerun")
  if data_dir:
    config.data.data_dir = data_dir
  specs = parse(config)
  if not specs:
    raise ValueError(f"{saved.source}: its run configured no evaluators (config.evaluate)")
  data_dir = paths.data_dir(config.data.data_dir)
  facts = {s.dataset: data_info.eval_facts(s.dataset, {}, config, data_dir) for s in specs}
  meta = saved.meta
  objective = objectives.build(config, meta, sentence_model=meta.sentence_model)
  mesh = shd.make_mesh(data=-1, fsdp=config.mesh.fsdp)
  identity = optax.identity()
  state, state_sh = state_lib.create_sharded_state(
    init_params=objective.init,
    tx=identity,
    seed=config.seed,
    norm_stats=tuple(float(x) for x in np.asarray(saved.state["norm_stats"])),
    mesh=mesh,
    rules=[tuple(r) for r in config.mesh.rules],
  )
  state = handoff.apply(state, saved.state, parts="all", source=saved.source)
  steps = step.jit_steps(
    mesh=mesh, state_sh=state_sh, objective=objective, tx=identity, schedule=lambda _: 0.0
  )
  fcfg = fe.FrontendConfig.for_sample_rate(config.frontend.sample_rate)
  evals = Evaluators(
    specs,
    config=config,
    facts=facts,
    data_dir=data_dir,
    objective=objective,
    mesh=mesh,
    state_sh=state_sh,
    crop_samples=(config.data.crop_frames - 1) * fcfg.hop_length,
    fcfg=fcfg,
  )
  at = int(np.asarray(saved.state["step"]))
  evals.run(at, state, steps, _NoProgress(), specs=specs)
  return {
    h["name"]: {k: v for k, v in h.items() if k not in ("step", "name")} for h in evals.history
  }
