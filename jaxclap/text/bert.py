"""BERT-family text encoder in Flax linen, loadable from a Hugging Face model folder.

The parameter tree mirrors Hugging Face ``BertModel`` names
(``encoder/layer_0/attention/self/query/kernel`` <->
``encoder.layer.0.attention.self.query.weight``)
so that checkpoints convert by a name join plus a transpose/reshape; see
:func:`params_from_hf` and :func:`params_to_hf`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file

from jaxclap import layers

Array = jax.Array
PyTree = Any

# Activations named by Hugging Face's `hidden_act`; "gelu" is the exact erf form.
_ACTIVATIONS = {
  "gelu": lambda x: nn.gelu(x, approximate=False),
  "gelu_new": lambda x: nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
  "relu": nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture hyper-parameters, named as in a Hugging Face BERT ``config.json``."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  add_pooling_layer: bool = False  # HF's tanh pooler; unused by sentence embedders.

  def __post_init__(self):
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(
        f"hidden_act={self.hidden_act!r} is not supported; expected one of {sorted(_ACTIVATIONS)}"
      )
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
        f"hidden_size={self.hidden_size} is not divisible by "
        f"num_attention_heads={self.num_attention_heads}"
      )

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_json(cls, path: str | Path, **overrides) -> BertConfig:
    """Reads a Hugging Face ``config.json``; rejects non-BERT architectures clearly."""
    path = Path(path)
    try:
      raw = json.loads(path.read_text())
    except FileNotFoundError:
      raise FileNotFoundError(f"No config.json at {path}") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from None
    model_type = raw.get("model_type")
    if model_type != "bert":
      raise ValueError(
        f"{path}: model_type={model_type!r}, but the Flax encoder only implements "
        "model_type='bert'. Use backend='st' (sentence-transformers) for other families."
      )
    position_type = raw.get("position_embedding_type", "absolute")
    if position_type != "absolute":
      raise ValueError(
        f"{path}: position_embedding_type={position_type!r} is not supported "
        "(only 'absolute'); use backend='st'."
      )
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in raw.items() if k in names}
    kwargs.update(overrides)
    try:
      return cls(**kwargs)
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from None


def _normal(config: BertConfig) -> nn.initializers.Initializer:
  """HF's weight init: N(0, initializer_range)."""
  return nn.initializers.normal(stddev=config.initializer_range)


def _layer_norm(config: BertConfig, name: str, dtype: Any) -> nn.LayerNorm:
  """LayerNorm with BERT's epsilon and logically named params."""
  return nn.LayerNorm(
    epsilon=config.layer_norm_eps,
    dtype=dtype,
    name=name,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
  )


def _dense(
  config: BertConfig, features: int, axes: tuple[str, str], name: str, dtype: Any
) -> nn.Dense:
  """Dense whose kernel is named ``axes`` (in, out) and whose bias follows the out axis."""
  return nn.Dense(
    features,
    dtype=dtype,
    name=name,
    kernel_init=nn.with_logical_partitioning(_normal(config), axes),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
  )


class _BertModule(nn.Module):
  """What every BERT module holds: the architecture and the compute dtype."""

  config: BertConfig
  dtype: Any = jnp.float32  # Computation dtype; parameters stay float32.


