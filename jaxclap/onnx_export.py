"""A jaxclap audio encoder (a distilled student, or any model) in PyTorch and ONNX.

  python -m jaxclap.onnx_export --checkpoint=WORKDIR --output=DIR

writes `convert to_torch`'s official-layout `.pth` (+ `.safetensors`) under
`DIR/<official folder name>/` and beside it `audio_encoder.onnx`, exported by `torch.onnx`
from `AudioEncoder`, the PyTorch module this file documents:

  normalised log-mel [B, F, T] (T = the trained chunk length, the folder name's T)
    → frame features [B, T', F'·D] and the L2-normalised CLAP audio embedding [B, C].

It is the official runtime's encoder (patch embedding, the stored position table, cls
token, pre-norm blocks, final LayerNorm) with the CLAP audio head (2025 semantic-token
pooler, with `audio_proj.out_proj` when the CLAP width differs from the encoder's, as in a
distilled student; or the 2024 MLP), read strictly from the `.pth`. One chunk per call:
longer audio is cut into chunks of T frames (the last zero-padded) as the runtime does,
and the embedding of a clip of several chunks needs the pooler over all their tokens
(`jaxclap.load`). The log-mel front end stays outside the graph (`jaxclap.audio.frontend`;
mean/std normalisation with the checkpoint's norm_stats, stored in the `.pth`).
Needs the `onnx` extra (torch, onnx, onnxruntime).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from absl import flags
from safetensors.numpy import load_file
from torch import nn

from jaxclap import cli, convert
from jaxclap import convert_keys as ck
from jaxclap.models import sizes

ONNX_FILE = "audio_encoder.onnx"
OPSET = 17


class Block(nn.Module):
  """timm `Block` as the official ViT: x + attn(norm1(x)); x + mlp(norm2(x)), exact GELU."""

  def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
    super().__init__()
    self.heads = heads
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = nn.Module()
    self.attn.qkv = nn.Linear(dim, 3 * dim)
    self.attn.proj = nn.Linear(dim, dim)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = nn.Module()
    self.mlp.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
    self.mlp.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    h = self.heads
    qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    att = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(d // h), dim=-1)
    x = x + self.attn.proj((att @ qkv[2]).transpose(1, 2).reshape(b, n, d))
    return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class SemanticPooler(nn.Module):
  """2025 CLAP head: a learnt token + one block (1 head, MLP ×1, eps 1e-5) + LayerNorm."""

  def __init__(self, dim: int, out_dim: int | None):
    super().__init__()
    self.sem_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.sem_blocks = nn.ModuleList([Block(dim, 1, 1.0, 1e-5)])
    self.norm = nn.LayerNorm(dim, eps=1e-5)
    self.out_proj = nn.Linear(dim, out_dim) if out_dim else None

  def forward(self, tokens: torch.Tensor) -> torch.Tensor:
    x = torch.cat([self.sem_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    x = self.norm(self.sem_blocks[0](x)[:, 0])
    return x if self.out_proj is None else self.out_proj(x)


@dataclasses.dataclass(frozen=True)
class Shape:
  """What an official folder name and its keys say of the audio encoder."""

  width: int
  depth: int
  heads: int
  n_mels: int
  frames: int  # The trained chunk length T.
  patch: tuple[int, int]
  head: str  # "semantic" or "mlp".
  out_dim: int | None  # The semantic pooler's projection (None: the CLAP width is D).


class AudioEncoder(nn.Module):
  """Normalised log-mel chunk [B, F, T] → (frame features [B, T', F'·D], CLAP embedding)."""

  def __init__(self, shape: Shape):
    super().__init__()
    ph, pw = shape.patch
    d = shape.width
    self.shape = shape
    self.grid = (shape.n_mels // ph, shape.frames // pw)
    self.patch_embed = nn.Module()
    self.patch_embed.proj = nn.Conv2d(1, d, shape.patch, stride=shape.patch)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
    self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], d))
    self.blocks = nn.ModuleList([Block(d, shape.heads) for _ in range(shape.depth)])
    self.norm = nn.LayerNorm(d, eps=1e-6)
    if shape.head == "semantic":
      self.audio_proj = SemanticPooler(d, shape.out_dim)
    else:
      self.audio_proj = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, shape.out_dim or d))

  def forward(self, lms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = self.patch_embed.proj(lms[:, None]).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
    cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in self.blocks:
      x = blk(x)
    tokens = self.norm(x)[:, 1:]  # [B, F'·T', D], frequency-major as the official runtime.
    b, n, d = tokens.shape
    gf, gt = self.grid
    frames = tokens.reshape(b, gf, gt, d).permute(0, 2, 1, 3).reshape(b, gt, gf * d)
    if self.shape.head == "semantic":
      emb = self.audio_proj(tokens)
    else:
      emb = self.audio_proj(tokens.mean(1))
    return frames, F.normalize(emb, dim=-1)


def shape_of(folder: ck.FolderName, state: dict[str, np.ndarray]) -> Shape:
  """The encoder `folder` names, with the head its keys hold."""
  width, depth, heads = sizes.get_size(folder.size)
  if "audio_proj.sem_token" in state:
    head = "semantic"
    out = state.get("audio_proj.out_proj.weight")
    out_dim = None if out is None else int(out.shape[0])
  elif "audio_proj.0.weight" in state:
    head, out_dim = "mlp", int(state["audio_proj.2.weight"].shape[0])
  else:
    raise ValueError(f"{folder}: the file holds no CLAP audio head (audio_proj)")
  return Shape(width, depth, heads, folder.n_mels, folder.frames, folder.patch, head, out_dim)


def load_torch(pth: str | Path) -> tuple[AudioEncoder, np.ndarray]:
  """The `AudioEncoder` of a `to_torch` file (strictly loaded) and its norm_stats."""
  pth = Path(pth)
  folder = ck.parse_folder_name(pth.parent.name)
  twin = pth.with_suffix(".safetensors")
  if twin.exists():
    state = load_file(str(twin))
  else:
    state, _ = convert.load_official(pth)
  shape = shape_of(folder, state)
  model = AudioEncoder(shape)
  wanted = set(model.state_dict())
  model.load_state_dict({k: torch.from_numpy(np.asarray(state[k])) for k in wanted}, strict=True)
  return model.eval(), np.asarray(state["norm_stats"], np.float32)


def export_onnx(model: AudioEncoder, path: str | Path, batch: int = 2) -> Path:
  """`model` as ONNX (opset 17; the batch axis dynamic, the chunk length fixed)."""
  path = Path(path)
  x = torch.zeros(batch, model.shape.n_mels, model.shape.frames)
  torch.onnx.export(
    model,
    (x,),
    str(path),
    input_names=["log_mel"],
    output_names=["frame_features", "embedding"],
    dynamic_axes={
      "log_mel": {0: "batch"},
      "frame_features": {0: "batch"},
      "embedding": {0: "batch"},
    },
    opset_version=OPSET,
    dynamo=False,
  )
  return path


def export(checkpoint: str, output: str, *, tag: str = "jaxclap") -> dict[str, object]:
  """Writes the official `.pth` (+ `.safetensors`) and the ONNX encoder of `checkpoint`;
  returns their paths and sizes on disk (bytes)."""
  pth, notes = convert.to_torch(checkpoint, output, tag=tag, params_only=True)
  model, _ = load_torch(pth)
  onnx_path = export_onnx(model, pth.parent / ONNX_FILE)
  files = [pth, pth.with_suffix(".safetensors"), onnx_path]
  return {
    "pth": str(pth),
    "onnx": str(onnx_path),
    "bytes": {f.name: os.path.getsize(f) for f in files},
    "notes": notes,
  }


def main(argv: list[str]) -> int:
  """CLI body; returns the process exit code."""
  f = flags.FLAGS
  if len(argv) != 1:
    print(f"unexpected arguments {argv[1:]}", file=sys.stderr)
    return 2
  if not f.checkpoint or not f.output:
    return cli.report("--checkpoint and --output are required")
  with cli.exit_on(ValueError, KeyError, FileNotFoundError):
    out = export(f.checkpoint, f.output, tag=f.tag)
  for name, size in out["bytes"].items():
    print(f"wrote {name}: {size / 1e6:.2f} MB")
  print(f"folder: {Path(out['onnx']).parent}")
  for note in out["notes"]:
    print(f"note: {note}")
  return 0


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", None, "jaxclap workdir / checkpoints dir / step dir.")
  flags.DEFINE_string("output", None, "Folder for the official folder and its ONNX file.")
  flags.DEFINE_string("tag", "jaxclap", "Last part of the official folder name.")
  cli.run(main)
