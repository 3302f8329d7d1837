"""Names and layouts of the official PyTorch M2D / M2D-CLAP checkpoints (no PyTorch needed).

The folder-name grammar the official loader parses its configuration from
(`<model>-<F>x<T>p<ph>x<pw>p<sr>[p<TE>[pTI]]-<tag>`), the mapping between jaxclap parameter
trees and the official flat state dict (names, transposes, fixed position tables), and the
jaxclap run config a file describes. `jaxclap.convert` does the file I/O on top of these.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from jaxclap.models import patches, sizes
from jaxclap.run_meta import RunMeta
from jaxclap.text import bert
from jaxclap.train import config as config_lib

TEXT_PREFIX = "text_encoder.text_encoder."  # + Hugging Face BertModel keys.
TEXT_ENCODERS = {"A": "GTE-base", "B": "BERT-base", "N": "NV-Embed-v2"}
# The models the official runtime (examples/portable_m2d.py get_text_encoder) loads per letter;
# a CLAP folder name without a letter is a 2024 file: GTE-base.
OFFICIAL_TEXT_MODELS = {
  "A": "thenlper/gte-base",
  "B": "google-bert/bert-base-uncased",
  "N": "nvidia/NV-Embed-v2",
}
_MODEL_RE = re.compile(r"^m2d(?:_[a-z0-9]+)*_vit_([a-z]+)$")
GRAMMAR = (
  "<model>-<F>x<T>p<ph>x<pw>[p<sr>k[p<TE>[pTI]]][-<tag>], e.g. "
  "m2d_clap_vit_base-80x1001p16x16p16kpBpTI-2025"
)


@dataclasses.dataclass(frozen=True)
class FolderName:
  """The configuration an official checkpoint's parent folder name encodes."""

  model: str  # e.g. "m2d_clap_vit_base"; the size is the part after "_vit_".
  n_mels: int  # F: mel bins of the input.
  frames: int  # T: trained input length in frames (chunk length at inference).
  patch: tuple[int, int]  # (freq, time) patch size.
  sample_rate: int = 16000
  text_encoder: str | None = None  # "A" GTE-base, "B" BERT-base, "N" NV-Embed-v2.
  text_included: bool = False  # "TI": text-encoder weights are in the file.
  tag: str = ""

  @property
  def size(self) -> str:
    return _MODEL_RE.match(self.model).group(1)

  def __str__(self) -> str:
    params = (
      f"{self.n_mels}x{self.frames}p{self.patch[0]}x{self.patch[1]}p{self.sample_rate // 1000}k"
    )
    if self.text_encoder:
      params += f"p{self.text_encoder}" + ("pTI" if self.text_included else "")
    return f"{self.model}-{params}" + (f"-{self.tag}" if self.tag else "")


def official_text_model(name: FolderName) -> str:
  """Hub id of the text model the official runtime pairs a CLAP folder name with."""
  return OFFICIAL_TEXT_MODELS[name.text_encoder or "A"]


def parse_folder_name(name: str) -> FolderName:
  """Parses an official folder name; errors name the folder and the expected grammar."""

  def bad(why: str) -> ValueError:
    return ValueError(f"checkpoint folder name {name!r}: {why}; expected {GRAMMAR}")

  parts = name.split("-", 2)
  if len(parts) < 2:
    raise bad("no '-' between the model name and its sizes")
  model, params = parts[0], parts[1]
  m = _MODEL_RE.match(model)
  if not m:
    raise bad(f"model {model!r} is not m2d[_...]_vit_<size>")
  if m.group(1) not in sizes.SIZES:
    raise bad(f"unknown ViT size {m.group(1)!r} (known: {sorted(sizes.SIZES)})")
  fields = params.split("p")
  if len(fields) < 2:
    raise bad(f"sizes {params!r} lack the patch size")
  grid = [re.fullmatch(r"(\d+)x(\d+)", f) for f in fields[:2]]
  if not all(grid):
    raise bad(f"sizes {params!r} are not <F>x<T>p<ph>x<pw>")
  sample_rate, extra = 16000, fields[2:]
  if extra and re.fullmatch(r"\d+k", extra[0]):
    sample_rate, extra = int(extra[0][:-1]) * 1000, extra[1:]
  if sample_rate not in (16000, 32000):
    raise bad(f"sample rate {sample_rate} is not 16k or 32k")
  text_encoder = None
  if extra:
    if extra[0] not in TEXT_ENCODERS:
      raise bad(f"text-encoder letter {extra[0]!r} is not one of {sorted(TEXT_ENCODERS)}")
    text_encoder = extra[0]
  if extra[1:] not in ([], ["TI"]):
    raise bad(f"unknown trailing fields {extra[1:]} (only 'TI' may follow the letter)")
  (f, t), (ph, pw) = [(int(g.group(1)), int(g.group(2))) for g in grid]
  return FolderName(
    model=model,
    n_mels=f,
    frames=t,
    patch=(ph, pw),
    sample_rate=sample_rate,
    text_encoder=text_encoder,
    text_included=extra[1:] == ["TI"],
    tag=parts[2] if len(parts) > 2 else "",
  )


