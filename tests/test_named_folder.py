"""Named folders: captions, sound sources and a split by source from file names alone."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HashEmbedder, write_wav

from jaxclap.data import build, manifests, pipeline

# Five sources; "bell" and "hum" have one clip each (they must stay in training).
NAMES = [
  "dog_bark_1.wav",
  "dog_bark_2.wav",
  "DogGrowl3.wav",
  "metal_hit_1.wav",
  "metalHit2.wav",
  "metal-scrape.wav",
  "water_drip_1.wav",
  "water_pour_2.wav",
  "glass_break_1.wav",
  "glass_break_2.wav",
  "bell.wav",
  "hum_60hz.wav",
]


@pytest.fixture
def named_dir(tmp_path):
  rng = np.random.default_rng(0)
  for i, name in enumerate(NAMES):
    write_wav(tmp_path / "audio" / name, 0.1 * rng.normal(size=4000 + 500 * i), 16000)
  (tmp_path / "audio" / "notes.txt").write_text("not audio")
  return tmp_path / "audio"


@pytest.mark.parametrize(
  "stem, caption, source",
  [
    ("dog_bark_1", "dog bark", "dog"),
    ("DoorSlam2", "door slam", "door"),
    ("prep_pianoG#1", "prep piano g", "prep"),
    ("Analogsynth2_high", "analogsynth high", "analogsynth"),
    ("42", "", "42"),
  ],
)
def test_caption_and_source_from_name(stem, caption, source):
  assert manifests.name_caption(stem) == caption
  assert manifests.name_source(stem) == source


def test_split_is_by_source_and_deterministic(named_dir):
  m = manifests.read_named(named_dir, heldout=0.5)
  assert len(m.items) == len(NAMES)  # notes.txt is not audio.
  by_source: dict[str, set[str]] = {}
  for item in m.items:
    by_source.setdefault(manifests.name_source(item.path.stem), set()).add(item.split)
  assert all(len(splits) == 1 for splits in by_source.values()), by_source
  assert by_source["bell"] == {"train"} and by_source["hum"] == {"train"}  # Single clips.
  held = sorted(s for s, splits in by_source.items() if splits == {"test"})
  assert m.class_names == held
  for item in m.items:
    source = manifests.name_source(item.path.stem)
    assert item.label == (held.index(source) if source in held else -1)
    assert item.captions == [manifests.name_caption(item.path.stem)]
  again = manifests.read_named(named_dir, heldout=0.5)
  assert [(i.clip_id, i.split, i.label) for i in again.items] == [
    (i.clip_id, i.split, i.label) for i in m.items
  ]
  everything = manifests.read_named(named_dir, heldout=1.0)
  assert everything.class_names == ["dog", "glass", "metal", "water"]
  assert not manifests.read_named(named_dir, heldout=0.0).class_names


def test_named_folder_builds_train_and_labelled_test(named_dir, tmp_path, monkeypatch):
  # Every source with two or more clips held out: the builder reads with the default share.
  monkeypatch.setattr(
    manifests, "read_named", lambda d, heldout=1.0, f=manifests.read_named: f(d, heldout)
  )
  data_dir = str(tmp_path / "data")
  info = build.build_dataset(
    "named_folder/sounds", data_dir, manual_dir=str(named_dir), embedder=HashEmbedder()
  )
  assert info["splits"] == {"train": 2, "test": 10}
  assert info["class_names"] == ["dog", "glass", "metal", "water"]
  test = pipeline.open_source("named_folder/sounds", "test", data_dir)
  labels = sorted(int(test[i]["label"]) for i in range(len(test)))
  assert labels == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
