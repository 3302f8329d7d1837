"""Stage-2 text towers: a pretrained BERT-family encoder or a small from-scratch transformer.

Both map padded token ids ``[B, L]`` to one un-normalised vector per text ``[B, out_dim]``:
encoder → pooling ("cls": the first token, i.e. BERT's [CLS] or SentencePiece's BOS; "mean":
the average over non-padding tokens) → a Linear ``proj`` only when the encoder width differs
from the CLAP width (MiniLM 384 → 768; the paper's BERT-base needs none).

`build_text_tower` pairs a tower with its host-side tokenizer and an ``init_params`` that loads
the pretrained BERT weights. The tokenizer truncates at ``max_len`` and pads each batch only to
the smallest length bucket (powers of two from 16, then ``max_len``) that holds its longest
caption: the official stage 2 pads BERT input to the batch's longest caption, untruncated up to
BERT's 512 positions, and buckets keep the shapes (so the jitted steps' compilations) few.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxclap import layers
from jaxclap.text import bert, pooling, registry, tokenize
from jaxclap.text.assets import TextAssets
from jaxclap.text.sentence import SentencePipeline

Dtype = Any
PyTree = Any
KINDS = ("bert", "scratch")
POOLINGS = ("cls", "mean")


class ScratchTextEncoder(nn.Module):
  """Learned token + position embeddings, pre-norm masked blocks, final LayerNorm → [B, L, D].

  No dropout: it is meant for small, short runs without a pretrained text model.
  """

  vocab_size: int
  width: int
  depth: int
  heads: int
  max_len: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    length = input_ids.shape[-1]
    if length > self.max_len:
      raise ValueError(f"ScratchTextEncoder: sequence length {length} > max_len={self.max_len}")
    init = nn.initializers.normal(0.02)
    x = nn.Embed(
      self.vocab_size,
      self.width,
      dtype=self.dtype,
      name="token_embed",
      embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")),
    )(input_ids)
    pos = self.param(
      "pos_embed",
      nn.with_logical_partitioning(init, (None, "embed")),
      (self.max_len, self.width),
      jnp.float32,
    )
    x = x + pos[None, :length].astype(self.dtype)
    for i in range(self.depth):
      x = layers.Block(self.heads, self.mlp_ratio, 1e-6, self.dtype, name=f"block_{i}")(
        x, attention_mask
      )
    return layers.layer_norm(1e-6, self.dtype, "norm")(x)


class TextTower(nn.Module):
  """Token ids → pooled (optionally projected) text embedding ``[B, out_dim]``, not normalised.

  "bert" wraps `bert.BertModel` as submodule ``bert`` (params named as `bert.load_bert` gives);
  "scratch" is a `ScratchTextEncoder` named ``encoder`` whose [CLS] is the tokenizer's BOS.
  """

  kind: str = "bert"
  bert_config: bert.BertConfig | None = None
  vocab_size: int = 1000  # Scratch sizes (ignored for "bert").
  width: int = 256
  depth: int = 4
  heads: int = 4
  max_len: int = 512  # Scratch position table (the longest bucket).
  pooling: str = "cls"
  out_dim: int = 768
  dtype: Dtype = jnp.float32

  @property
  def tower_width(self) -> int:
    """Width of the encoder's hidden states (before ``proj``)."""
    if self.kind == "bert":
      if self.bert_config is None:
        raise ValueError("TextTower(kind='bert') needs bert_config")
      return self.bert_config.hidden_size
    return self.width

  @nn.compact
  def __call__(
    self, input_ids: jax.Array, attention_mask: jax.Array, deterministic: bool = True
  ) -> jax.Array:
    if self.kind == "bert":
      hidden = bert.BertModel(self.bert_config, self.dtype, name="bert")(
        input_ids, attention_mask, deterministic=deterministic
      )
    elif self.kind == "scratch":
      hidden = ScratchTextEncoder(
        self.vocab_size,
        self.width,
        self.depth,
        self.heads,
        self.max_len,
        dtype=self.dtype,
        name="encoder",
      )(input_ids, attention_mask)
    else:
      raise ValueError(f"TextTower kind={self.kind!r}; expected one of {KINDS}")
    x = pooling.pool(hidden.astype(jnp.float32), attention_mask, self.pooling)
    if self.tower_width != self.out_dim:
      x = layers.dense(self.out_dim, (None, "embed"), self.dtype, "proj")(x.astype(self.dtype))
    return x.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Construction from a config.


def _get(cfg: Mapping[str, Any] | Any, key: str, default: Any = None) -> Any:
  """``cfg[key]`` for a dict or ConfigDict, ``default`` when absent or None."""
  value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  return default if value is None else value


