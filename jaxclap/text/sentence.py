"""Sentence embeddings for captions: a PyTorch-free JAX backend, optionally sentence-transformers.

The dataset builders call :func:`load_sentence_embedder` once and embed each distinct caption once
(`jaxclap.data.schema.embed_unique`); the vectors become the stage-1 distillation targets.
Models whose official users feed them captions in a particular way (NV-Embed-v2: EOS appended,
right padding, 32768 tokens) get that from :data:`RECIPES`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxclap.text import bert, pooling, tokenize
from jaxclap.text.registry import DEFAULT_TEXT_MODEL, resolve_text_model

_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
# Legacy boolean keys of 1_Pooling/config.json, in sentence-transformers' concatenation order.
_LEGACY_POOLING_KEYS = {
  "pooling_mode_cls_token": "cls",
  "pooling_mode_max_tokens": "max",
  "pooling_mode_mean_tokens": "mean",
  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
  "pooling_mode_weightedmean_tokens": "weightedmean",
  "pooling_mode_lasttoken": "lasttoken",
}
BACKENDS = ("auto", "jax", "st")


@dataclasses.dataclass(frozen=True)
class EmbeddingRecipe:
  """How captions are fed to a sentence-transformers model (the defaults: plain ``encode``)."""

  prompt: str = ""  # Passed as ``encode(prompt=...)``: an instruction; "" for none.
  append_eos: bool = False  # Append the tokenizer's ``eos_token`` text to every caption.
  padding_side: str | None = None  # Tokenizer padding side; None keeps the model's own.
  max_seq_length: int | None = None  # Truncation length in tokens; None keeps the model's own.
  normalize_embeddings: bool = False  # ``encode(normalize_embeddings=...)``.
  trust_remote_code: bool = False  # The model ships its own modelling code.


# Per-model recipes, keyed by the model's name (a hub id's last part, lower case); a model
# listed here runs on the sentence-transformers backend under backend='auto'.
RECIPES: dict[str, EmbeddingRecipe] = {
  # The M2D-CLAP 2025 captions (nttcslab/m2d clap/cache_captions.py → RuntimeM2D
  # .encode_clap_text → m2d/runtime_audio.py NVEmbedV2Encoder): max_seq_length = 32768,
  # tokenizer.padding_side = "right", eos_token appended to each caption, no instruction
  # (the model card's passage prefix is ""), encode() without normalize_embeddings (the
  # official line is commented out). The vectors are stored as float16 (our builder's default).
  "nv-embed-v2": EmbeddingRecipe(
    append_eos=True,
    padding_side="right",
    max_seq_length=32768,
    normalize_embeddings=False,
    trust_remote_code=True,
  ),
}


@dataclasses.dataclass(frozen=True)
class PoolingRecipe:
  """How the jax backend pools a BERT-family model, when its users differ from its folder."""

  pooling: tuple[str, ...] = ("mean",)  # pooling.MODES, concatenated in order.
  normalize: bool = False  # L2-normalise the pooled vector.
  max_seq_length: int | None = None  # Truncation length; None: the folder's own.


# By model name (a hub id's last part, lower case). GTE-base as the official M2D-CLAP 2024
# runtime feeds it (examples/portable_m2d.py GTETextEncoder): masked mean of the last hidden
# states, no normalisation, truncation at 512 tokens.
JAX_RECIPES: dict[str, PoolingRecipe] = {
  "gte-base": PoolingRecipe(pooling=("mean",), normalize=False, max_seq_length=512),
}


@runtime_checkable
class SentenceEmbedder(Protocol):
  """Maps captions to fixed-size float32 vectors."""

  name: str  # The text_model value; stored in the dataset metadata.
  dim: int

  def embed(
    self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False
  ) -> np.ndarray:
    """Returns float32 ``[len(texts), dim]``."""
    ...


def _read_json(path: Path) -> dict[str, Any] | list[Any]:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None


@dataclasses.dataclass(frozen=True)
class SentencePipeline:
  """What a sentence-transformers folder asks for around its transformer."""

  transformer_dir: Path
  max_seq_length: int | None  # From sentence_bert_config.json; None: the tokenizer's own.
  do_lower_case: bool
  pooling: tuple[str, ...]
  normalize: bool

  @classmethod
  def from_folder(cls, folder: Path) -> SentencePipeline:
    """Reads ``modules.json`` and friends; a plain HF folder: mean pooling, no normalisation."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
      return cls(folder, None, False, ("mean",), False)
    transformer_dir, pooling, normalize = None, None, False
    for module in _read_json(modules_file):
      kind, path = module.get("type", ""), folder / module.get("path", "")
      if kind.endswith(".Transformer") and transformer_dir is None:
        transformer_dir = path
      elif kind.endswith(".Pooling") and pooling is None:
        pooling = _pooling_modes(path / "config.json")
      elif kind.endswith(".Normalize"):
        normalize = True
      else:
        raise ValueError(
          f"{modules_file}: module {kind!r} is not supported by the jax backend; use backend='st'"
        )
    if transformer_dir is None:
      raise ValueError(f"{modules_file} lists no {_ST_TRANSFORMER} module")
    st_config = transformer_dir / "sentence_bert_config.json"
    st = _read_json(st_config) if st_config.is_file() else {}
    return cls(
      transformer_dir,
      st.get("max_seq_length"),
      bool(st.get("do_lower_case", False)),
      pooling or ("mean",),
      normalize,
    )