# ---------------------------------------------------------------------------------------
# Parameter names. jaxclap paths are dotted ("encoder.body.block_0.attn.qkv.kernel"); stage-1
# EMA target paths get a "target." prefix, the stage-2 BERT is handled by `bert.params_to_hf`.

_PREFIXES = (  # (jaxclap prefix, official prefix) after block renaming; first match wins.
  ("encoder.patch_embed.", "patch_embed.proj."),
  ("encoder.cls_token", "cls_token"),
  ("encoder.body.norm.", "norm."),
  ("encoder.body.blocks.", "blocks."),
  ("predictor.embed.", "decoder_embed."),
  ("predictor.mask_token", "mask_token"),
  ("predictor.blocks.", "decoder_blocks."),
  ("predictor.norm.", "decoder_norm."),
  ("predictor.pred.", "decoder_pred."),
  ("target.blocks.", "target_blocks."),
  ("target.norm.", "target_norm."),
  ("audio_proj.fc1.", "audio_proj.0."),  # 2024 head: Sequential(Linear, ReLU, Linear).
  ("audio_proj.fc2.", "audio_proj.2."),
  ("audio_proj.sem_token", "audio_proj.sem_token"),
  ("audio_proj.sem_blocks.", "audio_proj.sem_blocks."),
  ("audio_proj.norm.", "audio_proj.norm."),
  # Not in the official models: a pooler whose width differs from the CLAP space (a
  # distilled student's, train/distill.py); jaxclap.onnx_export's module reads it.
  ("audio_proj.out_proj.", "audio_proj.out_proj."),
  ("text_proj.proj.", "text_proj."),  # Stage 1: sentence embedding → CLAP space.
  ("text_tower.proj.", "text_proj."),  # Stage 2: text tower width → CLAP space.
  ("logit_scale", "logit_scale"),
)


def official_name(path: str) -> str:
  """jaxclap dotted path → official key; ValueError for parts the official model lacks."""
  key = re.sub(r"\bsem_block_(\d+)\b", r"sem_blocks.\1", path)
  key = re.sub(r"\bblock_(\d+)\b", r"blocks.\1", key)
  for ours, theirs in _PREFIXES:
    if key == ours or (ours.endswith(".") and key.startswith(ours)):
      key = theirs + key[len(ours) :]
      return re.sub(r"\.(kernel|scale)$", ".weight", key)
  raise ValueError(
    f"jaxclap parameter {path!r} has no counterpart in the official layout "
    "(text_tower.encoder: a from-scratch text tower)"
  )


def to_official(path: str, value: np.ndarray, patch: patches.Patch | None = None) -> np.ndarray:
  """A jaxclap array in the official layout (Linear [out, in], conv OIHW).

  `patch`: the patch size, for a patch_embed kernel that is not square (default: square).
  """
  value = np.asarray(value, np.float32)
  if path.endswith("patch_embed.kernel"):  # [ph·pw, D], pixels (freq, time) row-major.
    ph, pw = patches.hw(patch or int(round(np.sqrt(value.shape[0]))))
    return np.ascontiguousarray(value.T.reshape(value.shape[1], 1, ph, pw))
  if path.endswith(".kernel"):
    return np.ascontiguousarray(value.T)
  return value


