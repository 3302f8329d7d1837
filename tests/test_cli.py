"""The shared CLI error report: one `error:` line on stderr and the CLI's exit code."""

import subprocess
import sys
from pathlib import Path

import pytest
from absl import logging

from jaxclap import cli


def test_report_prints_one_line_and_returns_the_code(capsys):
  assert cli.report("bad flag") == 2
  assert cli.report("bad data", code=1) == 1
  assert capsys.readouterr().err == "error: bad flag\nerror: bad data\n"


def test_exit_on_listed_errors_only(capsys):
  with pytest.raises(SystemExit) as e:
    with cli.exit_on(ValueError, FileNotFoundError):
      raise FileNotFoundError("no such run")
  assert e.value.code == 2 and capsys.readouterr().err == "error: no such run\n"
  with pytest.raises(KeyError):  # Anything else is a bug: its traceback stays.
    with cli.exit_on(ValueError):
      raise KeyError("x")


def test_exit_on_prefix_type_and_code(capsys):
  with pytest.raises(SystemExit) as e:
    with cli.exit_on(Exception, code=1, prefix="building 'demo' failed: ", name_type=True):
      raise RuntimeError("disk full")
  assert e.value.code == 1
  assert capsys.readouterr().err == "error: building 'demo' failed: RuntimeError: disk full\n"


REPO = Path(__file__).resolve().parent.parent


def _help(module: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
  )


def test_main_help_lists_every_config_and_exits_zero():
  proc = _help("jaxclap.main")
  assert proc.returncode == 0, proc.stderr[-2000:]
  for config in sorted((REPO / "configs").glob("*.py")):
    if config.name != "__init__.py":
      assert f"configs/{config.name}" in proc.stdout, config.name
  for override in ("--config.init.workdir", "--config.train.global_batch", "--verbosity"):
    assert override in proc.stdout


def test_build_help_shows_the_folder_layouts_and_exits_zero():
  proc = _help("jaxclap.data.build")
  assert proc.returncode == 0, proc.stderr[-2000:]
  for layout in ("Captioned layouts", "labels.csv", "esc50.csv", "named_folder", "--manual_dir"):
    assert layout in proc.stdout, layout
  corpora = ("clotho_captions_", "json_files", "balanced_train_segments.csv", "vggsound.csv")
  for layout in (*corpora, "train.csv, val.csv", "--captions", "--sample_rate"):
    assert layout in proc.stdout, layout  # The corpora as distributed (issue 18).


def test_run_exits_with_mains_value(monkeypatch):
  monkeypatch.setattr(sys, "argv", ["prog"])
  before = logging.get_verbosity()
  try:
    with pytest.raises(SystemExit) as e:
      cli.run(lambda argv: 3)
    assert e.value.code == 3
    assert logging.get_verbosity() == logging.WARNING  # Library INFO logs hidden.
  finally:
    logging.set_verbosity(before)


def test_an_installed_libtpu_without_chips_leaves_jax_on_the_cpu():
  """libtpu (the tpu extra) on a laptop: commands run on the CPU instead of JAX trying the
  TPU, whose library prints errors on every start; a TPU VM, a GPU plugin or JAX_PLATFORMS
  keep JAX's own choice."""
  only = lambda *names: lambda module: module in names
  choose = cli.platforms_without_absent_tpu
  assert choose({}, only("libtpu"), lambda: False) == "cpu"
  assert choose({}, only("libtpu"), lambda: True) is None  # A TPU VM.
  assert choose({}, only(), lambda: False) is None  # No libtpu.
  assert choose({}, only("libtpu", "jax_cuda12_plugin"), lambda: False) is None
  assert choose({"JAX_PLATFORMS": "tpu"}, only("libtpu"), lambda: False) is None
