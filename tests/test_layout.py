"""The package's import graph: layers import one way, no cycles, no hidden function-level imports.

Read from the source with `ast` (nothing is imported), so a new module or import that breaks
the layering fails here with the names to fix.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jaxclap"

# Layers, lowest first: a module may import its own layer or lower ones. Root modules are
# listed by name so that a new one has to be placed on purpose.
BASE = {
  "jaxclap.paths",
  "jaxclap.sharding",
  "jaxclap.losses",
  "jaxclap.layers",
  "jaxclap.metrics",
  "jaxclap.cli",
  "jaxclap.run_meta",
}
TOP_ROOT = {
  "jaxclap.restore",
  "jaxclap.inference",
  "jaxclap.convert",
  "jaxclap.convert_keys",
  "jaxclap.embed",
  "jaxclap.hear",
  "jaxclap.evaluate",
  "jaxclap.sequence",
  "jaxclap.main",
  "jaxclap.releases",
  "jaxclap.models_list",
  "jaxclap.onnx_export",
}
PACKAGE_LAYER = {
  "audio": 1,
  "text": 1,
  "models": 1,
  "score": 1,
  "data": 2,
  "train": 3,
  "eval": 4,
  "index": 4,
}
# eval/ and index/ sit with the top-level tools (restore, inference, convert), which they use.
# Within layer 1: text and audio stand on their own; models may use both.
SIDEWAYS_ALLOWED = {("models", "audio"), ("models", "text")}

# Imports allowed inside functions: optional dependencies only (each says why), and the
# package's lazy `jaxclap.load`, which keeps `import jaxclap.audio` from importing everything.
OPTIONAL = {
  "torch",
  "sentence_transformers",
  "huggingface_hub",
  "tensorboardX",
  "pyarrow",  # The "parquet" extra: embed --format=parquet.
  "matplotlib",  # The "plots" extra: eval/plots.py, train/eval_report.py.
  "transformers",
  "usearch",  # The "ann" extra: approximate search in jaxclap/index/ann.py.
}
LAZY = {
  ("jaxclap", "jaxclap.inference"),
  ("jaxclap", "jaxclap.releases"),
  ("jaxclap", "jaxclap.index.Index"),
  # sklearn (+ scipy) takes ~1.3 s to import; every jaxclap.main start imports plots, few
  # runs draw the t-SNE that needs it.
  ("jaxclap.eval.plots", "sklearn.manifold.TSNE"),
}


def _modules() -> dict[str, ast.Module]:
  out = {}
  for path in sorted(ROOT.rglob("*.py")):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = ast.parse(path.read_text(), str(path))
  return out


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
  """Fully qualified names an import statement brings in (`from a import b` gives a.b)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names]
  base = node.module or ""
  if node.level:
    pkg = module.split(".") if is_package else module.split(".")[:-1]
    pkg = pkg[: len(pkg) - node.level + 1]
    base = ".".join(pkg + ([base] if base else []))
  return [f"{base}.{a.name}" for a in node.names] + [base]


def _resolve(name: str, known: set[str]) -> str | None:
  """The jaxclap module a dotted name lives in (longest known prefix)."""
  parts = name.split(".")
  for i in range(len(parts), 0, -1):
    candidate = ".".join(parts[:i])
    if candidate in known:
      return candidate
  return None


def _imports(top_level_only: bool):
  """(module, imported jaxclap module, line, nested?) for every import of jaxclap code."""
  modules = _modules()
  known = set(modules)
  for module, tree in modules.items():
    is_package = module == "jaxclap" or (ROOT.parent / module.replace(".", "/")).is_dir()
    nested_ids = {
      id(n)
      for f in ast.walk(tree)
      if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
      for n in ast.walk(f)
    }
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      nested = id(node) in nested_ids
      if top_level_only and nested:
        continue
      for name in _targets(node, module, is_package):
        yield module, name, node.lineno, nested, known


def _layer(module: str) -> tuple[int, str]:
  if module in BASE:
    return 0, "base"
  if module in TOP_ROOT:
    return 4, "top"
  parts = module.split(".")
  if len(parts) >= 2 and parts[1] in PACKAGE_LAYER:
    return PACKAGE_LAYER[parts[1]], parts[1]
  raise AssertionError(f"{module}: not placed in a layer; add it to tests/test_layout.py")


def test_every_module_has_a_layer():
  for module in _modules():
    if module != "jaxclap":
      _layer(module)


def test_layers_import_one_way():
  bad = []
  for module, name, line, _, known in _imports(top_level_only=False):
    target = _resolve(name, known)
    if module == "jaxclap" or target is None or target == "jaxclap" or target == module:
      continue
    (lm, gm), (lt, gt) = _layer(module), _layer(target)
    if lt > lm or (lt == lm == 1 and gm != gt and (gm, gt) not in SIDEWAYS_ALLOWED):
      bad.append(f"{module}:{line} imports {target} ({gm} → {gt})")
  assert not bad, "imports against the layer order:\n" + "\n".join(sorted(set(bad)))