def from_official(path: str, value: np.ndarray, shape: tuple[int, ...], source: str) -> np.ndarray:
  """Inverse of `to_official` for a parameter of jaxclap shape `shape`; checks the shape."""
  value = np.asarray(value, np.float32)
  if path.endswith("patch_embed.kernel"):  # OIHW [D, 1, ph, pw]: the file's own patch.
    hw = value.shape[2:] if value.ndim == 4 and np.prod(value.shape[2:]) == shape[0] else None
    want = (shape[1], 1, *(hw or [int(round(np.sqrt(shape[0])))] * 2))
  elif path.endswith(".kernel"):
    want = tuple(reversed(shape))
  else:
    want = tuple(shape)
  if tuple(value.shape) != want:
    raise ValueError(
      f"{source}: {official_name(path)!r} has shape {tuple(value.shape)}, "
      f"expected {want} for jaxclap {path!r}"
    )
  if path.endswith("patch_embed.kernel"):
    return np.ascontiguousarray(value.reshape(shape[1], shape[0]).T)
  if path.endswith(".kernel"):
    return np.ascontiguousarray(value.T)
  return value.reshape(shape)


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Nested dict → {dotted path: leaf}."""
  return traverse_util.flatten_dict(tree, sep=".")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{dotted path: leaf} → nested dict."""
  return traverse_util.unflatten_dict(dict(flat), sep=".")


def pos_embed(
  width: int, n_mels: int, train_frames: int, frames: int, patch: patches.Patch
) -> np.ndarray:
  """Official `pos_embed` [1, 1 + F'·T', D] for `frames`-long chunks (cls row zero).

  jaxclap's own table for that length: the trained sin-cos table, its first columns when
  shorter, bicubically resized when longer (as `ViTEncoder.pos_embed`).
  """
  train_grid = patches.grid_size(n_mels, train_frames, patch)
  grid = patches.grid_size(n_mels, frames, patch)
  table = patches.sincos_pos_embed(width, train_grid, cls_token=False)
  table = np.asarray(patches.fit_pos_embed(table, train_grid, grid), np.float32)
  return np.concatenate([np.zeros((1, width), np.float32), table])[None]


def decoder_pos_embed(width: int, n_mels: int, frames: int, patch: patches.Patch) -> np.ndarray:
  """Official predictor table `decoder_pos_embed` [1, 1 + F'·T', width]."""
  grid = patches.grid_size(n_mels, frames, patch)
  return patches.sincos_pos_embed(width, grid, cls_token=True)[None]


def tree_to_official(
  tree: Mapping[str, Any], patch: patches.Patch | None = None
) -> dict[str, np.ndarray]:
  """A jaxclap tree (stage-1 online / stage-2 merged params, optional 'target', 'text_tower'
  holding a BERT under 'bert') → official key → array; no position tables or norm_stats."""
  out = {}
  for path, value in flatten({k: v for k, v in tree.items() if k != "text_tower"}).items():
    out[official_name(path)] = to_official(path, value, patch)
  tower = tree.get("text_tower")
  if tower is not None:
    if "bert" not in tower:
      raise ValueError(
        "the official layout holds a BERT text encoder; this text tower is "
        f"{sorted(tower)} (a from-scratch tower has no official counterpart)"
      )
    for key, value in bert.params_to_hf(tower["bert"], None).items():
      out[TEXT_PREFIX + key] = value
    for path, value in flatten(
      {"text_tower": {k: v for k, v in tower.items() if k != "bert"}}
    ).items():
      out[official_name(path)] = to_official(path, value)
  return out


def official_to_tree(
  state: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], source: str
) -> tuple[dict[str, np.ndarray], list[str]]:
  """Official arrays for each jaxclap path in `shapes` (no text tower): (flat tree, missing)."""
  flat, missing = {}, []
  for path, shape in shapes.items():
    key = official_name(path)
    if key not in state:
      missing.append(key)
      continue
    flat[path] = from_official(path, state[key], tuple(shape), source)
  return flat, missing


