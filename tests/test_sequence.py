"""The demo's stage chain: stage 1 → 2 in subfolders, a results table, then the plots."""

import ml_collections
import pytest

from conftest import small_config
from jaxclap.train import sequence


@pytest.mark.slow
def test_stages_chain_and_write_plots(demo_data_dir, tmp_path, capsys):
  config = ml_collections.ConfigDict()
  config.data_dir = demo_data_dir
  config.demo_clips = 64
  config.stages = ml_collections.ConfigDict({
      "stage1": small_config("stage1", demo_data_dir),
      "stage2": small_config("stage2", demo_data_dir)})
  config.plots = True
  results = sequence.run_stages(config, str(tmp_path))
  assert list(results) == ["stage1", "stage2"]
  assert results["stage2"]["start_step"] == 0 and results["stage2"]["end_step"] == 2
  out = capsys.readouterr().out
  assert "| stage1 |" in out and "| stage2 |" in out
  for name in ("embedding_map", "similarity", "timeline"):
    png = tmp_path / "plots" / f"{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