def _pooling_modes(path: Path) -> tuple[str, ...]:
  """Pooling modes from ``1_Pooling/config.json`` (new ``pooling_mode`` or legacy boolean keys)."""
  raw = _read_json(path)
  if "pooling_mode" in raw:
    mode = raw["pooling_mode"]
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
  else:
    modes = tuple(m for key, m in _LEGACY_POOLING_KEYS.items() if raw.get(key))
  unsupported = [m for m in modes if m not in pooling.MODES]
  if not modes or unsupported:
    raise ValueError(
      f"{path}: pooling {list(modes)} is not supported by the jax backend "
      f"(supported: {list(pooling.MODES)}); use backend='st'"
    )
  return modes


def _model_names(text_model: str, folder: Path | None) -> list[str]:
  """Lower-case names a model goes by: the value's last part, its folder's and config's names."""
  names = [Path(str(text_model).rstrip("/")).name]
  if folder is not None:
    names.append(Path(folder).name)
    config_file = Path(folder) / "config.json"
    config = _read_json(config_file) if config_file.is_file() else {}
    if isinstance(config, dict) and isinstance(config.get("_name_or_path"), str):
      names.append(Path(config["_name_or_path"].rstrip("/")).name)
  return [n.lower() for n in names if n]


def recipe_for(text_model: str, folder: str | Path | None = None) -> EmbeddingRecipe | None:
  """The :data:`RECIPES` entry matching ``text_model`` (or its folder's config), if any."""
  for name in _model_names(text_model, None if folder is None else Path(folder)):
    if name in RECIPES:
      return RECIPES[name]
  return None


