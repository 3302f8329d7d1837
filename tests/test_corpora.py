"""The CLAP corpora as distributed (AudioCaps, Clotho v2, WavCaps, AudioSet + Auto-ACD,
VGGSound) build from stand-ins in their real layouts, merge captions by YouTube id, and
train; a 32 kHz build trains a 32 kHz front end and is refused by a 16 kHz one."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import HashEmbedder, small_config, write_wav

from jaxclap.data import build, corpora

SR = 16000


def _wav(path, seed, seconds=1.0, sr=SR):
  rng = np.random.default_rng(seed)
  write_wav(path, 0.1 * rng.standard_normal(int(seconds * sr)).astype(np.float32), sr)


def _records(name, split, data_dir):
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  out = {}
  for i in range(len(source)):
    r = source[i]
    out[r["id"].decode()] = r | {"captions": [c.decode() for c in r["captions"]]}
  return out


def _corpora(root):
  """One small stand-in per corpus, in its distributed layout; returns their folders."""
  ac, cl, wc, aset, vgg = (root / n for n in ("audiocaps", "clotho", "wavcaps", "as", "vgg"))
  # AudioCaps: one caption a row; the validation clip has two rows; one clip not downloaded.
  _wav(ac / "audio" / "--aE2O5G5WE.wav", 0)
  _wav(ac / "audio" / "Yabcdefghijk.wav", 1)
  (ac / "train.csv").write_text(
    "audiocap_id,youtube_id,start_time,caption\n"
    "1,--aE2O5G5WE,0,a man speaks\n2,notdownload,30,gone\n"
  )
  (ac / "val.csv").write_text(
    "audiocap_id,youtube_id,start_time,caption\n"
    "3,abcdefghijk,30,a dog barks\n4,abcdefghijk,30,barking nearby\n"
  )
  # Clotho v2: per-split caption CSVs and folders (development -> train).
  _wav(cl / "development" / "Rain, on roof.wav", 2)
  _wav(cl / "evaluation" / "birds.wav", 3)
  head = "file_name," + ",".join(f"caption_{i}" for i in range(1, 6)) + "\n"
  rain = ",".join(f"rain falls {i}" for i in range(5))
  (cl / "clotho_captions_development.csv").write_text(f'{head}"Rain, on roof.wav",{rain}\n')
  birds = ",".join(f"birds sing {i}" for i in range(5))
  (cl / "clotho_captions_evaluation.csv").write_text(f"{head}birds.wav,{birds}\n")
  (cl / "clotho_metadata_development.csv").write_text("file_name,keywords\nx,y\n")
  # WavCaps: JSON per source; FreeSound and SoundBible both have a sound "2219".
  _wav(wc / "SoundBible_flac" / "2219.flac", 4, seconds=0.5)
  _wav(wc / "FreeSound_flac" / "2219.flac", 5, seconds=0.75)
  sb = {
    "num_captions_per_audio": 1,
    "data": [
      {"id": "2219", "caption": "An airplane is landing.", "audio": "wav_path", "duration": 0.5},
      {"id": "9999", "caption": "Not downloaded.", "audio": "wav_path", "duration": 1.0},
    ],
  }
  (wc / "json_files" / "SoundBible").mkdir(parents=True)
  (wc / "json_files" / "SoundBible" / "sb_final.json").write_text(json.dumps(sb))
  # AudioSet: segment CSV as published, class_labels_indices.csv, Y<id>_<start>_<end>.wav.
  _wav(aset / "balanced_train_segments" / "Y--aE2O5G5WE_0.000_10.000.wav", 6)
  _wav(aset / "balanced_train_segments" / "Yzzzzzzzzzzz_5.000_15.000.wav", 7)
  _wav(aset / "eval_segments" / "Y0123456789a_1.000_11.000.wav", 8)
  seg = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids=3, num_segs=3, num_unique_labels=2, num_positive_labels=3\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
  )
  (aset / "balanced_train_segments.csv").write_text(
    seg + '--aE2O5G5WE, 0.000, 10.000, "/m/09x0r,/m/0bt9lr"\n'
    'zzzzzzzzzzz, 5.000, 15.000, "/m/0bt9lr"\nnotdownload, 0.000, 10.000, "/m/09x0r"\n'
  )
  (aset / "eval_segments.csv").write_text(seg + '0123456789a, 1.000, 11.000, "/m/09x0r"\n')
  (aset / "class_labels_indices.csv").write_text(
    'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/0bt9lr,"Dog"\n'
  )
  # Auto-ACD train.csv (AudioSet ids with a Y, VGGSound ids with a start) and its wrapper.
  (root / "auto_acd.csv").write_text(
    "youtube_id,caption\n"
    'Yzzzzzzzzzzz,"The audio caption could be: ""A dog barks loudly."""\n'
    "vggclip0001_000030,a violin plays a tune\n"
  )
  # WavCaps AudioSet_SL JSON joins AudioSet by YouTube id, as AudioCaps' CSV does.
  as_sl = {"data": [{"id": "Y--aE2O5G5WE.wav", "caption": "Speech and a dog.", "audio": "x"}]}
  (root / "as_final.json").write_text(json.dumps(as_sl))
  # VGGSound: headerless vggsound.csv, clips "<id>_<start:06d>".
  _wav(vgg / "video" / "vggclip0001_000030.wav", 9, sr=44100)
  _wav(vgg / "video" / "vggclip0002_000010.flac", 10)
  (vgg / "vggsound.csv").write_text(
    "vggclip0001,30,playing violin,train\nvggclip0002,10,dog barking,train\n"
    "vggclip0003,0,missing,test\n"
  )
  return ac, cl, wc, aset, vgg


