"""AudioCaps captions join the AudioSet record of the same YouTube id (one copy of the audio).

The official trainer (clap/train_clap.py) looks captions up by the first 11 characters of
the file name in every caption table and draws one from the union; here the union is
stored in the record at build time.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import HashEmbedder, write_wav

from jaxclap.data import build, caption_merge


@pytest.mark.parametrize(
  "name,want",
  [
    ("--aE2O5G5WE_0.000", "--aE2O5G5WE"),  # nttcslab/m2d data/files_audioset.csv style.
    ("balanced_train_segments/--aE2O5G5WE_0.000.wav", "--aE2O5G5WE"),
    ("Y--aE2O5G5WE_0.000_10.000.wav", "--aE2O5G5WE"),  # AudioSet "Y" prefix, start_end.
    ("YAbCdEfGhIj_30000", "YAbCdEfGhIj"),  # An id that starts with Y: no prefix to drop.
    ("YYAbCdEfGhIj_30.000", "YAbCdEfGhIj"),
    ("---g-f_I2yQ_000001.mp4", "---g-f_I2yQ"),  # VGGSound.
    ("---1_cCGK4M", "---1_cCGK4M"),  # A bare id (AudioCaps youtube_id column).
    ("Y---1_cCGK4M", "---1_cCGK4M"),
    ("clotho_recording_7.wav", None),
    ("short_1", None),
  ],
)
def test_youtube_id(name, want):
  assert caption_merge.youtube_id(name) == want


def _official_union(main, extra, ytid):
  """clap/train_clap.py get_random_caption: the captions of every table holding `ytid`."""
  out = []
  for table in (main, extra):
    out += table.get(ytid, [])
  return list(dict.fromkeys(out))  # jaxclap stores each distinct caption once.


def _records(name, split, data_dir):
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  return {r["id"].decode(): r for r in (source[i] for i in range(len(source)))}


@pytest.fixture
def audioset_dir(tmp_path):
  """Three AudioSet-style clips with Auto-ACD-like captions, and AudioCaps-style CSVs."""
  root = tmp_path / "audioset"
  rng = np.random.default_rng(0)
  files = ["Y--aE2O5G5WE_0.000_10.000.wav", "abcdefghijk_30.000.wav", "Zzzzzzzzzzz_5.000.wav"]
  for f in files:
    write_wav(root / "audio" / f, 0.1 * rng.standard_normal(1600).astype(np.float32), 16000)
  (root / "captions.csv").write_text(
    "file,caption\n"
    f"{files[0]},acd caption of the first clip\n"
    f"{files[1]},acd caption of the second clip\n"
    f"{files[2]},acd caption of the third clip\n"
  )
  (tmp_path / "audiocaps_train.csv").write_text(
    "audiocap_id,youtube_id,start_time,caption\n"
    "1,--aE2O5G5WE,0,a man speaks\n"
    "2,--aE2O5G5WE,0,a man talks while a dog barks\n"
    "3,abcdefghijk,30,acd caption of the second clip\n"  # Already the clip's caption.
    "4,missingid01,10,not in this download\n"
    "5,missingid02,10,also missing\n"
    "6,missingid01,10,a second caption of a missing clip\n"
  )
  (tmp_path / "acalt4.csv").write_text(  # Several caption columns, keyed by file name.
    "file_name,caption_1,caption_2\nabcdefghijk_30.000.wav,alt one,alt two\n"
  )
  return root


def test_merged_record_holds_the_union(audioset_dir, tmp_path):
  data_dir = str(tmp_path / "data")
  embedder = HashEmbedder(dim=6)
  merge = [str(tmp_path / "audiocaps_train.csv"), str(tmp_path / "acalt4.csv")]
  info = build.build_dataset(
    "captioned_folder/audioset",
    data_dir,
    manual_dir=str(audioset_dir),
    embedding_dtype="float32",
    embedder=embedder,
    merge_captions=merge,
  )
  assert info["splits"] == {"train": 3}  # No second copy of any clip.
  main = {
    "--aE2O5G5WE": ["acd caption of the first clip"],
    "abcdefghijk": ["acd caption of the second clip"],
    "Zzzzzzzzzzz": ["acd caption of the third clip"],
  }
  extra = {
    "--aE2O5G5WE": ["a man speaks", "a man talks while a dog barks"],
    "abcdefghijk": ["acd caption of the second clip", "alt one", "alt two"],
  }
  recs = _records("captioned_folder/audioset", "train", data_dir)
  for clip_id, rec in recs.items():
    want = _official_union(main, extra, caption_merge.youtube_id(clip_id))
    assert [c.decode() for c in rec["captions"]] == want
    np.testing.assert_array_equal(rec["caption_embeddings"], embedder.embed(want))
  merged = info["build"]["merged_captions"]
  assert merged["files"] == ["audiocaps_train.csv", "acalt4.csv"]
  assert merged["matched_captions"] == 5 and merged["added_captions"] == 4
  assert merged["clips"] == 2
  assert merged["unmatched_ids"] == 2 and merged["unmatched_captions"] == 3
  assert merged["unmatched_examples"] == ["missingid01", "missingid02"]
  assert info["build"]["captions"] == 3 + 4
  summary = build.format_summary(info)
  assert "merged" in summary and "missingid01" in summary and "2 ids unmatched" in summary
  # A rebuild request with another merge list does not silently reuse this build.
  with pytest.raises(ValueError, match="merge_captions"):
    build.build_dataset(
      "captioned_folder/audioset",
      data_dir,
      manual_dir=str(audioset_dir),
      embedding_dtype="float32",
      embedder=embedder,
      merge_captions=merge[:1],
    )


def test_merge_report_message_names_unmatched_ids(audioset_dir, tmp_path):
  from jaxclap.data import manifests

  manifest = manifests.read_captioned(audioset_dir)
  report = caption_merge.merge(manifest, [tmp_path / "audiocaps_train.csv"])
  text = report.message()
  assert "audiocaps_train.csv" in text and "3 captions matched 2 clips" in text
  assert "3 captions of 2 YouTube ids match no clip" in text and "missingid01" in text


def test_bad_merge_inputs_are_named(audioset_dir, tmp_path):
  data_dir = str(tmp_path / "data")
  with pytest.raises(FileNotFoundError, match="absent.csv"):
    build.build_dataset(
      "captioned_folder/audioset",
      data_dir,
      manual_dir=str(audioset_dir),
      embedder=HashEmbedder(),
      merge_captions=[str(tmp_path / "absent.csv")],
    )
  with pytest.raises(ValueError, match="captioned_folder"):
    build.build_dataset(
      build.DEMO, data_dir, embedder=HashEmbedder(), merge_captions=[str(tmp_path / "acalt4.csv")]
    )
  (tmp_path / "noid.csv").write_text("name,caption\nx,y\n")
  with pytest.raises(Exception, match="noid.csv: no clip id column"):
    build.build_dataset(
      "captioned_folder/audioset",
      data_dir,
      manual_dir=str(audioset_dir),
      embedder=HashEmbedder(),
      merge_captions=[str(tmp_path / "noid.csv")],
    )
  (tmp_path / "badrow.csv").write_text("youtube_id,caption\nnot an id,y\n--aE2O5G5WE,ok\n")
  with pytest.raises(Exception, match="badrow.csv line 2.*no YouTube id"):
    build.build_dataset(
      "captioned_folder/audioset",
      data_dir,
      manual_dir=str(audioset_dir),
      embedder=HashEmbedder(),
      merge_captions=[str(tmp_path / "badrow.csv")],
    )
  info = build.build_dataset(
    "captioned_folder/audioset",
    data_dir,
    manual_dir=str(audioset_dir),
    embedder=HashEmbedder(),
    skip_bad=True,
    merge_captions=[str(tmp_path / "badrow.csv")],
  )
  assert info["build"]["skipped"] == 1 and info["build"]["merged_captions"]["clips"] == 1