def bert_from_official(
  state: Mapping[str, np.ndarray], config: bert.BertConfig, source: str
) -> dict[str, Any]:
  """The Flax BERT tree from `text_encoder.text_encoder.*` (its unused pooler dropped)."""
  hf = {k[len(TEXT_PREFIX) :]: v for k, v in state.items() if k.startswith(TEXT_PREFIX)}
  hf = {k: v for k, v in hf.items() if not k.startswith("pooler.")}
  return bert.params_from_hf(
    hf, dataclasses.replace(config, add_pooling_layer=False), source=source
  )


# ---------------------------------------------------------------------------------------
# The run config a file describes.


def count_blocks(state: dict[str, np.ndarray], prefix: str) -> int:
  """Number of `<prefix><i>.` blocks."""
  ids = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
  return max(ids) + 1 if ids else 0


def run_config(
  name: FolderName,
  state: dict[str, np.ndarray],
  saved: dict[str, Any] | None,
  stage: str,
  text_model: str | None,
  source: str,
) -> Any:
  """The jaxclap run config an official state dict describes: its folder name and shapes,
  over the config jaxclap saved in the file (`saved`, when it wrote it)."""
  config = (
    config_lib.config_from_meta(RunMeta(config=saved["config"]), source)
    if saved and "config" in saved
    else config_lib.base_config()
  )
  width, depth, _ = sizes.get_size(name.size)
  for key in ("cls_token", "patch_embed.proj.weight", "pos_embed"):
    if key not in state:
      raise ValueError(f"{source}: missing key {key!r}; not an M2D checkpoint?")
  if state["cls_token"].shape[-1] != width or count_blocks(state, "blocks.") != depth:
    raise ValueError(
      f"{source}: the folder name says ViT size {name.size!r} (width {width}, "
      f"{depth} blocks) but the file has cls_token {state['cls_token'].shape} "
      f"and {count_blocks(state, 'blocks.')} blocks"
    )
  square = name.patch[0] == name.patch[1]
  if not square and stage == "stage2":
    raise ValueError(f"{source}: patch {name.patch}: jaxclap's CLAP model has square patches")
  if name.n_mels != 80:
    raise ValueError(f"{source}: F={name.n_mels} mel bins; jaxclap's front end has 80")
  config.stage = stage
  config.model.size, config.model.patch_size = name.size, name.patch[0]
  config.model.patch_time = 0 if square else name.patch[1]
  config.frontend.sample_rate = name.sample_rate
  if not saved:
    config.data.crop_frames = name.frames
  if "audio_proj.0.weight" in state:
    if "audio_proj.2.weight" not in state:
      raise ValueError(f"{source}: missing key 'audio_proj.2.weight' of the 2024 MLP head")
    config.model.clap_head, config.model.clap_dim = "mlp", state["audio_proj.2.weight"].shape[0]
  elif "audio_proj.out_proj.weight" in state:  # jaxclap's semantic head with a projection.
    config.model.clap_head = "semantic"
    config.model.clap_dim = state["audio_proj.out_proj.weight"].shape[0]
  else:
    config.model.clap_head, config.model.clap_dim = "semantic", width
  config.model.text_dim = (
    state["text_proj.weight"].shape[1]
    if stage == "stage1"
    and "text_proj.weight" in state
    and not any(k.startswith(TEXT_PREFIX) for k in state)
    else config.model.clap_dim
  )
  if "decoder_embed.weight" in state:
    config.model.predictor_width = state["decoder_embed.weight"].shape[0]
    config.model.predictor_depth = count_blocks(state, "decoder_blocks.")
    if config.model.predictor_width % config.model.predictor_heads:
      raise ValueError(
        f"{source}: predictor width {config.model.predictor_width} is not "
        f"divisible by {config.model.predictor_heads} heads"
      )
  if stage == "stage2":
    if config.model.clap_head != "semantic":
      raise ValueError(
        f"{source}: jaxclap's stage-2 model has the semantic-token pooler; "
        "this file has the 2024 MLP head (import it without --text_model)"
      )
    config.text.kind, config.text.model = "bert", text_model
    if not saved:
      config.text.pooling = "cls"
    config.init.parts, config.init.workdir = "all", ""
  config_lib.validate(config)
  return config