class BertEmbeddings(_BertModule):
  """Word + position + token-type embeddings, then LayerNorm and dropout."""

  @nn.compact
  def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool) -> Array:
    cfg = self.config
    seq_len = input_ids.shape[-1]
    if seq_len > cfg.max_position_embeddings:
      raise ValueError(
        f"Sequence length {seq_len} exceeds max_position_embeddings={cfg.max_position_embeddings}"
      )

    def embed(num: int, axes: tuple[str | None, str], name: str) -> nn.Embed:
      return nn.Embed(
        num,
        cfg.hidden_size,
        dtype=self.dtype,
        name=name,
        embedding_init=nn.with_logical_partitioning(_normal(cfg), axes),
      )

    x = embed(cfg.vocab_size, ("vocab", "embed"), "word_embeddings")(input_ids)
    positions = jnp.arange(seq_len)[None, :]
    x = x + embed(cfg.max_position_embeddings, (None, "embed"), "position_embeddings")(positions)
    x = x + embed(cfg.type_vocab_size, (None, "embed"), "token_type_embeddings")(token_type_ids)
    x = _layer_norm(cfg, "LayerNorm", self.dtype)(x)
    return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(_BertModule):
  """Multi-head scaled dot-product attention over unmasked keys."""

  @nn.compact
  def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
    cfg = self.config

    def project(name: str) -> Array:
      return nn.DenseGeneral(
        (cfg.num_attention_heads, cfg.head_dim),
        dtype=self.dtype,
        name=name,
        kernel_init=nn.with_logical_partitioning(_normal(cfg), ("embed", "heads", "kv")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
      )(x)

    query, key, value = project("query"), project("key"), project("value")
    use_dropout = not deterministic and cfg.attention_probs_dropout_prob > 0
    return layers.attention(  # [B, L, heads, kv]
      query,
      key,
      value,
      attention_mask,
      dropout_rate=cfg.attention_probs_dropout_prob,
      dropout_rng=self.make_rng("dropout") if use_dropout else None,
    )


class BertOutput(_BertModule):
  """HF's ``output`` of both sub-blocks: Dense to the width, dropout, residual + LayerNorm.

  ``in_axes`` names the input axes the Dense contracts: ("heads", "kv") after attention (a
  [heads, kv, H] kernel), ("mlp",) after the intermediate layer.
  """

  in_axes: tuple[str, ...] = ("mlp",)

  @nn.compact
  def __call__(self, h: Array, residual: Array, deterministic: bool) -> Array:
    cfg = self.config
    x = nn.DenseGeneral(
      cfg.hidden_size,
      axis=tuple(range(-len(self.in_axes), 0)),
      dtype=self.dtype,
      name="dense",
      kernel_init=nn.with_logical_partitioning(_normal(cfg), (*self.in_axes, "embed")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
    )(h)
    x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
    return _layer_norm(cfg, "LayerNorm", self.dtype)(x + residual)


class BertAttention(_BertModule):
  """HF's ``attention`` block: ``self`` attention then ``output`` projection."""

  @nn.compact
  def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
    heads = BertSelfAttention(self.config, self.dtype, name="self")(
      x, attention_mask, deterministic
    )
    return BertOutput(self.config, self.dtype, ("heads", "kv"), name="output")(
      heads, x, deterministic
    )


class BertIntermediate(_BertModule):
  """HF's ``intermediate``: Dense to the MLP width, then the activation."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    x = _dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "dense", self.dtype)(x)
    return _ACTIVATIONS[cfg.hidden_act](x)


class BertLayer(_BertModule):
  """One post-norm transformer layer: attention block, then the MLP block."""

  @nn.compact
  def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
    x = BertAttention(self.config, self.dtype, name="attention")(x, attention_mask, deterministic)
    h = BertIntermediate(self.config, self.dtype, name="intermediate")(x)
    return BertOutput(self.config, self.dtype, ("mlp",), name="output")(h, x, deterministic)


class BertEncoder(_BertModule):
  """The layer stack; ``layer_<i>`` maps to HF's ``layer.<i>``."""

  @nn.compact
  def __call__(self, x: Array, attention_mask: Array, deterministic: bool) -> Array:
    for i in range(self.config.num_hidden_layers):
      x = BertLayer(self.config, self.dtype, name=f"layer_{i}")(x, attention_mask, deterministic)
    return x


class BertPooler(_BertModule):
  """HF's pooler: tanh(Dense(first token)). Apply with ``{'params': params['pooler']}``."""

  @nn.compact
  def __call__(self, last_hidden_state: Array) -> Array:
    cfg = self.config
    x = _dense(cfg, cfg.hidden_size, ("embed", "mlp"), "dense", self.dtype)(last_hidden_state[:, 0])
    return jnp.tanh(x)


class BertModel(_BertModule):
  """BERT encoder returning the last hidden state ``[B, L, H]``."""

  @nn.compact
  def __call__(
    self,
    input_ids: Array,
    attention_mask: Array,
    token_type_ids: Array | None = None,
    deterministic: bool = True,
  ) -> Array:
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    embeddings = BertEmbeddings(self.config, self.dtype, name="embeddings")
    x = embeddings(input_ids, token_type_ids, deterministic)
    x = BertEncoder(self.config, self.dtype, name="encoder")(x, attention_mask, deterministic)
    if self.config.add_pooling_layer and self.is_initializing():
      # Created at init only, so checkpoints round-trip; callers apply BertPooler themselves.
      BertPooler(self.config, self.dtype, name="pooler")(x)
    return x


# ----------------------------------------------------------------------------------------------
# Hugging Face <-> Flax parameter mapping.

_LEAF_TO_HF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_HF_LEGACY = {"gamma": "weight", "beta": "bias"}  # Old TF-converted LayerNorm names.


def _hf_name(path: tuple[str, ...]) -> str:
  """``('encoder', 'layer_0', ..., 'kernel')`` -> ``'encoder.layer.0....weight'``."""
  parts = []
  for p in path[:-1]:
    parts.extend(p.split("_", 1) if p.startswith("layer_") else [p])
  return ".".join(parts + [_LEAF_TO_HF[path[-1]]])


def param_shapes(config: BertConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat ``{flax path: shape}`` of the parameter tree, without allocating it."""
  model = BertModel(config)
  ids = jnp.zeros((1, 2), jnp.int32)
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), ids, ids)["params"]))
  return {k: tuple(v.shape) for k, v in flatten_dict(shapes).items()}


def _canonical_hf(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Strips a ``bert.`` prefix, renames legacy LayerNorm names, drops heads outside BertModel."""
  out, dropped = {}, []
  for name, value in state.items():
    if name.startswith("bert."):
      name = name[len("bert.") :]
    head, _, leaf = name.rpartition(".")
    name = f"{head}.{_HF_LEGACY.get(leaf, leaf)}"
    if (
      name.split(".")[0] in ("embeddings", "encoder", "pooler")
      and name != "embeddings.position_ids"
    ):
      out[name] = value
    else:
      dropped.append(name)
  if dropped:
    logging.info("Ignoring %d non-BertModel tensors, e.g. %s", len(dropped), dropped[:3])
  return out


def params_from_hf(
  state: Mapping[str, np.ndarray], config: BertConfig, *, source: str = "state dict"
) -> PyTree:
  """Maps HF ``BertModel`` tensors (PyTorch layout) to the Flax ``params`` tree (numpy float32)."""
  state = _canonical_hf(state)
  expected = param_shapes(config)
  flat, missing = {}, []
  for path, shape in expected.items():
    name = _hf_name(path)
    if name not in state:
      missing.append(name)
      continue
    value = np.asarray(state[name], dtype=np.float32)
    # PyTorch Linear stores [out, in]; Flax kernels are [in, ...out] with heads split out.
    value = value.T if path[-1] == "kernel" else value
    if value.size != int(np.prod(shape)):
      raise ValueError(
        f"{source}: tensor {name!r} has shape {state[name].shape}, "
        f"which does not fit Flax param {'/'.join(path)} of shape {shape}"
      )
    flat[path] = value.reshape(shape)
  if missing:
    raise KeyError(f"{source}: missing {len(missing)} BERT tensors, e.g. {missing[:5]}")
  unexpected = sorted(set(state) - {_hf_name(p) for p in expected})
  if unexpected:
    raise KeyError(
      f"{source}: unexpected tensors for this config (add_pooling_layer="
      f"{config.add_pooling_layer}): {unexpected[:5]}"
    )
  return unflatten_dict(flat)


def params_to_hf(params: PyTree, config: BertConfig) -> dict[str, np.ndarray]:
  """Inverse of :func:`params_from_hf`: HF ``BertModel`` names and PyTorch layouts."""
  del config  # Layouts follow from the names alone; kept for a symmetric signature.
  out = {}
  for path, value in flatten_dict(nn.unbox(params)).items():
    value = np.asarray(value, dtype=np.float32)
    if path[-1] == "kernel":
      in_first = path[-2] in ("query", "key", "value")  # [H, heads, kv]; others end in out dim.
      value = (
        value.reshape(value.shape[0], -1) if in_first else value.reshape(-1, value.shape[-1])
      ).T
    elif path[-1] == "bias":
      value = value.reshape(-1)
    out[_hf_name(path)] = np.ascontiguousarray(value)
  return out


def load_bert(
  folder: str | Path, *, dtype: Any = jnp.float32, add_pooling_layer: bool | None = None
) -> tuple[BertModel, PyTree]:
  """A :class:`BertModel` and its unboxed ``params`` from an HF folder with ``model.safetensors``.

  ``add_pooling_layer=None`` keeps the pooler exactly when the checkpoint has one.
  """
  folder = Path(folder)
  weights = folder / "model.safetensors"
  if not weights.is_file():
    present = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
    raise FileNotFoundError(
      f"{folder}: no model.safetensors (found {present or 'no such folder'}). jaxclap reads "
      "BERT weights only from safetensors; convert pytorch_model.bin with the `safetensors` "
      "library or use backend='st'."
    )
  state = load_file(str(weights))
  pooler_keys = [k for k in state if k.startswith(("pooler.", "bert.pooler."))]
  if add_pooling_layer is None:
    add_pooling_layer = bool(pooler_keys)
  elif not add_pooling_layer:  # As HF's BertModel(add_pooling_layer=False): drop the pooler.
    for k in pooler_keys:
      del state[k]
  config = BertConfig.from_json(folder / "config.json", add_pooling_layer=add_pooling_layer)
  params = params_from_hf(state, config, source=str(weights))
  return BertModel(config, dtype=dtype), jax.tree.map(jnp.asarray, params)
