"""Tests of supervised fine-tuning (stage-1.1 recipe): augmentations, head, runs, data."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from conftest import HashEmbedder, small_config, write_wav

import jaxclap
from configs import finetune as ft_config
from jaxclap import convert, restore, sharding
from jaxclap.audio import frontend
from jaxclap.data import build, labelled, pipeline
from jaxclap.data.schema import BadInputError
from jaxclap.eval import finetune_task as finetune
from jaxclap.models import classifier, features, masks, patches
from jaxclap.run_meta import RunMeta
from jaxclap.train import augment, export, handoff, objectives
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import config as config_lib
from jaxclap.train import finetune as ft_lib
from jaxclap.train import state as state_lib


def _leaves(tree) -> dict:
  """{"a/b/c": array} of a nested dict."""
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
    for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _config(seed=0, **overrides):
  """The demo preset shrunk for tests; `overrides` are `finetune` knobs."""
  c = ft_config.get_config()
  c.seed, c.train.log_every = seed, 1000
  f = c.finetune
  f.batch, f.epochs, f.warmup_epochs, f.eval_batch = 16, 2, 0.5, 32
  f.update(overrides)
  return c


@pytest.fixture(scope="module")
def ft_demo_dir(demo400_data_dir) -> str:
  """The session's 400-clip demo set (320 train / 40 validation / 40 test clips), shared with
  the evaluation tests: fine-tuning reads only its audio and labels."""
  return demo400_data_dir


@pytest.fixture(scope="module")
def restored(stage1_workdir):
  return restore.restore(stage1_workdir)


# --------------------------------------------------------------------- augmentations


def test_mixup_mixes_inputs_and_labels_with_the_same_lambda():
  rng = jax.random.key(3)
  x = jax.random.normal(jax.random.key(0), (8, 4, 6))
  y = jax.nn.one_hot(jnp.arange(8) % 5, 5)
  draws = np.random.default_rng(0)
  lam = jnp.asarray([pipeline.mixup_lambda(draws, 0.5) for _ in range(8)])
  assert 0 < float(lam.min()) and float(lam.max()) < 1 and float(lam.std()) > 0.05
  xm, ym, perm = augment.mixup(rng, x, y, lam)
  perm = np.asarray(perm)
  assert sorted(perm.tolist()) == list(range(8)) and (perm != np.arange(8)).any()
  np.testing.assert_array_equal(perm, jax.random.permutation(rng, 8))
  np.testing.assert_allclose(
    xm, lam[:, None, None] * x + (1 - lam[:, None, None]) * x[perm], rtol=1e-6, atol=1e-6
  )
  np.testing.assert_allclose(ym, lam[:, None] * y + (1 - lam[:, None]) * y[perm], atol=1e-6)
  np.testing.assert_allclose(ym.sum(axis=1), 1.0, atol=1e-6)  # Still a distribution.
  # Per example, the weight that the label got is the weight that the input got.
  own = np.arange(8) % 5
  moved = own != own[perm]
  lam_y = np.asarray(ym)[np.arange(8), own]
  xn, xmn = np.asarray(x)[:, 0, 0], np.asarray(xm)[:, 0, 0]
  lam_x = (xmn[moved] - xn[perm][moved]) / (xn[moved] - xn[perm][moved])  # Partner ≠ self.
  np.testing.assert_allclose(lam_y[moved], lam_x, rtol=1e-4)
  assert pipeline.mixup_lambda(draws, 0.0) == 1.0  # Off: no mixing.
  xo, yo, _ = augment.mixup(rng, x, y, jnp.ones(8))
  np.testing.assert_array_equal(xo, x)
  np.testing.assert_array_equal(yo, y)


def test_spec_augment_masks_the_drawn_bands():
  x = jnp.ones((4, 80, 208)) + jax.random.uniform(jax.random.key(1), (4, 80, 208))
  rng = jax.random.key(7)
  out = np.asarray(augment.spec_augment(rng, x, 30, 40))
  f_key, t_key = jax.random.split(rng)
  f_start, f_width = map(np.asarray, augment.draw_bands(f_key, 4, 80, 30))
  t_start, t_width = map(np.asarray, augment.draw_bands(t_key, 4, 208, 40))
  assert (f_width < 30).all() and (t_width < 40).all() and f_width.max() > 0
  for b in range(4):
    rows = np.flatnonzero((out[b] == 0).all(axis=1))
    cols = np.flatnonzero((out[b] == 0).all(axis=0))
    np.testing.assert_array_equal(rows, np.arange(f_start[b], f_start[b] + f_width[b]))
    np.testing.assert_array_equal(cols, np.arange(t_start[b], t_start[b] + t_width[b]))
    assert (out[b] == 0).sum() == f_width[b] * 208 + t_width[b] * 80 - f_width[b] * t_width[b]
  # Exact widths: band_mask hides exactly `width` entries from `start`.
  m = np.asarray(augment.band_mask(10, jnp.array([2, 0]), jnp.array([3, 0])))
  np.testing.assert_array_equal(m.sum(axis=1), [3, 0])
  assert m[0, 2:5].all()
  np.testing.assert_array_equal(augment.spec_augment(rng, x, 0, 0), x)


def test_time_mask_scaling_and_mask_counts():
  assert augment.scaled_time_mask(192, 1001) == 192
  assert augment.scaled_time_mask(192, 208) == 40
  assert augment.mask_counts("frames", 5, 62, 0.5) == (0, 31)
  assert augment.mask_counts("tokens", 5, 62, 0.5) == (1, 23)
  assert augment.mask_counts("frames", 5, 4, 0.0) == (0, 0)
  with pytest.raises(ValueError, match="head_input"):
    augment.mask_counts("cls", 5, 4, 0.5)


# -------------------------------------------------------------------------- network


def _net(restored, unit_frames=64, **kw):
  knobs = _config(**kw).finetune
  return ft_lib.classifier_net(
    restored.model, restored.config.model.pos_table, 13, unit_frames, knobs
  )


def test_batchnorm_has_no_affine_params(restored):
  net = _net(restored)
  params, stats = classifier.init_variables(net, restored.params["encoder"], 0)
  assert "norm" not in params and set(params) == {"encoder", "classifier"}
  assert set(stats["norm"]) == {"mean", "var"} and stats["norm"]["mean"].shape == (5 * 64,)
  assert params["classifier"]["kernel"].shape == (5 * 64, 13)
  np.testing.assert_array_equal(
    params["encoder"]["cls_token"], restored.params["encoder"]["cls_token"]
  )


def test_head_input_is_the_time_averaged_feature(restored):
  net = _net(restored)
  params, stats = classifier.init_variables(net, restored.params["encoder"], 0)
  x = jax.random.normal(jax.random.key(2), (3, 80, 128))  # Two 64-frame chunks.
  full = jnp.full((3,), 128)
  feat = net.apply({"params": params, "batch_stats": stats}, x, full, method="features")
  expected = features.clip_features(restored.params, x, model=restored.model)
  np.testing.assert_allclose(feat, expected, rtol=1e-5, atol=1e-5)
  logits = net.apply({"params": params, "batch_stats": stats}, x, full)
  k, b = params["classifier"]["kernel"], params["classifier"]["bias"]
  np.testing.assert_allclose(logits, feat / np.sqrt(1 + 1e-5) @ k + b, rtol=1e-4, atol=1e-6)
  # Padding is left out: only time patches starting before valid_frames are averaged.
  frames = features.frame_features(restored.params, x, model=restored.model)  # [3, 8, 320]
  short = net.apply(
    {"params": params, "batch_stats": stats}, x, jnp.array([128, 40, 1]), method="features"
  )
  np.testing.assert_allclose(short[1], frames[1, :3].mean(axis=0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(short[2], frames[2, :1].mean(axis=0), rtol=1e-5, atol=1e-5)


def test_position_table_is_resized_to_the_crop(restored):
  net = _net(restored, unit_frames=128)  # Trained table: 4 columns; crops: 8.
  params, stats = classifier.init_variables(net, restored.params["encoder"], 0)
  x = jax.random.normal(jax.random.key(4), (2, 80, 128))
  tokens = net.apply({"params": params, "batch_stats": stats}, x, method="tokens")
  # The encoder itself resizes (bicubic) for input longer than its trained length.
  expected = restored.model.apply({"params": restored.params}, x, method="encode")
  np.testing.assert_allclose(tokens, expected, rtol=1e-5, atol=1e-5)
  # Interpolated from the trained 5x4 table, not a fresh 5x8 sin-cos table.
  table = net.apply(
    {"params": params, "batch_stats": stats}, method=lambda m: m.encoder.pos_embed((5, 8))
  )
  fresh = patches.sincos_pos_embed(64, (5, 8), cls_token=False)
  assert np.abs(np.asarray(table) - fresh).max() > 0.05


def test_masked_training_features_use_the_kept_grid(restored):
  net = _net(restored)
  params, stats = classifier.init_variables(net, restored.params["encoder"], 0)
  x = jax.random.normal(jax.random.key(5), (2, 80, 64))
  keep = jnp.array([[t + 4 * f for f in range(5) for t in (0, 2)]] * 2)  # Columns 0 and 2.
  feat = net.apply(
    {"params": params, "batch_stats": stats}, x, jnp.full((2,), 64), keep, (5, 2), method="features"
  )
  tok = net.apply({"params": params, "batch_stats": stats}, x, keep, method="tokens")
  expected = tok.reshape(2, 5, 2, -1).mean(axis=2).reshape(2, -1)
  np.testing.assert_allclose(feat, expected, rtol=1e-5, atol=1e-5)
  # "tokens" head: rows may go too (here rows 1 and 3, columns 0 and 2); D-dim mean.
  net_t = _net(restored, head_input="tokens")
  keep_t = jnp.array([[t + 4 * f for f in (1, 3) for t in (0, 2)]] * 2)
  feat_t = net_t.apply(
    {"params": params, "batch_stats": stats},
    x,
    jnp.full((2,), 64),
    keep_t,
    (2, 2),
    method="features",
  )
  tok_t = net_t.apply({"params": params, "batch_stats": stats}, x, keep_t, method="tokens")
  assert feat_t.shape == (2, 64)
  np.testing.assert_allclose(feat_t, tok_t.mean(axis=1), rtol=1e-5, atol=1e-5)


def test_non_square_patches_pool_over_their_own_width():
  """16x4 patches (the official 40 ms models): a column's first frame steps by 4 frames,
  so valid_frames=40 keeps a whole 32-frame chunk (8 columns) and 2 of the next."""
  from jaxclap.models.classifier import FinetuneNet

  net = FinetuneNet(size="test", num_classes=3, patch_size=(16, 4), input_frames=32, unit_frames=32)
  x = jax.random.normal(jax.random.key(6), (2, 80, 64))
  variables = net.init(jax.random.key(0), x, jnp.full((2,), 64))
  feat = net.apply(variables, x, jnp.array([64, 40]), method="features")
  chunks = [net.apply(variables, x[:, :, s : s + 32], method="tokens") for s in (0, 32)]
  grid = jnp.concatenate([c.reshape(2, 5, 8, -1) for c in chunks], axis=2)  # [B, F', T', D]
  for i, columns in enumerate((16, 10)):
    expected = grid[i, :, :columns].mean(axis=1).reshape(-1)
    np.testing.assert_allclose(feat[i], expected, rtol=1e-5, atol=1e-5)


def test_targets_reject_labels_out_of_range():
  np.testing.assert_array_equal(pipeline.label_vector({"label": 2}, 4, "x"), [0, 0, 1, 0])
  np.testing.assert_array_equal(
    pipeline.label_vector({"labels": np.array([0, 3])}, 4, "x"), [1, 0, 0, 1]
  )
  with pytest.raises(ValueError, match=r"ds:train\[5\].*clip b'c'.*\[-1\]"):
    pipeline.label_vector({"label": -1, "id": b"c"}, 4, "ds:train[5]")


def test_config_presets():
  run = ft_config.get_config("as2m")
  assert run.stage == "finetune" and run.finetune.dataset == "audioset_labelled"
  paper = run.finetune
  assert (paper.lr, paper.batch, paper.epochs, paper.warmup_epochs) == (2.0, 64, 70, 15.0)
  assert (paper.mixup, paper.mask_ratio, paper.freq_mask, paper.time_mask) == (0.5, 0.5, 30, 192)
  assert paper.crop_seconds == 10.0 and paper.multi_label is None
  # EVAR's AS2M run: timm Lars without decay (SGD, momentum 0.9), timm cosine to 1e-7,
  # 200,000 weighted draws per epoch, best epoch on the eval set, flat features.
  assert (paper.optimizer, paper.weight_decay, paper.momentum) == ("timm_lars", 0.0, 0.9)
  assert (paper.schedule, paper.lr_min, paper.warmup_lr) == ("timm_cosine", 1e-7, 0.0)
  assert (paper.epoch_clips, paper.sample_weights) == (200_000, "audioset")
  assert paper.val_split == "" and paper.head_input == "tokens" and paper.save_checkpoint
  demo = ft_config.get_config().finetune
  assert (demo.optimizer, demo.schedule, demo.epoch_clips) == ("timm_lars", "timm_cosine", 0)
  with pytest.raises(ValueError, match="unknown preset 'x'"):
    ft_config.get_config("x")
  c = ft_config.get_config()
  c.init.workdir = "/runs/stage1"
  config_lib.validate(c)
  with pytest.raises(ValueError, match="finetune.mask_ratio=1.0"):
    bad = _config(mask_ratio=1.0)
    bad.init.workdir = "/runs/stage1"
    config_lib.validate(bad)


# ----------------------------------------------------------------------------- runs


def test_finetune_demo_beats_chance(stage1_workdir, ft_demo_dir, tmp_path):
  c = _config(epochs=3, warmup_epochs=0.5, batch=32)
  # An in-loop evaluator probes the encoder being fine-tuned, beside its starting point.
  probe = dict(kind="knn", data="jaxclap_demo:validation", every=10)
  c.evaluate.evaluators.probe = ml_collections.ConfigDict(probe)
  c.evaluate.plot = False
  result = finetune.run_finetune(
    stage1_workdir, data_dir=ft_demo_dir, dataset="jaxclap_demo", config=c, workdir=str(tmp_path)
  )
  assert result["task"] == "finetune" and result["metric"] == "accuracy"
  assert result["epochs"] == 3 and result["steps"] == 3 * (320 // 32)
  assert len(result["history"]) == 3
  assert result["val"] == max(h["val"] for h in result["history"])
  assert result["test"] >= 3 / 13, result  # Chance is 1/13.
  evals = json.loads((tmp_path / "summary.json").read_text())["evaluators"]
  assert [h["step"] for h in evals["history"]] == [10, 20, 30]  # Every 10 steps, the end.
  assert set(evals["baselines"]["probe"]) == {"logmel", "init"}
  assert all(0 <= h["accuracy"] <= 1 for h in evals["history"])
  saved = json.loads((tmp_path / "finetune.json").read_text())
  assert saved["test"] == result["test"] and saved["unit_frames"] == 64
  clf = finetune.load_classifier(str(tmp_path))
  variables, facts = clf.variables, clf.facts
  assert variables["params"]["classifier"]["kernel"].shape == (320, 13)
  assert set(variables["batch_stats"]["norm"]) == {"mean", "var"}
  assert facts["best_epoch"] == result["best_epoch"] and facts["test"] == result["test"]


# ----------------------------------------------------------------------- multi-label


def _tone(hz, seconds=1.0, sr=16000):
  t = np.arange(int(sr * seconds)) / sr
  return 0.3 * np.sin(2 * np.pi * hz * t)


def _multi_label_folder(root, rows_extra=()):
  rng = np.random.default_rng(0)
  sounds = {
    "low": lambda: _tone(200),
    "high": lambda: _tone(3000),
    "noise": lambda: 0.1 * rng.standard_normal(16000),
  }
  rows = ["file,labels,split"]
  combos = [
    ("low",),
    ("high",),
    ("noise",),
    ("low", "high"),
    ("low", "noise"),
    ("high", "noise"),
    ("low", "high", "noise"),
  ]
  for i in range(28):
    combo = combos[i % len(combos)]
    split = ("train", "train", "validation", "test")[i % 4]
    write_wav(root / f"c{i}.wav", sum(sounds[n]() for n in combo) / len(combo), 16000)
    rows.append(f'c{i}.wav,"{",".join(combo)}",{split}')
  rows.extend(rows_extra)
  (root / "labels.csv").write_text("\n".join(rows) + "\n")
  return root


def test_multi_label_csv_builds_and_finetunes(stage1_workdir, tmp_path):
  root = _multi_label_folder(tmp_path / "tags")
  data_dir = str(tmp_path / "data")
  info = build.build_dataset(
    "labelled_folder/tags", data_dir, manual_dir=str(root), embedder=HashEmbedder()
  )
  assert info["class_names"] == ["high", "low", "noise"]
  assert tfds.builder("labelled_folder/tags", data_dir=data_dir).info.metadata["multi_label"]
  source = tfds.data_source("labelled_folder/tags", split="train", data_dir=data_dir)
  recs = {r["id"].decode(): r for r in (source[i] for i in range(len(source)))}
  np.testing.assert_array_equal(recs["c4"]["labels"], [1, 2])  # "low,noise".
  np.testing.assert_array_equal(recs["c1"]["labels"], [0])  # "high".
  assert recs["c4"]["label"] == -1 and recs["c1"]["label"] == -1
  assert [c.decode() for c in recs["c4"]["captions"]] == ["low", "noise"]
  c = _config(epochs=4, batch=8, max_steps=3)
  result = finetune.run_finetune(
    stage1_workdir,
    data_dir=data_dir,
    dataset="labelled_folder/tags",
    config=c,
    workdir=str(tmp_path / "ft"),
  )
  assert result["metric"] == "mAP" and result["multi_label"]
  assert 0.0 <= result["test"] <= 1.0 and 0.0 <= result["val"] <= 1.0
  assert (result["steps"], result["epochs"]) == (3, 3)
  assert os.path.isfile(tmp_path / "ft" / "finetune.json")


@pytest.mark.parametrize(
  "extra,vocab,message",
  [
    ('c0.wav,"low,,high",train', None, r"labels.csv line 30: empty label in 'low,,high'"),
    (
      'c1.wav,"low;bird",train',
      "index,mid,display_name\n0,/m/1,low\n1,/m/2,high\n2,/m/3,noise\n",
      r"labels.csv line 30: unknown label 'bird'.*classes.csv",
    ),
  ],
)
def test_bad_label_names_file_and_row(tmp_path, extra, vocab, message):
  root = _multi_label_folder(tmp_path / "bad", [extra])
  if vocab:
    (root / "classes.csv").write_text(vocab)
  with pytest.raises(BadInputError, match=message):
    build.build_dataset(
      "labelled_folder/bad", str(tmp_path / "data"), manual_dir=str(root), embedder=HashEmbedder()
    )


def test_single_label_column_keeps_commas_and_vocabulary_order(tmp_path):
  root = tmp_path / "speech"
  write_wav(root / "a.wav", _tone(300), 16000)
  write_wav(root / "b.wav", _tone(600), 16000)
  (root / "labels.csv").write_text(
    'file,label\na.wav,"Male speech, man speaking"\nb.wav,/m/09x0r\n'
  )
  (root / "class_labels_indices.csv").write_text(
    'index,mid,display_name\n1,/m/09x0r,Speech\n0,/m/05zppz,"Male speech, man speaking"\n'
  )
  info = build.build_dataset(
    "labelled_folder/speech", str(tmp_path / "d"), manual_dir=str(root), embedder=HashEmbedder()
  )
  assert info["class_names"] == ["Male speech, man speaking", "Speech"]
  source = tfds.data_source("labelled_folder/speech", split="train", data_dir=str(tmp_path / "d"))
  got = {
    r["id"].decode(): (int(r["label"]), r["labels"].tolist())
    for r in (source[i] for i in range(len(source)))
  }
  assert got == {"a": (0, [0]), "b": (1, [1])}
  assert not tfds.builder("labelled_folder/speech", data_dir=str(tmp_path / "d")).info.metadata[
    "multi_label"
  ]


# ------------------------------------------------------ the stage-1.1 workdir it writes

FT_CROP_SECONDS = 127 * 160 / 16000  # 128 frames: the stage-1 table's 4 columns → 8.


@pytest.fixture(scope="module")
def ft_run(stage1_workdir, ft_demo_dir, tmp_path_factory):
  """A short run with the AS2M recipe's structure: mean-token head, masking drawn per
  batch, weighted epochs of 64 of the 320 clips, best epoch on the test split, 128-frame
  crops (the position table fitted to twice the trained width)."""
  workdir = str(tmp_path_factory.mktemp("ft_run"))
  c = _config(
    epochs=2,
    batch=16,
    head_input="tokens",
    crop_seconds=FT_CROP_SECONDS,
    epoch_clips=64,
    sample_weights="audioset",
    val_split="",
  )
  result = finetune.run_finetune(
    stage1_workdir, data_dir=ft_demo_dir, dataset="jaxclap_demo", config=c, workdir=workdir
  )
  return workdir, result, c


def test_finetune_writes_a_stage_1_1_workdir(ft_run, stage1_workdir, ft_demo_dir):
  workdir, result, _ = ft_run
  assert (result["steps"], result["steps_per_epoch"], result["epochs"]) == (8, 4, 2)
  assert result["val_split"] == "test" and result["test"] == result["val"]
  assert [tuple(v) for v in result["mask_variants"]] == list(masks.official_variants(5, 8, 0.5))
  assert [tuple(v[:2]) for v in result["mask_variants"]] == [(0, 4), (1, 2), (2, 1), (3, 0)]
  saved = ckpt.load(workdir)
  meta, source = saved.meta, saved.source
  assert source == result["workdir_checkpoint"]
  assert source.endswith(f"checkpoints/{result['steps']}")  # The run's last step ...
  assert (meta.stage, meta.input_frames, meta.unit_frames) == ("stage1", 128, 128)
  assert meta.config["model"]["pos_table"] == "stored" and meta.step == result["steps"]
  assert meta.finetune["best_step"] == result["best_step"]  # ... holds the best epoch.
  ft = meta.finetune
  assert (ft["dataset"], ft["best_epoch"], ft["test"]) == (
    "jaxclap_demo",
    result["best_epoch"],
    result["test"],
  )
  assert ft["trained_input_frames"] == 64 and ft["head"].startswith("state/head")
  # Everything but the encoder is the starting checkpoint's, unchanged.
  start, tuned = restore.restore(stage1_workdir), restore.restore(workdir)
  assert tuned.config.model.pos_table == "stored" and tuned.model.input_frames == 128
  for part in set(start.params) - {"encoder"}:
    for k, v in _leaves(start.params[part]).items():
      np.testing.assert_array_equal(_leaves(tuned.params[part])[k], v, err_msg=f"{part}/{k}")
  for k, v in _leaves(start.target).items():
    np.testing.assert_array_equal(_leaves(tuned.target)[k], v, err_msg=k)
  assert not np.allclose(
    tuned.params["encoder"]["patch_embed"]["kernel"],
    start.params["encoder"]["patch_embed"]["kernel"],
  )
  # The table is the trained sin-cos one fitted (bicubic) to 8 columns, not a fresh 5x8.
  d = tuned.params["encoder"]["cls_token"].shape[-1]
  fitted = patches.fit_pos_embed(
    patches.sincos_pos_embed(d, (5, 4), cls_token=False), (5, 4), (5, 8)
  )
  np.testing.assert_allclose(tuned.params["encoder"]["pos_embed"], fitted, atol=1e-6)
  assert (
    np.abs(
      tuned.params["encoder"]["pos_embed"] - patches.sincos_pos_embed(d, (5, 8), cls_token=False)
    ).max()
    > 0.05
  )
  # The classifier read back scores the test split as the run did.
  clf = finetune.load_classifier(workdir)
  assert clf.facts["head_input"] == "tokens" and clf.objective.net.unit_frames == 128
  source_test = pipeline.open_source("jaxclap_demo", "test", ft_demo_dir)
  samples = labelled.longest_clip([source_test])
  scores, truth = [], []
  for b, n in labelled.eval_batches(
    source_test, samples=samples, batch=32, num_classes=13, where="test"
  ):
    scores.append(clf.logits(b)[:n])
    truth.append(b["target"][:n])
  assert ft_lib.score(np.concatenate(scores), np.concatenate(truth), False) == pytest.approx(
    result["test"], abs=1e-9
  )


def test_written_encoder_gives_the_finetuned_features(restored, tmp_path):
  """jaxclap.load of the written workdir computes what the fine-tuning network computed."""
  net = _net(restored, unit_frames=128)
  params, stats = classifier.init_variables(net, restored.params["encoder"], 0)
  noise = jax.random.split(jax.random.key(9), len(jax.tree_util.tree_leaves(params["encoder"])))
  leaves, tree = jax.tree_util.tree_flatten(params["encoder"])
  params["encoder"] = jax.tree_util.tree_unflatten(
    tree, [v + 0.02 * jax.random.normal(k, v.shape) for v, k in zip(leaves, noise)]
  )
  facts = {"class_names": [str(i) for i in range(13)], "head_input": "frames", "multi_label": False}
  export.write(
    str(tmp_path),
    saved=ckpt.load(restored.source),
    source_config=restored.config,
    network=restored.network,
    net=net,
    params=params,
    batch_stats=stats,
    step=7,
    facts=facts,
  )
  wave = 0.1 * np.random.default_rng(0).standard_normal(127 * 160).astype(np.float32)
  model = jaxclap.load(str(tmp_path), progress=False)
  got = model.frame_features(wave, sample_rate=16000)[0]
  x = frontend.waveform_input(
    {"audio": jnp.asarray(wave[None]), "audio_len": jnp.array([wave.size])},
    restored.frontend_cfg,
    restored.norm_stats,
  )
  tokens = net.apply({"params": params, "batch_stats": stats}, x, method="tokens")
  expected = np.asarray(patches.tokens_to_frames(tokens, 5))[0]
  assert got.shape == expected.shape == (8, 5 * 64)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_finetuned_workdir_starts_stage2(ft_run, demo_data_dir):
  """Stage 2's init.workdir path: its config takes the stored table, the encoder fits."""
  workdir, _, _ = ft_run
  init = ckpt.load(workdir)
  saved, meta, source = init.state, init.meta, init.source
  c = small_config("stage2", demo_data_dir)
  c.init.workdir = workdir
  run_config = json.loads(c.to_json_best_effort())
  run_config["model"]["pos_table"] = meta.pos_table  # As loop.train_and_evaluate.
  objective = objectives.build(
    c, RunMeta(config=run_config, total_steps=1, input_frames=meta.input_frames)
  )
  mesh = sharding.make_mesh(data=1, fsdp=1)
  state, _ = state_lib.create_sharded_state(
    init_params=objective.init,
    tx=optax.sgd(0.1),
    seed=0,
    norm_stats=(0.0, 1.0),
    mesh=mesh,
    rules=[tuple(r) for r in c.mesh.rules],
  )
  state = handoff.apply(state, saved, parts="audio_encoder", source=source)
  encoder = state.frozen["encoder"] if "encoder" in state.frozen else state.params["encoder"]
  for k, v in _leaves(saved["params"]["encoder"]).items():
    np.testing.assert_array_equal(_leaves(encoder)[k], v, err_msg=k)


