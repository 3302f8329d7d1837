"""Facts of built datasets, read without the build CLI: where they live, their splits,
text model, embedding dim, sample rate and classes; the checks a run makes of them."""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import tensorflow_datasets as tfds
from absl import logging

from jaxclap import paths
from jaxclap.data import caption_table

DEFAULT_DATA_DIR = os.environ.get("JAXCLAP_DATA_DIR", os.path.expanduser("~/jaxclap_data"))

MANUAL_HINTS = {
  "captioned_folder": "--manual_dir=<folder of audio + a captions CSV>",
  "labelled_folder": "--manual_dir=<folder of audio + labels.csv, ESC-50, or class folders>",
  "named_folder": "--manual_dir=<folder of audio named by what they are>",
  "audiocaps": "--manual_dir=<AudioCaps: train.csv, val.csv, test.csv + audio>",
  "clotho": "--manual_dir=<Clotho v2: clotho_captions_*.csv + development/ ...>",
  "wavcaps": "--manual_dir=<WavCaps: json_files/ + audio folders>",
  "audioset": "--manual_dir=<AudioSet: segment CSVs, class_labels_indices.csv + audio> "
  "--captions=<Auto-ACD train.csv>",
  "vggsound": "--manual_dir=<VGGSound: vggsound.csv + clips> --captions=<Auto-ACD train.csv>",
}


def build_command(name: str, data_dir: str) -> str:
  """The command that builds dataset `name` (with the folders a user fills in)."""
  kind = name.partition("/")[0]
  hint = f" {MANUAL_HINTS[kind]}" if kind in MANUAL_HINTS else ""
  return f"python -m jaxclap.data.build --dataset={name}{hint} --data_dir={data_dir}"


def dataset_info(name: str, data_dir: str = DEFAULT_DATA_DIR) -> dict[str, Any]:
  """Split sizes, text model, embedding dim, sample rate and classes of a built dataset."""
  try:
    builder = tfds.builder(name, data_dir=paths.data_dir(data_dir))
  except tfds.core.DatasetNotFoundError as e:
    raise FileNotFoundError(
      f"dataset {name!r} is not built under {data_dir}; build it with "
      f"{build_command(name, data_dir)}"
    ) from e
  meta = dict(builder.info.metadata or {})
  return {
    "name": name,
    "data_dir": str(builder.data_dir),
    "splits": {s: int(info.num_examples) for s, info in builder.info.splits.items()},
    "embedding_dim": int(meta["embedding_dim"]),
    "embedding_dtype": meta.get("embedding_dtype"),
    "text_model": meta["text_model"],
    "sample_rate": int(meta["sample_rate"]),
    "class_names": list(meta.get("class_names", [])),
    "build": meta.get("build", {}),
  }


def check_sample_rate(info: dict[str, Any], sample_rate: int, reader: str) -> None:
  """Refuses a dataset stored at another rate than `reader` reads: the audio would play at
  the wrong speed (16 kHz samples read as 32 kHz are an octave up, twice as fast)."""
  stored = int(info["sample_rate"])
  if stored != sample_rate:
    raise ValueError(
      f"dataset {info['name']!r} in {info['data_dir']} is stored at {stored} Hz but {reader} "
      f"reads {sample_rate} Hz audio; use a front end at {stored} Hz "
      f"(--config.frontend.sample_rate={stored}) or a dataset built at {sample_rate} Hz "
      f"(python -m jaxclap.data.build ... --sample_rate={sample_rate} --data_dir=<another dir>)"
    )


def parse_sources(spec: str, *, with_weight: bool) -> list[tuple]:
  """Parses "name:split[:weight],..." into tuples, naming the bad entry on error.

  With `with_weight`, a tuple's weight is None when its entry has none (sampled by size);
  either every entry has a weight or none has.
  """
  out = []
  for entry in [e.strip() for e in spec.split(",") if e.strip()]:
    parts = entry.split(":")
    n = 3 if with_weight else 2
    if with_weight and len(parts) == 2:
      if not all(parts):
        raise ValueError(f"Bad dataset entry {entry!r} in {spec!r}: expected name:split[:weight]")
      out.append((parts[0], parts[1], None))
      continue
    if len(parts) != n or not all(parts):
      form = "name:split:weight" if with_weight else "name:split"
      raise ValueError(f"Bad dataset entry {entry!r} in {spec!r}: expected {form}")
    if with_weight:
      try:
        w = float(parts[2])
      except ValueError:
        raise ValueError(f"Bad weight {parts[2]!r} in dataset entry {entry!r}") from None
      if not w > 0:
        raise ValueError(f"Dataset weight must be > 0 in {entry!r}")
      out.append((parts[0], parts[1], w))
    else:
      out.append((parts[0], parts[1]))
  if with_weight and len({w is None for *_, w in out}) > 1:
    bare = next(f"{n}:{s}" for n, s, w in out if w is None)
    raise ValueError(
      f"Dataset entry {bare!r} in {spec!r} has no weight while others do: "
      "give every entry a weight (name:split:weight) or none (each source is "
      "then drawn in proportion to its size)"
    )
  return out


