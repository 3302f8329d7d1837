"""Runs a suite of task presets on datasets laid out as distributed; the paper-side table.

  report = suite.run(model, data_root, presets.by_name(presets.SUITES["paper"]))

Each preset whose folder is under `data_root` is read by its layout reader, its clips are
decoded (`audio.io`), cut or zero-padded to the preset's clip length from their start and
embedded by the inference model; the protocol's evaluator kind scores them
(`score/kinds.py`). Fine-tuning presets fine-tune the checkpoint per round with their
recipe (`ft_suite`; needs the checkpoint's path and a workdir). Presets without their
data are listed as absent, with the reason. Clips of presets that share a folder and
reader are decoded and embedded once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxclap import metrics
from jaxclap.audio import io as audio_io
from jaxclap.eval import ft_suite, layouts, presets
from jaxclap.score import crossval, kinds, probe

CHUNK = 256  # Clips decoded and embedded per model call.


class _Clips:
  """Decoded clips and their embeddings per (folder, reader), computed on first use."""

  def __init__(self, model: Any, max_clips: int | None):
    self.model, self.max_clips = model, max_clips
    self._data: dict[tuple, layouts.TaskData] = {}
    self._emb: dict[tuple, tuple[np.ndarray, dict[int, np.ndarray]]] = {}

  def data(self, preset: presets.Preset, root: Path) -> layouts.TaskData:
    key = (str(root), preset.reader)
    if key not in self._data:
      self._data[key] = _head(preset.reader(root), self.max_clips)
    return self._data[key]

  def embed(
    self, preset: presets.Preset, root: Path, kind: str, idx: np.ndarray | None = None
  ) -> np.ndarray:
    """`kind` of the preset's clips `idx` (all by default), decoded and embedded CHUNK clips
    at a time (a large set never holds all its waveforms at once); each clip once."""
    files = self.data(preset, root).files
    idx = np.arange(len(files)) if idx is None else np.asarray(idx, np.int64)
    key = (str(root), preset.reader, preset.unit_sec, kind)
    done, rows = self._emb.setdefault(key, (np.zeros(len(files), bool), {}))
    todo = idx[~done[idx]]
    rate = int(self.model.sample_rate)
    unit = int(round(preset.unit_sec * rate))
    for start in tqdm(range(0, todo.size, CHUNK), desc=f"{preset.name} clips", leave=False):
      part = todo[start : start + CHUNK]
      waves = [_fit(audio_io.load_audio(files[i], rate), unit) for i in part]
      out = np.asarray(getattr(self.model, kind)(waves, sample_rate=rate))
      rows.update(zip(part.tolist(), out))
      done[part] = True
    return np.stack([rows[i] for i in idx.tolist()])


def _head(data: layouts.TaskData, n: int | None) -> layouts.TaskData:
  """n clips evenly spaced through the task's list, so every fold and split keeps some
  (quick runs); the whole task when n is None."""
  if n is None or len(data) <= n:
    return data
  idx = np.unique(np.linspace(0, len(data) - 1, n).round().astype(int))
  cut = lambda v: None if v is None else [v[i] for i in idx]  # noqa: E731
  return layouts.TaskData(
    cut(data.files),
    cut(data.labels),
    None if data.folds is None else data.folds[idx],
    cut(data.splits),
    cut(data.captions),
    data.display,
  )


def _fit(wave: np.ndarray, samples: int) -> np.ndarray:
  """The first `samples` of a clip, zero-padded when shorter (EVAR's test-time crop)."""
  if wave.shape[0] >= samples:
    return wave[:samples]
  return np.pad(wave, (0, samples - wave.shape[0]))


def _labelled(data: layouts.TaskData) -> tuple[list[str], np.ndarray]:
  """(class keys, labels as int [N] or multi-hot [N, C])."""
  keys = data.class_keys
  index = {k: i for i, k in enumerate(keys)}
  y, _ = crossval.targets([[index[k] for k in ls] for ls in data.labels], len(keys))
  return keys, y


def _linear(ctx: _Clips, p: presets.Preset, root: Path, opts: dict) -> dict[str, Any]:
  data = ctx.data(p, root)
  keys, y = _labelled(data)
  plan = crossval.rounds(data.folds, data.splits)
  inputs = kinds.Inputs(
    plan=plan, labels=y, num_classes=len(keys), features=ctx.embed(p, root, "clip_features")
  )
  out = kinds.score("linear_probe", inputs, opts["options"])
  return {**out, "classes": len(keys), "clips": len(data), "rounds": len(plan)}


def _zero_shot(ctx: _Clips, p: presets.Preset, root: Path, opts: dict) -> dict[str, Any]:
  data = ctx.data(p, root)
  keys, y = _labelled(data)
  names = [(data.display or {}).get(k, k) for k in keys]
  class_emb = np.asarray(ctx.model.text_embedding([p.prompt(n) for n in names]))
  plan = crossval.rounds(data.folds, data.splits, train=False)
  test = np.concatenate([r.test for r in plan])
  # Only the scored clips are embedded: every clip once for folds, the test split otherwise.
  emb = np.zeros((len(data), class_emb.shape[1]), np.float32)
  emb[test] = ctx.embed(p, root, "audio_embedding", test)
  inputs = kinds.Inputs(plan=plan, labels=y, num_classes=len(keys), audio=emb, class_text=class_emb)
  return {**kinds.score("zero_shot", inputs), "classes": len(keys)}


def _retrieval(ctx: _Clips, p: presets.Preset, root: Path, opts: dict) -> dict[str, Any]:
  data = ctx.data(p, root)
  test = [i for i, s in enumerate(data.splits or []) if s == "test"]
  texts, owner = metrics.flatten_captions([data.captions[i] for i in test])
  inputs = kinds.Inputs(
    audio=ctx.embed(p, root, "audio_embedding", np.asarray(test, np.int64)),
    captions=np.asarray(ctx.model.text_embedding(texts)),
    caption_clip=owner,
  )
  return {**kinds.score("retrieval", inputs), "clips": len(test), "captions": len(texts)}


def _finetune(ctx: _Clips, p: presets.Preset, root: Path, opts: dict) -> dict[str, Any]:
  out = ft_suite.run_preset(
    p.name,
    ctx.data(p, root),
    config_spec=presets.FINETUNE_CONFIGS[p.name],
    checkpoint=opts["checkpoint"],
    workdir=opts["workdir"],
    sample_rate=int(ctx.model.sample_rate),
    overrides=opts["finetune_overrides"],
  )
  if p.metric not in out:
    raise ValueError(f"{p.name}: fine-tuning scored {sorted(out)}, expected {p.metric}")
  return out


PROTOCOLS = {
  "linear": _linear,
  "zero_shot": _zero_shot,
  "retrieval": _retrieval,
  "finetune": _finetune,
}


def _why_not(p: presets.Preset, root: Path, model: Any, opts: dict) -> str | None:
  """Why a preset cannot run here, or None."""
  if not root.is_dir():
    return f"no folder {root}"
  if p.protocol == "finetune" and not (opts["checkpoint"] and opts["workdir"]):
    return "fine-tuning needs the checkpoint's path and a workdir (suite.run checkpoint=, workdir=)"
  if p.protocol in ("zero_shot", "retrieval"):
    try:
      model.text_embedding(["text side check"])
    except ValueError as e:  # No text tower / sentence model recorded in the checkpoint.
      return f"no CLAP text side: {e}"
  return None


def run(
  model: Any,
  data_root: str,
  chosen: Sequence[presets.Preset],
  *,
  seeds: Sequence[int] = (0, 1, 2),
  probe_config: probe.ProbeConfig = probe.ProbeConfig(),
  max_clips: int | None = None,
  progress: bool = True,
  checkpoint: str | None = None,
  workdir: str | None = None,
  finetune_overrides: dict[str, Any] | None = None,
  reference: str = presets.DEFAULT_REFERENCE,
) -> dict[str, Any]:
  """Scores every preset whose data is present; returns {"rows": [...], "absent": [...]}.

  Fine-tuning presets fine-tune `checkpoint` (a jaxclap workdir or checkpoint) with their
  recipe, `finetune_overrides` (knob -> value) on top, under `workdir`/finetune. The paper
  column holds `reference`'s published numbers (a key of `presets.REFERENCES`).
  """
  if reference not in presets.REFERENCES:
    raise ValueError(f"unknown reference {reference!r}; known: {sorted(presets.REFERENCES)}")
  published = presets.REFERENCES[reference]
  ctx = _Clips(model, max_clips)
  opts = {
    "options": kinds.Options(seeds=tuple(seeds), probe_config=probe_config),
    "checkpoint": checkpoint,
    "workdir": workdir,
    "finetune_overrides": finetune_overrides,
  }
  rows, absent = [], []
  bar = tqdm(chosen, desc="presets", unit="task", disable=not progress)
  for p in bar:
    bar.set_postfix_str(p.name)
    root = Path(data_root) / p.folder
    reason = _why_not(p, root, model, opts)
    if reason is None:
      try:
        if not len(ctx.data(p, root)):
          reason = f"no clips of {p.name} found under {root}"
      except FileNotFoundError as e:
        reason = str(e)
    if reason is not None:
      absent.append({"preset": p.name, "reason": reason})
      continue
    result = PROTOCOLS[p.protocol](ctx, p, root, opts)
    for metric in p.metrics:
      paper = published.get(p.name) if metric == p.metrics[0] else None
      rows.append(
        {
          "preset": p.name,
          "protocol": p.protocol,
          "metric": metric,
          "value": float(result[metric]),
          "paper": None if paper is None else paper.value,
          "paper_source": None if paper is None else paper.source,
          "details": result,
        }
      )
  return {"data_root": data_root, "reference": reference, "rows": rows, "absent": absent}


def _cell(v: float | None) -> str:
  return "" if v is None else f"{100 * v:.2f}"


def format_table(report: dict[str, Any]) -> str:
  """Markdown: one row per preset run (ours beside the paper's, in %), then the absent ones."""
  lines = [
    f"| task | protocol | metric | ours (%) | paper: {report['reference']} (%) | paper source |",
    "|---|---|---|---|---|---|",
  ]
  for r in report["rows"]:
    lines.append(
      f"| {r['preset']} | {r['protocol']} | {r['metric']} | {_cell(r['value'])} | "
      f"{_cell(r['paper'])} | {r['paper_source'] or ''} |"
    )
  if report["absent"]:
    lines += ["", "Not run (data absent or protocol not available here):"]
    lines += [f"- {a['preset']}: {a['reason']}" for a in report["absent"]]
  return "\n".join(lines)


def write(report: dict[str, Any], workdir: str, title: str) -> str:
  """Writes workdir/suite.json and workdir/suite.md; returns the table."""
  os.makedirs(workdir, exist_ok=True)
  table = format_table(report)
  with open(os.path.join(workdir, "suite.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(workdir, "suite.md"), "w") as f:
    f.write(f"# {title}\n\nData root `{report['data_root']}`.\n\n{table}\n")
  return table
