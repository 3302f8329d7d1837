"""How every jaxclap command line runs: quiet library logs, --help exits 0, and a user's
error reported as one `error: ...` line on stderr.

A base module (it imports nothing of jaxclap), so any layer's CLI may use it. It also keeps
JAX off an absent TPU where libtpu is installed (`platforms_without_absent_tpu`).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator

import jax
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


# Python packages that give JAX a GPU backend: with one, the platform choice stays JAX's.
_GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "jax_rocm_plugin")


def _installed(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def platforms_without_absent_tpu(
  environ: dict[str, str] | None = None,
  installed: Callable[[str], bool] = _installed,
  tpu_chips: Callable[[], bool] = lambda: bool(glob.glob("/dev/accel*") + glob.glob("/dev/vfio/*")),
) -> str | None:
  """ "cpu" where libtpu is installed (the `tpu` extra, for --compile_for) on a machine with
  no TPU chips and no GPU plugin, else None (JAX's own choice; JAX_PLATFORMS always wins).

  JAX tries the TPU first once libtpu is there, and off a TPU VM libtpu prints errors about
  its accelerator type and hostnames on every start.
  """
  environ = os.environ if environ is None else environ
  if environ.get("JAX_PLATFORMS") or not installed("libtpu") or tpu_chips():
    return None
  return None if any(installed(m) for m in _GPU_PLUGINS) else "cpu"


def run(main: Callable[[list[str]], int | None]) -> None:
  """`absl.app.run(main)` with library logs at WARNING; exits with main's value, 0 after --help."""
  asked_help = any(a.split("=")[0] in _HELP_FLAGS for a in sys.argv[1:])

  def body(argv: list[str]) -> None:
    # Libraries (Orbax, TFDS, grain) log hundreds of INFO lines; the user's console is for
    # progress, validation and results. --verbosity=0 (or higher) brings them back.
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    platforms = platforms_without_absent_tpu()
    if platforms:
      jax.config.update("jax_platforms", platforms)
    sys.exit(main(argv))

  try:
    app.run(body)
  except SystemExit as e:
    if asked_help and e.code == 1:
      raise SystemExit(0) from None
    raise
