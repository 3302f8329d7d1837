"""A small PyTorch reference of the official M2D / M2D-CLAP network, for conversion tests.

Written from the layout facts (docs/method.md, "Official checkpoint layout"): official
key names, pre-norm ViT blocks (timm `Block` equivalents from bench/torch_m2d.py, which has
the same `norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2` names), the 2025 semantic-token
pooler and 2024 MLP `audio_proj` heads, and a `transformers.BertModel` under
`text_encoder.text_encoder.`. Files load with `load_state_dict(strict=True)`. `encode`-style
methods follow the official runtime: long input is split into chunks of the trained length
(the folder name's T), the last one zero-padded to a whole patch, and features concatenated
along time.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from torch_m2d import Block, SemanticPooler  # noqa: E402  (bench script module)

SIZES = {
  "test": (64, 2, 2),
  "tiny": (192, 12, 3),
  "small": (384, 12, 6),
  "base": (768, 12, 12),
  "large": (1024, 24, 16),
}  # width, depth, heads


def sincos_table(dim: int, grid_f: int, grid_t: int) -> np.ndarray:
  """MAE 2-D table [1 + F'·T', dim]: zero cls row; first half time, second half frequency."""

  def one_d(d: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = pos.reshape(-1, 1).astype(np.float64) * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  f_idx, t_idx = np.divmod(np.arange(grid_f * grid_t), grid_t)  # token = f·T' + t
  table = np.concatenate([one_d(dim // 2, t_idx), one_d(dim // 2, f_idx)], axis=1)
  return np.concatenate([np.zeros((1, dim)), table]).astype(np.float32)


def parse_name(name: str) -> dict:
  """`<model>-<F>x<T>p<ph>x<pw>[p16k...]-<tag>` → size, n_mels, frames, patch."""
  model, params = name.split("-")[:2]
  fields = params.split("p")
  n_mels, frames = (int(v) for v in fields[0].split("x"))
  ph, pw = (int(v) for v in fields[1].split("x"))
  return {
    "size": model.rsplit("_vit_", 1)[1],
    "n_mels": n_mels,
    "frames": frames,
    "patch": ph if ph == pw else (ph, pw),
  }


class PatchEmbed(nn.Module):
  """Conv ph×pw stride (ph, pw) on [B, 1, freq, time] → tokens [B, F'·T', D] (freq-major)."""

  def __init__(self, dim: int, patch: int | tuple[int, int]):
    super().__init__()
    self.proj = nn.Conv2d(1, dim, patch, stride=patch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.proj(x).flatten(2).transpose(1, 2)


class BertText(nn.Module):
  """The official BERT text encoder wrapper: `text_encoder` = a Hugging Face BertModel."""

  def __init__(self, config: transformers.BertConfig):
    super().__init__()
    self.text_encoder = transformers.BertModel(config)  # With its pooler, as AutoModel.

  def forward(self, ids: torch.Tensor, mask: torch.Tensor, pooling: str = "cls"):
    hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    if pooling == "cls":
      return hidden[:, 0]
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class OfficialM2D(nn.Module):
  """ViT encoder + optional CLAP heads, text encoder, predictor and EMA target."""

  def __init__(
    self,
    *,
    size: str,
    n_mels: int = 80,
    frames: int = 608,
    patch: int | tuple[int, int] = 16,
    clap_head: str | None = None,
    text_proj: tuple[int, int] | None = None,
    bert_config: transformers.BertConfig | None = None,
    logit_scale: bool = False,
    predictor: tuple[int, int, int] | None = None,
    target: bool = False,
  ):
    super().__init__()
    width, depth, heads = SIZES[size]
    ph, pw = patch if isinstance(patch, tuple) else (patch, patch)
    self.frames, self.patch, self.grid_f = frames, pw, n_mels // ph  # patch: its time width.
    n = self.grid_f * (frames // pw)
    self.norm_stats = nn.Parameter(torch.tensor([-7.1, 4.2]), requires_grad=False)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
    self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n, width), requires_grad=False)
    self.patch_embed = PatchEmbed(width, patch)
    self.blocks = nn.ModuleList([Block(width, heads) for _ in range(depth)])
    self.norm = nn.LayerNorm(width, eps=1e-6)
    self.clap_head = clap_head
    if clap_head == "semantic":
      self.audio_proj = SemanticPooler(width, width)
    elif clap_head == "mlp":
      self.audio_proj = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
    if text_proj:
      self.text_proj = nn.Linear(*text_proj)
    if bert_config is not None:
      self.text_encoder = BertText(bert_config)
    if logit_scale:
      self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    if predictor:
      pw, pdepth, pheads = predictor
      self.decoder_embed = nn.Linear(width, pw)
      self.mask_token = nn.Parameter(torch.zeros(1, 1, pw))
      self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + n, pw), requires_grad=False)
      self.decoder_blocks = nn.ModuleList([Block(pw, pheads) for _ in range(pdepth)])
      self.decoder_norm = nn.LayerNorm(pw, eps=1e-6)
      self.decoder_pred = nn.Linear(pw, width)
    if target:
      self.target_blocks = nn.ModuleList([Block(width, heads) for _ in range(depth)])
      self.target_norm = nn.LayerNorm(width, eps=1e-6)

  @classmethod
  def from_file(
    cls,
    path: str | Path,
    *,
    bert_config: transformers.BertConfig | None = None,
    predictor_heads: int = 16,
  ) -> OfficialM2D:
    """Builds the network a checkpoint's folder name and keys describe; loads it strictly."""
    path = Path(path)
    spec = parse_name(path.parent.name)
    with torch.serialization.safe_globals([argparse.Namespace]):
      ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt["model"] if "model" in ckpt else ckpt
    keys = set(state)
    clap = (
      "semantic"
      if "audio_proj.sem_token" in keys
      else "mlp"
      if "audio_proj.0.weight" in keys
      else None
    )
    text_proj = tuple(state["text_proj.weight"].shape[::-1]) if "text_proj.weight" in keys else None
    predictor = None
    if "decoder_embed.weight" in keys:
      depth = 1 + max(
        int(re.match(r"decoder_blocks\.(\d+)\.", k).group(1))
        for k in keys
        if k.startswith("decoder_blocks.")
      )
      predictor = (state["decoder_embed.weight"].shape[0], depth, predictor_heads)
    has_text = any(k.startswith("text_encoder.text_encoder.") for k in keys)
    if has_text and bert_config is None:
      raise ValueError(f"{path} holds a BERT text encoder: pass bert_config")
    model = cls(
      size=spec["size"],
      n_mels=spec["n_mels"],
      frames=spec["frames"],
      patch=spec["patch"],
      clap_head=clap,
      text_proj=text_proj,
      bert_config=bert_config if has_text else None,
      logit_scale="logit_scale" in keys,
      predictor=predictor,
      target="target_norm.weight" in keys,
    )
    model.load_state_dict(state, strict=True)
    return model.eval()

  def forward_encoder(self, x: torch.Tensor) -> torch.Tensor:
    """[B, 1, F, t] → [B, 1 + F'·t', D]; a shorter input keeps the first table columns."""
    x = self.patch_embed(x)
    pos = self.pos_embed[:, 1:]
    if x.shape[1] < pos.shape[1]:
      d = pos.shape[-1]
      pos = pos.reshape(1, self.grid_f, -1, d)[:, :, : x.shape[1] // self.grid_f].reshape(1, -1, d)
    x = x + pos
    cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x)

  def chunk_tokens(self, lms: torch.Tensor) -> list[torch.Tensor]:
    """Normalised log-mel [B, F, T] → patch tokens (no cls) of each trained-length chunk."""
    t = lms.shape[-1]
    n_chunk = -(-t // self.frames)
    pad = (self.patch - t % self.frames % self.patch) % self.patch
    x = F.pad(lms, (0, pad))[:, None]
    return [
      self.forward_encoder(x[..., i * self.frames : (i + 1) * self.frames])[:, 1:]
      for i in range(n_chunk)
    ]

  def frame_features(self, lms: torch.Tensor) -> torch.Tensor:
    """[B, T', F'·D]: per time patch, the frequency patches' features side by side."""
    out = []
    for e in self.chunk_tokens(lms):
      b, n, d = e.shape
      out.append(
        e.reshape(b, self.grid_f, n // self.grid_f, d)
        .permute(0, 2, 1, 3)
        .reshape(b, n // self.grid_f, self.grid_f * d)
      )
    return torch.cat(out, dim=1)

  def clip_features(self, lms: torch.Tensor) -> torch.Tensor:
    return self.frame_features(lms).mean(1)

  def clap_audio(self, lms: torch.Tensor) -> torch.Tensor:
    """CLAP audio embedding (not normalised) from all chunks' patch tokens."""
    tokens = torch.cat(self.chunk_tokens(lms), dim=1)
    return (
      self.audio_proj(tokens) if self.clap_head == "semantic" else self.audio_proj(tokens.mean(1))
    )

  def clap_text(self, ids: torch.Tensor, mask: torch.Tensor, pooling: str = "cls") -> torch.Tensor:
    """CLAP text embedding (not normalised): BERT CLS (→ text_proj when present)."""
    t = self.text_encoder(ids, mask, pooling)
    return self.text_proj(t) if hasattr(self, "text_proj") else t


def log_mel(wave: torch.Tensor, norm_stats: tuple[float, float], sr: int = 16000) -> torch.Tensor:
  """Official 16 kHz front end with torch.stft + librosa's Slaney filters, normalised."""
  n_fft, hop = 400, 160
  fb = torch.from_numpy(
    librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=80, fmin=50, fmax=8000, htk=False, norm="slaney")
  ).float()
  spec = (
    torch.stft(
      wave,
      n_fft,
      hop,
      n_fft,
      torch.hann_window(n_fft),
      center=True,
      pad_mode="reflect",
      return_complex=True,
    ).abs()
    ** 2
  )
  lm = torch.log(fb @ spec + torch.finfo(torch.float32).eps)
  return (lm - norm_stats[0]) / norm_stats[1]


def randomize_(model: OfficialM2D, seed: int, norm_stats: tuple[float, float]) -> None:
  """Random weights everywhere (norms near 1), exact sin-cos tables, given norm_stats."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("pos_embed") or name == "norm_stats":
        continue
      noise = torch.randn(p.shape, generator=gen)
      is_norm = p.ndim == 1 and re.search(r"(norm\d?|LayerNorm)\.weight$", name)
      p.copy_(1.0 + 0.1 * noise if is_norm else 0.05 * noise)
    n = model.pos_embed.shape[1] - 1
    model.pos_embed.copy_(
      torch.from_numpy(sincos_table(model.pos_embed.shape[-1], model.grid_f, n // model.grid_f))[
        None
      ]
    )
    if hasattr(model, "decoder_pos_embed"):
      model.decoder_pos_embed.copy_(
        torch.from_numpy(
          sincos_table(model.decoder_pos_embed.shape[-1], model.grid_f, n // model.grid_f)
        )[None]
      )
    model.norm_stats.copy_(torch.tensor(norm_stats))
    if hasattr(model, "logit_scale"):
      model.logit_scale.fill_(3.0)


def write_official(model: OfficialM2D, folder: Path, step: int = 5) -> Path:
  """Saves {"model": state_dict, "args": Namespace} as `<folder>/checkpoint-<step>.pth`."""
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / f"checkpoint-{step}.pth"
  torch.save({"model": model.state_dict(), "args": argparse.Namespace(epochs=step)}, path)
  return path
