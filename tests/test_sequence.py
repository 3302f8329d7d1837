"""The demo's stage chain: stage 1 → 1.1 → 2 in subfolders, a results table, the plots."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaxclap.train import checkpoint as ckpt

TESTS = Path(__file__).resolve().parent


# A shortened demo chain, as a config file the real command line reads.
_CONFIG = """
import sys

sys.path.insert(0, {tests!r})
import ml_collections
from conftest import small_config

from configs import demo


def get_config():
  config = ml_collections.ConfigDict()
  config.data_dir = {data_dir!r}
  config.demo_clips = 64
  stage1_1 = demo.stage1_1()
  stage1_1.finetune.update(
    dict(batch=8, epochs=1, max_steps=3, warmup_epochs=0.5, eval_batch=8, log_every=1000)
  )
  config.stages = ml_collections.ConfigDict(
    {{"stage1": small_config("stage1", {data_dir!r}), "stage1_1": stage1_1,
      "stage2": small_config("stage2", {data_dir!r})}}
  )
  config.stages.stage2.model.structured_mask_counts = "official"  # As the demo runs it.
  config.plots = True
  return config
"""


@pytest.mark.slow
def test_stages_chain_and_write_plots(demo_data_dir, tmp_path):
  config = tmp_path / "short_demo.py"
  config.write_text(_CONFIG.format(tests=str(TESTS), data_dir=demo_data_dir))
  work = tmp_path / "run"
  proc = subprocess.run(
    [sys.executable, "-m", "jaxclap.main", f"--config={config}", f"--workdir={work}"],
    cwd=TESTS.parent,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  fine = json.loads((work / "stage1_1" / "finetune.json").read_text())
  assert fine["task"] == "finetune" and fine["steps"] == 3
  summary = json.loads((work / "stage2" / "summary.json").read_text())
  assert summary["start_step"] == 0 and summary["end_step"] == 2
  # Stage 2 started from the fine-tuned encoder (stage 1.1), not from stage 1.
  s11 = ckpt.load(str(work / "stage1_1")).state
  s1 = ckpt.load(str(work / "stage1")).state
  s2 = ckpt.load(str(work / "stage2")).state
  kernel = lambda s: s["encoder"]["body"]["block_0"]["attn"]["qkv"]["kernel"]
  assert (kernel(s2["frozen"]) == kernel(s11["params"])).all()
  assert not (kernel(s2["frozen"]) == kernel(s1["params"])).all()
  # The console a user reads: progress, validation and tables; no library INFO logs.
  console = (proc.stdout + proc.stderr).splitlines()
  assert len(console) < 60, "\n".join(console)
  assert not [line for line in console if line[:1] == "I" and line[1:5].isdigit()]
  assert sum("compiled and ran in" in line for line in console) == 3  # Stages 1, 1.1, 2.
  out = proc.stdout
  assert "| stage1 |" in out and "| stage1_1 |" in out and "| stage2 |" in out
  assert "finetune_test" in out
  for name in ("embedding_map", "similarity", "timeline"):
    png = work / "plots" / f"{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