def test_finetuned_workdir_exports_to_torch(ft_run, tmp_path):
  workdir, _, _ = ft_run
  path, _ = convert.to_torch(workdir, str(tmp_path), tag="ft")
  assert "80x128" in path.parent.name
  state, meta = convert.load_official(path)
  tuned = restore.restore(workdir)
  np.testing.assert_array_equal(state["pos_embed"][0, 1:], tuned.params["encoder"]["pos_embed"])
  assert meta["stage"] == "stage1" and meta["input_frames"] == 128
  assert "decoder_pos_embed" in state  # The predictor travels with the encoder.


def test_rerun_returns_the_stored_result(ft_run, stage1_workdir, ft_demo_dir):
  workdir, result, c = ft_run
  stamp = os.path.getmtime(os.path.join(workdir, "finetune.json"))
  again = finetune.run_finetune(
    stage1_workdir, data_dir=ft_demo_dir, dataset="jaxclap_demo", config=c, workdir=workdir
  )
  assert again == json.loads(json.dumps(result))
  assert os.path.getmtime(os.path.join(workdir, "finetune.json")) == stamp
  other = ml_collections.ConfigDict(c.to_dict())
  other.finetune.lr = 1.0
  with pytest.raises(ValueError, match="with another config; use a new workdir"):
    finetune.run_finetune(
      stage1_workdir, data_dir=ft_demo_dir, dataset="jaxclap_demo", config=other, workdir=workdir
    )
