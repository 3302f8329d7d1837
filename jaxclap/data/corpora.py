"""Readers of the CLAP corpora as distributed, each into a `manifests.Manifest`.

Layouts of manual_dir (audio files may sit anywhere below it unless said otherwise):
  audiocaps  train.csv, val.csv, test.csv as AudioCaps ships them (audiocap_id,youtube_id,
             start_time,caption; one caption a row); audio named by its YouTube id
             ("<id>.wav", "Y<id>.wav", "<id>_<start>.flac", ...). A clip's rows make one record.
  clotho     Clotho v2: clotho_captions_{development,validation,evaluation}.csv (file_name,
             caption_1..caption_5) with the audio in development/ validation/ evaluation/
             (splits train / validation / test).
  wavcaps/<source>  WavCaps: json_files/<Source>/<x>_final.json ({"data": [{"id", "caption",
             "audio", "duration", ...}]}) and the audio named by the entry id ("2219.flac";
             AudioSet_SL ids end in ".wav") below a folder named after the source
             (e.g. SoundBible_flac/). Sources: audioset_sl, bbc_sound_effects, freesound,
             soundbible. All clips are train. `exclude`: WavCaps' blacklist JSONs as
             shipped (json_files/blacklist/blacklist_exclude_*.json: {"AudioSet": ["Y<id>.wav",
             ...], "FreeSound": ["<id>", ...]}) whose clips of this source are left out.
  audioset   AudioSet segment CSVs (balanced_train_segments.csv, unbalanced_train_segments.csv,
             eval_segments.csv: "# YTID, start_seconds, end_seconds, positive_labels") and
             class_labels_indices.csv; audio named by YouTube id (nttcslab/m2d
             files_audioset.csv style "<id>_<start>.wav", or "Y<id>_<start>_<end>.wav").
             Captions: the `captions` CSVs (Auto-ACD train.csv: youtube_id,caption); a clip
             without one gets the official label caption "The sound of A, B, and C."
             (clap/Note-AutoACD-GTEbase.ipynb). eval_segments is the test split.
  vggsound   vggsound.csv (no header: youtube_id,start_seconds,label,split) and the clips
             named "<id>_<start:06d>.{wav,flac,mp4}"; captions as audioset, with the label
             caption "The sound of <label>." (.mp4 decoding needs ffmpeg).
Clips a corpus lists but that are not on disk are counted in `Manifest.missing`, not errors.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from jaxclap.audio.io import AUDIO_EXTENSIONS
from jaxclap.data import caption_merge, manifests
from jaxclap.data.schema import BadInputError

AUDIOCAPS_CSVS = {"train.csv": "train", "val.csv": "validation", "test.csv": "test"}
CLOTHO_SPLITS = {"development": "train", "validation": "validation", "evaluation": "test"}
# Source name -> (folder name as WavCaps ships it, JSON file name).
WAVCAPS_SOURCES = {
  "audioset_sl": ("AudioSet_SL", "as_final.json"),
  "bbc_sound_effects": ("BBC_Sound_Effects", "bbc_final.json"),
  "freesound": ("FreeSound", "fsd_final.json"),
  "soundbible": ("SoundBible", "sb_final.json"),
}
AUDIOSET_CSVS = {
  "balanced_train_segments.csv": "train",
  "unbalanced_train_segments.csv": "train",
  "eval_segments.csv": "test",
}
VGGSOUND_CSV = "vggsound.csv"
VIDEO_EXTENSIONS = (".mp4",)  # VGGSound ships video; audio.io decodes it through ffmpeg.
_SHOWN = 20  # Missing clips kept as examples.


def _require_dir(manual_dir: str | os.PathLike) -> Path:
  manual_dir = Path(manual_dir)
  if not manual_dir.is_dir():
    raise BadInputError(f"manual_dir {manual_dir} is not a folder")
  return manual_dir


def index_audio(
  root: Path,
  key: Callable[[Path], str | None],
  extensions: Sequence[str] = AUDIO_EXTENSIONS,
  keep: Callable[[Path], bool] = lambda p: True,
) -> dict[str, Path]:
  """key(file) -> file for the audio files below `root` (first in sorted order on a tie)."""
  found: dict[str, Path] = {}
  for path in sorted(root.rglob("*")):
    if path.suffix.lower() in extensions and keep(path) and path.is_file():
      k = key(path)
      if k is not None:
        found.setdefault(k, path)
  return found


def _by_youtube_id(path: Path) -> str | None:
  return caption_merge.youtube_id(path.name)


def _item(manual_dir: Path, where: str, split: str, path: Path, captions: list[str]):
  return manifests.Item(
    where=where,
    split=split,
    path=path,
    captions=captions,
    clip_id=path.relative_to(manual_dir).with_suffix("").as_posix(),
  )


def read_audiocaps(manual_dir: str | os.PathLike) -> manifests.Manifest:
  """AudioCaps' train/val/test CSVs; each clip's caption rows make one record."""
  manual_dir = _require_dir(manual_dir)
  csvs = [(manual_dir / n, s) for n, s in AUDIOCAPS_CSVS.items() if (manual_dir / n).is_file()]
  if not csvs:
    raise BadInputError(f"{manual_dir}: no AudioCaps CSV; expected some of {list(AUDIOCAPS_CSVS)}")
  audio = index_audio(manual_dir, _by_youtube_id)
  items: dict[tuple[str, str], manifests.Item] = {}
  bad, missing = [], []
  for csv_path, split in csvs:
    header, rows = manifests.read_csv(csv_path)
    for col in ("youtube_id", "caption"):
      if col not in header:
        raise BadInputError(f"{csv_path}: no {col!r} column (AudioCaps layout); found {header}")
    for line, row in rows:
      where = f"{csv_path} line {line}"
      ytid = caption_merge.youtube_id(row["youtube_id"])
      if ytid is None or not row.get("caption"):
        bad.append(BadInputError(f"{where}: no YouTube id or an empty caption"))
        continue
      if ytid not in audio:
        missing.append(f"{split}:{ytid}")
        continue
      item = items.setdefault((split, ytid), _item(manual_dir, where, split, audio[ytid], []))
      if row["caption"] not in item.captions:
        item.captions.append(row["caption"])
  return _manifest(list(items.values()), bad, missing)


def _manifest(items, bad, missing) -> manifests.Manifest:
  # A clip listed in several rows is missing once.
  return manifests.Manifest(items=items, bad=bad, missing=list(dict.fromkeys(missing)))


def read_clotho(manual_dir: str | os.PathLike) -> manifests.Manifest:
  """Clotho v2's clotho_captions_<split>.csv with the <split>/ audio folders."""
  manual_dir = _require_dir(manual_dir)
  csvs = [
    (manual_dir / f"clotho_captions_{name}.csv", split, [manual_dir / name])
    for name, split in CLOTHO_SPLITS.items()
    if (manual_dir / f"clotho_captions_{name}.csv").is_file()
  ]
  if not csvs:
    names = [f"clotho_captions_{n}.csv" for n in CLOTHO_SPLITS]
    raise BadInputError(f"{manual_dir}: no Clotho caption CSV; expected some of {names}")
  return manifests.read_captioned(manual_dir, csvs)


