"""A build shared by independent worker processes, then merged into one TFDS dataset.

Worker k of N writes the records whose TFDS key hash (md5 of the key salted with the split
name, the hash TFDS orders records by) falls in the k-th of N equal ranges, as a complete
TFDS dataset of its own under `<data_dir>/_workers/<name>/<k>-of-<N>/`. Each worker's
records are therefore a contiguous run of the one-process order, and the merge only moves
shard files and writes the metadata (through TFDS's public DatasetInfo): worker 0's shards,
then worker 1's, ... hold exactly the records, in exactly the order, that a one-process
build writes. A killed worker leaves
only an `incomplete.*` folder (TFDS renames it when done), so rerunning it redoes its own
shards and no other worker's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

WORKERS_DIR = "_workers"


def check_worker(worker: tuple[int, int]) -> tuple[int, int]:
  """(index, count) of a worker, validated."""
  index, count = (int(x) for x in worker)
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"worker index {index} not in [0, num_workers={count})")
  return index, count


def key_hash(split: str, key: str) -> int:
  """TFDS's 128-bit record order key: md5 of the split name, then the key (utf-8).

  Written out, as no public TFDS API exposes it; TFDS keeps it fixed (changing it would
  reorder every dataset), and the worker-count tests check a merge against one process.
  """
  return int(hashlib.md5((split + key.replace("\\", "/")).encode("utf-8")).hexdigest(), 16)


def owner(split: str, key: str, count: int) -> int:
  """The worker (of `count`) that writes record `key` of `split`."""
  return (key_hash(split, key) * count) >> 128


def worker_dir(data_dir: str, name: str, index: int, count: int) -> str:
  """The TFDS data_dir of worker `index` of `count` for dataset `name`."""
  return os.path.join(data_dir, WORKERS_DIR, name.replace("/", "__"), f"{index}-of-{count}")


def _merge_build_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
  """One build report from the workers': counts add up, skipped inputs once each."""
  out = dict(reports[0])
  for key in ("clips", "hours", "captions"):
    out[key] = sum(r.get(key, 0) for r in reports)
  skipped = list(dict.fromkeys(s for r in reports for s in r.get("skipped_inputs", [])))
  out.update(skipped=len(skipped), skipped_inputs=skipped)
  return out


def _place(src: Path, dst: Path) -> None:
  """A hard link (no copy of the audio) where the file system allows, else a copy."""
  try:
    os.link(src, dst)
  except OSError:
    shutil.copyfile(src, dst)


def merge(worker_folders: list[str], final: str) -> None:
  """Writes the dataset folder `final` (…/<name>/<version>) from the workers' folders.

  Shards are renumbered in worker order; the dataset info (TFDS's, read and written through
  its public `DatasetInfo`) gets the joined shard lengths and byte counts, metadata.json the
  summed build report. The folder appears complete only when everything is in it (written as
  `incomplete.*`, then renamed, as TFDS does).
  """
  final_path = Path(final)
  tmp = final_path.with_name(f"incomplete.merge_{final_path.name}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  infos = [tfds.builder_from_directory(w).info for w in worker_folders]
  metas = [json.loads((Path(w) / "metadata.json").read_text()) for w in worker_folders]
  lengths: dict[str, list[int]] = {}
  num_bytes: dict[str, int] = {}
  parts: dict[str, list[str]] = {}
  for folder, info in zip(worker_folders, infos):
    for name, split in info.splits.items():
      files = [os.fspath(f) for f in split.filepaths]
      missing = [f for f in files if not os.path.isfile(f)]
      if missing:
        raise FileNotFoundError(f"{folder}: shard files of split {name!r} missing: {missing}")
      lengths.setdefault(name, []).extend(split.shard_lengths)
      num_bytes[name] = num_bytes.get(name, 0) + split.num_bytes
      parts.setdefault(name, []).extend(files)
  info = infos[0]
  template = info.splits[next(iter(lengths))].filename_template.replace(data_dir=os.fspath(tmp))
  splits = [
    tfds.core.SplitInfo(
      name=name,
      shard_lengths=lengths[name],
      num_bytes=num_bytes[name],
      filename_template=template.replace(split=name),
    )
    for name in lengths
  ]
  for split in splits:
    for src, dst in zip(parts[split.name], split.filepaths, strict=True):
      _place(Path(src), Path(dst))
  info.set_splits(tfds.core.SplitDict(splits))
  info.write_to_directory(tmp)
  meta = dict(metas[0])
  meta["build"] = {
    **_merge_build_reports([m.get("build", {}) for m in metas]),
    "workers": len(worker_folders),
  }
  (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
  os.replace(tmp, final_path)