class JaxSentenceEmbedder:
  """BERT-family sentence-transformers folder run in Flax; no PyTorch needed."""

  def __init__(
    self,
    folder: str | Path,
    *,
    name: str | None = None,
    min_bucket: int = 16,
    recipe: PoolingRecipe | None = None,
  ):
    folder = Path(folder)
    self.name = name or str(folder)
    pipe = SentencePipeline.from_folder(folder)
    recipe = recipe or next(
      (JAX_RECIPES[n] for n in _model_names(self.name, folder) if n in JAX_RECIPES), None
    )
    if recipe is not None:  # The model's official users pool it their own way.
      pipe = dataclasses.replace(
        pipe,
        pooling=recipe.pooling,
        normalize=recipe.normalize,
        max_seq_length=recipe.max_seq_length or pipe.max_seq_length,
      )
    self.pipeline = pipe
    self.model, self.params = bert.load_bert(pipe.transformer_dir, add_pooling_layer=False)
    max_len = pipe.max_seq_length or self._tokenizer_max_length(pipe.transformer_dir)
    self.max_seq_length = min(max_len, self.model.config.max_position_embeddings)
    self.tokenizer = tokenize.HFTokenizer(
      pipe.transformer_dir, self.max_seq_length, pipe.do_lower_case, min_bucket
    )
    self.buckets = list(self.tokenizer.buckets)
    self.dim = self.model.config.hidden_size * len(pipe.pooling)
    self._forward = jax.jit(
      functools.partial(
        _embed_batch, model=self.model, pooling_modes=pipe.pooling, normalize=pipe.normalize
      )
    )

  @staticmethod
  def _tokenizer_max_length(folder: Path) -> int:
    """HF's ``model_max_length`` when sentence_bert_config.json gives none (as ST does)."""
    config = folder / "tokenizer_config.json"
    value = _read_json(config).get("model_max_length") if config.is_file() else None
    return int(value) if isinstance(value, (int, float)) and value < 1e6 else 512

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids with special tokens, truncated to ``max_seq_length``."""
    return self.tokenizer.ids(texts)

  def embed(
    self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False
  ) -> np.ndarray:
    """Embeds in batches padded to each caption's own length bucket (batch-mates add no padding)."""
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = self.tokenize(texts)
    out = np.zeros((len(ids), self.dim), np.float32)
    bucket_of = np.searchsorted(self.buckets, [len(x) for x in ids])
    jobs = []
    for b, length in enumerate(self.buckets):
      rows = np.flatnonzero(bucket_of == b)
      jobs += [(length, rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
    bar = tqdm(total=len(ids), desc=f"embed {self.name}", unit="caption", disable=not progress)
    for length, rows in jobs:
      # Shapes come from a small set (bucket x power-of-two rows), so few compilations; a
      # caption's vector changes with its batch only by matmul blocking (~1e-7).
      num_rows = min(batch_size, 1 << (len(rows) - 1).bit_length())
      input_ids = np.zeros((num_rows, length), np.int32)
      mask = np.zeros((num_rows, length), np.int32)
      for r, i in enumerate(rows):
        input_ids[r, : len(ids[i])] = ids[i]
        mask[r, : len(ids[i])] = 1
      mask[len(rows) :, 0] = 1  # Filler rows attend to one token, keeping them finite.
      out[rows] = np.asarray(self._forward(self.params, input_ids, mask))[: len(rows)]
      bar.update(len(rows))
    bar.close()
    return out


def _embed_batch(
  params: Any,
  input_ids: jax.Array,
  mask: jax.Array,
  *,
  model: bert.BertModel,
  pooling_modes: tuple[str, ...],
  normalize: bool,
) -> jax.Array:
  """Encoder, pooling and optional L2 normalisation, as sentence-transformers composes them."""
  hidden = model.apply({"params": params}, input_ids, mask)
  x = pooling.pool(hidden, mask, pooling_modes)
  if normalize:
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  return x.astype(jnp.float32)


class STSentenceEmbedder:
  """Any sentence-transformers model (NV-Embed-v2, GTE, Qwen embedders); needs the ``[st]`` extra.

  ``recipe`` says how captions are fed (prompt, EOS, padding side, length, normalisation);
  None looks it up in :data:`RECIPES` by name, and a model without an entry gets plain ``encode``.
  """

  def __init__(
    self,
    text_model: str,
    *,
    name: str | None = None,
    device: str | None = None,
    recipe: EmbeddingRecipe | None = None,
    trust_remote_code: bool | None = None,
    **model_kwargs: Any,
  ):
    try:
      from sentence_transformers import SentenceTransformer
    except ImportError as e:
      raise ImportError(
        "backend='st' needs PyTorch and sentence-transformers: pip install 'jaxclap[st]'"
      ) from e
    self.name = name or str(text_model)
    folder = resolve_text_model(text_model, backend="st")
    self.recipe = recipe or recipe_for(text_model, folder) or EmbeddingRecipe()
    if self.recipe.padding_side not in (None, "left", "right"):
      raise ValueError(
        f"{self.name}: recipe padding_side={self.recipe.padding_side!r}; "
        "expected 'left', 'right' or None"
      )
    if trust_remote_code is None:
      trust_remote_code = self.recipe.trust_remote_code
    self.model = SentenceTransformer(
      str(folder), device=device, trust_remote_code=trust_remote_code, **model_kwargs
    )
    if self.recipe.max_seq_length:
      self.model.max_seq_length = int(self.recipe.max_seq_length)
    if self.recipe.padding_side:
      self.model.tokenizer.padding_side = self.recipe.padding_side
    self._eos = ""
    if self.recipe.append_eos:
      self._eos = getattr(self.model.tokenizer, "eos_token", None) or ""
      if not self._eos:
        raise ValueError(
          f"{self.name}: its recipe appends the EOS token, but the tokenizer "
          f"({folder}) defines no eos_token"
        )
    # sentence-transformers 6 renamed the getter; keep the old one for older releases.
    get_dim = getattr(self.model, "get_embedding_dimension", None)
    dim = (get_dim or self.model.get_sentence_embedding_dimension)()
    self.dim = int(dim) if dim else int(self.embed(["probe"]).shape[-1])

  def prepare(self, texts: Sequence[str]) -> list[str]:
    """The strings handed to ``encode``: each caption, then the EOS text when the recipe says so."""
    return [t + self._eos for t in tokenize.check_captions(texts)]

  def embed(
    self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False
  ) -> np.ndarray:
    """sentence-transformers ``encode`` of the prepared captions as float32 ``[N, dim]``."""
    texts = self.prepare(texts)
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    vectors = self.model.encode(
      texts,
      batch_size=batch_size,
      show_progress_bar=progress,
      convert_to_numpy=True,
      prompt=self.recipe.prompt or None,
      normalize_embeddings=self.recipe.normalize_embeddings,
    )
    return np.asarray(vectors, dtype=np.float32)


def load_sentence_embedder(
  text_model: str = DEFAULT_TEXT_MODEL, backend: str = "auto", **kwargs: Any
) -> SentenceEmbedder:
  """``'jax'`` for BERT-family folders (no PyTorch); ``'st'`` for sentence-transformers.

  ``'auto'`` picks 'st' for a model with a :data:`RECIPES` entry (NV-Embed-v2), else 'jax'.
  """
  if backend not in BACKENDS:
    raise ValueError(f"backend={backend!r}; expected one of {list(BACKENDS)}")
  if backend == "auto":
    recipe = recipe_for(text_model)  # By name first: a hub id needs no download here.
    if recipe is None:
      recipe = recipe_for(text_model, resolve_text_model(text_model))
    backend = "st" if recipe is not None else "jax"
  if backend == "st":
    return STSentenceEmbedder(text_model, **kwargs)
  folder = resolve_text_model(text_model)
  transformer_dir = SentencePipeline.from_folder(folder).transformer_dir
  config_file = transformer_dir / "config.json"
  config = _read_json(config_file) if config_file.is_file() else {}
  if config.get("model_type") != "bert":
    raise ValueError(
      f"text_model={text_model!r} ({transformer_dir}) has model_type="
      f"{config.get('model_type')!r}; the jax backend runs BERT models only. "
      "Use backend='st' (pip install 'jaxclap[st]')."
    )
  return JaxSentenceEmbedder(folder, name=str(text_model), **kwargs)
