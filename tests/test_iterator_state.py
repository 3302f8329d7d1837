"""The input position moves between process and worker layouts without skipping or repeating."""

import json

import numpy as np
import pytest

from jaxclap.data import iterator_state, pipeline


def _loader(data_dir, process_index, process_count, workers=0):
  source = pipeline.open_source("jaxclap_demo", "train", data_dir)
  return pipeline.make_loader(
    source,
    global_batch=8,
    crop_samples=1600,
    seed=3,
    process_index=process_index,
    process_count=process_count,
    num_workers=workers,
  )


def _global_batch(iterators):
  """The records and crops of one global step, in record order."""
  parts = [next(it) for it in iterators]
  index = np.concatenate([p["index"] for p in parts])
  audio = np.concatenate([p["audio"] for p in parts])
  order = np.argsort(index)
  return index[order], audio[order]


@pytest.mark.parametrize(
  "before,after", [((2, 0), (1, 0)), ((1, 0), (4, 0)), ((1, 2), (2, 0)), ((2, 0), (1, 3))]
)
def test_position_moves_between_layouts(hash_demo_data_dir, before, after):
  (c0, w0), (c1, w1) = before, after
  old = [iter(_loader(hash_demo_data_dir, p, c0, w0)) for p in range(c0)]
  for _ in range(3):  # 3 global steps, then "save".
    _global_batch(old)
  saved = {p: it.get_state() for p, it in enumerate(old)}
  consumed = {
    iterator_state.records_consumed(s, process_index=p, process_count=c0) for p, s in saved.items()
  }
  assert consumed == {3 * 8}

  new = [iter(_loader(hash_demo_data_dir, p, c1, w1)) for p in range(c1)]
  for p, it in enumerate(new):
    it.set_state(
      json.dumps(
        iterator_state.state_for(24, it.get_state(), process_index=p, process_count=c1)
      ).encode()
    )
  uninterrupted = [iter(_loader(hash_demo_data_dir, p, c0, w0)) for p in range(c0)]
  for _ in range(3):
    _global_batch(uninterrupted)
  for _ in range(2):  # The next two global steps hold the same records and the same crops.
    index, audio = _global_batch(new)
    ref_index, ref_audio = _global_batch(uninterrupted)
    np.testing.assert_array_equal(index, ref_index)
    np.testing.assert_array_equal(audio, ref_audio)


def test_bad_layouts_are_named():
  with pytest.raises(ValueError, match="process_<i>-of-<n>"):
    iterator_state.parse_layout("state.json")
  assert iterator_state.parse_layout("process_1-of-4.json") == (1, 4)
  template = {"last_seen_indices": {"0": -2}, "last_worker_index": -1, "worker_count": 0}
  with pytest.raises(ValueError, match="divisible by the process count"):
    iterator_state.state_for(7, template, process_index=0, process_count=2)


def test_saved_positions_read_in_both_formats():
  """The pipeline's own state, and grain DataLoader states of checkpoints made before it."""
  new = iterator_state.position_state(
    48, process_index=1, process_count=2, sampler="S", data_source="D"
  )
  assert iterator_state.records_consumed(new, process_index=1, process_count=2) == 48
  with pytest.raises(ValueError, match="'process_index', 'process_count' are \\(1, 2\\)"):
    iterator_state.records_consumed(new, process_index=0, process_count=4)
  # grain, 2 workers, 1 process: worker w saw indices w, w + 2, ..., up to its last.
  old = {"last_seen_indices": {"0": 20, "1": 21}, "last_worker_index": 1, "worker_count": 2}
  assert iterator_state.records_consumed(old, process_index=0, process_count=1) == 22
  moved = iterator_state.state_for(22, dict(new, sampler="S2"), process_index=0, process_count=1)
  assert moved == iterator_state.position_state(
    22, process_index=0, process_count=1, sampler="S2", data_source="D"
  )
  with pytest.raises(ValueError, match="neither 'records_consumed'"):
    iterator_state.records_consumed({"step": 3}, process_index=0, process_count=1)