def test_readers_of_each_layout(tmp_path):
  ac, cl, wc, aset, vgg = _corpora(tmp_path)
  m = corpora.read_audiocaps(ac)
  assert {(i.split, tuple(i.captions)) for i in m.items} == {
    ("train", ("a man speaks",)),
    ("validation", ("a dog barks", "barking nearby")),
  }
  assert m.missing == ["train:notdownload"] and not m.bad
  m = corpora.read_clotho(cl)
  assert {i.split: len(i.captions) for i in m.items} == {"train": 5, "test": 5}
  m = corpora.read_wavcaps(wc, "soundbible")
  assert [i.path.parent.name for i in m.items] == ["SoundBible_flac"]  # Not FreeSound's 2219.
  assert m.missing == ["9999"]
  # WavCaps blacklists ({"<Source>": [ids]}) leave out only their own source's clips.
  other, own = tmp_path / "bl_fsd.json", tmp_path / "bl_sb.json"
  other.write_text(json.dumps({"FreeSound": ["2219"], "AudioSet": ["Y2219.wav"]}))
  own.write_text(json.dumps({"SoundBible": ["2219.flac", "123"]}))
  assert len(corpora.read_wavcaps(wc, "soundbible", [other]).items) == 1
  m = corpora.read_wavcaps(wc, "soundbible", [other, own])
  assert not m.items and m.excluded == ["2219"] and m.missing == ["9999"]
  (tmp_path / "bl_bad.json").write_text('["2219"]')
  with pytest.raises(ValueError, match="bl_bad.json: a WavCaps blacklist maps source names"):
    corpora.read_wavcaps(wc, "soundbible", [tmp_path / "bl_bad.json"])
  with pytest.raises(ValueError, match="exclude .WavCaps blacklists. applies to wavcaps"):
    build.build_dataset("clotho", str(tmp_path / "d"), manual_dir=str(cl), exclude=[str(own)])
  m, report = corpora.read_audioset(aset, [tmp_path / "auto_acd.csv"])
  got = {i.clip_id.split("/")[-1]: (i.split, i.captions) for i in m.items}
  assert got == {
    "Y--aE2O5G5WE_0.000_10.000": ("train", ["The sound of Speech, and Dog."]),
    "Yzzzzzzzzzzz_5.000_15.000": ("train", ["A dog barks loudly."]),  # Auto-ACD, unwrapped.
    "Y0123456789a_1.000_11.000": ("test", ["The sound of Speech."]),
  }
  assert m.missing == ["notdownload"] and report.unmatched_ids == 1  # The VGGSound clip.
  m, report = corpora.read_vggsound(vgg, [tmp_path / "auto_acd.csv"])
  assert sorted(i.captions[0] for i in m.items) == [
    "The sound of dog barking.",
    "a violin plays a tune",
  ]
  assert m.missing == ["vggclip0003"] and report.clips == 1
  with pytest.raises(ValueError, match="no Clotho caption CSV"):
    corpora.read_clotho(ac)


