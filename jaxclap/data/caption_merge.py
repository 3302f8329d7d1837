"""Extra caption CSVs joined into a captioned set's clips by YouTube id (AudioCaps → AudioSet).

AudioCaps clips are AudioSet clips. The official M2D-CLAP trainer keeps one copy of the
audio and looks captions up by YouTube id (clap/train_clap.py: the first 11 characters of
the file name) in every caption table, drawing one caption from the union. Here the join
happens at build time: each extra CSV row's captions are added to the main set's clip(s)
with the same YouTube id, so the record holds its own (e.g. Auto-ACD) captions followed by
the extra ones, and the trainer's uniform caption draw is the official one. WavCaps JSON
files (`{"data": [{"id", "caption", ...}]}`, e.g. AudioSet_SL/as_final.json) join the same way.

Ids. A CSV row's id comes from a `youtube_id`/`ytid` column (AudioCaps' own CSVs) or else
from a file column; a clip's id from its file name. Names are normalised to the 11-char
YouTube id: an optional AudioSet "Y" prefix and start/end suffixes are dropped, e.g.
"Y--aE2O5G5WE_0.000_10.000.wav", "--aE2O5G5WE_30.000", "--aE2O5G5WE_30000" (VGGSound:
"---g-f_I2yQ_000001") all give "--aE2O5G5WE"; a name of another form has no id.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from jaxclap.data import manifests
from jaxclap.data.schema import BadInputError

ID_COLUMNS = ("youtube_id", "ytid", "yt_id", "video_id")
# [Y]<11-char id>[_<start>[_<end>]]; the suffix digits make the optional "Y" unambiguous.
_YOUTUBE_NAME = re.compile(r"Y?([A-Za-z0-9_-]{11})(?:_\d+(?:\.\d+)?){0,2}")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*$")
_SHOWN = 10  # Unmatched ids listed in messages and metadata.


def youtube_id(name: str) -> str | None:
  """The YouTube id of a clip name or path (module docstring), or None if it has none."""
  base = PurePosixPath(str(name).replace("\\", "/")).name
  base = _EXTENSION.sub("", base)  # ".wav", ".mp4", ".npy"; not the ".000" of a start time.
  match = _YOUTUBE_NAME.fullmatch(base)
  return match.group(1) if match else None


@dataclasses.dataclass
class MergeReport:
  """What merging the extra caption CSVs did."""

  files: list[str]  # Base names of the merged CSVs, in order.
  matched_captions: int = 0  # Captions whose id names a clip of the main set.
  added_captions: int = 0  # Of those, new to their clip (duplicates are dropped).
  clips: int = 0  # Clips of the main set named by some row.
  unmatched_captions: int = 0  # Captions whose id names no clip of the main set.
  unmatched_ids: int = 0
  unmatched_examples: list[str] = dataclasses.field(default_factory=list)
  clips_without_id: int = 0  # Main-set clips whose file name holds no YouTube id.

  def message(self) -> str:
    """One clear paragraph for the build log."""
    text = (
      f"merge_captions {', '.join(self.files)}: {self.matched_captions} captions matched "
      f"{self.clips} clips ({self.added_captions} new to their clip)"
    )
    if self.unmatched_ids:
      text += (
        f"; {self.unmatched_captions} captions of {self.unmatched_ids} YouTube ids match "
        f"no clip of the main set and were dropped (e.g. {self.unmatched_examples})"
      )
    if self.clips_without_id:
      text += f"; {self.clips_without_id} clips of the main set have no YouTube id in their name"
    return text

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _row_id(row: dict[str, str], id_col: str | None, file_col: str | None) -> str | None:
  if id_col is not None:
    return youtube_id(row.get(id_col, ""))
  return youtube_id(row.get(file_col, ""))


_NO_ID = (
  "holds no YouTube id (expected e.g. '--aE2O5G5WE', 'Y--aE2O5G5WE_0.000_10.000.wav' or "
  "'--aE2O5G5WE_30000')"
)
Row = tuple[str, list[str]] | BadInputError  # (YouTube id, captions) or what is wrong.


def _csv_rows(csv_path: Path) -> Iterator[Row]:
  """(id, captions) of each row of a caption CSV (AudioCaps, Auto-ACD, ACalt4 ...)."""
  header, rows = manifests.read_csv(csv_path)
  id_col = next((c for c in ID_COLUMNS if c in header), None)
  file_col = next((c for c in manifests.FILE_COLUMNS if c in header), None)
  if id_col is None and file_col is None:
    raise BadInputError(
      f"{csv_path}: no clip id column; expected one of "
      f"{ID_COLUMNS + manifests.FILE_COLUMNS}, found {header}"
    )
  caption_cols = [h for h in header if manifests.CAPTION_COLUMN.match(h)]
  if not caption_cols:
    raise BadInputError(
      f"{csv_path}: no caption column (caption, captions, text, caption_N); found {header}"
    )
  for line, row in rows:
    where = f"{csv_path} line {line}"
    key = _row_id(row, id_col, file_col)
    if key is None:
      yield BadInputError(f"{where}: {row.get(id_col or file_col)!r} {_NO_ID}")
      continue
    empty = [c for c in caption_cols if not row.get(c)]
    if empty:
      yield BadInputError(f"{where} (id {key!r}): empty caption in column {empty[0]!r}")
      continue
    yield key, [row[c] for c in caption_cols]


def read_json_entries(path: Path) -> list[dict[str, Any]]:
  """Entries of a WavCaps-style caption JSON: {"data": [{"id", "caption", ...}]} or a list."""
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (OSError, ValueError) as e:
    raise BadInputError(f"{path}: cannot read JSON ({e})") from None
  entries = obj.get("data") if isinstance(obj, dict) else obj
  if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
    raise BadInputError(f'{path}: expected {{"data": [{{"id", "caption", ...}}]}} or a list')
  return entries


def json_captions(entry: dict[str, Any]) -> list[str]:
  """An entry's captions: its `caption` or `caption_1`.. values (WavCaps / Clotho JSON)."""
  keys = sorted((k for k in entry if manifests.CAPTION_COLUMN.match(k)), key=_caption_order)
  return [str(entry[k]).strip() for k in keys]