def _under_source(folder: str, root: Path) -> Callable[[Path], bool]:
  """Whether a file lies below a folder of `root` named after a WavCaps source."""
  prefix = folder.lower()
  return lambda p: any(d.lower().startswith(prefix) for d in p.relative_to(root).parts[:-1])


def _stem(path: Path) -> str:
  return path.stem


def wavcaps_blacklist(paths: Sequence[str | os.PathLike], source: str) -> set[str]:
  """The clip ids (file stems) that WavCaps blacklist JSONs list for `source`.

  A blacklist names sources by their WavCaps folder or its start ("AudioSet" for
  AudioSet_SL), compared case-insensitively.
  """
  folder = WAVCAPS_SOURCES[source][0].lower()
  ids: set[str] = set()
  for path in paths:
    try:
      with open(path, encoding="utf-8") as f:
        table = json.load(f)
    except (OSError, ValueError) as e:
      raise BadInputError(f"{path}: not a readable WavCaps blacklist JSON ({e})") from e
    if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
      raise BadInputError(f"{path}: a WavCaps blacklist maps source names to lists of ids")
    for key, listed in table.items():
      if folder.startswith(str(key).lower()):
        ids.update(Path(str(x)).stem for x in listed)
  return ids


def read_wavcaps(
  manual_dir: str | os.PathLike, source: str, exclude: Sequence[str | os.PathLike] = ()
) -> manifests.Manifest:
  """One WavCaps source: its JSON and the audio files named by the entries' ids, less the
  clips that the `exclude` blacklists list (counted in `Manifest.excluded`)."""
  manual_dir = _require_dir(manual_dir)
  if source not in WAVCAPS_SOURCES:
    raise BadInputError(f"unknown WavCaps source {source!r}; one of {sorted(WAVCAPS_SOURCES)}")
  folder, json_name = WAVCAPS_SOURCES[source]
  blacklisted = wavcaps_blacklist(exclude, source)
  found = sorted(manual_dir.rglob(json_name))
  if not found:
    raise BadInputError(f"{manual_dir}: no {json_name} (WavCaps json_files/{folder}/{json_name})")
  json_path = found[0]
  # Ids repeat across sources (FreeSound and SoundBible both number their sounds), so the
  # audio is looked up below the source's own folder when there is one.
  audio = index_audio(manual_dir, _stem, keep=_under_source(folder, manual_dir))
  audio = audio or index_audio(manual_dir, _stem)
  items, bad, missing, excluded = [], [], [], []
  for i, entry in enumerate(caption_merge.read_json_entries(json_path)):
    where = f"{json_path} entry {i}"
    clip = Path(str(entry.get("id", ""))).stem
    captions = caption_merge.json_captions(entry)
    if not clip or not captions or not all(captions):
      bad.append(BadInputError(f"{where}: no id, no caption or an empty one"))
      continue
    if clip in blacklisted:
      excluded.append(clip)
      continue
    named = manual_dir / str(entry.get("audio", ""))
    path = named if named.suffix.lower() in AUDIO_EXTENSIONS and named.is_file() else None
    path = path or audio.get(clip)
    if path is None:
      missing.append(clip)
      continue
    items.append(_item(manual_dir, where, "train", path, list(dict.fromkeys(captions))))
  manifest = _manifest(items, bad, missing)
  manifest.excluded = list(dict.fromkeys(excluded))
  return manifest