def test_no_import_cycle_between_packages():
  graph: dict[str, set[str]] = {}
  for module, name, _, _, known in _imports(top_level_only=False):
    target = _resolve(name, known)
    if module == "jaxclap" or target is None or target == "jaxclap":
      continue
    a, b = module.split(".")[1], target.split(".")[1]
    if a != b:
      graph.setdefault(a, set()).add(b)

  def reaches(start: str, goal: str, seen: set[str]) -> bool:
    for nxt in graph.get(start, ()):
      if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
        return True
    return False

  cycles = sorted(p for p in graph if reaches(p, p, {p}))
  assert not cycles, f"packages on an import cycle: {cycles}; graph: {graph}"


def test_function_level_imports_are_optional_dependencies_only():
  """Everything else is imported at the top of its module, where a reader looks."""
  found = set()
  for path in sorted(ROOT.rglob("*.py")):
    tree = ast.parse(path.read_text(), str(path))
    module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
    for f in ast.walk(tree):
      if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for node in ast.walk(f):
        if isinstance(node, ast.Import):
          found |= {(module, a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
          found |= {(module, f"{node.module}.{a.name}") for a in node.names}
  bad = sorted(
    f"{m}: {name}"
    for m, name in found
    if name.split(".")[0] not in OPTIONAL and (m, name) not in LAZY
  )
  assert not bad, "imports inside functions that belong at the top:\n" + "\n".join(bad)
  # The allowance is used (or it should go): the lazy `jaxclap.load` is still there.
  assert LAZY <= found


@pytest.mark.parametrize(
  "module,target,ok",
  [
    ("jaxclap.data.build", "jaxclap.train.loop", False),
    ("jaxclap.text.tower", "jaxclap.models.vit", False),
    ("jaxclap.models.clap", "jaxclap.text.tower", True),
    ("jaxclap.inference", "jaxclap.train.checkpoint", True),
  ],
)
def test_layer_rule_itself(module, target, ok):
  (lm, gm), (lt, gt) = _layer(module), _layer(target)
  allowed = not (lt > lm or (lt == lm == 1 and gm != gt and (gm, gt) not in SIDEWAYS_ALLOWED))
  assert allowed == ok


def test_module_names_are_unique_across_packages():
  """A name says one job: no two modules share a file name (data/build vs models/build,
  probe vs probes once made newcomers open the wrong one)."""
  seen: dict[str, list[str]] = {}
  for path in sorted(ROOT.rglob("*.py")):
    if path.name != "__init__.py":
      seen.setdefault(path.stem, []).append(str(path.relative_to(ROOT.parent)))
  assert not {k: v for k, v in seen.items() if len(v) > 1}
  near = {"probe", "probes"} & set(seen)
  assert len(near) < 2, near


# The public faces of the data libraries: `tensorflow_datasets` (as `tfds`, its `tfds.core`
# classes) and grain's top-level modules. Their internals move between releases.
_INTERNAL_IMPORT = re.compile(r"^(tensorflow_datasets\.|grain\.(_|python\._))")
_INTERNAL_ATTRIBUTE = re.compile(r"\btfds\.core\.[a-z_]+\.")  # A module inside tfds.core.


def test_no_internal_module_of_tfds_or_grain():
  found = []
  for module, tree in _modules().items():
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and not node.level:
        names = [node.module or ""]
      else:
        continue
      found += [f"{module}:{node.lineno} imports {n}" for n in names if _INTERNAL_IMPORT.match(n)]
    path = ROOT.parent / (module.replace(".", "/") + ".py")
    path = path if path.is_file() else path.with_suffix("") / "__init__.py"
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
      if _INTERNAL_ATTRIBUTE.search(line.split("#")[0]):
        found.append(f"{module}:{lineno} uses {line.strip()}")
  assert not found, found


@pytest.mark.parametrize(
  "line,internal",
  [
    ("from tensorflow_datasets.core import hashing", True),
    ("import grain._src.python.data_loader", True),
    ("import tensorflow_datasets as tfds", False),
    ("from grain.multiprocessing import SharedMemoryArray", False),
  ],
)
def test_internal_import_rule_itself(line, internal):
  node = ast.parse(line).body[0]
  name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
  assert bool(_INTERNAL_IMPORT.match(name)) == internal
  assert bool(_INTERNAL_ATTRIBUTE.search("tfds.core.registered.DatasetNotFoundError"))
  assert not _INTERNAL_ATTRIBUTE.search("tfds.core.DatasetNotFoundError")
