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

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxclap.models import bert, vit

Dtype = Any
PyTree = Any
KINDS = ("bert", "scratch")
POOLINGS = ("cls", "mean")
MIN_BUCKET = 16  # Shortest padded caption length; longer buckets double up to max_len.


def pool(hidden: jax.Array, attention_mask: jax.Array, pooling: str) -> jax.Array:
  """[B, L, D] → [B, D] in float32: the first token, or the mean over unmasked tokens."""
  hidden = hidden.astype(jnp.float32)
  if pooling == "cls":
    return hidden[:, 0]
  if pooling == "mean":
    m = attention_mask[..., None].astype(jnp.float32)
    return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)
  raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")


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
    x = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, name="token_embed",
                 embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")))(input_ids)
    pos = self.param("pos_embed", nn.with_logical_partitioning(init, (None, "embed")),
                     (self.max_len, self.width), jnp.float32)
    x = x + pos[None, :length].astype(self.dtype)
    for i in range(self.depth):
      x = vit.Block(self.heads, self.mlp_ratio, 1e-6, self.dtype, name=f"block_{i}")(
          x, attention_mask)
    return vit.layer_norm(1e-6, self.dtype, "norm")(x)


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
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               deterministic: bool = True) -> jax.Array:
    if self.kind == "bert":
      hidden = bert.BertModel(self.bert_config, self.dtype, name="bert")(
          input_ids, attention_mask, deterministic=deterministic)
    elif self.kind == "scratch":
      hidden = ScratchTextEncoder(self.vocab_size, self.width, self.depth, self.heads,
                                  self.max_len, dtype=self.dtype, name="encoder")(
                                      input_ids, attention_mask)
    else:
      raise ValueError(f"TextTower kind={self.kind!r}; expected one of {KINDS}")
    x = pool(hidden, attention_mask, self.pooling)
    if self.tower_width != self.out_dim:
      x = vit.dense(self.out_dim, (None, "embed"), self.dtype, "proj")(x.astype(self.dtype))
    return x.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Host-side tokenizers: list of texts → int32 arrays padded to a length bucket.


def length_buckets(max_len: int, smallest: int = MIN_BUCKET) -> tuple[int, ...]:
  """Padded lengths a batch may take: powers of two from ``smallest`` below ``max_len``, then it."""
  sizes, n = [], smallest
  while n < max_len:
    sizes.append(n)
    n *= 2
  return tuple(sizes) + (max_len,)