def test_corpora_build_merge_and_train(tmp_path):
  ac, cl, wc, aset, vgg = _corpora(tmp_path)
  data_dir = str(tmp_path / "data")
  emb = HashEmbedder(dim=8)
  blacklist = tmp_path / "blacklist_exclude_test_ac.json"
  blacklist.write_text(json.dumps({"FreeSound": ["2219"]}))  # Not SoundBible's 2219.
  for name, folder in [("audiocaps", ac), ("clotho", cl), ("wavcaps/soundbible", wc)]:
    extra = {"exclude": [str(blacklist)]} if name.startswith("wavcaps") else {}
    info = build.build_dataset(name, data_dir, manual_dir=str(folder), embedder=emb, **extra)
    assert info["sample_rate"] == SR
  excluded = build.dataset_info("wavcaps/soundbible", data_dir)["build"]["excluded"]
  assert excluded == {"files": [blacklist.name], "clips": 0}
  with pytest.raises(ValueError, match="was built with exclude="):  # Not silently reused.
    build.build_dataset("wavcaps/soundbible", data_dir, manual_dir=str(wc), embedder=emb)
  assert build.dataset_info("audiocaps", data_dir)["build"]["missing_audio"]["clips"] == 1
  val = _records("audiocaps", "validation", data_dir)
  assert [r["captions"] for r in val.values()] == [["a dog barks", "barking nearby"]]
  assert len(_records("clotho", "test", data_dir)) == 1
  (clip,) = _records("wavcaps/soundbible", "train", data_dir).values()
  assert clip["audio"].size == SR // 2  # SoundBible's 0.5 s file, not FreeSound's.
  # AudioSet: Auto-ACD or label captions, then AudioCaps' and WavCaps' by YouTube id.
  build.build_dataset(
    "audioset",
    data_dir,
    manual_dir=str(aset),
    embedder=emb,
    captions=[str(tmp_path / "auto_acd.csv")],
    merge_captions=[str(ac / "train.csv"), str(tmp_path / "as_final.json")],
  )
  recs = _records("audioset", "train", data_dir)
  assert recs["balanced_train_segments/Y--aE2O5G5WE_0.000_10.000"]["captions"] == [
    "The sound of Speech, and Dog.",
    "a man speaks",
    "Speech and a dog.",
  ]
  meta = build.dataset_info("audioset", data_dir)["build"]
  assert meta["merged_captions"]["clips"] == 1 and meta["caption_files"]["clips"] == 1
  # VGGSound stored at 32 kHz: recorded, read by a 32 kHz front end, refused by 16 kHz.
  info = build.build_dataset(
    "vggsound",
    data_dir,
    manual_dir=str(vgg),
    embedder=emb,
    sample_rate=32000,
    captions=[str(tmp_path / "auto_acd.csv")],
  )
  assert info["sample_rate"] == 32000
  rec = next(iter(_records("vggsound", "train", data_dir).values()))
  assert rec["sample_rate"] == 32000 and rec["audio"].size == 32000
  with pytest.raises(ValueError, match="sample_rate=16000"):  # Reuse at another rate.
    build.build_dataset("vggsound", data_dir, manual_dir=str(vgg), embedder=emb)
  from jaxclap.train import loop

  c = small_config("stage1", data_dir)
  c.data.train, c.data.val, c.data.zero_shot = "vggsound:train,audioset:train", "", ""
  c.model.text_dim, c.train.global_batch, c.train.num_steps = 8, 4, 2
  c.frontend.norm_stats = (-5.0, 4.0)  # Given: no statistics pass before the steps.
  with pytest.raises(ValueError, match=r"'audioset' .* stored at 16000 Hz .* reads 32000 Hz"):
    c.frontend.sample_rate = 32000
    loop.train_and_evaluate(c, str(tmp_path / "refused"))
  c.data.train = "vggsound:train"
  out = loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert out is not None and (tmp_path / "run" / "checkpoints").exists()


def test_errors_suggest_commands_that_name_the_inputs(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    build.dataset_info("audioset", str(tmp_path))
  assert "--dataset=audioset --manual_dir=<AudioSet" in str(e.value)
  assert "--captions=<Auto-ACD" in str(e.value)
  with pytest.raises(ValueError, match="--manual_dir=<Clotho"):
    build.build_dataset("clotho", str(tmp_path), embedder=HashEmbedder())
  with pytest.raises(ValueError, match="per source"):
    build.build_dataset("wavcaps", str(tmp_path), manual_dir=str(tmp_path))
  with pytest.raises(ValueError, match="Auto-ACD"):
    build.build_dataset("clotho", str(tmp_path), manual_dir=str(tmp_path), captions=["x"])
