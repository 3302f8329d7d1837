"""Reads local dataset layouts (CSV or folders) into a list of clips to build.

Captioned layouts (AudioCaps / Clotho / WavCaps style): a CSV with a file column,
one or more caption columns (`caption`, `captions`, `text`, `caption_1`...) and an
optional `split` column; rows naming the same file are merged (AudioCaps lists one
caption per row). Labelled layouts: ESC-50 (`meta/esc50.csv` + `audio/`), a
`labels.csv` with `file,label[,split][,fold]`, or one folder per class.

Multi-label `labels.csv` (AudioSet style), one row per clip:
  - a `label`/`category`/`class` cell holds one class name, or several separated by ";"
    (commas stay part of a name: "Male speech, man speaking" is one label);
  - a `labels`/`positive_labels` cell holds labels separated by ";" or ",";
  - whitespace around each label is ignored; an empty label ("dog;;cat", "dog;") is an
    error naming the CSV line;
  - optional vocabulary `classes.csv` (or AudioSet's `class_labels_indices.csv`) next to
    labels.csv with columns `[index,][mid,]name|display_name`: then every label must be
    one of its names or mids (else an error naming the CSV line) and class indices follow
    its order; without it, classes are the sorted distinct labels.
The set is multi-label when any row holds more than one label.

Problems are reported as `features.BadInputError`s naming the CSV line or file;
the caller decides whether to raise or skip them.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from jaxclap.audio.io import AUDIO_EXTENSIONS
from jaxclap.data.schema import BadInputError

FILE_COLUMNS = ("file", "file_name", "filename", "fname", "path", "audio", "audio_file")
CAPTION_COLUMN = re.compile(r"^(caption|captions|text|raw_text)(_?\d+)?$")
SPLIT_ALIASES = {
  "train": "train",
  "training": "train",
  "development": "train",
  "dev": "train",
  "validation": "validation",
  "valid": "validation",
  "val": "validation",
  "test": "test",
  "testing": "test",
  "eval": "test",
  "evaluation": "test",
}
CAPTION_CSVS = ("captions.csv", "metadata.csv")
SPLIT_CSVS = ("train.csv", "validation.csv", "test.csv")


@dataclasses.dataclass
class Item:
  """One clip to build: where it came from, its audio file, captions and label."""

  where: str  # e.g. "captions.csv line 7": what errors name.
  split: str
  path: Path
  captions: list[str]
  clip_id: str  # Path under manual_dir without extension: unique within a layout.
  label: int = -1  # Single-label sets: the class index; multi-label sets: -1.
  fold: int = 0
  labels: list[int] = dataclasses.field(default_factory=list)  # All class indices.


@dataclasses.dataclass
class Manifest:
  """Clips per split plus the inputs that could not be used."""

  items: list[Item]
  bad: list[BadInputError]
  class_names: list[str] = dataclasses.field(default_factory=list)
  multi_label: bool = False  # Some clip has several labels (`Item.labels`).
  # Clips a corpus lists but whose audio is not on disk (partial downloads are the norm for
  # YouTube corpora): counted and reported, not errors.
  missing: list[str] = dataclasses.field(default_factory=list)
  # Clips left out on purpose (WavCaps blacklists of evaluation-set overlaps).
  excluded: list[str] = dataclasses.field(default_factory=list)

  def splits(self) -> list[str]:
    return sorted({item.split for item in self.items})


def read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
  """Header (lower-cased) and (line number, row) pairs of a CSV file."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    try:
      header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
      raise BadInputError(f"{path}: CSV file is empty (no header row)") from None
    rows = [(reader.line_num, dict(zip(header, (v.strip() for v in r)))) for r in reader if any(r)]
  return header, rows


def _pick_column(header: list[str], names: tuple[str, ...], csv_path: Path, what: str) -> str:
  for name in names:
    if name in header:
      return name
  raise BadInputError(f"{csv_path}: no {what} column; expected one of {names}, found {header}")


def normalise_split(value: str, where: str) -> str:
  try:
    return SPLIT_ALIASES[value.strip().lower()]
  except KeyError:
    raise BadInputError(
      f"{where}: unknown split {value!r}; use one of {sorted(SPLIT_ALIASES)}"
    ) from None


