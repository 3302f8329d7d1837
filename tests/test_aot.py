"""Ahead-of-time TPU compiles (`jaxclap.train.aot`, `--compile_for`): libtpu's compiler, no TPU.

Compiling for TPU is slow on 2 cores: every program pays ~20 s for the log-mel front end
(its 400-point FFT) and the ViT-B step takes minutes (`bench/capacity.py`, docs/capacity.md).
So the command line compiles the demo's stage-1 recipe with the `test`-size ViT on 16-frame
crops (one patch column: the front end's compile grows with the crop) for v5e-4 once, and one
oversized train step is refused in-process.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxclap.train import aot

REPO = Path(__file__).resolve().parents[1]
SLICE = "v5e-4"
SMALL = ("--config.model.size=test", "--config.data.crop_frames=16")


def _config(**overrides):
  """configs/demo.py:stage1 as SMALL sets it, then `group__key=value` overrides."""
  from configs import demo

  c = demo.stage1()
  c.model.size, c.data.crop_frames = "test", 16
  for key, value in overrides.items():
    group, name = key.split("__")
    c[group][name] = value
  return c


def test_slice_names_map_to_topologies():
  expect = {
    "v5e-4": ("v5e:2x2", 4),
    "v5e-256": ("v5e:16x16", 256),
    "v5litepod-16": ("v5e:4x4", 16),
    "v4-32": ("v4:2x2x4", 16),
    "v5p-64": ("v5:2x4x4", 32),
    "v5p-256": ("v5:4x4x8", 128),
    "v6e-8": ("v6e:2x4", 8),
    "2xv5e-16": ("v5e:4x4", 32),
    "v4:4x4x12": ("v4:4x4x12", 192),
  }
  for name, (topology, chips) in expect.items():
    slc = aot.parse_slice(name)
    assert (slc.topology, slc.chips) == (topology, chips), name
  assert aot.parse_slice("v5p-128").topology_kwargs()["wrap"] == (True, True, True)
  for bad in ("v5e-12", "v7-8", "v4-7"):
    with pytest.raises(ValueError, match="--compile_for"):
      aot.parse_slice(bad)


def test_without_libtpu_says_how_to_install(monkeypatch):
  monkeypatch.setattr(aot, "_has_libtpu", lambda: False)
  with pytest.raises(aot.NoLibtpu, match=r"pip install .*-e '\.\[tpu\]'"):
    aot.devices(aot.parse_slice(SLICE))


def _line(report: str, label: str) -> str:
  return next(ln for ln in report.splitlines() if ln.strip().startswith(label))


def _numbers(line: str) -> list[float]:
  return [float(x) for x in re.findall(r"\d+\.\d+", line)]


def _replicated_state_gib() -> float:
  """Bytes of the whole train state (what each chip holds at fsdp 1), from its shapes."""
  state = aot.abstract_run(_config(), aot.parse_slice(SLICE)).state
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / aot.GIB


def test_command_prints_the_report_writes_nothing_and_fsdp_cuts_bytes(tmp_path):
  workdir = tmp_path / "run"
  args = [
    sys.executable,
    "-m",
    "jaxclap.main",
    "--config=configs/demo.py:stage1",
    f"--workdir={workdir}",
    f"--compile_for={SLICE}",
    *SMALL,
    "--config.mesh.fsdp=4",
  ]
  proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
  out = proc.stdout
  assert proc.returncode == 0, out + proc.stderr[-3000:]
  for line in ("per-chip memory (GiB)", "temporaries", "generated code", "HBM", "MFU 30%"):
    assert line in out, out
  assert "mesh data 1 × fsdp 4" in out and "fits:" in out, out
  assert not workdir.exists()  # No checkpoint, no folder.
  # Parameters, Adam moments and the EMA target sharded 4 ways (GiB to 3 decimals).
  train_arguments = _numbers(_line(out, "arguments"))[0]
  assert train_arguments < 0.35 * _replicated_state_gib() + 0.001, out
  # XLA counts all the network count does (its matmuls), and what it leaves out: the front
  # end, which the TPU computes as a matmul (~1 MFLOP per frame, nearly half this test
  # network), and the element-wise ops. For ViT-B the gap is under 2% (docs/capacity.md).
  ratio = float(re.search(r"XLA/network (\d+\.\d+)", out).group(1))
  assert 1.0 < ratio < 2.0, out


def test_an_oversized_batch_is_refused_naming_the_knobs():
  config = _config(train__global_batch=524288)  # 131,072 clips per chip.
  with pytest.raises(aot.DoesNotFit) as e:
    aot.compile_steps(config, aot.parse_slice(SLICE), which=("train",))
  message = str(e.value)
  assert message.startswith("the train step needs") and "over by" in message, message
  for knob in ("train.global_batch", "mesh.fsdp", "model.remat"):
    assert knob in message, message