def with_caption_table(info: dict, config: ml_collections.ConfigDict, data_dir: str) -> dict:
  """A dataset's facts with its caption table's model, dim and runtime (`data.caption_table`);
  refuses a table whose dim differs from model.text_dim."""
  folder = caption_table.resolve(data_dir, info["name"], config.data.caption_table)
  table = caption_table.CaptionTable(folder)
  if table.dim != config.model.text_dim:
    raise ValueError(
      f"caption table {folder} holds {table.dim}-d embeddings ({table.text_model}) but "
      f"config.model.text_dim={config.model.text_dim}; set "
      f"--config.model.text_dim={table.dim} or name a {config.model.text_dim}-d table"
    )
  runtime = {k: table.meta.get(k) for k in ("backend", "trust_remote_code")}
  return {
    **info,
    "text_model": table.text_model,
    "embedding_dim": table.dim,
    "caption_table": str(folder),
    "text_runtime": runtime,
  }


def run_sources(config: ml_collections.ConfigDict) -> tuple[list, list, list]:
  """A pretraining config's (train, validation, zero-shot) dataset specs."""
  data = config.data
  train = parse_sources(data.train, with_weight=True)
  val = parse_sources(data.val, with_weight=False) if data.val else []
  zs = parse_sources(data.zero_shot, with_weight=False) if data.zero_shot else []
  return train, val, zs


def run_facts(config: ml_collections.ConfigDict, data_dir: str) -> dict[str, dict]:
  """Per-dataset facts of a pretraining run's datasets, checked against its config (sample
  rate; stage 1: the sentence-embedding dim, from the records or the caption table)."""
  train, val, zs = run_sources(config)
  names = {n for n, *_ in train} | {n for n, _ in val} | {n for n, _ in zs}
  read = {n for n, *_ in train} | {n for n, _ in val}  # Datasets whose captions are read.
  facts = {}
  for name in sorted(names):
    info = dataset_info(name, data_dir)
    check_sample_rate(info, config.frontend.sample_rate, "config.frontend")
    if config.stage == "stage1" and config.data.caption_table:
      # Zero-shot sets' own vectors are not read: prompts go through the table's model.
      facts[name] = with_caption_table(info, config, data_dir) if name in read else info
      continue
    if config.stage == "stage1" and info["embedding_dim"] != config.model.text_dim:
      raise ValueError(
        f"Dataset {name!r} in {data_dir} holds {info['embedding_dim']}-d sentence embeddings "
        f"({info['text_model']}) but config.model.text_dim={config.model.text_dim}; set "
        f"--config.model.text_dim={info['embedding_dim']} or rebuild the dataset with a "
        f"{config.model.text_dim}-d text model."
      )
    facts[name] = info
  return facts


def eval_facts(name: str, facts: dict, config: ml_collections.ConfigDict, data_dir: str) -> dict:
  """An evaluator dataset's facts; with `data.caption_table`, its captions go through the
  table too (retrieval compares audio with the same model's caption embeddings)."""
  info = facts.get(name) or dataset_info(name, data_dir)
  if config.stage == "stage1" and config.data.caption_table and "caption_table" not in info:
    info = with_caption_table(info, config, data_dir)
  return info


def finetune_splits(knobs: ml_collections.ConfigDict, data_dir: str) -> tuple[dict[str, Any], str]:
  """A fine-tuning set's facts and the split that picks the best epoch (val_split "": the
  test split, as EVAR does for AudioSet, which has no validation split)."""
  dataset = knobs.dataset
  if not dataset:
    raise ValueError("finetune.dataset is empty: name a built labelled dataset")
  info = dataset_info(dataset, data_dir)
  for role, split in (("train", knobs.train_split), ("test", knobs.test_split)):
    if info["splits"].get(split, 0) == 0:
      raise ValueError(
        f"{dataset} under {data_dir} has no (or an empty) {role} split "
        f"{split!r}; it has {info['splits']}"
      )
  if not info["class_names"]:
    raise ValueError(f"{dataset} under {data_dir} has no class names: not a labelled set")
  if not knobs.val_split:
    return info, knobs.test_split
  val = knobs.val_split if info["splits"].get(knobs.val_split, 0) else knobs.test_split
  if val != knobs.val_split:
    logging.warning("No %r split: the test split picks the best epoch", knobs.val_split)
  return info, val
