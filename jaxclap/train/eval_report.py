"""The evaluators' final table (model vs baselines) and learning-curve plot."""

from __future__ import annotations

import os
from typing import Any

from absl import logging

from jaxclap.train.evaluators import BASELINE_NAMES, Spec

TABLE_METRICS = {  # Metrics shown in the table per kind (TensorBoard has them all).
  "linear_probe": ("accuracy",),
  "few_shot": ("1shot_accuracy", "5shot_accuracy"),
  "ridge": ("accuracy",),
  "knn": ("accuracy",),
  "zero_shot": ("accuracy",),
  "retrieval": ("a2t_R@10", "t2a_R@10", "a2t_R@1", "t2a_R@1"),  # The plot shows the first.
  "fidelity": ("cosine",),  # Distillation: student-teacher cosine of CLAP audio embeddings.
}


def _cell(value: float | None) -> str:
  return "-" if value is None else f"{value:.4f}"


def final_table(
  specs: list[Spec], history: list[dict[str, Any]], baselines: dict[str, dict]
) -> tuple[str, list[dict[str, Any]]]:
  """Markdown table of each evaluator's last result beside its baselines, and its rows."""
  newest = {h["name"]: h for h in history}
  # The teacher's column only in a distillation (the one run that scores a teacher).
  has_teacher = any("teacher" in v for v in baselines.values())
  bases = [b for b in BASELINE_NAMES if b != "teacher" or has_teacher]
  rows = []
  for s in specs:
    got = newest.get(s.name, {})
    for metric in TABLE_METRICS[s.kind]:
      if metric not in got:
        continue
      row = {"evaluator": s.name, "kind": s.kind, "data": f"{s.dataset}:{s.split}"}
      row.update(metric=metric, step=got["step"], model=got[metric])
      for base in bases:
        row[base] = baselines.get(s.name, {}).get(base, {}).get(metric)
      rows.append(row)
  head = ["evaluator", "kind", "data", "metric", "step", "model"]
  head += [BASELINE_NAMES[b] for b in bases]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["evaluator"], r["kind"], r["data"], r["metric"], str(r["step"]), _cell(r["model"])]
    cells += [_cell(r[b]) for b in bases]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines), rows


def plot_curves(
  path: str, specs: list[Spec], history: list[dict[str, Any]], baselines: dict[str, dict]
) -> str | None:
  """One panel per evaluator: its first table metric over steps, baselines dashed; a PNG."""
  try:  # matplotlib is the optional "plots" extra; a finished run must not fail over a plot.
    from matplotlib.figure import Figure
  except ImportError:
    logging.warning("learning-curve plot skipped: no matplotlib (pip install 'jaxclap[plots]')")
    return None
  fig = Figure(figsize=(3.6 * len(specs), 3.0))  # Object API, no pyplot state (eval/plots.py).
  axes = fig.subplots(1, len(specs), squeeze=False)
  for ax, s in zip(axes[0], specs):
    metric = TABLE_METRICS[s.kind][0]
    pts = [(h["step"], h[metric]) for h in history if h["name"] == s.name and metric in h]
    if pts:
      ax.plot(*zip(*pts), "o-", label="model", color="C0")
    for i, (base, label) in enumerate(BASELINE_NAMES.items()):
      value = baselines.get(s.name, {}).get(base, {}).get(metric)
      if value is not None:
        ax.axhline(value, ls="--", color=f"C{i + 1}", label=label)
    ax.set_title(f"{s.name} ({s.kind})", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=80)
  return path