def _caption_order(key: str) -> tuple[int, str]:
  digits = re.sub(r"\D", "", key)
  return (int(digits) if digits else 0, key)


def _json_rows(path: Path) -> Iterator[Row]:
  """(id, captions) of each entry of a WavCaps JSON (e.g. AudioSet_SL/as_final.json)."""
  for i, entry in enumerate(read_json_entries(path)):
    where = f"{path} entry {i}"
    key = youtube_id(str(entry.get("id", "")))
    if key is None:
      yield BadInputError(f"{where}: id {entry.get('id')!r} {_NO_ID}")
      continue
    captions = json_captions(entry)
    if not captions or not all(captions):
      yield BadInputError(f"{where} (id {key!r}): no caption or an empty one")
      continue
    yield key, captions


def merge(manifest: manifests.Manifest, csv_paths: Sequence[str | os.PathLike]) -> MergeReport:
  """Adds each CSV row's (or WavCaps JSON entry's) captions to the manifest's clip(s) of the
  same YouTube id.

  Rows that cannot be read (no id, empty caption) are appended to `manifest.bad`, each
  naming its CSV line or JSON entry; the returned report counts matches and unmatched ids.
  """
  by_id: dict[str, list[manifests.Item]] = {}
  report = MergeReport(files=[Path(p).name for p in csv_paths])
  for item in manifest.items:
    key = youtube_id(item.clip_id)
    if key is None:
      report.clips_without_id += 1
    else:
      by_id.setdefault(key, []).append(item)
  matched: set[int] = set()
  unmatched: dict[str, None] = {}
  for path in map(Path, csv_paths):
    if not path.is_file():
      raise BadInputError(f"merge_captions: {path} is not a file")
    rows = _json_rows(path) if path.suffix.lower() == ".json" else _csv_rows(path)
    for row in rows:
      if isinstance(row, BadInputError):
        manifest.bad.append(row)
        continue
      key, captions = row
      if key not in by_id:
        unmatched.setdefault(key)
        report.unmatched_captions += len(captions)
        continue
      report.matched_captions += len(captions)
      for item in by_id[key]:
        matched.add(id(item))
        for caption in captions:
          if caption not in item.captions:
            item.captions.append(caption)
            report.added_captions += 1
  report.clips = len(matched)
  report.unmatched_ids = len(unmatched)
  report.unmatched_examples = list(unmatched)[:_SHOWN]
  return report
