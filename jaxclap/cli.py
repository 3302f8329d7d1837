"""How every jaxclap command line reports a user's error: one `error: ...` line on stderr.

A base module (it imports nothing of jaxclap), so any layer's CLI may use it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


def report(message: str, code: int = 2) -> int:
  """Prints `error: message` on stderr; returns `code`, for a CLI body to return."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  return code


@contextlib.contextmanager
def exit_on(
  *errors: type[BaseException], code: int = 2, prefix: str = "", name_type: bool = False
) -> Iterator[None]:
  """Turns `errors` raised inside into one reported line and `SystemExit(code)`.

  The line is `error: {prefix}{e}`, or `error: {prefix}{type}: {e}` with `name_type`.
  A traceback is kept for everything else: those are bugs, not the user's to fix.
  """
  try:
    yield
  except errors as e:
    detail = f"{type(e).__name__}: {e}" if name_type else str(e)
    sys.exit(report(prefix + detail, code))
