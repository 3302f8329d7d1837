"""Fine-tuning rows of the paper suite: EVAR's `finetune.py` protocol on a layout's clips.

Fine-tuning (`finetune_task.run_finetune`) reads a labelled TFDS set, while the suite reads
datasets as distributed (`layouts`). The bridge: per round of the task (`crossval.rounds`:
one per ESC-50 fold, one for a split task) the clips are listed in a labels.csv (file,
labels, split) beside links to the audio, built with the `labelled_folder` builder and
fine-tuned with the preset's recipe (`presets.FINETUNE_CONFIGS`). Everything lives under
`<workdir>/finetune/`: a rerun reuses built sets and finished fine-tunes. The score is the
mean over rounds of each round's test score, as EVAR's `finetune_main` averages its folds.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jaxclap.data import build
from jaxclap.eval import finetune_task as finetune_lib
from jaxclap.eval import layouts
from jaxclap.score import crossval

_REPO = Path(__file__).resolve().parents[2]  # configs/ sits beside the jaxclap package.


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The ConfigDict of 'path/to/file.py[:arg]' (`get_config(arg)`), the path taken as
  given or under the repository root."""
  path, _, arg = spec.partition(":")
  found = next((p for p in (Path(path), _REPO / path) if p.is_file()), None)
  if found is None:
    raise FileNotFoundError(f"fine-tuning config file {path} not found (nor under {_REPO})")
  spec_obj = importlib.util.spec_from_file_location(f"_ft_config_{found.stem}", found)
  module = importlib.util.module_from_spec(spec_obj)
  spec_obj.loader.exec_module(module)
  return module.get_config(arg or None)


def labels_csv(data: layouts.TaskData, plan: crossval.Round) -> str:
  """labels.csv text of one round: file (a link name), labels (';'-joined), split."""
  split = np.full(len(data), "", dtype=object)
  split[plan.train] = "train"
  if plan.valid is not None:
    split[plan.valid] = "validation"
  split[plan.test] = "test"
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["file", "labels", "split"])
  for i in np.flatnonzero(split != ""):
    writer.writerow([_link_name(i, data.files[i]), ";".join(data.labels[i]), split[i]])
  return out.getvalue()


def _link_name(i: int, file: str) -> str:
  return f"clips/{i:07d}{Path(file).suffix.lower()}"


def _links(data: layouts.TaskData, folder: Path) -> None:
  """folder/clips/<index>.<ext> -> each clip's file (made once, shared by the rounds)."""
  clips = folder / "clips"
  clips.mkdir(parents=True, exist_ok=True)
  for i, file in enumerate(data.files):
    link = folder / _link_name(i, file)
    if not link.is_symlink():
      link.symlink_to(os.path.abspath(file))


def _build_round(
  name: str, data: layouts.TaskData, plan: crossval.Round, folder: Path, sample_rate: int
) -> tuple[str, str]:
  """(dataset name, data_dir) of the round's labelled set, built unless already there.

  The name carries a hash of the round's labels.csv, so another clip list (--max_clips)
  builds another set instead of reusing a stale one.
  """
  text = labels_csv(data, plan)
  digest = hashlib.sha256(text.encode()).hexdigest()[:10]
  manual = folder / "rounds" / f"{plan.name}_{digest}"
  manual.mkdir(parents=True, exist_ok=True)
  (manual / "labels.csv").write_text(text)
  if not (manual / "clips").exists():
    (manual / "clips").symlink_to(folder / "clips", target_is_directory=True)
  dataset = f"labelled_folder/{name}_{plan.name}_{digest}"
  data_dir = str(folder / "tfds")
  build.build_dataset(
    dataset, data_dir, text_model="none", manual_dir=str(manual), sample_rate=sample_rate
  )
  return dataset, data_dir


def run_preset(
  name: str,
  data: layouts.TaskData,
  *,
  config_spec: str,
  checkpoint: str,
  workdir: str,
  sample_rate: int,
  overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Fine-tunes `checkpoint` on every round of a task; {metric: mean of the rounds' test
  scores, "<round>_<metric>": each (several rounds), "rounds", "clips", "config"}."""
  config = load_config(config_spec)
  if overrides:
    unknown = sorted(set(overrides) - set(config.finetune.keys()))
    if unknown:  # ConfigDict.update would add them silently.
      raise ValueError(f"unknown fine-tuning knob(s) {unknown} for {config_spec}")
    config.finetune.update(dict(overrides))
  plan = crossval.rounds(data.folds, data.splits)
  folder = Path(workdir) / "finetune" / name
  _links(data, folder)
  metric, scores = None, []
  for r in plan:
    dataset, data_dir = _build_round(name, data, r, folder, sample_rate)
    out = finetune_lib.run_finetune(
      checkpoint,
      data_dir=data_dir,
      dataset=dataset,
      config=config,
      workdir=str(folder / "runs" / dataset.partition("/")[2]),
    )
    metric = out["metric"]
    scores.append(float(out["test"]))
  result: dict[str, Any] = {metric: float(np.mean(scores))}
  if len(plan) > 1:
    result.update({f"{r.name}_{metric}": s for r, s in zip(plan, scores)})
  return {**result, "rounds": len(plan), "clips": len(data), "config": config_spec}
