"""Peak memory of writing caption embeddings: the streamed table (`caption_table.write_table`,
as `embed_captions` runs it) vs the in-RAM caption -> vector dict the build used
(`schema.embed_unique`).

Each approach runs in a fresh child process over the same generated captions (a stream: no
list of them is held by the caller) with a trivial embedder, so the figure is the storage
path's own memory. Rounds alternate the two; the report gives each one's peak RSS above the
child's RSS after imports (min and median over rounds) and their ratio.

  python bench/caption_table.py --num_captions 200000 --dim 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile

import numpy as np


def captions(n: int):
  """`n` distinct caption-like strings, each twice (repeats are dropped by both paths)."""
  for i in range(n):
    text = f"A recording of sound {i}: a dog barks {i % 97} times near a road."
    yield text
    yield text


class TrivialEmbedder:
  """Constant vectors: the bench measures storage, not a text model."""

  name = "trivial"

  def __init__(self, dim: int):
    self.dim = dim

  def embed(self, texts: list[str]) -> np.ndarray:
    return np.full((len(texts), self.dim), 0.5, np.float32)


def _peak_kib() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(kind: str, n: int, dim: int) -> None:
  """One measurement; prints JSON {kind, base_kib, peak_kib}."""
  from jaxclap.data import caption_table, schema

  base = _peak_kib()
  embedder = TrivialEmbedder(dim)
  if kind == "table":
    with tempfile.TemporaryDirectory() as folder:
      spec = {"text_model": "trivial", "dim": dim, "dtype": "float16"}
      caption_table.write_table(
        ((c, None) for c in captions(n)), folder, embedder=embedder, spec=spec
      )
  else:
    table = schema.embed_unique(captions(n), embedder, dtype="float16", batch_size=256)
    assert len(table) == n
  print(json.dumps({"kind": kind, "base_kib": base, "peak_kib": _peak_kib()}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_captions", type=int, default=200_000)
  parser.add_argument("--dim", type=int, default=1024)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--child", default="")
  args = parser.parse_args()
  if args.child:
    child(args.child, args.num_captions, args.dim)
    return
  growth: dict[str, list[float]] = {"table": [], "dict": []}
  for _ in range(args.rounds):
    for kind in ("table", "dict"):
      out = (
        subprocess.run(
          [sys.executable, __file__, f"--child={kind}", f"--num_captions={args.num_captions}"]
          + [f"--dim={args.dim}"],
          check=True,
          capture_output=True,
          text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
      )
      r = json.loads(out)
      growth[kind].append((r["peak_kib"] - r["base_kib"]) / 1024)
  print(f"{args.num_captions} distinct captions (each twice), dim {args.dim}, float16 vectors")
  for kind, values in growth.items():
    print(
      f"  {kind:5s} peak RSS above imports: min {min(values):8.1f} MiB  "
      f"median {statistics.median(values):8.1f} MiB"
    )
  ratio = statistics.median(growth["dict"]) / max(statistics.median(growth["table"]), 1e-9)
  print(f"  dict / table (medians): {ratio:.1f}x")


if __name__ == "__main__":
  main()
