"""`python -m jaxclap.index build|search|serve`: index a folder, query it, or serve its page.

    python -m jaxclap.index build --model WORKDIR_OR_RELEASE --audio DIR --index OUT [--ann f16]
    python -m jaxclap.index search --index OUT "a dog barking" [--k 10] [--approximate] [--json]
    python -m jaxclap.index search --index OUT --like clip.wav
    python -m jaxclap.index serve --index OUT [--host 127.0.0.1] [--port 8765] [--labels dog,rain]

A user's error (a missing folder, another model's index, a bad query) is one `error: ...`
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax

from jaxclap import cli
from jaxclap.index import ann as ann_lib
from jaxclap.index import search, serve

# BadIndexError and AudioDecodeError are ValueErrors; MissingExtraError: --ann without usearch.
_USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, ann_lib.MissingExtraError)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m jaxclap.index", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  b = sub.add_parser("build", help="index a folder's new and changed audio files")
  b.add_argument("--model", required=True, help="jaxclap workdir or release name")
  b.add_argument("--audio", required=True, help="folder of audio files (searched recursively)")
  b.add_argument("--index", required=True, help="index folder (made if new)")
  b.add_argument("--ann", choices=ann_lib.DTYPES, help="also build the approximate graph")
  b.add_argument("--min-recall", type=float, default=0.9, help="graph's recall@10 floor")
  b.add_argument("--force", action="store_true", help="keep a graph under --min-recall")
  b.add_argument("--commit-every", type=int, default=32, help="files per committed batch")
  b.add_argument("--batch-size", type=int, default=16, help="encoder chunks per batch")
  b.add_argument("--quiet", action="store_true", help="no progress bar (files, ETA) on stderr")
  s = sub.add_parser("search", help="the files that best match a text or an example clip")
  s.add_argument("--index", required=True)
  s.add_argument("query", nargs="?", help="text query")
  s.add_argument("--like", help="an example audio file instead of a text")
  s.add_argument("--k", type=int, default=10, help="files to return")
  s.add_argument("--approximate", action="store_true", help="use the --ann graph")
  s.add_argument("--model", help="the index's model, if it moved")
  s.add_argument("--json", action="store_true", help="print the hits as JSON")
  v = sub.add_parser("serve", help="a local search page for the index")
  v.add_argument("--index", required=True)
  v.add_argument("--host", default="127.0.0.1", help="address to listen on (local by default)")
  v.add_argument("--port", type=int, default=8765)
  v.add_argument("--labels", default="", help="comma-separated zero-shot labels for uploads")
  v.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted")
  v.add_argument("--model", help="the index's model, if it moved")
  return p


def _print_hits(hits: list[search.Hit]) -> None:
  """One line per hit: rank, score, best window and path."""
  for rank, h in enumerate(hits, 1):
    window = f"{h.start_s:.2f}-{h.end_s:.2f}s"
    print(f"{rank:3d}  {h.score:.4f}  {window:>17}  {h.path}")


def main(argv: list[str]) -> int:
  """CLI body; returns the exit code."""
  args = _parser().parse_args(argv)
  platforms = cli.platforms_without_absent_tpu()
  if platforms:
    jax.config.update("jax_platforms", platforms)
  with cli.exit_on(*_USER_ERRORS):
    if args.command == "build":
      index = search.Index.build(
        args.model,
        args.audio,
        args.index,
        ann=args.ann,
        min_recall=args.min_recall,
        force=args.force,
        commit_every=args.commit_every,
        batch_size=args.batch_size,
        progress=not args.quiet,
      )
      r = index.report
      print(
        f"embedded {len(r.embedded)} files ({r.audio_seconds:.1f} s of audio) in "
        f"{r.seconds:.1f} s; unchanged {r.unchanged}, removed {len(r.removed)}, bad "
        f"{len(r.bad)}; the index holds {r.files} files ({args.index}/{search.REPORT})"
      )
      for bad in r.bad:
        print(f"bad file: {bad['path']}: {bad['error']}", file=sys.stderr)
      return 0
    if args.command == "search":
      if (args.query is None) == (args.like is None):
        raise ValueError("give a text query or --like FILE (one of them)")
      index = search.Index(args.index, args.model)
      hits = index.search(args.query, like=args.like, k=args.k, approximate=args.approximate)
      if args.json:
        print(json.dumps([h.to_json() for h in hits], indent=1))
      else:
        _print_hits(hits)
      return 0
    index = search.Index(args.index, args.model)
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    serve.serve(index, args.host, args.port, labels=labels, max_upload_mb=args.max_upload_mb)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
