"""The core install: one-feature packages live in extras, and inference runs without them."""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxclap.eval import plots
from jaxclap.train import eval_report, evaluators

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("pyarrow", "matplotlib", "torch")  # Each belongs to an extra, never to the core.

# A fresh interpreter where importing any OPTIONAL package fails, as if it were not installed.
_BLOCKED_RUN = """
import importlib.abc, json, sys
import numpy as np

BLOCKED = set(sys.argv[2].split(","))


class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"{name} is blocked (not installed)")
    return None


sys.meta_path.insert(0, Block())
import jaxclap
import jaxclap.embed, jaxclap.evaluate, jaxclap.sequence, jaxclap.train.loop  # CLIs import too.

model = jaxclap.load(sys.argv[1], progress=False)
rng = np.random.default_rng(0)
emb = model.audio_embedding(0.1 * rng.standard_normal((2, 16000)).astype(np.float32),
                            sample_rate=16000)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"shape": list(emb.shape), "norms": np.linalg.norm(emb, axis=-1).tolist(),
                  "loaded": loaded}))
"""


def _requirements(text: str) -> set[str]:
  """Distribution names of a setup.cfg requirement list."""
  return {re.split(r"[<>=!~\[; ]", line.strip())[0].lower() for line in text.split("\n") if line}


def _setup_cfg() -> configparser.ConfigParser:
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  return cfg


def test_one_feature_packages_are_extras():
  cfg = _setup_cfg()
  core = _requirements(cfg["options"]["install_requires"])
  extras = {k: _requirements(v) for k, v in cfg["options.extras_require"].items()}
  assert not core & set(OPTIONAL), core & set(OPTIONAL)
  assert {"librosa", "tensorflow-datasets", "grain", "orbax-checkpoint"} <= core  # Training.
  assert extras["plots"] == {"matplotlib", "scikit-learn"}  # scikit-learn: the t-SNE maps.
  assert {"matplotlib", "scikit-learn", "torch"} <= extras["test"]
  assert "scikit-learn" not in core and "array-record" not in core  # TFDS brings array-record.
  # The parquet extra is empty (kept so `jaxclap[parquet]` installs): TFDS requires pyarrow.
  assert extras["parquet"] == set()
  tfds_needs = _requirements("\n".join(importlib.metadata.requires("tensorflow-datasets")))
  assert {"pyarrow", "array_record"} <= tfds_needs, tfds_needs


def test_load_and_embed_without_optional_packages(stage1_workdir):
  done = subprocess.run(
    [sys.executable, "-c", _BLOCKED_RUN, stage1_workdir, ",".join(OPTIONAL)],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  got = json.loads(done.stdout.strip().splitlines()[-1])
  assert got["shape"][0] == 2 and got["loaded"] == []
  assert got["norms"] == pytest.approx([1.0, 1.0], abs=1e-4)


def test_plots_without_matplotlib_say_which_extra(monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` fails.
  monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
  with pytest.raises(ImportError, match=r"pip install 'jaxclap\[plots\]'"):
    plots.new_figure((2, 2))
  with caplog.at_level("WARNING"):
    assert eval_report.plot_curves("unused.png", [], [], {}) is None
  assert "jaxclap[plots]" in caplog.text


def test_learning_curve_with_matplotlib(tmp_path):
  spec = evaluators.Spec("zs", "zero_shot", "jaxclap_demo", "test", 10)
  history = [{"name": "zs", "step": s, "accuracy": 0.1 * s} for s in (10, 20)]
  baselines = {"zs": {"logmel": {"accuracy": 0.08}}}
  path = eval_report.plot_curves(str(tmp_path / "c.png"), [spec], history, baselines)
  assert path is not None and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
