r"""Writes the caption-embedding table of a built dataset for one text model.

  python -m jaxclap.data.embed_captions --dataset=captioned_folder/clotho \
      --text_model=nvidia/NV-Embed-v2 --backend=st --data_dir=~/jaxclap_data
  python -m jaxclap.data.embed_captions --dataset=jaxclap_demo --from_records

Streams the dataset's captions (all splits), embeds each distinct caption once, in
chunks that are committed as they are written: rerun the same command after a kill and it
resumes without duplicates. `--from_records` copies the vectors a dataset stores in its
records into a table instead (migration; no text model runs). Train against a table with
`--config.data.caption_table=<text model>` (layout: `caption_table`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import tqdm
from absl import flags

from jaxclap import cli, paths
from jaxclap.data import build, caption_table, pipeline, schema
from jaxclap.text import sentence
from jaxclap.text.registry import DEFAULT_TEXT_MODEL


def backend_name(embedder: Any) -> str:
  """The runtime of a loaded embedder: 'st', 'jax', or 'custom' (an object passed in)."""
  if isinstance(embedder, sentence.STSentenceEmbedder):
    return "st"
  if isinstance(embedder, sentence.JaxSentenceEmbedder):
    return "jax"
  return "custom"


def embed_captions(
  dataset: str,
  data_dir: str = build.DEFAULT_DATA_DIR,
  *,
  text_model: str = DEFAULT_TEXT_MODEL,
  backend: str = "auto",
  trust_remote_code: bool = False,
  embedder: schema.TextEmbedder | None = None,
  from_records: bool = False,
  dtype: str = "float16",
  chunk_size: int = 4096,
  batch_size: int = 256,
  overwrite: bool = False,
) -> dict[str, Any]:
  """Writes (or resumes, or finds complete) the table of (`dataset`, text model); returns
  its metadata plus `folder`. `embedder` overrides `text_model` with a loaded object."""
  data_dir = paths.data_dir(data_dir)
  info = build.dataset_info(dataset, data_dir)
  if from_records:
    if not info["embedding_dim"]:
      raise ValueError(f"{dataset} stores no caption vectors (built with --text_model=none)")
    text_model, dim, dtype = info["text_model"], info["embedding_dim"], info["embedding_dtype"]
    runtime = {"backend": info.get("text_backend") or "auto", "trust_remote_code": False}
  else:
    if embedder is None:
      embedder = build.load_embedder(text_model, backend, trust_remote_code)
    text_model, dim = str(embedder.name), int(embedder.dim)
    runtime = {"backend": backend_name(embedder), "trust_remote_code": bool(trust_remote_code)}
  folder = caption_table.table_dir(data_dir, dataset, text_model)
  if overwrite:
    shutil.rmtree(folder, ignore_errors=True)
  spec = {"dataset": dataset, "text_model": text_model, "dim": dim, "dtype": dtype, **runtime}
  if (folder / caption_table.METADATA).is_file():
    table = caption_table.CaptionTable(folder)
    if {k: table.meta.get(k) for k in spec} == spec:
      return {**table.meta, "folder": str(folder)}  # Complete already.
  splits = sorted(info["splits"])
  sources = (pipeline.open_source(dataset, s, data_dir) for s in splits)
  with tqdm.tqdm(desc=f"Embedding captions of {dataset}", unit="caption") as bar:
    meta = caption_table.write_table(
      caption_table.record_rows(sources, with_vectors=from_records),
      folder,
      embedder=None if from_records else embedder,
      spec=spec,
      chunk_size=chunk_size,
      batch_size=batch_size,
      progress=bar,
    )
  return {**meta, "folder": str(folder)}


def main(argv: list[str], run: Callable[..., dict[str, Any]] = embed_captions) -> int:
  """CLI body; a failure exits with 1 after one line on stderr."""
  del argv
  f = flags.FLAGS
  with cli.exit_on(Exception, code=1, prefix=f"embedding {f.dataset!r} failed: ", name_type=True):
    meta = run(
      f.dataset,
      f.data_dir,
      text_model=f.text_model,
      backend=f.backend,
      trust_remote_code=f.trust_remote_code,
      from_records=f.from_records,
      dtype=f.dtype,
      chunk_size=f.chunk_size,
      overwrite=f.overwrite,
    )
  print(
    f"table {meta['folder']}: {meta['count']} captions x {meta['dim']} ({meta['dtype']}) "
    f"of {meta['text_model']} ({meta['backend']})"
  )
  return 0


def _define_flags() -> None:
  flags.DEFINE_string("dataset", build.DEMO, "A built dataset name, e.g. captioned_folder/clotho.")
  flags.DEFINE_string("data_dir", build.DEFAULT_DATA_DIR, "TFDS data dir (env JAXCLAP_DATA_DIR).")
  flags.DEFINE_string("text_model", DEFAULT_TEXT_MODEL, "Sentence embedder for the captions.")
  flags.DEFINE_enum(
    "backend", "auto", ["auto", "jax", "st"], "Sentence-model runtime (as data.build)."
  )
  flags.DEFINE_bool("trust_remote_code", False, "Let sentence-transformers run the model's code.")
  flags.DEFINE_bool("from_records", False, "Copy the records' stored vectors into a table.")
  flags.DEFINE_enum("dtype", "float16", ["float16", "float32"], "Storage dtype of the vectors.")
  flags.DEFINE_integer("chunk_size", 4096, "Captions embedded per committed chunk.")
  flags.DEFINE_bool("overwrite", False, "Delete an existing (partial) table first.")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