def bucket_length(longest: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds ``longest`` tokens."""
  for size in buckets:
    if longest <= size:
      return size
  raise ValueError(f"{longest} tokens exceed the largest bucket {buckets[-1]}")


def pad_to(inputs: Mapping[str, np.ndarray], length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
  """``input_ids``/``attention_mask`` right-padded to ``length`` (masked, so any pad id works)."""
  ids, mask = np.asarray(inputs["input_ids"]), np.asarray(inputs["attention_mask"])
  extra = length - ids.shape[1]
  if extra < 0:
    raise ValueError(f"cannot pad {ids.shape[1]} tokens down to {length}")
  return dict(input_ids=np.pad(ids, ((0, 0), (0, extra)), constant_values=pad_id),
              attention_mask=np.pad(mask, ((0, 0), (0, extra))))


def _pack(ids: Sequence[Sequence[int]], buckets: Sequence[int], pad_id: int,
          length: int | None = None) -> dict[str, np.ndarray]:
  """Right-pads (already truncated) id lists to ``length`` or the bucket of the longest."""
  longest = max((len(row) for row in ids), default=1)
  if length is None:
    length = bucket_length(longest, buckets)
  elif not longest <= length <= buckets[-1]:
    raise ValueError(f"length={length} must lie in [{longest} (longest caption), "
                     f"{buckets[-1]} (max_len)]")
  input_ids = np.full((len(ids), length), pad_id, np.int32)
  mask = np.zeros((len(ids), length), np.int32)
  for i, row in enumerate(ids):
    input_ids[i, :len(row)] = row
    mask[i, :len(row)] = 1
  return dict(input_ids=input_ids, attention_mask=mask)


class HFTokenizer:
  """A model folder's ``tokenizer.json`` ([CLS] ... [SEP]), truncated at ``max_len``, bucketed."""

  def __init__(self, transformer_dir: Path, max_len: int, lowercase: bool = False):
    from jaxclap.data.text_embed import load_tokenizer

    self.max_len = max_len
    self.buckets = length_buckets(max_len)
    self.lowercase = lowercase
    self.tokenizer = load_tokenizer(transformer_dir)
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(max_len)
    pad = self.tokenizer.token_to_id("[PAD]")
    self.pad_id = int(pad) if pad is not None else 0  # Masked out anyway.

  def __call__(self, texts: Sequence[str], length: int | None = None) -> dict[str, np.ndarray]:
    """``[N, length]`` ids and mask; ``length`` None: the bucket of the longest caption."""
    from jaxclap.data.text_embed import check_captions

    texts = check_captions(texts)
    if self.lowercase:
      texts = [t.lower() for t in texts]
    ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
    return _pack(ids, self.buckets, self.pad_id, length)


class SpmTokenizer:
  """A `jaxclap.data.spm` model: BOS (the [CLS]) + pieces + EOS, truncated at ``max_len``, bucketed."""

  def __init__(self, model_path: str | Path, max_len: int):
    from jaxclap.data import spm

    if max_len < 3:
      raise ValueError(f"max_len={max_len} leaves no room between BOS and EOS")
    self.max_len = max_len
    self.buckets = length_buckets(max_len)
    self.sp = spm.load_spm(model_path)
    self.vocab_size = int(self.sp.get_piece_size())
    self.pad_id, self.bos_id, self.eos_id = spm.PAD_ID, spm.BOS_ID, spm.EOS_ID

  def __call__(self, texts: Sequence[str], length: int | None = None) -> dict[str, np.ndarray]:
    """``[N, length]`` ids and mask; ``length`` None: the bucket of the longest caption."""
    from jaxclap.data.text_embed import check_captions

    pieces = self.sp.encode(check_captions(texts))
    ids = [[self.bos_id] + p[:self.max_len - 2] + [self.eos_id] for p in pieces]
    return _pack(ids, self.buckets, self.pad_id, length)

  def decode(self, input_ids: np.ndarray) -> list[str]:
    """Texts back from ``input_ids`` rows (special and padding ids dropped)."""
    specials = {self.pad_id, self.bos_id, self.eos_id}
    return [self.sp.decode([int(i) for i in row if int(i) not in specials])
            for row in np.asarray(input_ids)]


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

  return jax.tree.map(put, boxed, pretrained,
                      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def build_text_tower(text_cfg: Mapping[str, Any] | Any, *, out_dim: int, dtype: Dtype = jnp.float32
                     ) -> tuple[TextTower, Callable[[Sequence[str]], dict[str, np.ndarray]],
                                Callable[[jax.Array], PyTree]]:
  """``(tower, tokenizer, init_params)`` from a text config (dict or ConfigDict).

  Fields: ``kind`` ("bert" | "scratch"), ``pooling`` ("cls" | "mean"), ``max_len`` (truncation
  length and largest bucket); for "bert" ``model`` (folder, installed package or hub id, as
  `resolve_text_model`); for "scratch" ``spm_model`` (a `jaxclap.data.spm` .model),
  ``vocab_size`` (0: the model's), ``width``, ``depth``, ``heads``. ``tokenizer(texts)`` gives
  numpy int32 ``input_ids`` and ``attention_mask`` of shape ``[N, L]``, L the smallest of
  ``tokenizer.buckets`` that holds the longest caption (``tokenizer(texts, length=L)`` forces one).

  ``init_params(rng)`` returns the tower's ``params`` boxed in ``nn.Partitioned`` (logical axis
  names; ``nn.unbox`` for plain arrays). For "bert" the ``bert`` subtree holds the pretrained
  weights (closed over as constants, so ``jax.eval_shape`` and ``jit`` work) and only ``proj``
  is fresh; for "scratch" everything is fresh.
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
    from jaxclap.data.text_embed import SentencePipeline
    from jaxclap.data.text_models import DEFAULT_TEXT_MODEL, resolve_text_model

    model_name = _get(text_cfg, "model", DEFAULT_TEXT_MODEL)
    pipe = SentencePipeline.from_folder(resolve_text_model(model_name))
    model, pretrained = bert.load_bert(pipe.transformer_dir, dtype=dtype, add_pooling_layer=False)
    source = f"text.model={model_name!r} ({pipe.transformer_dir})"
    limit = model.config.max_position_embeddings
    if max_len > limit:
      raise ValueError(f"text.max_len={max_len} exceeds {source} max_position_embeddings={limit}")
    tokenizer = HFTokenizer(pipe.transformer_dir, max_len, pipe.do_lower_case)
    tower = TextTower(kind="bert", bert_config=model.config, max_len=max_len, pooling=pooling,
                      out_dim=out_dim, dtype=dtype)
  else:
    spm_model = _get(text_cfg, "spm_model")
    if not spm_model:
      raise ValueError("text.kind='scratch' needs text.spm_model (train one with "
                       "`python -m jaxclap.data.spm`)")
    tokenizer = SpmTokenizer(spm_model, max_len)
    vocab_size = int(_get(text_cfg, "vocab_size", 0)) or tokenizer.vocab_size
    if vocab_size != tokenizer.vocab_size:
      raise ValueError(f"text.vocab_size={vocab_size} but {spm_model} has "
                       f"{tokenizer.vocab_size} pieces; set them equal (or vocab_size=0)")
    tower = TextTower(kind="scratch", vocab_size=vocab_size,
                      width=int(_get(text_cfg, "width", 256)),
                      depth=int(_get(text_cfg, "depth", 4)), heads=int(_get(text_cfg, "heads", 4)),
                      max_len=max_len, pooling=pooling, out_dim=out_dim, dtype=dtype)

  def init_params(rng: jax.Array) -> PyTree:
    ids = jnp.zeros((1, max_len), jnp.int32)
    params = dict(tower.init(rng, ids, jnp.ones_like(ids))["params"])
    if pretrained is not None:
      params["bert"] = _load_pretrained(params["bert"], pretrained, source)
    return params

  return tower, tokenizer, init_params