def _load_pretrained(boxed: PyTree, pretrained: PyTree, source: str) -> PyTree:
  """Puts ``pretrained`` arrays into the (possibly boxed) fresh tree, checking names and shapes."""
  fresh = nn.unbox(boxed)
  if jax.tree.structure(fresh) != jax.tree.structure(pretrained):
    raise ValueError(f"{source}: pretrained BERT parameter names differ from the tower's")

  def put(box: Any, value: Any) -> Any:
    shape = np.shape(box.unbox() if isinstance(box, nn.meta.AxisMetadata) else box)
    if tuple(shape) != tuple(np.shape(value)):
      raise ValueError(f"{source}: pretrained shape {np.shape(value)} != tower shape {shape}")
    value = jnp.asarray(value, jnp.float32)
    return box.replace_boxed(value) if isinstance(box, nn.meta.AxisMetadata) else value

  return jax.tree.map(put, boxed, pretrained, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def build_text_tower(
  text_cfg: Mapping[str, Any] | Any,
  *,
  out_dim: int,
  dtype: Dtype = jnp.float32,
  assets: TextAssets | None = None,
) -> tuple[
  TextTower, Callable[[Sequence[str]], dict[str, np.ndarray]], Callable[[jax.Array], PyTree]
]:
  """``(tower, tokenizer, init_params)`` from a text config (dict or ConfigDict).

  Fields: ``kind`` ("bert" | "scratch"), ``pooling`` ("cls" | "mean"), ``max_len`` (truncation
  length and largest bucket); for "bert" ``model`` (folder, installed package or hub id, as
  `resolve_text_model`); for "scratch" ``spm_model`` (a `jaxclap.text.spm` .model),
  ``vocab_size`` (0: the model's), ``width``, ``depth``, ``heads``. ``tokenizer(texts)`` gives
  numpy int32 ``input_ids`` and ``attention_mask`` of shape ``[N, L]``, L the smallest of
  ``tokenizer.buckets`` that holds the longest caption (``tokenizer(texts, length=L)`` forces one).

  ``init_params(rng)`` returns the tower's ``params`` boxed in ``nn.Partitioned`` (logical axis
  names; ``nn.unbox`` for plain arrays). For "bert" the ``bert`` subtree holds the pretrained
  weights (closed over as constants, so ``jax.eval_shape`` and ``jit`` work) and only ``proj``
  is fresh; for "scratch" everything is fresh. With ``assets`` (a restored checkpoint's) the
  architecture and tokenizer come from them, no folder is read and everything is fresh: the
  checkpoint holds the trained weights.
  """
  kind = _get(text_cfg, "kind", "bert")
  pooling = _get(text_cfg, "pooling", "cls")
  max_len = int(_get(text_cfg, "max_len", 512))
  if kind not in KINDS:
    raise ValueError(f"text.kind={kind!r}; expected one of {KINDS}")
  if pooling not in POOLINGS:
    raise ValueError(f"text.pooling={pooling!r}; expected one of {POOLINGS}")
  if max_len < 3:
    raise ValueError(f"text.max_len={max_len} is too short; it must be at least 3")

  pretrained, source = None, ""
  if kind == "bert":
    if assets is not None:
      bert_config, source = assets.bert(), "the checkpoint's text tower"
      tokenizer = assets.tokenizer(max_len)
    else:
      model_name = _get(text_cfg, "model", registry.DEFAULT_TEXT_MODEL)
      pipe = SentencePipeline.from_folder(registry.resolve_text_model(model_name))
      model, pretrained = bert.load_bert(pipe.transformer_dir, dtype=dtype, add_pooling_layer=False)
      bert_config, source = model.config, f"text.model={model_name!r} ({pipe.transformer_dir})"
      tokenizer = tokenize.HFTokenizer(pipe.transformer_dir, max_len, pipe.do_lower_case)
    limit = bert_config.max_position_embeddings
    if max_len > limit:
      raise ValueError(f"text.max_len={max_len} exceeds {source} max_position_embeddings={limit}")
    tower = TextTower(
      kind="bert",
      bert_config=bert_config,
      max_len=max_len,
      pooling=pooling,
      out_dim=out_dim,
      dtype=dtype,
    )
  else:
    spm_model = "the checkpoint's model" if assets is not None else _get(text_cfg, "spm_model")
    if not spm_model:
      raise ValueError(
        "text.kind='scratch' needs text.spm_model "
        "(train one with `python -m jaxclap.data.caption_spm`)"
      )
    tokenizer = (
      assets.tokenizer(max_len) if assets is not None else tokenize.SpmTokenizer(spm_model, max_len)
    )
    vocab_size = int(_get(text_cfg, "vocab_size", 0)) or tokenizer.vocab_size
    if vocab_size != tokenizer.vocab_size:
      raise ValueError(
        f"text.vocab_size={vocab_size} but {spm_model} has "
        f"{tokenizer.vocab_size} pieces; set them equal (or vocab_size=0)"
      )
    tower = TextTower(
      kind="scratch",
      vocab_size=vocab_size,
      width=int(_get(text_cfg, "width", 256)),
      depth=int(_get(text_cfg, "depth", 4)),
      heads=int(_get(text_cfg, "heads", 4)),
      max_len=max_len,
      pooling=pooling,
      out_dim=out_dim,
      dtype=dtype,
    )

  def init_params(rng: jax.Array) -> PyTree:
    ids = jnp.zeros((1, max_len), jnp.int32)
    params = dict(tower.init(rng, ids, jnp.ones_like(ids))["params"])
    if pretrained is not None:
      params["bert"] = _load_pretrained(params["bert"], pretrained, source)
    return params

  return tower, tokenizer, init_params
