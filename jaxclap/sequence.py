"""Running several stages in a row (the demo): each in `<workdir>/<stage>`, chained.

Every stage is a config of the one trainer (`jaxclap.train.loop`, as `python -m
jaxclap.main` runs it), stage 1.1 (fine-tuning) included; this module only orders the
runs, each starting from the workdir of the one before.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from jaxclap import inference
from jaxclap.eval import plots
from jaxclap.train import loop


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.stages` in order; each later stage starts from the one before."""
  results = {}
  previous = None
  for name, stage_cfg in config.stages.items():
    stage_cfg = ml_collections.ConfigDict(stage_cfg.to_dict())  # Unlocked copy.
    stage_dir = os.path.join(workdir, name)
    if stage_cfg.stage == "finetune" and previous is None:
      raise ValueError(f"stage {name!r} fine-tunes an encoder: it needs a stage before it")
    stage_cfg.data.data_dir = config.data_dir
    stage_cfg.data.demo_clips = config.get("demo_clips", stage_cfg.data.demo_clips)
    if previous is not None:
      stage_cfg.init.workdir = previous
    print(f"===== {name} → {stage_dir}", flush=True)
    results[name] = loop.train_and_evaluate(stage_cfg, stage_dir)
    previous = stage_dir
  print(format_table(results), flush=True)
  if config.get("plots") and previous is not None and jax.process_index() == 0:
    model = inference.load(previous, progress=False)  # Read back as a user would.
    written = plots.write_demo_plots(workdir, model, config.data_dir)
    print("plots: " + ", ".join(written.values()), flush=True)
  return results


def _scores(result: dict[str, Any]) -> dict[str, float]:
  """A stage's table entries: final validation, or a fine-tuning stage's test score."""
  if result.get("task") == "finetune":
    return {"finetune_test": result["test"]}
  return result.get("final_validation") or {}


def format_table(results: dict[str, Any]) -> str:
  """Zero-shot accuracy and retrieval after each stage (fine-tuning: its test score)."""
  cols = ["zero_shot_acc", "a2t_R@1", "a2t_R@5", "a2t_R@10", "t2a_R@1", "t2a_R@5", "t2a_R@10"]
  if any(r.get("task") == "finetune" for r in results.values()):
    cols.append("finetune_test")
  lines = ["| stage | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name, r in results.items():
    v = _scores(r)
    lines.append(f"| {name} | " + " | ".join(f"{v[c]:.3f}" if c in v else "-" for c in cols) + " |")
  chance = next(
    (
      r["final_validation"]["zero_shot_chance"]
      for r in results.values()
      if "zero_shot_chance" in (r.get("final_validation") or {})
    ),
    None,
  )
  if chance:
    lines.append(f"(zero-shot chance: {chance:.3f})")
  return "\n".join(lines)
