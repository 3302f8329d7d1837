"""Readers of each evaluation dataset's layout as distributed: clips, labels, folds, splits.

Each reader takes the folder an archive unpacks to (EVAR's folder names, see `presets`)
and returns a `TaskData`: the clips' files, their class keys, their official fold or
split, and captions for retrieval. Classes are those the metadata present names, so a
subset laid out the same way also runs. Files the metadata lists but that are absent are
skipped (AudioSet and AudioCaps are never complete); a missing metadata file raises
FileNotFoundError.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class TaskData:
  """Clips of one task with their class keys, folds or splits, and captions."""

  files: list[str]
  labels: list[list[str]]  # Class keys per clip (one for single-label; empty: unlabelled).
  folds: np.ndarray | None = None  # int [N], official fold per clip (fold tasks).
  splits: list[str] | None = None  # "train"/"valid"/"test" per clip (split tasks).
  captions: list[list[str]] | None = None  # Retrieval captions per clip.
  display: dict[str, str] | None = None  # Class key -> readable name (AudioSet mids).

  def __len__(self) -> int:
    return len(self.files)

  @property
  def class_keys(self) -> list[str]:
    """Sorted class keys present (EVAR sorts them too)."""
    return sorted({k for ls in self.labels for k in ls})


def _rows(path: Path) -> list[dict[str, str]]:
  if not path.is_file():
    raise FileNotFoundError(f"missing metadata file {path}")
  with open(path, newline="", encoding="utf-8") as f:
    return [{k.strip(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(f)]


def _lines(path: Path) -> list[str]:
  if not path.is_file():
    raise FileNotFoundError(f"missing split list {path}")
  return [s.strip() for s in path.read_text().splitlines() if s.strip()]


def _keep(files: list[str], *columns: list) -> tuple[list, ...]:
  """Drops the rows whose file is absent."""
  present = [i for i, f in enumerate(files) if os.path.isfile(f)]
  return ([files[i] for i in present],) + tuple([c[i] for i in present] for c in columns)


def esc50(root: Path) -> TaskData:
  """ESC-50-master/: meta/esc50.csv (filename, fold, category), audio/<filename>; 5 folds."""
  rows = _rows(root / "meta" / "esc50.csv")
  files, labels, folds = _keep(
    [str(root / "audio" / r["filename"]) for r in rows],
    [[r["category"]] for r in rows],
    [int(r["fold"]) for r in rows],
  )
  return TaskData(files, labels, folds=np.asarray(folds, np.int64))


def us8k(root: Path) -> TaskData:
  """UrbanSound8K/: metadata/UrbanSound8K.csv (slice_file_name, fold, class),
  audio/fold<k>/<slice_file_name>; 10 folds."""
  rows = _rows(root / "metadata" / "UrbanSound8K.csv")
  files, labels, folds = _keep(
    [str(root / "audio" / f"fold{r['fold']}" / r["slice_file_name"]) for r in rows],
    [[r["class"]] for r in rows],
    [int(r["fold"]) for r in rows],
  )
  return TaskData(files, labels, folds=np.asarray(folds, np.int64))


def gtzan(root: Path) -> TaskData:
  """gtzan/: <genre>/<clip>.wav and the fault-filtered lists EVAR uses (jongpillee's
  music_dataset_split: train_filtered.txt, valid_filtered.txt, test_filtered.txt, lines
  '<genre>/<clip>.wav'; the archive's .au clips are found too); clips in no list are left out."""
  split_of = {}
  for split in ("train", "valid", "test"):
    for line in _lines(root / f"{split}_filtered.txt"):
      split_of[line] = split
  # The lists name .wav files; the original archive's clips are .au (either is read).
  found = {
    n: next((p for p in (root / n, (root / n).with_suffix(".au")) if p.is_file()), None)
    for n in split_of
  }
  names = sorted(n for n, p in found.items() if p is not None)
  return TaskData(
    [str(found[n]) for n in names],
    [[n.split("/")[0]] for n in names],
    splits=[split_of[n] for n in names],
  )


def spcv2(root: Path) -> TaskData:
  """spcv2/ (speech_commands_v0.02): <word>/<clip>.wav, validation_list.txt,
  testing_list.txt; every other clip of a word folder trains (not _background_noise_)."""
  valid, test = set(_lines(root / "validation_list.txt")), set(_lines(root / "testing_list.txt"))
  names = sorted(
    f"{d.name}/{f.name}"
    for d in root.iterdir()
    if d.is_dir() and d.name[:1].islower()
    for f in d.glob("*.wav")
  )
  splits = ["test" if n in test else "valid" if n in valid else "train" for n in names]
  return TaskData([str(root / n) for n in names], [[n.split("/")[0]] for n in names], splits=splits)


def vc1(root: Path) -> TaskData:
  """vc1/: iden_split.txt ('<1|2|3> id10001/<video>/<clip>.wav') and wav/<path>; the
  speaker id is the class; 1/2/3 = train/valid/test."""
  pairs = [line.split() for line in _lines(root / "iden_split.txt")]
  files, labels, splits = _keep(
    [str(root / "wav" / p) for _, p in pairs],
    [[p.split("/")[0]] for _, p in pairs],
    [{"1": "train", "2": "valid", "3": "test"}[s] for s, _ in pairs],
  )
  return TaskData(files, labels, splits=splits)


def nsynth(root: Path) -> TaskData:
  """nsynth/: nsynth-{train,valid,test}/examples.json and audio/<note>.wav; the class is
  instrument_family_str."""
  files, labels, splits = [], [], []
  for split in ("train", "valid", "test"):
    meta_path = root / f"nsynth-{split}" / "examples.json"
    if not meta_path.is_file():
      raise FileNotFoundError(f"missing metadata file {meta_path}")
    meta = json.loads(meta_path.read_text())
    for note in sorted(meta):
      files.append(str(root / f"nsynth-{split}" / "audio" / f"{note}.wav"))
      labels.append([meta[note]["instrument_family_str"]])
      splits.append(split)
  files, labels, splits = _keep(files, labels, splits)
  return TaskData(files, labels, splits=splits)


def _evar_split_csv(name: str) -> Callable[[Path], TaskData]:
  """A reader of a folder holding EVAR's shipped split file `<name>.csv` (file_name,
  label, split) beside the audio (CREMA-D, VoxForge)."""

  def read(root: Path) -> TaskData:
    rows = _rows(root / f"{name}.csv")
    files, labels, splits = _keep(
      [str(root / r["file_name"]) for r in rows],
      [[r["label"]] for r in rows],
      [r["split"] for r in rows],
    )
    return TaskData(files, labels, splits=splits)

  read.__doc__ = f"{name}/: EVAR's evar/metadata/{name}.csv beside the audio files."
  return read


cremad = _evar_split_csv("cremad")
voxforge = _evar_split_csv("voxforge")


def surge(root: Path) -> TaskData:
  """surge/: <tone>/<note>.ogg; the note (file stem) is the class; splits by tone from
  EVAR's evar/predefined/dataset_surge_tone_splits.csv (tone, split) placed in the folder."""
  split_of = {r["tone"]: r["split"] for r in _rows(root / "dataset_surge_tone_splits.csv")}
  names = sorted(
    f"{d.name}/{f.name}" for d in root.iterdir() if d.name in split_of for f in d.glob("*.ogg")
  )
  return TaskData(
    [str(root / n) for n in names],
    [[Path(n).stem] for n in names],
    splits=[split_of[n.split("/")[0]] for n in names],
  )


def fsd50k(root: Path) -> TaskData:
  """fsd50k/ (FSD50K): FSD50K.ground_truth/dev.csv (fname, labels, split train|val) and
  eval.csv (fname, labels); audio in FSD50K.dev_audio/ and FSD50K.eval_audio/."""
  gt = root / "FSD50K.ground_truth"
  files, labels, splits = [], [], []
  for r in _rows(gt / "dev.csv"):
    files.append(str(root / "FSD50K.dev_audio" / f"{r['fname']}.wav"))
    labels.append(r["labels"].split(","))
    splits.append({"train": "train", "val": "valid"}[r["split"]])
  for r in _rows(gt / "eval.csv"):
    files.append(str(root / "FSD50K.eval_audio" / f"{r['fname']}.wav"))
    labels.append(r["labels"].split(","))
    splits.append("test")
  files, labels, splits = _keep(files, labels, splits)
  return TaskData(files, labels, splits=splits)


def _segments(path: Path) -> dict[str, list[str]]:
  """YTID -> label mids of an AudioSet segment CSV (three comment lines, quoted mids)."""
  if not path.is_file():
    raise FileNotFoundError(f"missing AudioSet segment file {path}")
  out = {}
  for line in path.read_text().splitlines():
    if not line.strip() or line.startswith("#"):
      continue
    ytid, _start, _end, mids = (s.strip() for s in line.split(", ", 3))
    out[ytid] = mids.strip('"').split(",")
  return out


def _audioset(root: Path, train_sets: tuple[str, ...]) -> TaskData:
  """AudioSet/: <subset>.csv segment lists, class_labels_indices.csv, and the clips in
  <subset>/ folders (file stem starting with the YTID, EVAR's make_as_metadata)."""
  display = {r["mid"]: r["display_name"] for r in _rows(root / "class_labels_indices.csv")}
  files, labels, splits = [], [], []
  for subset, split in [*((s, "train") for s in train_sets), ("eval_segments", "test")]:
    segments = _segments(root / f"{subset}.csv")
    folder = root / subset
    clips = sorted(folder.rglob("*.wav")) if folder.is_dir() else []
    for f in clips:
      mids = segments.get(f.stem[:11])
      if mids is not None:
        files.append(str(f))
        labels.append(mids)
        splits.append(split)
  return TaskData(files, labels, splits=splits, display=display)


def as_eval(root: Path) -> TaskData:
  """AudioSet eval segments alone (zero-shot needs no training clips)."""
  return _audioset(root, ())


def as20k(root: Path) -> TaskData:
  """AudioSet balanced train (20K) + eval segments."""
  return _audioset(root, ("balanced_train_segments",))


def as2m(root: Path) -> TaskData:
  """AudioSet balanced + unbalanced train (2M) + eval segments."""
  return _audioset(root, ("balanced_train_segments", "unbalanced_train_segments"))


def clotho(root: Path) -> TaskData:
  """clotho/: clotho_captions_evaluation.csv (file_name, caption_1..5), evaluation/<file>;
  retrieval uses the evaluation split."""
  rows = _rows(root / "clotho_captions_evaluation.csv")
  files, caps = _keep(
    [str(root / "evaluation" / r["file_name"]) for r in rows],
    [[r[f"caption_{i}"] for i in range(1, 6) if r.get(f"caption_{i}")] for r in rows],
  )
  return TaskData(files, [[] for _ in files], splits=["test"] * len(files), captions=caps)


def audiocaps(root: Path) -> TaskData:
  """audiocaps/: test.csv (audiocap_id, youtube_id, start_time, caption) and the clips
  anywhere below (stem 'Y<youtube_id>...' as EVAR expects, or '<youtube_id>...')."""
  by_id: dict[str, list[str]] = {}
  for r in _rows(root / "test.csv"):
    by_id.setdefault(r["youtube_id"], []).append(r["caption"])
  found = {}
  for f in sorted(root.rglob("*.wav")):
    for key in (f.stem[1:12], f.stem[:11]):
      if key in by_id and key not in found:
        found[key] = str(f)
  ids = sorted(found)
  return TaskData(
    [found[i] for i in ids],
    [[] for _ in ids],
    splits=["test"] * len(ids),
    captions=[by_id[i] for i in ids],
  )
