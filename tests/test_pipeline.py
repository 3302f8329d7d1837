"""Tests of the grain input pipeline: determinism, sharding, mixing, resume."""

import itertools

import numpy as np
import pytest

from jaxclap.data import build, pipeline

CROP = 16_000  # 1 s crops keep the tests fast; demo clips are 2-6 s.


@pytest.fixture(scope="module")
def train(demo_data_dir):
  return pipeline.open_source(build.DEMO, "train", demo_data_dir)


def _loader(source, weights=None, **kw):
  args = dict(global_batch=4, crop_samples=CROP, seed=0, process_index=0, process_count=1)
  args.update(kw)
  return pipeline.make_loader(source, weights, **args)


def _take(loader_or_iter, n):
  return list(itertools.islice(iter(loader_or_iter), n))


def _equal(a, b):
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_batch_layout_and_values(train):
  batch = _take(_loader(train, global_batch=6, caption="first", random_crop=False), 1)[0]
  assert batch["audio"].shape == (6, CROP) and batch["audio"].dtype == np.float32
  assert batch["audio_len"].dtype == np.int32 and batch["label"].dtype == np.int32
  assert batch["index"].dtype == np.int64 and batch["text_embedding"].shape == (6, 384)
  assert batch["text_embedding"].dtype == np.float32
  for row in range(6):
    rec = train[int(batch["index"][row])]
    np.testing.assert_array_equal(batch["audio"][row], rec["audio"][:CROP] / 32768.0)
    assert batch["audio_len"][row] == CROP  # Every demo clip is longer than 1 s.
    np.testing.assert_array_equal(batch["text_embedding"][row],
                                  rec["caption_embeddings"][0].astype(np.float32))
    assert batch["label"][row] == rec["label"]


def test_random_crop_and_caption_come_from_the_record(train):
  batch = _take(_loader(train, global_batch=8), 1)[0]
  starts = []
  for row in range(8):
    rec = train[int(batch["index"][row])]
    pcm = np.round(batch["audio"][row] * 32768).astype(np.int16)
    windows = np.lib.stride_tricks.sliding_window_view(rec["audio"], CROP)
    hits = np.flatnonzero((windows[:, :64] == pcm[:64]).all(axis=1))
    assert any(np.array_equal(windows[h], pcm) for h in hits)
    starts.append(hits[0])
    emb = rec["caption_embeddings"].astype(np.float32)
    assert any(np.array_equal(batch["text_embedding"][row], e) for e in emb)
  assert max(starts) > 0  # Random crops do not all start at 0.


def test_short_clip_is_padded_with_true_length(train):
  crop = 7 * 16000  # Longer than any demo clip (max 6 s).
  batch = _take(_loader(train, crop_samples=crop, random_crop=True), 1)[0]
  for row in range(4):
    n = train[int(batch["index"][row])]["audio"].shape[0]
    assert batch["audio_len"][row] == n
    assert not batch["audio"][row, n:].any()
    np.testing.assert_array_equal(batch["audio"][row, :n],
                                  train[int(batch["index"][row])]["audio"] / 32768.0)


def test_same_seed_same_batches_different_seed_differs(train):
  a = _take(_loader(train, seed=5), 5)
  assert _equal(a, _take(_loader(train, seed=5), 5))
  assert not _equal(a, _take(_loader(train, seed=6), 5))


def test_epochs_cover_all_records_and_reshuffle(train):
  n = len(train)
  batches = _take(_loader(train, global_batch=4, num_epochs=2, drop_remainder=False), 10**6)
  index = np.concatenate([b["index"] for b in batches])
  emb = np.concatenate([b["text_embedding"] for b in batches])
  assert index.size == 2 * n
  first, second = index[:n], index[n:]
  assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
  assert not np.array_equal(first, second)  # Reseeded each epoch.
  # One caption drawn per example per epoch: some records get another caption next epoch.
  order1, order2 = np.argsort(first), np.argsort(second)
  assert (emb[:n][order1] != emb[n:][order2]).any(axis=1).any()


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_two_processes_see_disjoint_shards(train, drop_remainder):
  seen = []
  for p in range(2):
    loader = _loader(train, global_batch=8, num_epochs=1, process_index=p, process_count=2,
                     drop_remainder=drop_remainder)
    batches = _take(loader, 10**6)
    assert all(b["audio"].shape[0] <= 4 for b in batches)  # 8 / 2 processes.
    seen.append(np.concatenate([b["index"] for b in batches]))
  assert not set(seen[0]) & set(seen[1])
  union = set(seen[0]) | set(seen[1])
  n = len(train)
  if drop_remainder:  # Each process keeps whole batches of its n // 2 records.
    assert len(union) == 2 * ((n // 2) // 4 * 4) and union <= set(range(n))
  else:
    assert union == set(range(n))


def test_state_restore_continues_identically(train):
  loader = _loader(train, seed=3)
  it = iter(loader)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 2)
  fresh = iter(_loader(train, seed=3))
  fresh.set_state(state)
  assert _equal(_take(fresh, 2), expected)


def test_state_round_trips_through_grain_checkpoint_handler(train, tmp_path):
  from etils import epath
  import grain

  it = iter(_loader(train, seed=4))
  _take(it, 2)
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(epath.Path(tmp_path), item=it)
  expected = _take(it, 1)
  restored = handler.restore(epath.Path(tmp_path), item=iter(_loader(train, seed=4)))
  assert _equal(_take(restored, 1), expected)


@pytest.mark.slow
def test_worker_count_does_not_change_batches_and_state_restores(train):
  reference = _take(_loader(train, seed=1, num_workers=0), 6)
  it = iter(_loader(train, seed=1, num_workers=2))
  got = _take(it, 4)
  assert _equal(got, reference[:4])
  state = it.get_state()
  resumed = iter(_loader(train, seed=1, num_workers=2))
  resumed.set_state(state)
  assert _equal(_take(resumed, 2), reference[4:6])


def test_weighted_mixture(demo_data_dir, train):
  val = pipeline.open_source(build.DEMO, "validation", demo_data_dir)
  mixed = pipeline.MixedSource([train, val], [0.75, 0.25])
  which = np.array([mixed[k]["source"] for k in range(len(mixed))])
  assert abs(which.mean() - 0.25) < 0.02
  records = {(mixed[k]["source"], mixed[k]["index"]) for k in range(len(mixed))}
  assert records == {(0, i) for i in range(len(train))} | {(1, i) for i in range(len(val))}
  batches = _take(_loader([train, val], [0.75, 0.25], global_batch=8), 30)
  sources = np.concatenate([b["source"] for b in batches])
  assert 0.12 < sources.mean() < 0.38
  default = pipeline.MixedSource([train, val])  # Default weights: plain concatenation.
  assert len(default) == len(train) + len(val)


def test_bad_arguments(train, hash_demo_data_dir):
  other = pipeline.open_source(build.DEMO, "train", hash_demo_data_dir)  # 8-d embeddings.
  with pytest.raises(ValueError, match="different caption embedding dims"):
    _loader([train, other])
  with pytest.raises(ValueError, match="not divisible"):
    _loader(train, global_batch=5, process_count=2, process_index=0)
  with pytest.raises(ValueError, match="caption"):
    _loader(train, caption="longest")
  with pytest.raises(ValueError, match="weights"):
    _loader([train, train], [1.0, -1.0])


def test_default_process_layout_comes_from_jax(train):
  loader = pipeline.make_loader(train, global_batch=4, crop_samples=CROP, seed=0)
  assert _take(loader, 1)[0]["audio"].shape == (4, CROP)  # Single process: whole batch.