def resolve_audio(name: str, roots: list[Path], where: str) -> Path:
  """Finds `name` under one of `roots`, trying audio extensions when it has none."""
  if not name:
    raise BadInputError(f"{where}: empty file name")
  rel = Path(name)
  candidates = (
    [rel]
    if rel.suffix.lower() in AUDIO_EXTENSIONS
    else [rel, *(rel.with_name(rel.name + ext) for ext in AUDIO_EXTENSIONS)]
  )
  for root in roots:
    for c in candidates:
      if (root / c).is_file():
        return root / c
  raise BadInputError(
    f"{where}: audio file {name!r} not found (looked in {[str(r) for r in roots]})"
  )


def _clip_id(path: Path, manual_dir: Path) -> str:
  return path.relative_to(manual_dir).with_suffix("").as_posix()


def _caption_csvs(manual_dir: Path) -> list[tuple[Path, str | None]]:
  """(CSV, split implied by its name or None) for a captioned folder."""
  for name in CAPTION_CSVS:
    if (manual_dir / name).is_file():
      return [(manual_dir / name, None)]
  per_split = [(manual_dir / n, n[:-4]) for n in SPLIT_CSVS if (manual_dir / n).is_file()]
  if per_split:
    return per_split
  found = sorted(manual_dir.glob("*.csv"))
  if len(found) == 1:
    return [(found[0], None)]
  raise BadInputError(
    f"{manual_dir}: expected one of {CAPTION_CSVS}, per-split {SPLIT_CSVS}, or exactly one "
    f"*.csv; found {[p.name for p in found]}"
  )


def read_captioned(
  manual_dir: str | os.PathLike,
  csvs: Sequence[tuple[Path, str | None, Sequence[Path]]] | None = None,
) -> Manifest:
  """Reads a captioned-audio folder; rows naming the same file are merged.

  `csvs`: (caption CSV, split or None, extra audio folders) to read instead of the CSVs
  found by name (e.g. Clotho's clotho_captions_development.csv with development/).
  """
  manual_dir = Path(manual_dir)
  if not manual_dir.is_dir():
    raise BadInputError(f"manual_dir {manual_dir} is not a folder")
  merged: dict[tuple[str, Path], Item] = {}
  bad: list[BadInputError] = []
  if csvs is None:
    csvs = [(path, split, ()) for path, split in _caption_csvs(manual_dir)]
  for csv_path, csv_split, extra_roots in csvs:
    header, rows = read_csv(csv_path)
    file_col = _pick_column(header, FILE_COLUMNS, csv_path, "file")
    caption_cols = [h for h in header if CAPTION_COLUMN.match(h)]
    if not caption_cols:
      raise BadInputError(
        f"{csv_path}: no caption column (caption, captions, text, caption_N); found {header}"
      )
    for line, row in rows:
      where = f"{csv_path} line {line}"
      try:
        split = csv_split or normalise_split(row.get("split") or "train", where)
        roots = [csv_path.parent, csv_path.parent / "audio", csv_path.parent / split]
        roots += extra_roots
        path = resolve_audio(row.get(file_col, ""), roots, where)
        captions = []
        for col in caption_cols:
          if not row.get(col):
            raise BadInputError(
              f"{where} (file {row.get(file_col)!r}): empty caption in column {col!r}"
            )
          captions.append(row[col])
      except BadInputError as e:
        bad.append(e)
        continue
      item = merged.setdefault(
        (split, path),
        Item(where=where, split=split, path=path, captions=[], clip_id=_clip_id(path, manual_dir)),
      )
      item.captions.extend(c for c in captions if c not in item.captions)
  return Manifest(items=list(merged.values()), bad=bad)


def readable_class(name: str) -> str:
  """'chirping_birds' -> 'chirping birds' (class names double as text prompts)."""
  return re.sub(r"[_\s]+", " ", name).strip()


LABEL_COLUMNS = ("label", "category", "class")
LABEL_LIST_COLUMNS = ("labels", "positive_labels")
VOCABULARY_CSVS = ("classes.csv", "class_labels_indices.csv")


