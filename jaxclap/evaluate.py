"""Evaluation CLI: zero-shot, retrieval, linear and few-shot probes, fine-tuning.

  python -m jaxclap.evaluate --checkpoint=RUN_DIR --data_dir=~/jaxclap_data \
      --dataset=jaxclap_demo --tasks=zero_shot,retrieval,linear_probe,few_shot --workdir=OUT
  # + fine-tuning of the whole encoder (the stage-1.1 recipe, configs/finetune.py):
  ... --tasks=linear_probe,finetune --finetune_config=configs/finetune.py:demo

  # The paper's tasks (EVAR presets, official folds) on datasets laid out as distributed:
  python -m jaxclap.evaluate --suite=paper --checkpoint=RUN_DIR --data_root=~/evar_data \
      --workdir=OUT   # --presets=le_esc50,zs_esc50 picks some; writes OUT/suite.{json,md}
  # --paper_model=m2d_clap_2024 sets another official model's numbers in the paper column;
  # --finetune_set=epochs=3,batch=16 overrides the fine-tuning rows' recipes.

  # A run's own in-loop evaluators (config.evaluate) on its checkpoint, by the loop's code:
  python -m jaxclap.evaluate --checkpoint=RUN_DIR --run_evaluators --workdir=OUT

Prints a Markdown table and writes OUT/eval.json and OUT/eval.md (plus OUT/plots/*.png
with --plots). Zero-shot and retrieval use the test split; the probes and fine-tuning train
on the train split, pick the best epoch on the validation split and report the test split.
With --folds_split=SPLIT (ESC-50 built as one split with its folds) zero-shot and the probes
cross-validate over that split's official folds instead (`score/crossval.py`: each fold is
the test set once, the others train, no validation split; the probes average the folds,
zero-shot pools them). A multi-label set (some clip with several classes) reports mAP.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxclap import cli, convert, inference, metrics
from jaxclap.eval import data as eval_data
from jaxclap.eval import finetune_task as finetune_lib
from jaxclap.eval import plots, presets, suite
from jaxclap.score import crossval, kinds, probe
from jaxclap.train import evaluators

DEFAULT_TASKS = ("zero_shot", "retrieval", "linear_probe", "few_shot")


@dataclasses.dataclass
class Evaluation:
  """One model on one dataset; splits and embeddings are loaded once and shared by tasks."""

  model: Any  # Duck-typed like jaxclap.load(path): clip_features, audio_embedding, ...
  dataset: str
  data_dir: str
  class_names: list[str]
  checkpoint: str = ""  # Where `model` came from (tasks that re-load it, e.g. fine-tuning).
  workdir: str | None = None  # Output folder; tasks may write under it.
  template: str = plots.DEFAULT_TEMPLATE
  splits: dict[str, str] = dataclasses.field(
    default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"}
  )
  max_clips: int | None = None  # Per split (quick runs); None: every clip.
  shots: tuple[int, ...] = (1, 5)
  seeds: tuple[int, ...] = (0, 1, 2)
  probe_config: probe.ProbeConfig = probe.ProbeConfig()
  finetune_config: Any = None  # configs/finetune.py's ConfigDict (task "finetune").
  # Cross-validate zero-shot and probes over this split's official folds (None: the splits).
  folds_split: str | None = None
  _loaded: dict[str, eval_data.EvalSplit] = dataclasses.field(
    default_factory=dict, init=False, repr=False
  )
  _embedded: dict[tuple[str, str], np.ndarray] = dataclasses.field(
    default_factory=dict, init=False, repr=False
  )
  _facts: dict[str, Any] = dataclasses.field(default_factory=dict, init=False, repr=False)

  def split(self, role: str) -> eval_data.EvalSplit:
    """The split playing `role` ("train", "validation", "test" or "folds")."""
    if role not in self._loaded:
      name = self.folds_split if role == "folds" else self.splits[role]
      self._loaded[role] = eval_data.load_split(
        self.dataset, name, self.data_dir, max_clips=self.max_clips
      )
    return self._loaded[role]

  def embed(self, kind: str, role: str) -> np.ndarray:
    """`kind` ("clip_features" or "audio_embedding") of every clip of a split, cached."""
    if (kind, role) not in self._embedded:
      ev = self.split(role)
      self._embedded[kind, role] = np.asarray(
        getattr(self.model, kind)(ev.audio, sample_rate=ev.sample_rate)
      )
    return self._embedded[kind, role]

  def loaded(self) -> dict[str, eval_data.EvalSplit]:
    """The splits read so far, by role."""
    return dict(self._loaded)

  def labelled(self, role: str) -> eval_data.EvalSplit:
    """The split, checked to carry a class label on every clip."""
    if not self.class_names:
      raise ValueError(
        f"{self.dataset} under {self.data_dir} has no class names; "
        "zero-shot and probes need a labelled dataset"
      )
    ev = self.split(role)
    eval_data.check_labelled(ev, len(self.class_names))
    return ev

  def targets(self, role: str) -> np.ndarray:
    """Labels of a split: int [N], or multi-hot [N, classes] when the set is multi-label."""
    ev = self.labelled(role)
    if not self.multilabel():
      return ev.labels
    return crossval.targets(ev.label_sets, len(self.class_names), multilabel=True)[0]

  def multilabel(self) -> bool:
    """Whether the evaluated set is multi-label: its build says so, or a clip of the test
    (or folds) split carries several classes."""
    if "multilabel" not in self._facts:
      self._facts["multilabel"] = eval_data.built_multilabel(
        self.dataset, self.data_dir
      ) or eval_data.multilabel(self.split("folds" if self.folds_split else "test"))
    return self._facts["multilabel"]

  def inputs(self, kind: str) -> kinds.Inputs:
    """What evaluator `kind` reads here: the folds split's clips in rounds, else the train,
    validation and test splits as one round (the test split alone for kinds that train
    nothing)."""
    k = kinds.KINDS[kind]
    field, source = (
      ("audio", "audio_embedding") if "audio" in k.needs else ("features", "clip_features")
    )
    if kind == "retrieval":
      texts, caption_clip = metrics.flatten_captions(self.split("test").captions)
      return kinds.Inputs(
        audio=self.embed(source, "test"),
        captions=np.asarray(self.model.text_embedding(texts)),
        caption_clip=caption_clip,
      )
    roles = (
      ["folds"] if self.folds_split else ["train", "validation", "test"] if k.trains else ["test"]
    )
    y = [self.targets(r) for r in roles]
    if self.folds_split:
      plan = self.fold_plan()
    elif k.trains:
      ends = np.cumsum([len(t) for t in y])
      train, valid, test = (np.arange(a, b) for a, b in zip([0, *ends[:-1]], ends))
      plan = [crossval.Round("split", train, valid, test)]
    else:
      plan = crossval.everything(len(y[0]))
    class_text = None
    if "class_text" in k.needs:
      prompts = [self.template.format(n) for n in self.class_names]
      class_text = np.asarray(self.model.text_embedding(prompts))
    return kinds.Inputs(
      plan=plan,
      labels=np.concatenate(y),
      num_classes=len(self.class_names),
      class_text=class_text,
      **{field: np.concatenate([self.embed(source, r) for r in roles])},
    )

  def options(self) -> kinds.Options:
    """The knobs of the kinds that train a probe."""
    return kinds.Options(
      seeds=tuple(self.seeds), shots=tuple(self.shots), probe_config=self.probe_config
    )

  def fold_plan(self) -> list[crossval.Round]:
    """One round per official fold of the folds split."""
    return crossval.rounds(self.labelled("folds").folds, None)


def _chance(ev: Evaluation) -> dict[str, float]:
  return {} if ev.multilabel() else {"chance": 1.0 / len(ev.class_names)}


def _scored(kind: str) -> Callable[[Evaluation], dict[str, float]]:
  """The task that scores evaluator `kind` (score/kinds.py) on the evaluated dataset."""

  def task(ev: Evaluation) -> dict[str, float]:
    inputs = ev.inputs(kind)
    out = kinds.score(kind, inputs, ev.options())
    if kind == "retrieval":
      return {**out, "clips": len(inputs.audio), "captions": len(inputs.captions)}
    return {**out, **_chance(ev)}

  task.__doc__ = f"The `{kind}` evaluator kind on the evaluated dataset."
  return task


def finetune(ev: Evaluation) -> dict[str, float]:
  """The whole encoder fine-tuned (stage-1.1 recipe); test accuracy (or mAP) at the best
  validation epoch, beside the frozen-feature probes."""
  if ev.finetune_config is None:
    raise ValueError(
      "task 'finetune' needs a fine-tuning config (--finetune_config="
      "configs/finetune.py, or finetune_config= in Python)"
    )
  config = ev.finetune_config.copy_and_resolve_references()
  with config.unlocked():
    knobs = config.finetune
    knobs.train_split, knobs.val_split = ev.splits["train"], ev.splits["validation"]
    knobs.test_split = ev.splits["test"]
  out = finetune_lib.run_finetune(
    ev.checkpoint,
    data_dir=ev.data_dir,
    dataset=ev.dataset,
    config=config,
    workdir=os.path.join(ev.workdir, "finetune") if ev.workdir else None,
  )
  metric = out["metric"]
  result = {
    metric: out["test"],
    f"val_{metric}": out["val"],
    "best_epoch": out["best_epoch"],
    "epochs": out["epochs"],
    "steps": out["steps"],
  }
  if metric == "accuracy":
    result["chance"] = 1.0 / len(ev.class_names)
  return result


# Task name -> function of the Evaluation returning flat {metric: number}: the one place a
# task name picks code.
TASKS: dict[str, Callable[[Evaluation], dict[str, float]]] = {
  **{k: _scored(k) for k in kinds.KINDS if k != "finetune"},
  "finetune": finetune,  # Runs the trainer; its score is the `finetune` kind (train/finetune.py).
}


def load_model(
  path: str,
  *,
  batch_size: int = 16,
  text_model: str | None = None,
  import_dir: str | None = None,
) -> Any:
  """The checkpoint as an inference model (`jaxclap.load`).

  An official/exported PyTorch file (.pth, .safetensors) is first imported with
  `convert.from_torch` into `import_dir` (reused when it already holds the import).
  """
  if str(path).endswith((".pth", ".safetensors")):
    import_dir = import_dir or tempfile.mkdtemp(prefix="jaxclap_import_")
    if not os.path.isdir(os.path.join(import_dir, "checkpoints")):
      convert.from_torch(path, import_dir, text_model=text_model)
    path = import_dir
  return inference.load(path, batch_size=batch_size, text_model=text_model)


def format_table(results: dict[str, dict[str, float]]) -> str:
  """Markdown table, one row per (task, metric)."""
  lines = ["| task | metric | value |", "|---|---|---|"]
  for task, values in results.items():
    for key, value in values.items():
      shown = f"{value:.4f}" if isinstance(value, float) else str(value)
      lines.append(f"| {task} | {key} | {shown} |")
  return "\n".join(lines)


def check_tasks(tasks: Sequence[str], template: str) -> None:
  """Task names must be in TASKS and the template must hold one '{}' for the class."""
  unknown = [t for t in tasks if t not in TASKS]
  if unknown or not tasks:
    raise ValueError(
      f"unknown or no task(s) {list(unknown) or list(tasks)}; known: {sorted(TASKS)}"
    )
  if template.count("{}") != 1:
    raise ValueError(f"zero-shot template {template!r} must contain '{{}}' exactly once")


def run(ev: Evaluation, tasks: Sequence[str]) -> dict[str, dict[str, float]]:
  """Runs `tasks` in order; returns {task: metrics}."""
  check_tasks(tasks, ev.template)
  return {t: TASKS[t](ev) for t in tasks}


def evaluate(
  checkpoint: str,
  *,
  data_dir: str,
  workdir: str,
  dataset: str = "jaxclap_demo",
  tasks: Sequence[str] = DEFAULT_TASKS,
  with_plots: bool = False,
  model: Any = None,
  batch_size: int = 16,
  text_model: str | None = None,
  **options: Any,
) -> dict[str, Any]:
  """Loads the checkpoint (unless `model` is given), runs tasks, writes eval.json/eval.md.

  `batch_size` and `text_model` go to `jaxclap.load`; `options` are further
  `Evaluation` fields (template, splits, shots, seeds, max_clips, probe_config).
  """
  check_tasks(tasks, options.get("template", plots.DEFAULT_TEMPLATE))
  if "finetune" in tasks and options.get("finetune_config") is None:
    raise ValueError(
      "task 'finetune' needs a fine-tuning config (--finetune_config="
      "configs/finetune.py, or finetune_config= in Python)"
    )
  names = eval_data.class_names(dataset, data_dir)  # Fails early on a missing dataset.
  if model is None:
    model = load_model(checkpoint, batch_size=batch_size, text_model=text_model)
  ev = Evaluation(
    model=model,
    dataset=dataset,
    data_dir=data_dir,
    class_names=names,
    checkpoint=checkpoint,
    workdir=workdir,
    **options,
  )
  results = run(ev, tasks)
  report = {
    "checkpoint": checkpoint,
    "dataset": dataset,
    "data_dir": data_dir,
    "stage": getattr(model, "stage", None),
    "template": ev.template,
    "splits": {
      role: {"name": s.name.split(":", 1)[1], "clips": len(s)} for role, s in ev.loaded().items()
    },
    "results": results,
  }
  if with_plots:
    report["plots"] = plots.write_demo_plots(
      workdir,
      model,
      data_dir,
      dataset=dataset,
      split=ev.splits["test"],
      template=ev.template,
      **({"max_clips": ev.max_clips} if ev.max_clips else {}),
    )
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(report, f, indent=2)
  table = format_table(results)
  with open(os.path.join(workdir, "eval.md"), "w") as f:
    f.write(
      f"# Evaluation of {checkpoint}\n\nDataset `{dataset}` ({data_dir}), "
      f'stage {report["stage"]}, zero-shot template "{ev.template}".\n\n{table}\n'
    )
  report["table"] = table
  return report


def run_suite(
  checkpoint: str,
  *,
  data_root: str | None,
  workdir: str,
  suite_name: str = "paper",
  names: Sequence[str] | None = None,
  model: Any = None,
  batch_size: int = 16,
  text_model: str | None = None,
  **options: Any,
) -> str:
  """Runs a preset suite (or the `names` of it) on `data_root`; writes suite.json/suite.md.

  `options` go to `suite.run` (seeds, probe_config, max_clips, progress,
  finetune_overrides; checkpoint and workdir default to this run's).
  """
  if not data_root or not os.path.isdir(os.path.expanduser(data_root)):
    raise FileNotFoundError(f"--data_root {data_root!r} is not a folder")
  members = presets.SUITES[suite_name]
  unknown = [n for n in names or () if n not in members]
  if unknown:
    raise ValueError(f"preset(s) {unknown} are not in suite {suite_name!r}: {list(members)}")
  chosen = presets.by_name(list(names or members))
  if model is None:
    model = load_model(
      checkpoint,
      batch_size=batch_size,
      text_model=text_model,
      import_dir=os.path.join(workdir, "imported"),
    )
  # Fine-tuning presets train from a jaxclap checkpoint: the import of a PyTorch file.
  imported = str(checkpoint).endswith((".pth", ".safetensors"))
  options.setdefault("checkpoint", os.path.join(workdir, "imported") if imported else checkpoint)
  options.setdefault("workdir", workdir)
  report = suite.run(model, os.path.expanduser(data_root), chosen, **options)
  report.update(checkpoint=checkpoint, suite=suite_name, stage=getattr(model, "stage", None))
  return suite.write(report, workdir, f"Suite {suite_name!r} for {checkpoint}")


_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", None, "jaxclap workdir, checkpoints or step dir, or an exported .pth/.safetensors."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir holding --dataset.")
_DATASET = flags.DEFINE_string("dataset", "jaxclap_demo", "Built dataset name.")
_TASKS = flags.DEFINE_list("tasks", list(DEFAULT_TASKS), "Tasks to run, in order.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder for eval.json/eval.md/plots.")
_TEMPLATE = flags.DEFINE_string("template", plots.DEFAULT_TEMPLATE, "Zero-shot prompt.")
_SPLITS = flags.DEFINE_list(
  "splits", ["train", "validation", "test"], "Dataset splits used as train, validation, test."
)
_SHOTS = flags.DEFINE_list("shots", ["1", "5"], "Few-shot k values.")
_SEEDS = flags.DEFINE_list(
  "seeds", ["0", "1", "2"], "Few-shot seeds; also the seeds fold/suite linear evaluation averages."
)
_BATCH = flags.DEFINE_integer("batch_size", 16, "Encoder chunks per jitted model call.")
_TEXT_MODEL = flags.DEFINE_string(
  "text_model", None, "Stage-2 text tower folder, when the checkpoint's path is not here."
)
_MAX_CLIPS = flags.DEFINE_integer("max_clips", None, "Read at most this many clips per split.")
_SUITE = flags.DEFINE_enum(
  "suite", None, sorted(presets.SUITES), "Run a preset suite on --data_root (not --dataset)."
)
_DATA_ROOT = flags.DEFINE_string(
  "data_root", None, "Folder holding the suite's datasets as distributed (ESC-50-master/, ...)."
)
_PRESETS = flags.DEFINE_list("presets", None, "Presets of --suite to run (default: all).")
_PAPER_MODEL = flags.DEFINE_enum(
  "paper_model",
  presets.DEFAULT_REFERENCE,
  sorted(presets.REFERENCES),
  "Official model whose published numbers fill the suite table's paper column.",
)
_FINETUNE_SET = flags.DEFINE_list(
  "finetune_set",
  None,
  "Suite fine-tuning knobs as key=value (e.g. epochs=3,batch=16), over each ft_* recipe.",
)
_FOLDS_SPLIT = flags.DEFINE_string(
  "folds_split",
  None,
  "Cross-validate zero-shot and probes over this split's official folds (e.g. train for "
  "ESC-50 built as one split) instead of --splits.",
)
_PLOTS = flags.DEFINE_bool("plots", False, "Also write the demo plots under workdir/plots.")
_RUN_EVALUATORS = flags.DEFINE_bool(
  "run_evaluators",
  False,
  "Score --checkpoint with its run's own evaluators (config.evaluate), by the training "
  "loop's code: the numbers the loop logs; writes workdir/evaluators.json.",
)
_FINETUNE = config_flags.DEFINE_config_file(
  "finetune_config",
  None,
  "Fine-tuning config file for task 'finetune' (e.g. "
  "configs/finetune.py or configs/finetune.py:as2m); override knobs with "
  "--finetune_config.epochs=3 etc.",
  lock_config=True,
)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _RUN_EVALUATORS.value:
    with cli.exit_on(ValueError, FileNotFoundError):
      scores = evaluators.score_checkpoint(_CHECKPOINT.value, data_dir=_DATA_DIR.value)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with open(os.path.join(_WORKDIR.value, "evaluators.json"), "w") as f:
      json.dump(scores, f, indent=2)
    for name, values in scores.items():
      print(f"{name}: " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)
    return
  if _SUITE.value:
    with cli.exit_on(ValueError, FileNotFoundError):
      table = run_suite(
        _CHECKPOINT.value,
        data_root=_DATA_ROOT.value,
        workdir=_WORKDIR.value,
        suite_name=_SUITE.value,
        names=_PRESETS.value,
        seeds=tuple(_ints(_SEEDS.value, "--seeds")),
        batch_size=_BATCH.value,
        text_model=_TEXT_MODEL.value,
        max_clips=_MAX_CLIPS.value,
        reference=_PAPER_MODEL.value,
        finetune_overrides=_knobs(_FINETUNE_SET.value or (), "--finetune_set"),
      )
    print(table, flush=True)
    return
  with cli.exit_on(ValueError, FileNotFoundError):
    if not _DATA_DIR.value:
      raise ValueError("--data_dir is required (or --suite with --data_root)")
    if len(_SPLITS.value) != 3:
      raise ValueError(f"--splits needs three names (train,validation,test), got {_SPLITS.value}")
    report = evaluate(
      _CHECKPOINT.value,
      data_dir=_DATA_DIR.value,
      workdir=_WORKDIR.value,
      dataset=_DATASET.value,
      tasks=_TASKS.value,
      with_plots=_PLOTS.value,
      template=_TEMPLATE.value,
      batch_size=_BATCH.value,
      text_model=_TEXT_MODEL.value,
      max_clips=_MAX_CLIPS.value,
      splits=dict(zip(("train", "validation", "test"), _SPLITS.value)),
      shots=tuple(_ints(_SHOTS.value, "--shots")),
      seeds=tuple(_ints(_SEEDS.value, "--seeds")),
      finetune_config=_FINETUNE.value,
      folds_split=_FOLDS_SPLIT.value,
    )
  print(report["table"], flush=True)


def _knobs(items: Sequence[str], flag: str) -> dict[str, Any]:
  """key=value items as a dict; values are Python literals (3, 0.5, True) or else strings."""
  out = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise ValueError(f"{flag} takes key=value items, got {item!r}")
    try:
      out[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      out[key] = text
  return out


def _ints(values: Sequence[str], flag: str) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError as e:
    raise ValueError(f"{flag} takes integers, got {list(values)}") from e


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint", "workdir"])
  cli.run(main)