def autoacd_caption(caption: str) -> str:
  """An Auto-ACD caption without its 'could be: "..."' wrapper (as the official notebook)."""
  match = re.search(r'be: "(.+)"', caption)
  return match.group(1) if match else caption


def label_caption(names: Sequence[str]) -> str:
  """The official caption of a clip without an Auto-ACD one: 'The sound of A, B, and C.'."""
  if len(names) == 1:
    return f"The sound of {names[0]}."
  return f"The sound of {', '.join(names[:-1])}, and {names[-1]}."


def _read_segments(csv_path: Path) -> list[tuple[int, str, list[str]]]:
  """(line, YouTube id, label mids) of an AudioSet segment CSV (3 comment lines)."""
  out = []
  with open(csv_path, newline="", encoding="utf-8") as f:
    for line, row in enumerate(csv.reader(f, skipinitialspace=True), start=1):
      if not row or row[0].startswith("#"):
        continue
      if len(row) < 4:
        raise BadInputError(f"{csv_path} line {line}: expected YTID, start, end, labels")
      out.append((line, row[0].strip(), [m.strip() for m in row[3].split(",") if m.strip()]))
  return out


def _add_captions(
  manifest: manifests.Manifest,
  captions: Sequence[str | os.PathLike],
  fallback: dict[int, str],
) -> caption_merge.MergeReport | None:
  """Joins the caption CSVs by YouTube id; clips left without one get their fallback."""
  report = caption_merge.merge(manifest, captions) if captions else None
  for item in manifest.items:
    item.captions = list(dict.fromkeys(autoacd_caption(c) for c in item.captions))
    if not item.captions:
      item.captions = [fallback[id(item)]]
  return report


