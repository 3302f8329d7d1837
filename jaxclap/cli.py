"""How every jaxclap command line runs: quiet library logs, --help exits 0, and a user's
error reported as one `error: ...` line on stderr.

A base module (it imports nothing of jaxclap), so any layer's CLI may use it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from absl import app, flags, logging

# absl's help flags: they print the usage and exit 1; asked for, help is not an error.
_HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")


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


def run(main: Callable[[list[str]], int | None]) -> None:
  """`absl.app.run(main)` with library logs at WARNING; exits with main's value, 0 after --help."""
  asked_help = any(a.split("=")[0] in _HELP_FLAGS for a in sys.argv[1:])

  def body(argv: list[str]) -> None:
    # Libraries (Orbax, TFDS, grain) log hundreds of INFO lines; the user's console is for
    # progress, validation and results. --verbosity=0 (or higher) brings them back.
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    sys.exit(main(argv))

  try:
    app.run(body)
  except SystemExit as e:
    if asked_help and e.code == 1:
      raise SystemExit(0) from None
    raise
