"""Tests of the grain input pipeline: determinism, sharding, mixing, resume."""

import itertools
import json

import grain
import numpy as np
import pytest

from jaxclap.data import batching, build, pipeline

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
    x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
  )


def test_batch_layout_and_values(train):
  batch = _take(_loader(train, global_batch=6, caption="first", random_crop=False), 1)[0]
  assert batch["audio"].shape == (6, CROP) and batch["audio"].dtype == np.float32
  assert batch["audio_len"].dtype == np.int32 and batch["label"].dtype == np.int32
  assert batch["index"].dtype == np.int64 and batch["caption_embedding"].shape == (6, 384)
  assert batch["caption_embedding"].dtype == np.float32
  for row in range(6):
    rec = train[int(batch["index"][row])]
    np.testing.assert_array_equal(batch["audio"][row], rec["audio"][:CROP] / 32768.0)
    assert batch["audio_len"][row] == CROP  # Every demo clip is longer than 1 s.
    np.testing.assert_array_equal(
      batch["caption_embedding"][row], rec["caption_embeddings"][0].astype(np.float32)
    )
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
    assert any(np.array_equal(batch["caption_embedding"][row], e) for e in emb)
  assert max(starts) > 0  # Random crops do not all start at 0.


def test_short_clip_is_padded_with_true_length(train):
  crop = 7 * 16000  # Longer than any demo clip (max 6 s).
  batch = _take(_loader(train, crop_samples=crop, random_crop=True), 1)[0]
  for row in range(4):
    n = train[int(batch["index"][row])]["audio"].shape[0]
    assert batch["audio_len"][row] == n
    assert not batch["audio"][row, n:].any()
    np.testing.assert_array_equal(
      batch["audio"][row, :n], train[int(batch["index"][row])]["audio"] / 32768.0
    )


def test_same_seed_same_batches_different_seed_differs(train):
  a = _take(_loader(train, seed=5), 5)
  assert _equal(a, _take(_loader(train, seed=5), 5))
  assert not _equal(a, _take(_loader(train, seed=6), 5))


def test_epochs_cover_all_records_and_reshuffle(train):
  n = len(train)
  batches = _take(_loader(train, global_batch=4, num_epochs=2, drop_remainder=False), 10**6)
  index = np.concatenate([b["index"] for b in batches])
  emb = np.concatenate([b["caption_embedding"] for b in batches])
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
    loader = _loader(
      train,
      global_batch=8,
      num_epochs=1,
      process_index=p,
      process_count=2,
      drop_remainder=drop_remainder,
    )
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
  import grain
  from etils import epath

  it = iter(_loader(train, seed=4))
  _take(it, 2)
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(epath.Path(tmp_path), item=it)
  expected = _take(it, 1)
  restored = handler.restore(epath.Path(tmp_path), item=iter(_loader(train, seed=4)))
  assert _equal(_take(restored, 1), expected)


def _per_element_iterator(source, seed):
  """The loader before batching moved into the workers: a grain.DataLoader of single
  examples (its state is grain's, in `last_seen_indices`)."""
  mixed = pipeline.MixedSource([source])
  sampler = grain.samplers.IndexSampler(
    num_records=len(mixed), shuffle=True, num_epochs=None, seed=seed
  )
  return iter(
    grain.DataLoader(
      data_source=mixed,
      sampler=sampler,
      operations=[pipeline.CropAndPick(CROP, True, "random")],
      shard_options=grain.sharding.ShardOptions(0, 1, drop_remainder=True),
    )
  )


def _per_element_batches(it, n):
  return [batching.stack(list(itertools.islice(it, 4))) for _ in range(n)]


def test_state_saved_before_workers_batched_resumes_exactly(train):
  """A checkpoint of the per-element loader: same stream, so its state resumes exactly."""
  old = _per_element_iterator(train, seed=7)
  assert _equal(_per_element_batches(old, 3), _take(_loader(train, seed=7), 3))
  state = old.get_state()
  assert "last_seen_indices" in json.loads(state)
  expected = _per_element_batches(old, 2)
  resumed = iter(_loader(train, seed=7))
  resumed.set_state(state)
  assert _equal(_take(resumed, 2), expected)
  assert json.loads(resumed.get_state())["records_consumed"] == 5 * 4


