"""The demo's stage chain: stage 1 → 1.1 → 2 in subfolders, a results table, the plots."""

import ml_collections
import pytest
from conftest import small_config

from configs import demo
from jaxclap import sequence
from jaxclap.train import checkpoint as ckpt


@pytest.mark.slow
def test_stages_chain_and_write_plots(demo_data_dir, tmp_path, capsys):
  config = ml_collections.ConfigDict()
  config.data_dir = demo_data_dir
  config.demo_clips = 64
  stage1_1 = demo.stage1_1()
  stage1_1.finetune.update(
    dict(batch=8, epochs=1, max_steps=3, warmup_epochs=0.5, eval_batch=8, log_every=1000)
  )
  config.stages = ml_collections.ConfigDict(
    {
      "stage1": small_config("stage1", demo_data_dir),
      "stage1_1": stage1_1,
      "stage2": small_config("stage2", demo_data_dir),
    }
  )
  config.stages.stage2.model.structured_mask_counts = "official"  # As the demo runs it.
  config.plots = True
  results = sequence.run_stages(config, str(tmp_path))
  assert list(results) == ["stage1", "stage1_1", "stage2"]
  assert results["stage1_1"]["task"] == "finetune" and results["stage1_1"]["steps"] == 3
  assert results["stage2"]["start_step"] == 0 and results["stage2"]["end_step"] == 2
  # Stage 2 started from the fine-tuned encoder (stage 1.1), not from stage 1.
  s11 = ckpt.load(str(tmp_path / "stage1_1")).state
  s1 = ckpt.load(str(tmp_path / "stage1")).state
  s2 = ckpt.load(str(tmp_path / "stage2")).state
  kernel = lambda s: s["encoder"]["body"]["block_0"]["attn"]["qkv"]["kernel"]
  assert (kernel(s2["frozen"]) == kernel(s11["params"])).all()
  assert not (kernel(s2["frozen"]) == kernel(s1["params"])).all()
  out = capsys.readouterr().out
  assert "| stage1 |" in out and "| stage1_1 |" in out and "| stage2 |" in out
  assert "finetune_test" in out
  for name in ("embedding_map", "similarity", "timeline"):
    png = tmp_path / "plots" / f"{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
