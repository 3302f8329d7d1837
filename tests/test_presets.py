"""EVAR task presets on generated stand-ins of each dataset's layout (real file names and
CSV columns, short tones per class): folds, multi-label mAP, and the --suite=paper table."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from conftest import HashEmbedder, write_wav

from jaxclap import evaluate
from jaxclap import restore as restore_lib
from jaxclap.data import build
from jaxclap.eval import ft_suite, layouts, presets, suite
from jaxclap.score import crossval, probe
from jaxclap.train import augment, optim
from jaxclap.train import finetune as ft_lib

SR = 16000
FAST = probe.ProbeConfig(max_epochs=30, patience=5)
CLI_FOLDERS = ("gtzan", "clotho", "AudioSet")  # The CLI test's root holds only these.


def _tone(cls: int, i: int, seconds: float = 0.25) -> np.ndarray:
  """A class-specific tone (plus a little noise that differs per clip)."""
  t = np.arange(int(seconds * SR)) / SR
  rng = np.random.default_rng(cls * 100 + i)
  return (0.5 * np.sin(2 * np.pi * 300 * (cls + 1) * t) + 0.01 * rng.normal(size=t.size)).astype(
    np.float32
  )


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([header, *rows])


def _stand_in(root: Path) -> None:
  """Every layout the suite reads, 2-3 classes, one or two clips per class and fold/split."""
  esc, rows = root / "ESC-50-master", []
  for fold in (1, 2, 3):
    for c, cat in enumerate(("dog", "rain", "door_wood_knock")):
      name = f"{fold}-{100 + c}-A-0.wav"
      write_wav(esc / "audio" / name, _tone(c, fold), SR)
      rows.append([name, fold, c, cat, False, 100 + c, "A"])
  _csv(
    esc / "meta" / "esc50.csv",
    ["filename", "fold", "target", "category", "esc10", "src_file", "take"],
    rows,
  )
  us, rows = root / "UrbanSound8K", []
  for fold in (1, 2):
    for c, cls in enumerate(("siren", "drilling")):
      name = f"{c}-{fold}-0-0.wav"
      write_wav(us / "audio" / f"fold{fold}" / name, _tone(c, fold), SR)
      rows.append([name, c, 0.0, 4.0, 1, fold, c, cls])
  _csv(
    us / "metadata" / "UrbanSound8K.csv",
    ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"],
    rows,
  )
  gt = root / "gtzan"
  lists = {"train": [], "valid": [], "test": []}
  for c, genre in enumerate(("blues", "jazz")):
    for i, split in enumerate(("train", "train", "valid", "test")):
      write_wav(gt / genre / f"{genre}.{i:05d}.wav", _tone(c, i), SR)
      lists[split].append(f"{genre}/{genre}.{i:05d}.wav")
  for split, names in lists.items():
    (gt / f"{split}_filtered.txt").write_text("\n".join(names) + "\n")
  sp = root / "spcv2"
  for c, word in enumerate(("yes", "no")):
    for i in range(4):
      write_wav(sp / word / f"abc{i}_nohash_0.wav", _tone(c, i), SR)
  write_wav(sp / "_background_noise_" / "white_noise.wav", _tone(0, 9), SR)
  (sp / "validation_list.txt").write_text("yes/abc2_nohash_0.wav\nno/abc2_nohash_0.wav\n")
  (sp / "testing_list.txt").write_text("yes/abc3_nohash_0.wav\nno/abc3_nohash_0.wav\n")
  ns = root / "nsynth"
  for split in ("train", "valid", "test"):
    meta = {}
    for c, fam in enumerate(("guitar", "organ")):
      note = f"{fam}_acoustic_000-060-100"
      write_wav(ns / f"nsynth-{split}" / "audio" / f"{note}.wav", _tone(c, 0), SR)
      meta[note] = {"instrument_family_str": fam, "pitch": 60}
    (ns / f"nsynth-{split}" / "examples.json").write_text(json.dumps(meta))
  cr, rows = root / "cremad", []
  for spk, split in ((1001, "train"), (1002, "valid"), (1003, "test")):
    for c, emo in enumerate(("ANG", "SAD")):
      name = f"{spk}_DFA_{emo}_XX.wav"
      write_wav(cr / name, _tone(c, spk), SR)
      rows.append([name, emo, spk, split])
  _csv(cr / "cremad.csv", ["file_name", "label", "speaker_id", "split"], rows)
  fsd, labels = root / "fsd50k", ["Dog,Bark", "Rain", "Dog", "Rain,Bark"]
  for split, csv_name, folder in (("train", "dev", "dev_audio"), (None, "eval", "eval_audio")):
    rows = []
    for i, lab in enumerate(labels):
      fname = f"{hash(csv_name) % 1000 + i}"
      write_wav(fsd / f"FSD50K.{folder}" / f"{fname}.wav", _tone(i % 3, i), SR)
      rows.append([fname, lab, "/m/x"] + ([["train", "val"][i == 3]] if split else []))
    header = ["fname", "labels", "mids"] + (["split"] if split else [])
    _csv(fsd / "FSD50K.ground_truth" / f"{csv_name}.csv", header, rows)
  aset = root / "AudioSet"
  _csv(
    aset / "class_labels_indices.csv",
    ["index", "mid", "display_name"],
    [[0, "/m/0bt9lr", "Dog"], [1, "/m/06mb1", "Rain"]],
  )
  for subset in ("balanced_train_segments", "unbalanced_train_segments", "eval_segments"):
    lines = [
      "# Segments csv",
      "# num_ytids=2",
      "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    for i, mids in enumerate(('"/m/0bt9lr"', '"/m/06mb1,/m/0bt9lr"')):
      ytid = f"{subset[:3]}{i:08d}"
      lines.append(f"{ytid}, 0.000, 10.000, {mids}")
      write_wav(aset / subset / f"{ytid}_0.wav", _tone(i, i), SR)
    (aset / f"{subset}.csv").write_text("\n".join(lines) + "\n")
  vc = root / "vc1"
  lines = []
  for c, spk in enumerate(("id10001", "id10002")):
    for i, split in enumerate("1123"):
      path = f"{spk}/vid{i}/00001.wav"
      write_wav(vc / "wav" / path, _tone(c, i), SR)
      lines.append(f"{split} {path}")
  (vc / "iden_split.txt").write_text("\n".join(lines) + "\n")
  vf, rows = root / "voxforge", []
  for c, lang in enumerate(("de", "en")):
    for i, split in enumerate(("train", "valid", "test")):
      name = f"{lang}/spk{i}-{lang}.wav"
      write_wav(vf / name, _tone(c, i), SR)
      rows.append([name, lang, split])
  _csv(vf / "voxforge.csv", ["file_name", "label", "split"], rows)
  sg, rows = root / "surge", []
  for t, split in enumerate(("train", "valid", "test")):
    tone = f"surge-patches-tone{t}"
    rows.append([tone, split])
    for c, note in enumerate(("C3", "G3")):
      write_wav(sg / tone / f"{note}.ogg", _tone(c, t), SR, subtype="VORBIS")
  _csv(sg / "dataset_surge_tone_splits.csv", ["tone", "split"], rows)
  ac, rows = root / "audiocaps", []
  for i in range(3):
    ytid = f"ytid{i:07d}"
    write_wav(ac / "test" / f"Y{ytid}.wav", _tone(i, i), SR)
    rows += [[100 + 2 * i, ytid, 0, f"sound {i}"], [101 + 2 * i, ytid, 0, f"noise {i}"]]
  _csv(ac / "test.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], rows)
  cl, rows = root / "clotho", []
  for i in range(3):
    write_wav(cl / "evaluation" / f"clip{i}.wav", _tone(i, i), SR)
    rows.append([f"clip{i}.wav"] + [f"sound {i} take {j}" for j in range(5)])
  _csv(
    cl / "clotho_captions_evaluation.csv",
    ["file_name"] + [f"caption_{j}" for j in range(1, 6)],
    rows,
  )


@pytest.fixture(scope="module")
def stand_in_root(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("evar_root")
  _stand_in(root)
  return root


class _SpectrumModel:
  """A tiny duck-typed model: band energies as features; prompts and waves hashed into the
  same space for embeddings. Records the clips it embeds."""

  sample_rate, stage = SR, "stage2"

  def __init__(self):
    self.lengths: list[int] = []

  def clip_features(self, waves, sample_rate):
    self.lengths += [len(w) for w in waves]
    spec = [np.abs(np.fft.rfft(w))[: 4000 * len(w) // SR] for w in waves]
    return np.stack(
      [np.log1p(np.add.reduceat(s, np.linspace(0, s.size, 17)[:-1].astype(int))) for s in spec]
    )

  def audio_embedding(self, waves, sample_rate):
    x = self.clip_features(waves, sample_rate)
    return x / np.linalg.norm(x, axis=1, keepdims=True)

  def text_embedding(self, texts):
    x = np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=16) for t in texts])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_layout_readers_read_every_stand_in(stand_in_root):
  read = {
    p.folder: p.reader(stand_in_root / p.folder)
    for p in presets.PRESETS
    if p.protocol != "finetune"
  }
  esc = read["ESC-50-master"]
  assert len(esc) == 9 and esc.class_keys == ["dog", "door_wood_knock", "rain"]
  assert sorted(set(esc.folds.tolist())) == [1, 2, 3] and esc.splits is None
  assert sorted(set(read["UrbanSound8K"].folds.tolist())) == [1, 2]
  assert read["gtzan"].splits.count("train") == 4 and read["gtzan"].class_keys == ["blues", "jazz"]
  spc = read["spcv2"]
  assert len(spc) == 8 and "_background_noise_" not in spc.class_keys
  assert spc.splits.count("test") == 2 and spc.splits.count("valid") == 2
  assert read["nsynth"].splits == ["train"] * 2 + ["valid"] * 2 + ["test"] * 2
  assert read["cremad"].class_keys == ["ANG", "SAD"]
  fsd = read["fsd50k"]
  assert fsd.labels[0] == ["Dog", "Bark"] and fsd.splits.count("test") == 4
  assert read["AudioSet"].splits == ["test"] * 2  # zs_as reads the eval segments alone.
  aset = layouts.as2m(stand_in_root / "AudioSet")  # Balanced + unbalanced + eval.
  assert len(aset) == 6 and aset.display["/m/06mb1"] == "Rain" and aset.splits.count("test") == 2
  assert read["clotho"].captions[0][4] == "sound 0 take 4"
  assert read["audiocaps"].captions[2] == ["sound 2", "noise 2"]
  assert read["vc1"].class_keys == ["id10001", "id10002"] and read["vc1"].splits.count("train") == 4
  assert read["voxforge"].splits.count("valid") == 2
  assert read["surge"].class_keys == ["C3", "G3"] and read["surge"].splits.count("test") == 2
  assert layouts.as20k(stand_in_root / "AudioSet").splits.count("train") == 2
  assert sorted(suite._head(esc, 3).folds.tolist()) == [1, 2, 3]  # --max_clips keeps folds.
  prompt = {p.name: p.prompt for p in presets.PRESETS if p.prompt}
  assert prompt["zs_esc50"]("door_wood_knock") == "door wood knock can be heard"  # EVAR's.
  assert prompt["zs_gtzan"]("blues") == "blues music can be heard"
  assert (
    prompt["zs_nsynth"]("synth_lead") == "the musical instrument sound of synth lead can be heard"
  )
  assert prompt["zs_cremad"]("ANG") == "angry person talking can be heard"


def test_folds_are_held_out_and_the_fold_average_matches_a_hand_computation(stand_in_root):
  model = _SpectrumModel()
  (p,) = presets.by_name(["le_esc50"])
  report = suite.run(model, str(stand_in_root), [p], seeds=(0,), probe_config=FAST, progress=False)
  row = report["rows"][0]
  assert set(model.lengths) == {int(p.unit_sec * SR)}  # 0.25 s clips padded to 5 s.
  data = layouts.esc50(stand_in_root / p.folder)
  for r in crossval.rounds(data.folds, None):
    assert not set(r.train) & set(r.test) and r.valid is None
    assert set(data.folds[r.test]) == {int(r.name[4:])}
  # Hand computation: folds straight from the CSV, one probe per held-out fold, mean.
  with open(stand_in_root / p.folder / "meta" / "esc50.csv") as f:
    meta = list(csv.DictReader(f))
  x = model.clip_features(
    [suite._fit(_tone(int(m["target"]), int(m["fold"])), 5 * SR) for m in meta], SR
  )
  y = np.asarray([sorted({"dog", "rain", "door_wood_knock"}).index(m["category"]) for m in meta])
  fold = np.asarray([int(m["fold"]) for m in meta])
  by_hand = [
    probe.linear_probe(
      probe.Split(x[fold != k], y[fold != k]),
      None,
      probe.Split(x[fold == k], y[fold == k]),
      num_classes=3,
      seed=0,
      config=FAST,
    )["accuracy"]
    for k in (1, 2, 3)
  ]
  for k, v in zip((1, 2, 3), by_hand):
    assert row["details"][f"fold{k}_accuracy"] == pytest.approx(v, abs=1e-6)
  assert row["value"] == pytest.approx(np.mean(by_hand), abs=1e-6)


def test_every_preset_runs_end_to_end_and_multi_label_gives_map(stand_in_root):
  model = _SpectrumModel()
  chosen = presets.by_name(list(presets.SUITES["paper"]))
  report = suite.run(
    model, str(stand_in_root), chosen, seeds=(0,), probe_config=FAST, progress=False
  )
  rows = {r["preset"]: r for r in report["rows"]}
  runnable = {p.name for p in presets.PRESETS if p.protocol != "finetune"}
  assert set(rows) == runnable  # Every layout's stand-in is read and scored.
  assert {a["preset"] for a in report["absent"]} == set(presets.FINETUNE_PRESETS)
  for r in report["rows"]:
    assert 0.0 <= r["value"] <= 1.0, r
  assert rows["le_spcv2"]["details"]["classes"] == 2  # _background_noise_ is no class.
  assert (
    set(rows["zs_fsd50k"]["details"]) >= {"mAP", "clips"}
    and rows["zs_fsd50k"]["details"]["clips"] == 4
  )
  assert 0 < rows["zs_as"]["value"] <= 1 and rows["zs_as"]["metric"] == "mAP"
  assert rows["zs_esc50"]["details"]["clips"] == 9  # Every fold's test clips pooled.
  data = layouts.fsd50k(stand_in_root / "fsd50k")
  keys = data.class_keys
  y, multi = crossval.targets([[keys.index(k) for k in ls] for ls in data.labels], len(keys))
  assert multi and y.shape == (8, 3)
  x = model.clip_features([suite._fit(_tone(i % 3, i), SR) for i in list(range(4)) * 2], SR)
  plan = crossval.rounds(None, data.splits)
  assert plan[0].valid is not None and plan[0].valid.size == 1
  out = crossval.linear_eval(x, y, plan, num_classes=3, config=FAST)
  assert set(out) == {"mAP", "val_mAP", "best_epoch", "epochs"} and 0 < out["mAP"] <= 1
  shots = crossval.few_shot(x, y, plan, num_classes=3, shots=(1,), seeds=(0,), config=FAST)
  assert set(shots) == {"1shot_mAP", "1shot_mAP_std"}


def test_cli_suite_paper_prints_the_table_and_lists_absent(stage1_workdir, stand_in_root, tmp_path):
  out, root = tmp_path / "suite", tmp_path / "root"
  root.mkdir()
  for folder in CLI_FOLDERS:
    (root / folder).symlink_to(stand_in_root / folder)
  cmd = [
    sys.executable,
    "-m",
    "jaxclap.evaluate",
    "--suite=paper",
    f"--checkpoint={stage1_workdir}",
    f"--data_root={root}",
    f"--workdir={out}",
    "--seeds=0",
    "--presets=zs_gtzan,retr_clotho,le_us8k,le_voxforge",
    "--paper_model=m2d_clap_2024",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| zs_gtzan | zero_shot | accuracy |" in proc.stdout
  assert "| 75.17 |" in proc.stdout and "2406.02032" in proc.stdout  # The paper column.
  for absent in ("le_us8k", "le_voxforge"):
    assert f"- {absent}: no folder" in proc.stdout
  report = json.loads((out / "suite.json").read_text())
  rows = report["rows"]
  assert [r["preset"] for r in rows] == ["zs_gtzan"] + ["retr_clotho"] * 8  # Table order.
  assert rows[0]["paper"] == 0.7517 and rows[0]["details"]["clips"] == 2  # The test split.
  assert report["reference"] == "m2d_clap_2024" and "paper: m2d_clap_2024" in proc.stdout
  assert [r["metric"] for r in rows[1:]] == list(presets.RETRIEVAL_METRICS)
  assert rows[1]["details"]["captions"] == 15 and report["stage"] == "stage1"
  assert (out / "suite.md").read_text().count("\n| ") == 10  # Header + nine rows.


def test_published_linear_rows_average_to_evars_stated_averages():
  """Each source table states its nine-task linear average; our transcribed rows agree."""
  stated = {"m2d_clap_2025": 78.8, "m2d_clap_2024": 80.8, "m2d": 80.2, "m2d_as": 80.6}
  linear = [p.name for p in presets.PRESETS if p.protocol == "linear"]
  assert set(presets.REFERENCES) == set(stated) and presets.DEFAULT_REFERENCE in stated
  for model, average in stated.items():
    row = presets.REFERENCES[model]
    assert set(linear) <= set(row) and "ft_as2m" in row
    assert 100 * np.mean([row[n].value for n in linear]) == pytest.approx(average, abs=0.05)
  ft = [p.name for p in presets.PRESETS if p.protocol == "finetune"]
  zs = [p.name for p in presets.PRESETS if p.protocol == "zero_shot"]
  assert set(ft) <= set(presets.REFERENCES["m2d_clap_2024"])  # Table 4: all five.
  assert set(zs) <= set(presets.REFERENCES["m2d_clap_2024"])  # Table 5: all seven.
  known = {p.name for p in presets.PRESETS}
  assert all(set(row) <= known for row in presets.REFERENCES.values())
  with pytest.raises(ValueError, match="unknown reference 'clap'"):
    suite.run(_SpectrumModel(), ".", [], reference="clap")
  assert evaluate._knobs(["epochs=3", "lr=0.5", "optimizer=sgd"], "--f") == {
    "epochs": 3,
    "lr": 0.5,
    "optimizer": "sgd",
  }
  with pytest.raises(ValueError, match="--f takes key=value items, got 'epochs'"):
    evaluate._knobs(["epochs"], "--f")
  with pytest.raises(ValueError, match=r"unknown fine-tuning knob\(s\) \['epoch'\]"):
    ft_suite.run_preset(
      "ft_esc50",
      None,
      config_spec=presets.FINETUNE_CONFIGS["ft_esc50"],
      checkpoint="unused",
      workdir="unused",
      sample_rate=16000,
      overrides={"epoch": 3},
    )


def test_built_datasets_cross_validate_folds_and_score_multi_label(stand_in_root, tmp_path):
  """The TFDS path: ESC-50 built as one split cross-validates its stored folds; a
  multi-label labels.csv set gives mAP in zero-shot, linear probe and few-shot."""
  data_dir = str(tmp_path / "data")
  build.build_dataset(
    "labelled_folder/esc50",
    data_dir,
    manual_dir=str(stand_in_root / "ESC-50-master"),
    embedder=HashEmbedder(),
  )
  tasks = ["zero_shot", "linear_probe", "few_shot"]
  opts = dict(tasks=tasks, model=_SpectrumModel(), shots=(1,), seeds=(0,), probe_config=FAST)
  folds = evaluate.evaluate(
    "unused",
    data_dir=data_dir,
    dataset="labelled_folder/esc50",
    workdir=str(tmp_path / "esc"),
    folds_split="train",
    **opts,
  )["results"]
  assert folds["zero_shot"]["clips"] == 9  # Three folds' test clips pooled.
  assert {f"fold{k}_accuracy" for k in (1, 2, 3)} <= set(folds["linear_probe"])
  per_fold = [folds["linear_probe"][f"fold{k}_accuracy"] for k in (1, 2, 3)]
  assert folds["linear_probe"]["accuracy"] == pytest.approx(np.mean(per_fold))
  assert set(folds["few_shot"]) == {"1shot_accuracy", "1shot_accuracy_std", "chance"}
  tags = tmp_path / "tags"
  rows = ["file,labels,split"]
  for i, combo in enumerate(["dog", "dog,rain", "rain", "rain,bird", "bird", "dog,bird"] * 2):
    write_wav(tags / f"c{i}.wav", _tone(i % 3, i), SR)
    rows.append(f'c{i}.wav,"{combo}",{("train", "train", "validation", "test")[i % 4]}')
  (tags / "labels.csv").write_text("\n".join(rows) + "\n")
  build.build_dataset(
    "labelled_folder/tags", data_dir, manual_dir=str(tags), embedder=HashEmbedder()
  )
  multi = evaluate.evaluate(
    "unused",
    data_dir=data_dir,
    dataset="labelled_folder/tags",
    workdir=str(tmp_path / "tags_out"),
    **opts,
  )["results"]
  assert set(multi["zero_shot"]) == {"mAP", "clips"}
  assert set(multi["linear_probe"]) >= {"mAP", "val_mAP"} and "chance" not in multi["linear_probe"]
  assert set(multi["few_shot"]) == {"1shot_mAP", "1shot_mAP_std"}
  assert all(0 < v["mAP" if "mAP" in v else "1shot_mAP"] <= 1 for v in multi.values())


def test_exported_pth_is_imported_once_then_loaded(tmp_path, monkeypatch):
  """--checkpoint=<file>.pth: imported into workdir/imported by convert.from_torch, reused
  on the next run; a jaxclap workdir goes straight to jaxclap.load."""
  imports, loads = [], []

  def fake_import(path, output, *, text_model=None):
    imports.append(path)
    (Path(output) / "checkpoints").mkdir(parents=True)

  monkeypatch.setattr(evaluate.convert, "from_torch", fake_import)
  monkeypatch.setattr(evaluate.inference, "load", lambda path, **kw: loads.append(path))
  target = str(tmp_path / "imported")
  for _ in range(2):
    evaluate.load_model("m2d/checkpoint-300.pth", import_dir=target)
  evaluate.load_model("runs/s2")
  assert imports == ["m2d/checkpoint-300.pth"] and loads == [target, target, "runs/s2"]


# ----------------------------------------------------------------- fine-tuning presets

# m2d util/ft-*.sh command lines as published (flags after the task name), EVAR
# config/m2d.yaml's fine-tuning defaults and finetune.py's fixed choices: stated here
# independently of configs/finetune.py.
OFFICIAL_FT = {
  "as20k": "weight_file=$weight,encoder_only=True,dur_frames=1001 --lr=0.5 --freq_mask 30 "
  "--time_mask 192 --training_mask 0.5 --mixup 0.3 --rrc True --batch_size 64 --seed $seed",
  "esc50": "weight_file=$weight,encoder_only=True,dur_frames=501,freeze_embed=True --lr=0.5 "
  "--freq_mask 15 --time_mask 48 --training_mask 0.5 --mixup 0.0 --rrc True --seed $seed",
  "spcv2": "weight_file=$weight,encoder_only=True --lr=0.5 --freq_mask 30 --time_mask 48 "
  "--training_mask 0.5 --mixup 0.3 --rrc True --seed $seed",
  "vc1": "weight_file=$weight,encoder_only=True,dur_frames=821 --optim adamw --lr=0.0005 "
  "--freq_mask 30 --time_mask 48 --training_mask 0.0 --mixup 0.0 --rrc False --epochs 50 "
  "--batch_size 64 --seed $seed",
}
EVAR_YAML = {"warmup_epochs": 5, "ft_bs": 128, "ft_epochs": 200, "ft_rrc": True, "mixup": 0.5}
EVAR_UNIT_SEC = {"as20k": 10.0, "esc50": 5.0, "spcv2": 1.0, "vc1": 8.2}  # evar/ds_tasks.py
HOP, RATE = 160, 16000  # config/m2d.yaml hop_size, sample_rate.


def _flags(line: str) -> dict[str, str]:
  """--key value / --key=value flags and the key=value model options of a command line."""
  opts, _, rest = line.partition(" ")
  out = dict(kv.split("=", 1) for kv in opts.split(","))
  words = rest.replace("=", " ").split()
  out.update({k[2:]: v for k, v in zip(words[::2], words[1::2])})
  return out


def test_finetune_presets_are_the_official_scripts():
  for task, line in OFFICIAL_FT.items():
    f = _flags(line)
    c = ft_suite.load_config(presets.FINETUNE_CONFIGS[f"ft_{task}"]).finetune
    sgd = f.get("optim", "sgd") == "sgd"  # finetune.py's run_eval default.
    assert c.optimizer == ("timm_lars" if sgd else f["optim"])  # SGD = timm Lars at decay 0.
    assert c.weight_decay == (0.0 if sgd else 0.0001) and c.momentum == 0.9
    assert (c.lr, c.mixup, c.mask_ratio) == (
      float(f["lr"]),
      float(f["mixup"]),
      float(f["training_mask"]),
    )
    assert (c.freq_mask, c.time_mask, c.time_mask_as_is) == (
      int(f["freq_mask"]),
      int(f["time_mask"]),
      True,
    )
    assert c.rrc == (f["rrc"] == "True")
    assert c.batch == int(f.get("batch_size", EVAR_YAML["ft_bs"]))
    assert c.epochs == int(f.get("epochs", EVAR_YAML["ft_epochs"]))
    assert c.warmup_epochs == EVAR_YAML["warmup_epochs"]
    assert (c.schedule, c.lr_min, c.warmup_lr) == ("timm_cosine", 1e-7, 0.0)
    frames = int(f.get("dur_frames", EVAR_UNIT_SEC[task] * RATE // HOP + 1))
    assert c.crop_seconds == pytest.approx((frames - 1) * HOP / RATE)
    assert c.eval_seconds == EVAR_UNIT_SEC[task] == c.crop_seconds
    assert c.freeze_patch_embed == (f.get("freeze_embed") == "True")
    assert c.head_input == ("tokens" if float(f["training_mask"]) > 0 else "frames")
    assert c.class_mean_loss and c.sample_weights == "none" and c.epoch_clips == 0
    assert c.val_split == ("" if task in ("as20k", "esc50") else "validation")
  assert set(presets.FINETUNE_CONFIGS) == set(presets.FINETUNE_PRESETS)
  assert presets.FINETUNE_CONFIGS["ft_as2m"] == "configs/finetune.py:as2m"  # One definition.


def test_rrc_adamw_and_class_mean_loss_follow_torch():
  """EVAR's RandomResizeCrop (canvas crop + bicubic, align_corners), torch AdamW(amsgrad)
  and loss_nll = -mean(target * log_softmax), against torch itself."""
  import torch

  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 40)).astype(np.float32)
  canvas = torch.zeros(16, 60)
  canvas[:, 10:50] = torch.from_numpy(x)  # 1.5x wide, the input in the middle.
  for i, j, h, w in [(0, 3, 16, 40), (2, 0, 9, 60), (5, 17, 11, 43)]:
    ref = torch.nn.functional.interpolate(
      canvas[None, None, i : i + h, j : j + w], size=(16, 40), mode="bicubic", align_corners=True
    )[0, 0]
    got = augment.resize_crop(jnp.asarray(x), *map(jnp.int32, (i, j, h, w)))
    np.testing.assert_allclose(np.asarray(got), ref.numpy(), atol=1e-5)
  i, j, h, w = (np.asarray(a) for a in augment.draw_crops(jax.random.key(0), 500, 16, 40))
  assert h.min() >= int(0.6 * 16) and h.max() <= 16 and w.min() >= 24 and w.max() <= 60
  assert (i + h).max() <= 16 and (j + w).max() <= 60 and i.max() > 0 and j.max() > 0
  c = ft_suite.load_config("configs/finetune.py:vc1").finetune
  c.lr_min, c.warmup_epochs = c.lr, 0.0  # A constant lr, as torch's bare optimizer.
  tx, _ = optim.make_finetune_optimizer(c, 10)
  p = jnp.asarray(rng.normal(size=5), jnp.float32)
  tp = torch.nn.Parameter(torch.tensor(np.asarray(p)))
  topt = torch.optim.AdamW(
    [tp], lr=5e-4, weight_decay=1e-4, betas=(0.9, 0.95), eps=1e-8, amsgrad=True
  )
  state = tx.init(p)
  for scale in (1, 3, 0.1, 0.01, 2):  # Shrinking gradients exercise the AMSGrad max.
    g = (rng.normal(size=5) * scale).astype(np.float32)
    tp.grad = torch.tensor(g)
    topt.step()
    u, state = tx.update(jnp.asarray(g), state, p)
    p = optax.apply_updates(p, u)
  np.testing.assert_allclose(np.asarray(p), tp.detach().numpy(), atol=1e-6)
  logits, target = rng.normal(size=(4, 7)), np.eye(7)[[0, 3, 3, 6]]
  nll = -torch.mean(torch.tensor(target) * torch.log_softmax(torch.tensor(logits), -1))
  assert float(ft_lib.loss_fn(logits, target, False, class_mean=True)) == pytest.approx(
    float(nll), rel=1e-5
  )


def test_finetune_preset_runs_per_fold_on_the_stand_in(stage1_workdir, stand_in_root, tmp_path):
  """ft_esc50 end to end: one labelled TFDS set per fold (that fold is the test split, the
  others train), the recipe fine-tunes each (patch embedding frozen), the row is the mean
  of the folds' test accuracies."""
  (p,) = presets.by_name(["ft_esc50"])
  # One step per fold; no patch masking (each mask variant compiles a branch).
  tiny = {"epochs": 1, "warmup_epochs": 0.0, "mask_ratio": 0.0, "eval_batch": 3}
  report = suite.run(
    _SpectrumModel(),
    str(stand_in_root),
    [p],
    progress=False,
    checkpoint=stage1_workdir,
    workdir=str(tmp_path),
    finetune_overrides=tiny,
  )
  (row,) = report["rows"]
  assert row["preset"] == "ft_esc50" and row["metric"] == "accuracy" and not report["absent"]
  runs = sorted((tmp_path / "finetune" / "ft_esc50" / "runs").iterdir())
  assert len(runs) == 3 == row["details"]["rounds"]
  with open(stand_in_root / p.folder / "meta" / "esc50.csv") as f:
    fold_of = {m["filename"][:-4]: int(m["fold"]) for m in csv.DictReader(f)}
  tests = []
  for k, run in zip((1, 2, 3), runs):
    done = json.loads((run / "finetune.json").read_text())
    assert done["val_split"] == "test" and done["steps"] == 1  # No validation: EVAR's rule.
    recipe = done["config"]["finetune"]
    assert recipe["rrc"] and recipe["lr"] == 0.5  # The recipe, overridden.
    name = done["dataset"]
    data_dir = str(tmp_path / "finetune" / "ft_esc50" / "tfds")
    for split, in_fold in (("test", True), ("train", False)):
      src = tfds.data_source(name, split=split, data_dir=data_dir)
      links = [Path(src[i]["id"].decode()).name for i in range(len(src))]
      manual = tmp_path / "finetune" / "ft_esc50" / "clips"
      folds = {fold_of[Path(os.readlink(manual / f"{n}.wav")).stem] for n in links}
      assert (folds == {k}) if in_fold else (k not in folds and len(folds) == 2)
    assert row["details"][f"fold{k}_accuracy"] == done["test"]
    tests.append(done["test"])
  assert row["value"] == pytest.approx(np.mean(tests))
  embed = restore_lib.restore(str(runs[0])).params["encoder"]
  start = restore_lib.restore(stage1_workdir).params["encoder"]
  same = jax.tree_util.tree_map(np.array_equal, embed["patch_embed"], start["patch_embed"])
  assert all(jax.tree_util.tree_leaves(same))  # freeze_embed=True (ft-esc50.sh).
  moved = jax.tree_util.tree_map(np.array_equal, embed["body"], start["body"])
  assert not all(jax.tree_util.tree_leaves(moved))  # The rest trained.