def test_foreign_states_are_refused_by_key(train):
  it = iter(_loader(train, seed=7))
  state = json.loads(it.get_state())
  with pytest.raises(ValueError, match="'sampler'.*other data or another seed"):
    iter(_loader(train, seed=8)).set_state(json.dumps(state).encode())
  del state["records_consumed"]
  with pytest.raises(ValueError, match="neither 'records_consumed' nor grain's 'last_seen"):
    it.set_state(json.dumps(state).encode())


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


def test_one_source_reads_in_its_own_order(train):
  """One source (with or without a weight) is read in its own order: record k at key k."""
  for weights in (None, [2.0]):
    mixed = pipeline.MixedSource([train], weights)
    assert len(mixed) == len(train)
    for k in (0, 1, len(train) - 1, len(train) + 2):
      got = mixed[k]
      assert (got["source"], got["index"]) == (0, k % len(train))
      np.testing.assert_array_equal(got["record"]["audio"], train[k % len(train)]["audio"])


class _Records:
  """A random-access source over a list of records."""

  def __init__(self, records):
    self._records = records

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    return self._records[i]


def test_labelled_examples_carry_a_label_vector_and_mixup_weight(train):
  """num_classes: crops of the record with its multi-hot target and a Beta(α, α) λ."""
  unshuffled = dict(shuffle=False, num_epochs=1, global_batch=8, num_classes=13, where="demo:train")
  batch = _take(_loader(train, mixup=0.5, **unshuffled), 1)[0]
  assert set(batch) == {"audio", "audio_len", "target", "mix_lambda"}
  assert batch["target"].dtype == np.float32 and batch["mix_lambda"].dtype == np.float32
  assert 0 < batch["mix_lambda"].min() and batch["mix_lambda"].max() < 1
  for row in range(8):  # Unshuffled: row k is record k.
    rec = train[row]
    np.testing.assert_array_equal(batch["target"][row], np.eye(13)[rec["label"]])
    pcm = np.round(batch["audio"][row] * 32768).astype(np.int16)
    windows = np.lib.stride_tricks.sliding_window_view(rec["audio"], CROP)
    assert (windows == pcm).all(axis=1).any()
  plain = _take(_loader(train, mixup=0.0, **unshuffled), 1)[0]
  assert (plain["mix_lambda"] == 1.0).all()
  # λ is drawn after the crop from the same generator: the crops do not depend on it.
  np.testing.assert_array_equal(plain["audio"], batch["audio"])
  assert _equal(_take(_loader(train, mixup=0.5, **unshuffled), 1), [batch])
  # Labelled sources need no captions.
  bare = _Records(
    [{"audio": train[i]["audio"], "labels": np.array([0, 2]), "id": b"x"} for i in range(4)]
  )
  out = _take(_loader(bare, global_batch=4, num_classes=3, where="bare"), 1)[0]
  np.testing.assert_array_equal(out["target"], [[1, 0, 1]] * 4)
  with pytest.raises(ValueError, match=r"bare: clip b'x' has labels \[0, 2\], outside \[0, 2\)"):
    _take(_loader(bare, global_batch=4, num_classes=2, where="bare"), 1)


def test_crop_clip_pads_short_clips_and_keeps_their_length():
  audio = np.arange(1, 11, dtype=np.int16)
  out, n = pipeline.crop_clip(audio, 4, 3)
  np.testing.assert_array_equal(out, [4, 5, 6, 7])
  assert n == 4
  out, n = pipeline.crop_clip(audio, 6, 7)
  np.testing.assert_array_equal(out, [8, 9, 10, 0, 0, 0])
  assert n == 3 and out.dtype == np.int16
