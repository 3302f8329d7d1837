"""Embed audio files with a trained checkpoint; resumable.

    python -m jaxclap.embed --checkpoint=WORKDIR --output=emb.npz [--kind=clip|clap|frame]
        [--format=npz|parquet] [--skip_bad] FILES_OR_DIRS...

Directories are searched recursively for audio files (sorted, so runs are deterministic);
ids are paths relative to the directory given (a file given directly: its name). Work is
written in shards of `--shard_size` clips to OUTPUT.parts/ (each written to a temporary
name, then renamed), so a rerun after an interruption skips finished shards; the final
merge writes OUTPUT the same way and removes the parts. Outputs hold `ids` and
`embeddings` ([N, D]; for --kind=frame the frames of all clips stacked [ΣT', D] with
`num_frames` [N]); unreadable files fail the run with their name, or with --skip_bad are
listed in OUTPUT.skipped.txt (and in the npz as `skipped` / `skipped_errors`). A progress
bar on stderr counts files. --format=parquet needs pyarrow (pip install 'jaxclap[parquet]').
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from absl import flags, logging
from tqdm.auto import tqdm

from jaxclap import cli, inference
from jaxclap.audio import io as audio_io

FORMATS = ("npz", "parquet")
PARQUET_HINT = "--format=parquet needs pyarrow: pip install 'jaxclap[parquet]'"


class MissingExtraError(ImportError):
  """An optional dependency the chosen option needs is not installed (a user's error)."""


_MANIFEST_KEYS = ("kind", "checkpoint", "shard_size", "num_files", "ids_sha256")


def find_audio(
  inputs: Sequence[str], extensions: Sequence[str] = audio_io.AUDIO_EXTENSIONS
) -> list[tuple[str, str]]:
  """Sorted (id, path) of the audio files named or found (recursively) under `inputs`."""
  found: list[tuple[str, str]] = []
  for root in inputs:
    if os.path.isdir(root):
      hits = []
      for folder, _, files in os.walk(root):
        hits += [
          os.path.join(folder, f) for f in files if os.path.splitext(f)[1].lower() in extensions
        ]
      found += sorted((os.path.relpath(p, root), p) for p in hits)
    elif os.path.isfile(root):
      found.append((os.path.basename(root), root))
    else:
      raise FileNotFoundError(f"{root}: no such file or directory")
  dupes = sorted(i for i, n in collections.Counter(i for i, _ in found).items() if n > 1)
  if dupes:
    raise ValueError(f"the inputs give duplicate ids {dupes[:5]}; embed them in separate runs")
  if not found:
    raise ValueError(f"no audio files ({', '.join(extensions)}) under {list(inputs)}")
  return found


def _atomic_save(path: str, write: Any) -> None:
  """`write(file)` to a temporary sibling, then rename over `path` (never a partial file)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _pyarrow() -> tuple[Any, Any]:
  """(pyarrow, pyarrow.parquet); a clear ImportError without the "parquet" extra."""
  try:
    import pyarrow as pa  # Optional: the "parquet" extra.
    import pyarrow.parquet as pq
  except ImportError as e:
    raise MissingExtraError(PARQUET_HINT) from e
  return pa, pq


def _decoded(
  items: Sequence[tuple[str, str]],
  sample_rate: int,
  skip_bad: bool,
  ok: list[str],
  skipped: list[tuple[str, str]],
  bar: tqdm,
) -> Iterator[np.ndarray]:
  """Waveforms of `items` in order; unreadable ones raise, or are recorded when skip_bad."""
  for clip_id, path in items:
    try:
      wave = audio_io.load_audio(path, sample_rate)
    except audio_io.AudioDecodeError as e:
      if not skip_bad:
        raise
      logging.warning("skipping %s", e)
      skipped.append((clip_id, str(e)))
      bar.update(1)  # Done with it: the bar counts files, embedded or skipped.
      continue
    ok.append(clip_id)
    yield wave


def _embed_shard(
  model: inference.Model, items: Sequence[tuple[str, str]], kind: str, skip_bad: bool, bar: tqdm
) -> dict[str, np.ndarray]:
  """Arrays of one shard: ids, embeddings (frames stacked), num_frames, skipped."""
  ok: list[str] = []
  skipped: list[tuple[str, str]] = []
  waves = _decoded(items, model.sample_rate, skip_bad, ok, skipped, bar)
  outs = []
  for out in model.iter_outputs(waves, kind, progress=False):
    outs.append(out)
    bar.update(1)
  dim = model.embedding_dim if kind == "clap" else model.feature_dim
  emb = (
    np.concatenate(outs)
    if kind == "frame" and outs
    else np.stack(outs)
    if outs
    else np.zeros((0, dim), np.float32)
  )
  return {
    "input_ids": np.array([i for i, _ in items], str),
    "ids": np.array(ok, str),
    "embeddings": emb.astype(np.float32),
    "num_frames": np.array([len(o) if kind == "frame" else 1 for o in outs], np.int64),
    "skipped": np.array([s for s, _ in skipped], str),
    "skipped_errors": np.array([e for _, e in skipped], str),
  }


def _manifest(kind: str, checkpoint: str, shard_size: int, ids: list[str]) -> dict[str, Any]:
  digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
  return {
    "kind": kind,
    "checkpoint": os.path.abspath(checkpoint),
    "shard_size": shard_size,
    "num_files": len(ids),
    "ids_sha256": digest,
  }


def _check_manifest(parts: str, manifest: dict[str, Any]) -> None:
  """Parts of another run (other files, kind, checkpoint or shard size) must not be mixed in."""
  path = os.path.join(parts, "manifest.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = [k for k in _MANIFEST_KEYS if old.get(k) != manifest[k]]
    if diff:
      raise ValueError(
        f"{parts} holds shards of a different run ({', '.join(diff)} differ: "
        f"{ {k: old.get(k) for k in diff} } vs { {k: manifest[k] for k in diff} }); "
        "delete it or rerun with the same arguments"
      )
  else:
    _atomic_save(path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def _write_output(
  output: str, fmt: str, kind: str, shards: list[dict[str, np.ndarray]], dim: int
) -> None:
  """Merges shards into OUTPUT (atomically) in the chosen format."""
  ids = np.concatenate([s["ids"] for s in shards])
  emb = np.concatenate([s["embeddings"].reshape(-1, dim) for s in shards])
  num_frames = np.concatenate([s["num_frames"] for s in shards])
  skipped = np.concatenate([s["skipped"] for s in shards])
  errors = np.concatenate([s["skipped_errors"] for s in shards])
  if fmt == "npz":
    arrays = {"ids": ids, "embeddings": emb, "skipped": skipped, "skipped_errors": errors}
    if kind == "frame":
      arrays["num_frames"] = num_frames
    _atomic_save(output, lambda f: np.savez(f, **arrays))
  else:
    pa, pq = _pyarrow()
    if kind == "frame":
      starts = np.concatenate([[0], np.cumsum(num_frames)[:-1]]).astype(np.int64)
      col = [emb[s : s + n].tolist() for s, n in zip(starts, num_frames)]
      table = pa.table(
        {
          "id": ids.tolist(),
          "num_frames": num_frames,
          "embedding": pa.array(col, pa.list_(pa.list_(pa.float32()))),
        }
      )
    else:
      table = pa.table(
        {"id": ids.tolist(), "embedding": pa.array(list(emb), pa.list_(pa.float32()))}
      )
    _atomic_save(output, lambda f: pq.write_table(table, f))
  if len(skipped):
    lines = "".join(f"{s}\t{e}\n" for s, e in zip(skipped, errors))
    _atomic_save(f"{output}.skipped.txt", lambda f: f.write(lines.encode()))


def embed_files(
  inputs: Sequence[str],
  *,
  checkpoint: str,
  output: str,
  kind: str = "clip",
  fmt: str = "npz",
  batch_size: int = 16,
  skip_bad: bool = False,
  shard_size: int = 256,
  text_model: str | None = None,
  stop_after_shards: int | None = None,
  model: inference.Model | None = None,
) -> dict[str, Any]:
  """Embeds every audio file under `inputs` into `output`; returns a summary.

  `stop_after_shards` (tests) stops after writing that many new shards, as if killed.
  """
  if kind not in inference.KINDS:
    raise ValueError(f"--kind must be one of {inference.KINDS}, got {kind!r}")
  if fmt not in FORMATS:
    raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
  if shard_size < 1:
    raise ValueError(f"--shard_size must be >= 1, got {shard_size}")
  if fmt == "parquet":
    _pyarrow()  # Fail before any embedding work, not at the final merge.
  items = find_audio(inputs)
  parts = f"{output}.parts"
  os.makedirs(parts, exist_ok=True)
  _check_manifest(parts, _manifest(kind, checkpoint, shard_size, [i for i, _ in items]))
  if model is None:
    model = inference.load(checkpoint, text_model=text_model, batch_size=batch_size, progress=False)
  shards, new, reused = [], 0, 0
  n_shards = -(-len(items) // shard_size)
  # One bar over files for any run size (stderr); finished shards of a resumed run count at once.
  bar = tqdm(total=len(items), desc="embed", unit="file")  # tqdm writes to stderr.
  with bar:
    for k in range(n_shards):
      part = items[k * shard_size : (k + 1) * shard_size]
      path = os.path.join(parts, f"shard-{k:05d}-of-{n_shards:05d}.npz")
      if os.path.exists(path):
        with np.load(path) as z:
          shard = {key: z[key] for key in z.files}
        if shard["input_ids"].tolist() == [i for i, _ in part]:
          shards.append(shard)
          reused += 1
          bar.update(len(part))
          continue
      if stop_after_shards is not None and new >= stop_after_shards:
        return {"stopped": True, "new_shards": new, "reused_shards": reused}
      shard = _embed_shard(model, part, kind, skip_bad, bar)
      _atomic_save(path, lambda f, s=shard: np.savez(f, **s))
      shards.append(shard)
      new += 1
  dim = model.embedding_dim if kind == "clap" else model.feature_dim
  _write_output(output, fmt, kind, shards, dim)
  shutil.rmtree(parts)
  skipped = [str(s) for sh in shards for s in sh["skipped"]]
  return {
    "stopped": False,
    "new_shards": new,
    "reused_shards": reused,
    "clips": int(sum(len(s["ids"]) for s in shards)),
    "skipped": skipped,
  }


def _define_flags() -> None:
  flags.DEFINE_string("checkpoint", None, "jaxclap workdir, checkpoints dir or step dir.")
  flags.DEFINE_string("output", None, "Output file (.npz or .parquet).")
  flags.DEFINE_enum(
    "kind",
    "clip",
    list(inference.KINDS),
    "clip: mean frame features; clap: CLAP audio embedding; frame: per 160 ms.",
  )
  flags.DEFINE_enum("format", "npz", list(FORMATS), "Output file format.")
  flags.DEFINE_integer("batch_size", 16, "Encoder chunks per jitted batch.")
  flags.DEFINE_integer("shard_size", 256, "Clips per resumable shard.")
  flags.DEFINE_bool("skip_bad", False, "List unreadable files as skipped instead of failing.")
  flags.DEFINE_string("text_model", None, "Stage-2 text tower folder, if moved.")
  flags.DEFINE_integer("stop_after_shards", None, "Testing: stop after this many new shards.")
  flags.mark_flags_as_required(["checkpoint", "output"])


def main(argv: list[str]) -> int:
  """CLI body; returns the exit code (2: a user error, reported in one line)."""
  f = flags.FLAGS
  if len(argv) < 2:
    return cli.report("give audio files or directories to embed")
  # AudioDecodeError is a ValueError; MissingExtraError: --format=parquet without pyarrow.
  with cli.exit_on(ValueError, FileNotFoundError, MissingExtraError):
    summary = embed_files(
      argv[1:],
      checkpoint=f.checkpoint,
      output=f.output,
      kind=f.kind,
      fmt=f.format,
      batch_size=f.batch_size,
      skip_bad=f.skip_bad,
      shard_size=f.shard_size,
      text_model=f.text_model,
      stop_after_shards=f.stop_after_shards,
    )
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