def split_labels(cell: str, column: str, where: str) -> list[str]:
  """Labels of one CSV cell (grammar in the module docstring); distinct, in cell order."""
  separators = r"[;,]" if column in LABEL_LIST_COLUMNS else r";"
  parts = [p.strip() for p in re.split(separators, cell)]
  if any(not p for p in parts):
    raise BadInputError(f"{where}: empty label in {cell!r}")
  return list(dict.fromkeys(parts))


def _read_vocabulary(csv_dir: Path) -> tuple[Path, list[str], dict[str, int]] | None:
  """(file, class names, name-or-mid -> index) of a classes.csv next to labels.csv."""
  for name in VOCABULARY_CSVS:
    path = csv_dir / name
    if path.is_file():
      break
  else:
    return None
  header, rows = read_csv(path)
  name_col = _pick_column(header, ("name", "display_name", "label", "class"), path, "name")
  if "index" in header:
    try:
      rows = sorted(rows, key=lambda r: int(r[1]["index"]))
    except ValueError as e:
      raise BadInputError(f"{path}: bad index column: {e}") from None
  names, lookup = [], {}
  for line, row in rows:
    if not row.get(name_col):
      raise BadInputError(f"{path} line {line}: empty class name")
    lookup[row[name_col]] = len(names)
    if row.get("mid"):
      lookup[row["mid"]] = len(names)
    names.append(row[name_col])
  return path, names, lookup


def _read_labelled_csv(
  manual_dir: Path,
  csv_path: Path,
  audio_root: Path,
  file_cols: tuple[str, ...],
  label_cols: tuple[str, ...],
) -> Manifest:
  header, rows = read_csv(csv_path)
  file_col = _pick_column(header, file_cols, csv_path, "file")
  label_col = _pick_column(header, label_cols, csv_path, "label")
  bad: list[BadInputError] = []
  labelled_rows = []
  for line, row in rows:
    if not row.get(label_col):
      bad.append(BadInputError(f"{csv_path} line {line}: empty label"))
      continue
    try:
      labelled_rows.append(
        (line, row, split_labels(row[label_col], label_col, f"{csv_path} line {line}"))
      )
    except BadInputError as e:
      bad.append(e)
  vocabulary = None if label_col == "category" else _read_vocabulary(csv_path.parent)
  if vocabulary is not None:
    vocab_path, names, index = vocabulary
  elif "target" in header and label_col == "category":
    # ESC-50: keep the official class index order given by `target`.
    pairs = {int(row["target"]): row[label_col] for _, row, _ in labelled_rows}
    names = [pairs[i] for i in sorted(pairs)]
    index = {n: i for i, n in enumerate(names)}
  else:
    names = sorted({n for _, _, labels in labelled_rows for n in labels})
    index = {n: i for i, n in enumerate(names)}
  multi = any(len(labels) > 1 for _, _, labels in labelled_rows)
  items = []
  for line, row, labels in labelled_rows:
    where = f"{csv_path} line {line}"
    try:
      unknown = [n for n in labels if n not in index]
      if unknown:
        raise BadInputError(
          f"{where}: unknown label {unknown[0]!r} (not a name or mid in {vocab_path})"
        )
      split = normalise_split(row["split"], where) if row.get("split") else "train"
      path = resolve_audio(row.get(file_col, ""), [audio_root, audio_root / split], where)
      fold = int(row["fold"]) if row.get("fold") else 0
    except (BadInputError, ValueError) as e:
      bad.append(e if isinstance(e, BadInputError) else BadInputError(f"{where}: {e}"))
      continue
    ids = list(dict.fromkeys(index[n] for n in labels))
    items.append(
      Item(
        where=where,
        split=split,
        path=path,
        captions=[readable_class(names[i]) for i in ids],
        clip_id=_clip_id(path, manual_dir),
        label=-1 if multi else ids[0],
        fold=fold,
        labels=ids,
      )
    )
  return Manifest(
    items=items, bad=bad, class_names=[readable_class(n) for n in names], multi_label=multi
  )


