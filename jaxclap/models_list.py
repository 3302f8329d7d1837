"""Prints the official releases `jaxclap.load(name)` accepts: `python -m jaxclap.models_list`."""

from __future__ import annotations

import sys

from jaxclap import releases

_COLUMNS = ("name", "family", "input", "patch", "rate", "text", "sha256")


def format_table(rows: list[dict[str, str]], columns: tuple[str, ...] = _COLUMNS) -> str:
  """Plain-text table with one header line, columns padded to their widest cell."""
  widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
  lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
  lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
  return "\n".join(lines)


def main() -> int:
  """Prints the table, then where downloads are cached."""
  rows = [releases.describe(r) for r in releases.table().values()]
  print(format_table(rows))
  print(f"\ncache: {releases.cache_dir()}  (set JAXCLAP_CACHE to move it)")
  print("load: jaxclap.load('<name>')  URLs: jaxclap.list_models()['<name>'].url")
  return 0


if __name__ == "__main__":
  sys.exit(main())
