r"""Builds jaxclap datasets: CLI and the Python API used by the trainer.

  python -m jaxclap.data.build --dataset=jaxclap_demo --data_dir=~/jaxclap_data
  python -m jaxclap.data.build --dataset=captioned_folder/clotho \
      --manual_dir=/data/clotho --data_dir=~/jaxclap_data --skip_bad
  python -m jaxclap.data.build --dataset=captioned_folder/audioset \
      --manual_dir=/data/audioset --merge_captions=/data/audiocaps/train.csv

The CLAP corpora as distributed (layouts below): `audiocaps`, `clotho`, `wavcaps/<source>`,
`audioset` and `vggsound` (+ `--captions=<Auto-ACD train.csv>`), e.g.
  python -m jaxclap.data.build --dataset=audioset --manual_dir=/data/audioset \
      --captions=/data/auto-acd/train.csv --merge_captions=/data/audiocaps/train.csv

Dataset names: `jaxclap_demo`, `captioned_folder/<name>`, `labelled_folder/<name>`,
`named_folder/<name>` (captions, labels and a split by source from the file names)
(`<name>` defaults to the manual_dir's folder name). `--merge_captions` (captioned
folders) adds the captions of other CSVs to the clips of the same YouTube id
(`caption_merge`: AudioCaps captions join their AudioSet clips). Built data is read back
with `tfds.data_source(name, data_dir=...)` or `jaxclap.data.pipeline.make_loader`.
`--text_model=none` keeps captions without vectors (caption tables: `embed_captions`);
`--num_workers=N --worker_index=k` builds one share of a parallel build, and the same command
without `--worker_index` merges the shares (`parallel_build`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from absl import flags

from jaxclap import cli
from jaxclap.data import (
  builders,
  corpora,
  corpus_builders,
  folder_builders,
  manifests,
  parallel_build,
  schema,
)

# Dataset facts live in data/info.py; re-exported for the build API's callers.
from jaxclap.data.info import (  # noqa: F401
  DEFAULT_DATA_DIR,
  MANUAL_HINTS,
  build_command,
  check_sample_rate,
  dataset_info,
)
from jaxclap.data.schema import TextEmbedder
from jaxclap.text.registry import DEFAULT_TEXT_MODEL
from jaxclap.text.sentence import load_sentence_embedder

DEMO = "jaxclap_demo"
# Builder per dataset name prefix; the only place a name picks a class.
BUILDERS: dict[str, type[builders.CaptionedAudioBuilder]] = {
  DEMO: builders.JaxclapDemo,
  "captioned_folder": folder_builders.CaptionedFolder,
  "labelled_folder": folder_builders.LabelledFolder,
  "named_folder": folder_builders.NamedFolder,  # Captions, labels, split from file names.
  # The CLAP corpora as distributed (layouts in `corpora`).
  "audiocaps": corpus_builders.Audiocaps,
  "clotho": corpus_builders.Clotho,
  "wavcaps": corpus_builders.Wavcaps,  # wavcaps/<source>
  "audioset": corpus_builders.Audioset,
  "vggsound": corpus_builders.Vggsound,
}
CORPORA = ("audiocaps", "clotho", "wavcaps", "audioset", "vggsound")


# What --manual_dir (and --captions) hold, per builder: the "build it with" hints.
def load_embedder(
  text_model: str, backend: str = "auto", trust_remote_code: bool = False
) -> TextEmbedder:
  """The sentence embedder of `text_model` ('none': no vectors in the records, see
  `schema.NoEmbedder`); `trust_remote_code` implies the sentence-transformers runtime."""
  if text_model == schema.NoEmbedder.name:
    return schema.NoEmbedder()
  if not trust_remote_code:
    return load_sentence_embedder(text_model, backend=backend)
  if backend == "jax":
    raise ValueError("trust_remote_code applies to backend='st' (sentence-transformers)")
  return load_sentence_embedder(text_model, backend="st", trust_remote_code=True)


def _split_name(dataset: str, manual_dir: str | None) -> tuple[str, str | None]:
  """('captioned_folder/x' or 'jaxclap_demo') -> (builder key, config name or None)."""
  kind, _, config = dataset.partition("/")
  if kind not in BUILDERS:
    raise ValueError(
      f"unknown dataset {dataset!r}; expected {DEMO!r}, {', '.join(CORPORA[:2])}, "
      f"wavcaps/<source> ({', '.join(corpora.WAVCAPS_SOURCES)}), {', '.join(CORPORA[3:])}, "
      "'captioned_folder/<name>', 'labelled_folder/<name>' or 'named_folder/<name>'"
    )
  if kind == "wavcaps" and config not in corpora.WAVCAPS_SOURCES:
    raise ValueError(
      f"WavCaps is built per source: wavcaps/<one of {list(corpora.WAVCAPS_SOURCES)}>"
    )
  if kind in (DEMO, *CORPORA) and kind != "wavcaps" and config:
    raise ValueError(f"{kind} has no configs; got {dataset!r}")
  if kind == DEMO:
    return kind, None
  if not manual_dir:
    raise ValueError(
      f"dataset {dataset!r} reads local audio: pass manual_dir ({build_command(dataset, '...')})"
    )
  if kind in CORPORA:
    return kind, config or None
  config = config or Path(manual_dir).resolve().name
  if not re.fullmatch(r"[a-z0-9_.-]+", config := config.lower().replace(" ", "_")):
    raise ValueError(f"dataset config name {config!r} must be letters, digits, '_', '.', '-'")
  return kind, config


def _full_name(kind: str, config: str | None) -> str:
  return kind if config is None else f"{kind}/{config}"


def is_built(name: str, data_dir: str) -> bool:
  """Whether a complete build of `name` exists (incomplete.* folders do not count)."""
  try:
    tfds.builder(name, data_dir=data_dir)
  except (tfds.core.DatasetNotFoundError, FileNotFoundError):
    return False
  return True


def _check_existing(
  info: dict[str, Any],
  text_model: str,
  num_clips: int | None,
  seed: int | None,
  merged: list[str] | None = None,
  sample_rate: int | None = None,
  excluded: list[str] | None = None,
) -> None:
  """Refuses to reuse a build made with another text model, demo size/seed, merge list,
  sample rate or blacklist."""
  wanted = {
    "text_model": text_model,
    "num_clips": num_clips,
    "seed": seed,
    "merge_captions": merged,
    "sample_rate": sample_rate,
    "exclude": excluded,
  }
  built = {
    "text_model": info["text_model"],
    "sample_rate": info["sample_rate"],
    **{k: info["build"].get(k) for k in ("num_clips", "seed")},
    "merge_captions": info["build"].get("merged_captions", {}).get("files", []),
    "exclude": info["build"].get("excluded", {}).get("files", []),
  }
  for key, value in wanted.items():
    if value is not None and value != built[key]:
      raise ValueError(
        f"{info['data_dir']} was built with {key}={built[key]!r}, but {key}={value!r} was "
        "requested; delete that folder or use another data_dir"
      )


def build_dataset(
  dataset: str,
  data_dir: str = DEFAULT_DATA_DIR,
  *,
  text_model: str = DEFAULT_TEXT_MODEL,
  manual_dir: str | None = None,
  skip_bad: bool = False,
  num_clips: int | None = None,
  seed: int = 0,
  embedding_dtype: str = "float16",
  backend: str = "auto",
  trust_remote_code: bool = False,
  embedder: TextEmbedder | None = None,
  merge_captions: Sequence[str] = (),
  worker: tuple[int, int] | None = None,
  captions: Sequence[str] = (),
  sample_rate: int = schema.SAMPLE_RATE,
  exclude: Sequence[str] = (),
) -> dict[str, Any]:
  """Builds `dataset` under `data_dir` (no-op if already built); returns its summary.

  `embedder` overrides `text_model` with an already loaded embedder object; `backend` picks
  the sentence-model runtime (`text_embed.load_sentence_embedder`). `worker=(k, n)` builds
  only worker k's share, in its own folder (`build_parallel`, `parallel_build`). `merge_captions`:
  caption CSVs joined into a captioned folder's clips by YouTube id (`caption_merge`).
  `captions`: audioset / vggsound Auto-ACD caption CSVs (`corpora`). `sample_rate`: of the
  stored PCM (16000 or 32000; the trainer refuses a front end at another rate). `exclude`:
  wavcaps/<source> blacklist JSONs (clips that overlap evaluation sets, left out).
  """
  kind, config = _split_name(dataset, manual_dir)
  name = _full_name(kind, config)
  data_dir = os.path.expanduser(data_dir)
  if worker is not None:
    data_dir = parallel_build.worker_dir(data_dir, name, *parallel_build.check_worker(worker))
  if manual_dir is not None and not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"manual_dir {manual_dir} is not a folder")
  merge_captions = [os.path.expanduser(str(p)) for p in merge_captions or ()]
  if merge_captions and kind not in ("captioned_folder", *CORPORA):
    raise ValueError(
      f"merge_captions applies to captioned_folder/<name> and {', '.join(CORPORA)}, not {dataset!r}"
    )
  captions = [os.path.expanduser(str(p)) for p in captions or ()]
  if captions and kind not in ("audioset", "vggsound"):
    raise ValueError(f"captions (Auto-ACD CSVs) apply to audioset and vggsound, not {dataset!r}")
  exclude = [os.path.expanduser(str(p)) for p in exclude or ()]
  if exclude and kind != "wavcaps":
    raise ValueError(f"exclude (WavCaps blacklists) applies to wavcaps/<source>, not {dataset!r}")
  for flag, files in (
    ("merge_captions", merge_captions),
    ("captions", captions),
    ("exclude", exclude),
  ):
    for path in files:
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} file {path} is not a file")
  if is_built(name, data_dir):
    _check_existing(
      dataset_info(name, data_dir),
      embedder.name if embedder else text_model,
      num_clips if kind == DEMO else None,
      seed if kind == DEMO else None,
      [Path(p).name for p in merge_captions] if merge_captions else None,
      sample_rate,
      [Path(p).name for p in exclude] if kind == "wavcaps" else None,
    )
  else:
    kwargs: dict[str, Any] = dict(
      data_dir=data_dir, skip_bad=skip_bad, embedding_dtype=embedding_dtype
    )
    if sample_rate != schema.SAMPLE_RATE:
      kwargs["sample_rate"] = sample_rate
    if kind == DEMO:
      kwargs.update(num_clips=num_clips or 2000, seed=seed)
    else:
      if num_clips is not None:
        raise ValueError("num_clips applies to jaxclap_demo only")
      kwargs["manual_dir"] = manual_dir
      if config is not None:
        kwargs["config"] = tfds.core.BuilderConfig(name=config)
      if captions:
        kwargs["captions"] = captions
      if merge_captions:
        kwargs["merge_captions"] = merge_captions
      if exclude:
        kwargs["exclude"] = exclude
    kwargs["embedder"] = embedder or load_embedder(text_model, backend, trust_remote_code)
    if worker is not None:
      kwargs["worker"] = worker
    BUILDERS[kind](**kwargs).download_and_prepare(file_format="array_record")
  return dataset_info(name, data_dir)


def build_parallel(
  dataset: str,
  data_dir: str = DEFAULT_DATA_DIR,
  *,
  num_workers: int,
  worker_index: int | None = None,
  **options: Any,
) -> dict[str, Any]:
  """A build shared by `num_workers` independent processes (`parallel_build`).

  With `worker_index` this process builds that worker's share only (skipped when complete)
  and returns its summary; without, it builds every share still missing, then merges them
  into `dataset` (the final step once all workers are done). `options`: `build_dataset`'s.
  """
  kind, config = _split_name(dataset, options.get("manual_dir"))
  name = _full_name(kind, config)
  data_dir = os.path.expanduser(data_dir)
  if is_built(name, data_dir):
    return build_dataset(dataset, data_dir, **options)  # Checks the options, builds nothing.
  shares = range(num_workers) if worker_index is None else [worker_index]
  for k in shares:
    info = build_dataset(dataset, data_dir, worker=(k, num_workers), **options)
  if worker_index is not None:
    return info
  folders = [
    dataset_info(name, parallel_build.worker_dir(data_dir, name, k, num_workers))["data_dir"]
    for k in range(num_workers)
  ]
  final = os.path.join(data_dir, name, os.path.basename(folders[0]))
  parallel_build.merge(folders, final)
  # The merged folder holds the shards (hard links); the workers' copies are done with.
  shutil.rmtree(os.path.dirname(parallel_build.worker_dir(data_dir, name, 0, 1)))
  return dataset_info(name, data_dir)


def ensure_demo_dataset(
  data_dir: str = DEFAULT_DATA_DIR,
  *,
  text_model: str = DEFAULT_TEXT_MODEL,
  num_clips: int = 2000,
  seed: int = 0,
) -> dict[str, Any]:
  """Builds the demo set unless a complete one exists; returns its `dataset_info`."""
  return build_dataset(DEMO, data_dir, text_model=text_model, num_clips=num_clips, seed=seed)


def format_summary(info: dict[str, Any]) -> str:
  """Human-readable build summary."""
  build = info.get("build", {})
  lines = [
    f"dataset        {info['name']}  ({info['data_dir']})",
    f"splits         {json.dumps(info['splits'])}",
    f"clips          {build.get('clips', sum(info['splits'].values()))}",
    f"hours          {build.get('hours', float('nan')):.3f}",
    f"captions       {build.get('captions', '?')}",
    f"text model     {info['text_model']}  (dim {info['embedding_dim']}, "
    f"{info['embedding_dtype']})",
    f"classes        {len(info['class_names'])}",
    f"skipped files  {build.get('skipped', 0)}",
  ]
  lines += [f"  skipped: {s}" for s in build.get("skipped_inputs", [])[:20]]
  excluded = build.get("excluded")
  if excluded:
    lines.append(
      f"excluded       {excluded['clips']} clips listed in {', '.join(excluded['files'])}"
    )
  merged = build.get("merged_captions")
  if merged:
    lines.append(
      f"merged         {merged['matched_captions']} captions into {merged['clips']} "
      f"clips from {', '.join(merged['files'])}; {merged['unmatched_captions']} "
      f"captions of {merged['unmatched_ids']} ids unmatched "
      f"(e.g. {merged['unmatched_examples'][:5]})"
    )
  return "\n".join(lines)


def main(argv: list[str], build: Callable[..., dict[str, Any]] = build_dataset) -> int:
  """CLI body; returns the exit code (a failure exits with 1 after one line on stderr)."""
  f = flags.FLAGS
  del argv
  if f.num_workers > 1:  # This process builds one share (--worker_index) or all, then merges.
    build = functools.partial(
      build_parallel, num_workers=f.num_workers, worker_index=f.worker_index
    )
  # Any failure: one line and exit code 1.
  with cli.exit_on(Exception, code=1, prefix=f"building {f.dataset!r} failed: ", name_type=True):
    info = build(
      f.dataset,
      f.data_dir,
      text_model=f.text_model,
      manual_dir=f.manual_dir,
      skip_bad=f.skip_bad,
      num_clips=f.num_clips,
      seed=f.seed,
      embedding_dtype=f.embedding_dtype,
      backend=f.backend,
      trust_remote_code=f.trust_remote_code,
      merge_captions=f.merge_captions,
      captions=f.captions,
      sample_rate=f.sample_rate,
      exclude=f.exclude,
    )
  print(format_summary(info))
  return 0


def _define_flags() -> None:
  flags.DEFINE_string(
    "dataset",
    DEMO,
    "jaxclap_demo, {captioned,labelled,named}_folder/<name>, or a corpus as distributed: "
    "audiocaps, clotho, wavcaps/<source>, audioset, vggsound.",
  )
  flags.DEFINE_string("data_dir", DEFAULT_DATA_DIR, "TFDS data dir (env JAXCLAP_DATA_DIR).")
  flags.DEFINE_string("manual_dir", None, "Local folder of audio + CSV for folder datasets.")
  flags.DEFINE_string(
    "text_model",
    DEFAULT_TEXT_MODEL,
    "Sentence embedder for the captions; 'none' stores captions only (vectors then live in "
    "caption tables: python -m jaxclap.data.embed_captions).",
  )
  flags.DEFINE_bool("skip_bad", False, "Skip (and count) unusable files/rows instead of failing.")
  flags.DEFINE_integer("num_clips", None, "Number of demo clips (default 2000).")
  flags.DEFINE_integer("seed", 0, "Demo generator seed.")
  flags.DEFINE_enum(
    "embedding_dtype", "float16", ["float16", "float32"], "Storage dtype of caption embeddings."
  )
  flags.DEFINE_list(
    "merge_captions",
    [],
    "Caption CSVs (e.g. AudioCaps train.csv) or WavCaps JSONs whose "
    "captions join the captioned set's clips of the same YouTube id.",
  )
  flags.DEFINE_enum(
    "backend",
    "auto",
    ["auto", "jax", "st"],
    "Sentence-model runtime: jax (BERT family, no PyTorch), st "
    "(sentence-transformers), auto (st for models with a recipe, e.g. NV-Embed-v2).",
  )
  flags.DEFINE_list(
    "captions",
    [],
    "audioset / vggsound: Auto-ACD caption CSVs (youtube_id,caption); clips without one get "
    "the official label caption.",
  )
  flags.DEFINE_list(
    "exclude",
    [],
    "wavcaps/<source>: WavCaps blacklist JSONs (json_files/blacklist/blacklist_exclude_*.json) "
    "whose clips are left out, e.g. those overlapping AudioCaps/Clotho test sets.",
  )
  flags.DEFINE_integer(
    "sample_rate", 16000, "Rate of the stored audio: 16000 or 32000 (in the metadata)."
  )
  flags.DEFINE_bool(
    "trust_remote_code", False, "Let sentence-transformers run the model's own code (st)."
  )
  flags.DEFINE_integer(
    "num_workers",
    1,
    "Processes sharing the build (parallel_build): each runs with its --worker_index, then "
    "one run without --worker_index merges (and builds any share still missing).",
  )
  flags.DEFINE_integer("worker_index", None, "This process's share, in [0, num_workers).")


if __name__ == "__main__":
  # --help prints this module's docstring (absl), then the --manual_dir layouts.
  layouts = manifests.__doc__.split("\n", 1)[1].split("\nProblems are reported")[0]
  __doc__ += "\nLayouts of --manual_dir:\n" + layouts
  __doc__ += "\nCorpora as distributed:\n" + corpora.__doc__.split("\n", 2)[2]
  _define_flags()
  cli.run(main)
