"""The shared CLI error report: one `error:` line on stderr and the CLI's exit code."""

import pytest

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
