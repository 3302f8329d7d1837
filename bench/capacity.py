"""The capacity table of docs/capacity.md: the paper's stage 1 and 2 on TPU slices, from
ahead-of-time compiles of the real train step (`jaxclap.train.aot`, needs the tpu extra).

Each compile (ViT-B, train step) takes minutes of CPU, so compiles are asked for one at a
time and kept in a JSON file; the table is drawn from whatever it holds:

  python bench/capacity.py --compile=stage1:v5e-32 --json=bench/capacity.json
  python bench/capacity.py --compile=stage1:v5e-64,stage2:v5p-64 --json=bench/capacity.json
  python bench/capacity.py --json=bench/capacity.json            # the table only

Rows not compiled take their per-chip memory from a compiled row of the same stage (same
generation first): the state, code and outputs as compiled, the temporaries (activations)
scaled by the per-chip batch; they are marked "est.". Times are projections at the chip's
dense bf16 peak for 60 % and 30 % MFU, over the config's epochs of the paper's corpora.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import ml_collections

from jaxclap.train import aot

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"stage1": "configs/stage1.py", "stage2": "configs/stage2.py"}
CHIPS = (8, 16, 32, 64, 128, 256)
MFUS = (0.6, 0.3)


def load_config(stage: str) -> ml_collections.ConfigDict:
  """configs/<stage>.py's get_config()."""
  path = ROOT / STAGES[stage]
  spec = importlib.util.spec_from_file_location(f"capacity_{stage}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def slice_name(generation: str, chips: int) -> str:
  """The slice users name for `chips` chips of a generation (v4/v5p count cores)."""
  return f"{generation}-{chips * aot.CHIPS[generation].cores_per_chip}"


def compile_row(stage: str, name: str) -> dict[str, Any]:
  """Compiles the stage's train step for the slice; its numbers as a JSON-ready dict."""
  c = aot.compile_steps(
    load_config(stage), aot.parse_slice(name), which=("train",), log=lambda s: print(s, flush=True)
  )
  return {
    "stage": stage,
    "slice": name,
    "chips": c.slice.chips,
    "per_chip": c.global_batch // c.slice.chips,
    "memory": dataclasses.asdict(c.memory["train"]),
    "compile_s": round(c.seconds["train"], 1),
    "xla_gflop_per_clip": c.xla_flops / c.global_batch / 1e9,
    "network_gflop_per_clip": (c.network_flops or 0) / c.global_batch / 1e9 or None,
    "device_kind": c.device_kind,
    "cpu": f"{os.cpu_count()} cores",
    "date": time.strftime("%Y-%m-%d"),
  }


def _estimate(row: dict, per_chip: int) -> int:
  """Per-chip bytes at another per-chip batch: activations scale with it, the rest not."""
  m = aot.Memory(**row["memory"])
  return m.total - m.temporaries + round(m.temporaries * per_chip / row["per_chip"])


def _source(compiled: list[dict], stage: str, generation: str) -> dict | None:
  """The compiled row to estimate from: same stage, same generation first."""
  same = [r for r in compiled if r["stage"] == stage]
  gen = [r for r in same if aot.parse_slice(r["slice"]).generation == generation]
  return (gen or same or [None])[0]


def _clips(config: ml_collections.ConfigDict) -> int | None:
  """Clips one run trains on (the config's steps × its global batch)."""
  steps = aot.total_steps(config)[0]
  return steps * config.train.global_batch if steps else None


def _gflop_per_clip(config: ml_collections.ConfigDict, compiled: list[dict], stage: str):
  """Model FLOPs per clip: the network count, else XLA's from a compiled row, else None."""
  counted = aot.network_flops(config)
  if counted:
    return counted / config.train.global_batch / 1e9
  rows = [r for r in compiled if r["stage"] == stage]
  return rows[0]["xla_gflop_per_clip"] if rows else None


def _memory(compiled: list[dict], stage: str, name: str, per_chip: int) -> tuple[int | None, str]:
  """(per-chip bytes, where they come from) of one row."""
  row = next((r for r in compiled if (r["stage"], r["slice"]) == (stage, name)), None)
  if row:
    return aot.Memory(**row["memory"]).total, f"compiled ({row['compile_s'] / 60:.1f} min)"
  src = _source(compiled, stage, aot.parse_slice(name).generation)
  if src is None:
    return None, "not compiled"
  return _estimate(src, per_chip), f"est. from {src['slice']}"


def table(compiled: list[dict], stage: str) -> list[str]:
  """Markdown rows of one stage over every generation and slice size."""
  config = load_config(stage)
  batch, clips = config.train.global_batch, _clips(config)
  per_clip = _gflop_per_clip(config, compiled, stage)
  lines = [
    "| slice | chips | clips/chip | GiB/chip (HBM) | fits | run @ 60 % / 30 % MFU "
    "| chip-hours @ 60 % / 30 % | memory from |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for gen, chip in aot.CHIPS.items():
    for n in CHIPS:
      name, per_chip = slice_name(gen, n), batch // n
      mem, how = _memory(compiled, stage, name, per_chip)
      fits = "-" if mem is None else ("yes" if mem <= chip.hbm_gib * aot.GIB else "**no**")
      gib = "-" if mem is None else f"{mem / aot.GIB:.1f} ({chip.hbm_gib:g})"
      runs = []
      if per_clip and clips:
        runs = [per_clip * 1e9 * clips / (n * chip.peak_bf16 * u) for u in MFUS]
      hours = " / ".join(f"{s / 3600:.1f} h" for s in runs) or "-"
      chip_h = " / ".join(f"{s * n / 3600:,.0f}" for s in runs) or "-"
      lines.append(f"| {name} | {n} | {per_chip} | {gib} | {fits} | {hours} | {chip_h} | {how} |")
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--compile", default="", help="stage:slice,... to compile (train step)")
  parser.add_argument("--json", default=str(ROOT / "bench" / "capacity.json"))
  args = parser.parse_args()
  aot.use_cpu_host()
  path = Path(args.json)
  compiled = json.loads(path.read_text()) if path.exists() else []
  for item in filter(None, args.compile.split(",")):
    stage, name = item.split(":")
    row = compile_row(stage, name)
    compiled = [r for r in compiled if (r["stage"], r["slice"]) != (stage, name)] + [row]
    path.write_text(json.dumps(compiled, indent=1) + "\n")
    print(json.dumps(row), flush=True)
  for stage in STAGES:
    if not any(r["stage"] == stage for r in compiled) and not aot.network_flops(load_config(stage)):
      print(f"\n{stage} ({STAGES[stage]}): nothing compiled, no network count: no table")
      continue
    print(f"\n{stage} ({STAGES[stage]}):\n" + "\n".join(table(compiled, stage)))


if __name__ == "__main__":
  main()
