"""Evaluation CLI: zero-shot, retrieval, linear and few-shot probes of a trained checkpoint.

  python -m jaxclap.evaluate --checkpoint=RUN_DIR --data_dir=~/jaxclap_data \
      --dataset=jaxclap_demo --tasks=zero_shot,retrieval,linear_probe,few_shot --workdir=OUT

Prints a Markdown table and writes OUT/eval.json and OUT/eval.md (plus OUT/plots/*.png
with --plots). Zero-shot and retrieval use the test split; the probes train on the train
split, early-stop on the validation split and report the test split.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np
from absl import app, flags

from jaxclap.eval import data as eval_data
from jaxclap.eval import metrics, plots, probe

DEFAULT_TASKS = ("zero_shot", "retrieval", "linear_probe", "few_shot")


@dataclasses.dataclass
class Evaluation:
  """One model on one dataset; splits and embeddings are loaded once and shared by tasks."""

  model: Any  # Duck-typed like jaxclap.load(path): clip_features, audio_embedding, ...
  dataset: str
  data_dir: str
  class_names: list[str]
  template: str = plots.DEFAULT_TEMPLATE
  splits: dict[str, str] = dataclasses.field(default_factory=lambda: {
      "train": "train", "validation": "validation", "test": "test"})
  batch_size: int = 32
  bucket_s: float | None = None  # Pad clips to the longest (None) or to multiples of this.
  max_clips: int | None = None  # Per split (quick runs); None: every clip.
  shots: tuple[int, ...] = (1, 5)
  seeds: tuple[int, ...] = (0, 1, 2)
  probe_config: probe.ProbeConfig = probe.ProbeConfig()
  _loaded: dict[str, eval_data.EvalSplit] = dataclasses.field(default_factory=dict)
  _embedded: dict[tuple[str, str], np.ndarray] = dataclasses.field(default_factory=dict)

  def split(self, role: str) -> eval_data.EvalSplit:
    """The split playing `role` ("train", "validation" or "test")."""
    if role not in self._loaded:
      self._loaded[role] = eval_data.load_split(self.dataset, self.splits[role], self.data_dir,
                                                max_clips=self.max_clips)
    return self._loaded[role]

  def embed(self, kind: str, role: str) -> np.ndarray:
    """`kind` ("clip_features" or "audio_embedding") of every clip of a split, cached."""
    if (kind, role) not in self._embedded:
      ev = self.split(role)
      self._embedded[kind, role] = eval_data.embed_clips(
          getattr(self.model, kind), ev.audio, sample_rate=ev.sample_rate,
          batch_size=self.batch_size, bucket_s=self.bucket_s)
    return self._embedded[kind, role]

  def loaded(self) -> dict[str, eval_data.EvalSplit]:
    """The splits read so far, by role."""
    return dict(self._loaded)

  def labelled(self, role: str) -> eval_data.EvalSplit:
    """The split, checked to carry a class label on every clip."""
    if not self.class_names:
      raise ValueError(f"{self.dataset} under {self.data_dir} has no class names; "
                       "zero-shot and probes need a labelled dataset")
    ev = self.split(role)
    eval_data.check_labelled(ev, len(self.class_names))
    return ev

  def probe_splits(self, kind: str = "clip_features") -> tuple[probe.Split, ...]:
    """(train, validation, test) features and labels for the probes."""
    roles = ("train", "validation", "test")
    return tuple(probe.Split(self.embed(kind, r), self.labelled(r).labels) for r in roles)


def zero_shot(ev: Evaluation) -> dict[str, float]:
  """Top-1 accuracy of the class prompts on the test split."""
  test = ev.labelled("test")
  prompts = [ev.template.format(n) for n in ev.class_names]
  class_emb = np.asarray(ev.model.text_embedding(prompts))
  acc = metrics.zero_shot_accuracy(ev.embed("audio_embedding", "test"), test.labels,
                                   class_emb)
  return {"accuracy": acc, "chance": 1.0 / len(ev.class_names)}


def retrieval(ev: Evaluation) -> dict[str, float]:
  """a2t / t2a R@1/5/10 and mAP@10 over every caption of every test clip."""
  texts, caption_clip = metrics.flatten_captions(ev.split("test").captions)
  text_emb = np.concatenate([np.asarray(ev.model.text_embedding(texts[i:i + ev.batch_size]))
                             for i in range(0, len(texts), ev.batch_size)])
  out = metrics.retrieval_from_embeddings(ev.embed("audio_embedding", "test"), text_emb,
                                          caption_clip)
  return {**out, "clips": len(ev.split("test")), "captions": len(texts)}


def linear_probe(ev: Evaluation) -> dict[str, float]:
  """Linear probe on frozen clip features: test accuracy at the best validation epoch."""
  train, valid, test = ev.probe_splits()
  out = probe.linear_probe(train, valid, test, num_classes=len(ev.class_names),
                           config=ev.probe_config)
  return {**out, "chance": 1.0 / len(ev.class_names)}


def few_shot(ev: Evaluation) -> dict[str, float]:
  """Linear probes on k clips per class (k in `shots`), averaged over `seeds`."""
  train, valid, test = ev.probe_splits()
  out = probe.few_shot(train, valid, test, num_classes=len(ev.class_names), shots=ev.shots,
                       seeds=ev.seeds, config=ev.probe_config)
  return {**out, "chance": 1.0 / len(ev.class_names)}


# Task name -> function of the Evaluation returning flat {metric: number}. The one place a
# task name picks code; fine-tuning (jaxclap.eval.finetune.run_finetune) is added here.
TASKS: dict[str, Callable[[Evaluation], dict[str, float]]] = {
    "zero_shot": zero_shot,
    "retrieval": retrieval,
    "linear_probe": linear_probe,
    "few_shot": few_shot,
}


def load_model(path: str) -> Any:
  """The checkpoint as an inference model (clip_features, audio/text embeddings)."""
  return _RestoredModel(path)


class _RestoredModel:
  """Private stand-in for `jaxclap.load` (jaxclap/inference.py) over restore + features."""

  def __init__(self, path: str):
    import jax  # Deferred: importing the CLI module for --help needs no JAX.

    from jaxclap import features, restore
    from jaxclap.audio import frontend as fe

    r = restore.restore(path)
    self._restored = r
    self.stage = r.stage
    self.sample_rate = r.frontend_cfg.sample_rate
    self.input_seconds = r.model.input_frames * r.frontend_cfg.hop_length / self.sample_rate
    self._params = jax.device_put(r.params)

    def lms(audio):
      return fe.normalize(fe.log_mel(audio, None, r.frontend_cfg), *r.norm_stats)

    self._clip = jax.jit(lambda p, a: features.clip_features(p, lms(a), model=r.model))
    self._audio = jax.jit(lambda p, a: features.clap_audio_embedding(p, lms(a), model=r.model))
    self._text = jax.jit(lambda p, t: r.objective.text_embed(p, {}, t))

  def _input(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    from jaxclap.audio import io as audio_io

    audio = np.atleast_2d(np.asarray(audio, np.float32))
    if sample_rate != self.sample_rate:
      audio = np.stack([audio_io.resample(a, sample_rate, self.sample_rate) for a in audio])
    return audio

  def clip_features(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    return np.asarray(self._clip(self._params, self._input(audio, sample_rate)))

  def audio_embedding(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    return np.asarray(self._audio(self._params, self._input(audio, sample_rate)))

  def text_embedding(self, texts: Sequence[str]) -> np.ndarray:
    inputs = self._restored.objective.text_inputs(list(texts))
    if inputs is None:
      raise ValueError(f"{self._restored.source}: stage-1 checkpoint names no sentence model; "
                       "text embeddings (zero-shot, retrieval) are unavailable")
    return np.asarray(self._text(self._params, inputs))


def format_table(results: dict[str, dict[str, float]]) -> str:
  """Markdown table, one row per (task, metric)."""
  lines = ["| task | metric | value |", "|---|---|---|"]
  for task, values in results.items():
    for key, value in values.items():
      shown = f"{value:.4f}" if isinstance(value, float) else str(value)
      lines.append(f"| {task} | {key} | {shown} |")
  return "\n".join(lines)


def run(ev: Evaluation, tasks: Sequence[str]) -> dict[str, dict[str, float]]:
  """Runs `tasks` in order; returns {task: metrics}."""
  unknown = [t for t in tasks if t not in TASKS]
  if unknown:
    raise ValueError(f"unknown task(s) {unknown}; known: {sorted(TASKS)}")
  return {t: TASKS[t](ev) for t in tasks}


def evaluate(checkpoint: str, *, data_dir: str, workdir: str,
             dataset: str = "jaxclap_demo", tasks: Sequence[str] = DEFAULT_TASKS,
             with_plots: bool = False, model: Any = None, **options: Any) -> dict[str, Any]:
  """Loads the checkpoint (unless `model` is given), runs tasks, writes eval.json/eval.md.

  `options` are further `Evaluation` fields (template, splits, shots, seeds, ...).
  """
  unknown = [t for t in tasks if t not in TASKS]
  if unknown or not tasks:
    raise ValueError(f"unknown or no task(s) {list(unknown) or list(tasks)}; "
                     f"known: {sorted(TASKS)}")
  names = eval_data.class_names(dataset, data_dir)  # Fails early on a missing dataset.
  model = model if model is not None else load_model(checkpoint)
  ev = Evaluation(model=model, dataset=dataset, data_dir=data_dir, class_names=names,
                  **options)
  results = run(ev, tasks)
  report = {
      "checkpoint": checkpoint, "dataset": dataset, "data_dir": data_dir,
      "stage": getattr(model, "stage", None), "template": ev.template,
      "splits": {role: {"name": ev.splits[role], "clips": len(s)}
                 for role, s in ev.loaded().items()},
      "results": results,
  }
  if with_plots:
    report["plots"] = plots.write_demo_plots(
        workdir, model, data_dir, dataset=dataset, split=ev.splits["test"],
        template=ev.template, batch_size=ev.batch_size)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(report, f, indent=2)
  table = format_table(results)
  with open(os.path.join(workdir, "eval.md"), "w") as f:
    f.write(f"# Evaluation of {checkpoint}\n\nDataset `{dataset}` ({data_dir}), "
            f"stage {report['stage']}, zero-shot template \"{ev.template}\".\n\n{table}\n")
  report["table"] = table
  return report


_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "jaxclap workdir, checkpoints or step dir.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir holding --dataset.")
_DATASET = flags.DEFINE_string("dataset", "jaxclap_demo", "Built dataset name.")
_TASKS = flags.DEFINE_list("tasks", list(DEFAULT_TASKS), "Tasks to run, in order.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder for eval.json/eval.md/plots.")
_TEMPLATE = flags.DEFINE_string("template", plots.DEFAULT_TEMPLATE, "Zero-shot prompt.")
_SPLITS = flags.DEFINE_list("splits", ["train", "validation", "test"],
                            "Dataset splits used as train, validation, test.")
_SHOTS = flags.DEFINE_list("shots", ["1", "5"], "Few-shot k values.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Few-shot seeds.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Clips per model call.")
_MAX_CLIPS = flags.DEFINE_integer("max_clips", None, "Read at most this many clips per split.")
_PLOTS = flags.DEFINE_bool("plots", False, "Also write the demo plots under workdir/plots.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    if len(_SPLITS.value) != 3:
      raise ValueError(f"--splits needs three names (train,validation,test), got {_SPLITS.value}")
    report = evaluate(
        _CHECKPOINT.value, data_dir=_DATA_DIR.value, workdir=_WORKDIR.value,
        dataset=_DATASET.value, tasks=_TASKS.value, with_plots=_PLOTS.value,
        template=_TEMPLATE.value, batch_size=_BATCH.value, max_clips=_MAX_CLIPS.value,
        splits=dict(zip(("train", "validation", "test"), _SPLITS.value)),
        shots=tuple(_ints(_SHOTS.value, "--shots")), seeds=tuple(_ints(_SEEDS.value, "--seeds")))
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  print(report["table"], flush=True)


def _ints(values: Sequence[str], flag: str) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError as e:
    raise ValueError(f"{flag} takes integers, got {list(values)}") from e


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint", "data_dir", "workdir"])
  app.run(main)