def read_labelled(manual_dir: str | os.PathLike) -> Manifest:
  """Reads ESC-50, labels.csv, or folder-per-class layouts."""
  manual_dir = Path(manual_dir)
  if not manual_dir.is_dir():
    raise BadInputError(f"manual_dir {manual_dir} is not a folder")
  if (manual_dir / "meta" / "esc50.csv").is_file():
    return _read_labelled_csv(
      manual_dir,
      manual_dir / "meta" / "esc50.csv",
      manual_dir / "audio",
      ("filename",),
      ("category",),
    )
  if (manual_dir / "labels.csv").is_file():
    return _read_labelled_csv(
      manual_dir,
      manual_dir / "labels.csv",
      manual_dir,
      FILE_COLUMNS,
      LABEL_COLUMNS + LABEL_LIST_COLUMNS,
    )
  class_dirs = sorted(p for p in manual_dir.iterdir() if p.is_dir())
  if not class_dirs:
    raise BadInputError(f"{manual_dir}: no meta/esc50.csv, labels.csv or class folders")
  items = []
  for label, d in enumerate(class_dirs):
    for path in sorted(d.iterdir()):
      if path.suffix.lower() in AUDIO_EXTENSIONS:
        items.append(
          Item(
            where=str(path),
            split="train",
            path=path,
            captions=[readable_class(d.name)],
            clip_id=_clip_id(path, manual_dir),
            label=label,
            labels=[label],
          )
        )
  return Manifest(items=items, bad=[], class_names=[readable_class(d.name) for d in class_dirs])


# ----------------------------------------------------------------------------------------------
# Named folders (e.g. the OLPC Berklee Sound Library): captions, sources and the split all come
# from the file names, so a plain folder of audio files is enough.

HELDOUT_FRACTION = 0.2  # Share of sound sources kept out of training (`named_split`).


def name_caption(stem: str) -> str:
  """'dog_bark_1' -> 'dog bark', 'DoorSlam2' -> 'door slam': words of a file name, no digits."""
  spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
  return " ".join(re.sub(r"[^A-Za-z]+", " ", spaced).lower().split())


def name_source(stem: str) -> str:
  """The sound source of a file name: its caption's first word ('metal_hit_2' -> 'metal')."""
  words = name_caption(stem).split()
  return words[0] if words else stem.lower()


def named_split(source: str, heldout: float = HELDOUT_FRACTION) -> str:
  """'test' for a stable `heldout` share of sources (by a hash of the name), else 'train'."""
  bucket = int(hashlib.sha256(source.encode("utf-8")).hexdigest()[:8], 16) % 10_000
  return "test" if bucket < heldout * 10_000 else "train"


def read_named(manual_dir: str | os.PathLike, heldout: float = HELDOUT_FRACTION) -> Manifest:
  """Reads a folder of audio files whose names say what they are (any depth, any CSV ignored).

  Caption: the file name's words (`name_caption`). Source: its first word (`name_source`).
  Split by source, so all clips of a source fall on one side: `named_split` keeps about
  `heldout` of the sources with at least two clips in `test` (the labelled split for the
  evaluators: label = the source among the held-out ones, sorted by name); every other
  clip is `train` (label -1). A source with one clip stays in training: a probe cannot
  score a class it has seen no other clip of.
  """
  manual_dir = Path(manual_dir)
  if not manual_dir.is_dir():
    raise BadInputError(f"manual_dir {manual_dir} is not a folder")
  paths = sorted(p for p in manual_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
  sources = [name_source(p.stem) for p in paths]
  counts = {s: sources.count(s) for s in set(sources)}
  held = sorted(s for s, n in counts.items() if n >= 2 and named_split(s, heldout) == "test")
  index = {s: i for i, s in enumerate(held)}
  items = []
  for path, source in zip(paths, sources):
    label = index.get(source, -1)
    items.append(
      Item(
        where=str(path),
        split="test" if label >= 0 else "train",
        path=path,
        captions=[name_caption(path.stem) or source],
        clip_id=_clip_id(path, manual_dir),
        label=label,
        labels=[label] if label >= 0 else [],
      )
    )
  return Manifest(items=items, bad=[], class_names=held)
