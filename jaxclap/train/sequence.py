"""Running several stages in a row (the demo): each in `<workdir>/<stage>`, chained."""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from jaxclap.train import loop


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.stages` in order; each later stage starts from the one before."""
  results = {}
  previous = None
  for name, stage_cfg in config.stages.items():
    stage_cfg = ml_collections.ConfigDict(stage_cfg.to_dict())  # Unlocked copy.
    stage_cfg.data.data_dir = config.data_dir
    stage_cfg.data.demo_clips = config.get("demo_clips", stage_cfg.data.demo_clips)
    if previous is not None:
      stage_cfg.init.workdir = previous
    stage_dir = os.path.join(workdir, name)
    print(f"===== {name} → {stage_dir}", flush=True)
    results[name] = loop.train_and_evaluate(stage_cfg, stage_dir)
    previous = stage_dir
  print(format_table(results), flush=True)
  if config.get("plots") and previous is not None and jax.process_index() == 0:
    import jaxclap  # The plots read the last stage back as a user would.
    from jaxclap.eval import plots

    model = jaxclap.load(previous, progress=False)
    written = plots.write_demo_plots(workdir, model, config.data_dir)
    print("plots: " + ", ".join(written.values()), flush=True)
  return results


def format_table(results: dict[str, Any]) -> str:
  """Zero-shot accuracy and retrieval after each stage, as a Markdown table."""
  cols = ["zero_shot_acc", "a2t_R@1", "a2t_R@5", "a2t_R@10", "t2a_R@1", "t2a_R@5", "t2a_R@10"]
  lines = ["| stage | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name, r in results.items():
    v = r.get("final_validation") or {}
    lines.append(f"| {name} | " + " | ".join(f"{v[c]:.3f}" if c in v else "-" for c in cols)
                 + " |")
  chance = next((r["final_validation"]["zero_shot_chance"] for r in results.values()
                 if "zero_shot_chance" in r.get("final_validation", {})), None)
  if chance:
    lines.append(f"(zero-shot chance: {chance:.3f})")
  return "\n".join(lines)