def read_audioset(
  manual_dir: str | os.PathLike, captions: Sequence[str | os.PathLike] = ()
) -> tuple[manifests.Manifest, caption_merge.MergeReport | None]:
  """AudioSet segment CSVs + audio; Auto-ACD captions from `captions`, else label captions."""
  manual_dir = _require_dir(manual_dir)
  csvs = [(manual_dir / n, s) for n, s in AUDIOSET_CSVS.items() if (manual_dir / n).is_file()]
  if not csvs:
    raise BadInputError(
      f"{manual_dir}: no AudioSet segment CSV; expected some of {list(AUDIOSET_CSVS)}"
    )
  names: dict[str, str] = {}
  vocab = manual_dir / "class_labels_indices.csv"
  if vocab.is_file():
    _, rows = manifests.read_csv(vocab)
    names = {r["mid"]: r["display_name"] for _, r in rows if r.get("mid")}
  audio = index_audio(manual_dir, _by_youtube_id)
  items, bad, missing, fallback, seen = [], [], [], {}, set()
  for csv_path, split in csvs:
    for line, ytid, mids in _read_segments(csv_path):
      if ytid in seen:
        continue
      seen.add(ytid)
      if ytid not in audio:
        missing.append(ytid)
        continue
      item = _item(manual_dir, f"{csv_path} line {line}", split, audio[ytid], [])
      unknown = [m for m in mids if m not in names]
      if unknown and not captions:
        bad.append(BadInputError(f"{item.where}: label {unknown[0]!r} not in {vocab}"))
        continue
      fallback[id(item)] = label_caption([names.get(m, m) for m in mids])
      items.append(item)
  manifest = _manifest(items, bad, missing)
  return manifest, _add_captions(manifest, captions, fallback)


def read_vggsound(
  manual_dir: str | os.PathLike, captions: Sequence[str | os.PathLike] = ()
) -> tuple[manifests.Manifest, caption_merge.MergeReport | None]:
  """vggsound.csv + clips; Auto-ACD captions from `captions`, else 'The sound of <label>.'."""
  manual_dir = _require_dir(manual_dir)
  csv_path = manual_dir / VGGSOUND_CSV
  if not csv_path.is_file():
    raise BadInputError(f"{manual_dir}: no {VGGSOUND_CSV} (youtube_id,start_seconds,label,split)")
  audio = index_audio(manual_dir, _by_youtube_id, AUDIO_EXTENSIONS + VIDEO_EXTENSIONS)
  items, bad, missing, fallback = [], [], [], {}
  with open(csv_path, newline="", encoding="utf-8") as f:
    rows = list(enumerate(csv.reader(f), start=1))
  if rows and rows[0][1][:1] in (["youtube_id"], ["# YTID"]):
    rows = rows[1:]  # A header someone added; the shipped file has none.
  for line, row in rows:
    where = f"{csv_path} line {line}"
    if len(row) < 4 or caption_merge.youtube_id(row[0]) is None:
      bad.append(BadInputError(f"{where}: expected youtube_id,start_seconds,label,split"))
      continue
    ytid = caption_merge.youtube_id(row[0])
    if ytid not in audio:
      missing.append(ytid)
      continue
    try:
      split = manifests.normalise_split(row[3], where)
    except BadInputError as e:
      bad.append(e)
      continue
    item = _item(manual_dir, where, split, audio[ytid], [])
    fallback[id(item)] = label_caption([row[2].strip()])
    items.append(item)
  manifest = _manifest(items, bad, missing)
  return manifest, _add_captions(manifest, captions, fallback)
