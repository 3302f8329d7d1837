"""A build shared by independent worker processes, then merged into one TFDS dataset.

Worker k of N writes the records whose TFDS key hash (md5 of the key salted with the split
name, the hash TFDS orders records by) falls in the k-th of N equal ranges, as a complete
TFDS dataset of its own under `<data_dir>/_workers/<name>/<k>-of-<N>/`. Each worker's
records are therefore a contiguous run of the one-process order, and the merge only moves
shard files and writes the metadata: worker 0's shards, then worker 1's, ... hold exactly
the records, in exactly the order, that a one-process build writes. A killed worker leaves
only an `incomplete.*` folder (TFDS renames it when done), so rerunning it redoes its own
shards and no other worker's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tensorflow_datasets.core import hashing

WORKERS_DIR = "_workers"


def check_worker(worker: tuple[int, int]) -> tuple[int, int]:
  """(index, count) of a worker, validated."""
  index, count = (int(x) for x in worker)
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"worker index {index} not in [0, num_workers={count})")
  return index, count


def owner(split: str, key: str, count: int) -> int:
  """The worker (of `count`) that writes record `key` of `split`."""
  return (hashing.Hasher(split).hash_key(key) * count) >> 128


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

  Shards are renumbered in worker order; dataset_info.json gets the joined shard lengths
  and byte counts, metadata.json the summed build report. The folder appears complete
  only when everything is in it (written as `incomplete.*`, then renamed, as TFDS does).
  """
  final_path = Path(final)
  tmp = final_path.with_name(f"incomplete.merge_{final_path.name}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  infos = [json.loads((Path(w) / "dataset_info.json").read_text()) for w in worker_folders]
  metas = [json.loads((Path(w) / "metadata.json").read_text()) for w in worker_folders]
  prefix = infos[0]["name"]
  splits: dict[str, dict[str, Any]] = {}
  parts: dict[str, list[Path]] = {}
  for folder, info in zip(worker_folders, infos):
    for split in info["splits"]:
      name = split["name"]
      entry = splits.setdefault(name, {**split, "numBytes": "0", "shardLengths": []})
      entry["numBytes"] = str(int(entry["numBytes"]) + int(split.get("numBytes", 0)))
      entry["shardLengths"] += split["shardLengths"]
      files = sorted(Path(folder).glob(f"{prefix}-{name}.{info['fileFormat']}-*"))
      if len(files) != len(split["shardLengths"]):
        raise FileNotFoundError(f"{folder}: {len(files)} shard files of {name}, expected more")
      parts.setdefault(name, []).extend(files)
  for name, files in parts.items():
    for i, src in enumerate(files):
      fmt = infos[0]["fileFormat"]
      _place(src, tmp / f"{prefix}-{name}.{fmt}-{i:05d}-of-{len(files):05d}")
  info = {**infos[0], "splits": list(splits.values())}
  (tmp / "dataset_info.json").write_text(json.dumps(info, indent=2))
  shutil.copyfile(Path(worker_folders[0]) / "features.json", tmp / "features.json")
  meta = dict(metas[0])
  meta["build"] = {
    **_merge_build_reports([m.get("build", {}) for m in metas]),
    "workers": len(worker_folders),
  }
  (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
  os.replace(tmp, final_path)
