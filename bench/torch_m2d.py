"""PyTorch baseline of the stage-1 M2D + CLAP train step (the official recipe's computation).

The official code (nttcslab/m2d) builds its ViT from timm `Block`s; timm needs torchvision,
which cannot be installed here, so the blocks below are written to be equivalent: pre-norm,
fused qkv with bias (rows q|k|v), `F.scaled_dot_product_attention`, exact-GELU MLP,
LayerNorm eps 1e-6. Everything else follows the same recipe as `jaxclap.models.m2d`:
torch.stft log-mel front end, per-example random masking (same visible/masked counts),
online encoder on cls + visible tokens, predictor with mask tokens and sin-cos positions,
EMA target (blocks + final norm) on cls + masked tokens under no_grad, norm_mse +
λ·symmetric InfoNCE with a semantic-token pooler, AdamW with clipping, EMA update.

`load_jax_params` copies a jaxclap (online, target) parameter pair into this model, so
tests can check that both frameworks compute the same loss.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jaxclap.audio import frontend
from jaxclap.audio import norm_stats as norm_stats_lib
from jaxclap.models import m2d as jax_m2d
from jaxclap.models import patches, sizes


class Attention(nn.Module):
  """timm-style attention: fused qkv (bias), SDPA, output projection."""

  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, H, N, hd]
    return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
  """fc1 → exact GELU → fc2."""

  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
  """timm `Block` equivalent: x + attn(norm1(x)); x + mlp(norm2(x))."""

  def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = Attention(dim, heads)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class ViTBody(nn.Module):
  """Blocks + final LayerNorm (the part the EMA target copies)."""

  def __init__(self, dim: int, depth: int, heads: int):
    super().__init__()
    self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x)


class PatchEmbed(nn.Module):
  """16×16 stride-16 conv on [B, 1, F, T] (official layout) → tokens [B, F'·T', D]."""

  def __init__(self, dim: int, patch: int):
    super().__init__()
    self.proj = nn.Conv2d(1, dim, patch, stride=patch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.proj(x[:, None]).flatten(2).transpose(1, 2)


class Encoder(nn.Module):
  """Patch embedding + fixed sin-cos positions + cls token + body."""

  def __init__(self, dim: int, depth: int, heads: int, patch: int, grid: tuple[int, int]):
    super().__init__()
    self.patch_embed = PatchEmbed(dim, patch)
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
    self.register_buffer(
      "pos",
      torch.from_numpy(patches.sincos_pos_embed(dim, grid, cls_token=False)),
      persistent=False,
    )
    self.body = ViTBody(dim, depth, heads)

  def embed(self, x: torch.Tensor) -> torch.Tensor:
    return self.patch_embed(x) + self.pos

  def with_cls(self, tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)


class Predictor(nn.Module):
  """Linear→width, mask tokens restored to full order, positions, blocks, norm, Linear."""

  def __init__(self, in_dim: int, width: int, depth: int, heads: int, grid: tuple[int, int]):
    super().__init__()
    self.embed = nn.Linear(in_dim, width)
    self.mask_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
    self.register_buffer(
      "pos",
      torch.from_numpy(patches.sincos_pos_embed(width, grid, cls_token=True)),
      persistent=False,
    )
    self.blocks = nn.ModuleList([Block(width, heads) for _ in range(depth)])
    self.norm = nn.LayerNorm(width, eps=1e-6)
    self.pred = nn.Linear(width, in_dim)

  def forward(self, z: torch.Tensor, vis: torch.Tensor, msk: torch.Tensor) -> torch.Tensor:
    x = self.embed(z)
    b, m = msk.shape
    w = x.shape[-1]
    shuffled = torch.cat([x[:, 1:], self.mask_token.expand(b, m, w)], dim=1)
    restore = torch.argsort(torch.cat([vis, msk], dim=1), dim=1)
    x_ = torch.gather(shuffled, 1, restore[..., None].expand(-1, -1, w))
    x = torch.cat([x[:, :1], x_], dim=1) + self.pos
    for blk in self.blocks:
      x = blk(x)
    x = self.norm(x)
    y = torch.gather(x[:, 1:], 1, msk[..., None].expand(-1, -1, w))
    return self.pred(y)


class SemanticPooler(nn.Module):
  """2025 CLAP head: learnable token (init 0) + 1 block (1 head, MLP ×1, eps 1e-5) + norm."""

  def __init__(self, dim: int, out_dim: int):
    super().__init__()
    self.sem_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.sem_blocks = nn.ModuleList([Block(dim, 1, 1.0, 1e-5)])
    self.norm = nn.LayerNorm(dim, eps=1e-5)
    self.out_proj = nn.Linear(dim, out_dim) if out_dim != dim else None

  def forward(self, tokens: torch.Tensor) -> torch.Tensor:
    x = torch.cat([self.sem_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    for blk in self.sem_blocks:
      x = blk(x)
    x = self.norm(x[:, 0])
    return x if self.out_proj is None else self.out_proj(x)


class TextProjection(nn.Module):
  """Linear(d_text → clap_dim); identity when the widths match."""

  def __init__(self, text_dim: int, out_dim: int):
    super().__init__()
    self.proj = nn.Linear(text_dim, out_dim) if text_dim != out_dim else None

  def forward(self, t: torch.Tensor) -> torch.Tensor:
    return t if self.proj is None else self.proj(t)


class LogMel(nn.Module):
  """torch.stft log-mel with the official 16 kHz parameters (full-length clips)."""

  def __init__(self, cfg: frontend.FrontendConfig, norm_stats: tuple[float, float]):
    super().__init__()
    self.cfg = cfg
    self.norm_stats = norm_stats
    self.register_buffer(
      "window", torch.hann_window(cfg.win_length, periodic=True), persistent=False
    )
    self.register_buffer("fb", torch.from_numpy(frontend.mel_filterbank(cfg)), persistent=False)

  def forward(self, wave: torch.Tensor) -> torch.Tensor:
    c = self.cfg
    spec = torch.stft(
      wave,
      c.n_fft,
      c.hop_length,
      c.win_length,
      self.window,
      center=True,
      pad_mode="reflect",
      return_complex=True,
    )  # [B, K, T]
    power = spec.real**2 + spec.imag**2
    mel = torch.einsum("bkt,km->bmt", power, self.fb)
    lm = torch.log(mel + frontend.LOG_EPS)
    return (lm - self.norm_stats[0]) / self.norm_stats[1]


def norm_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
  """Official M2D loss: standardised target tokens, mean of 2 − 2·cos."""
  target = (target - target.mean(-1, keepdim=True)) / torch.sqrt(
    target.var(-1, keepdim=True) + 1e-6
  )
  return (2 - 2 * (F.normalize(pred, dim=-1) * F.normalize(target, dim=-1)).sum(-1)).mean()


def clip_infonce(
  audio: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
  """Symmetric InfoNCE over the batch with logits exp(s)·a·tᵀ."""
  logits = logit_scale.exp() * F.normalize(audio, dim=-1) @ F.normalize(text, dim=-1).T
  labels = torch.arange(logits.shape[0])
  return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class TorchM2D(nn.Module):
  """Stage-1 M2D + CLAP in PyTorch; `forward` returns (loss, metrics)."""

  def __init__(
    self,
    model_cfg: Mapping[str, Any],
    *,
    n_frames: int,
    clap_weight: float,
    norm_stats: tuple[float, float] = norm_stats_lib.LEGACY_NORM_STATS,
    frontend_cfg: frontend.FrontendConfig = frontend.FrontendConfig(),
  ):
    super().__init__()
    get = model_cfg.get
    width, depth, heads = sizes.get_size(model_cfg["size"])
    patch = get("patch_size", 16)
    self.grid = patches.grid_size(frontend_cfg.n_mels, n_frames, patch)
    self.num_patches = self.grid[0] * self.grid[1]
    self.mask_ratio = get("mask_ratio", 0.7)
    self.clap_weight = clap_weight
    self.frontend = LogMel(frontend_cfg, norm_stats)
    self.encoder = Encoder(width, depth, heads, patch, self.grid)
    self.target = ViTBody(width, depth, heads)
    self.target.requires_grad_(False)
    self.predictor = Predictor(
      width,
      get("predictor_width", 512),
      get("predictor_depth", 8),
      get("predictor_heads", 16),
      self.grid,
    )
    clap_dim = get("clap_dim", 768)
    self.audio_proj = SemanticPooler(width, clap_dim)
    self.text_proj = TextProjection(model_cfg["text_dim"], clap_dim)
    self.logit_scale = nn.Parameter(torch.tensor(jax_m2d.LOGIT_SCALE_INIT))

  def sample_masks(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example random masks, sorted: (visible [B, V], masked [B, M])."""
    v = jax_m2d.num_visible(self.num_patches, self.mask_ratio)
    shuffle = torch.argsort(torch.rand(batch, self.num_patches), dim=1)
    return shuffle[:, :v].sort(dim=1).values, shuffle[:, v:].sort(dim=1).values

  def forward(
    self,
    wave: torch.Tensor,
    text_emb: torch.Tensor,
    vis: torch.Tensor | None = None,
    msk: torch.Tensor | None = None,
  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if vis is None:
      vis, msk = self.sample_masks(wave.shape[0])
    x = self.frontend(wave)
    tokens = self.encoder.embed(x)
    d = tokens.shape[-1]
    visible = torch.gather(tokens, 1, vis[..., None].expand(-1, -1, d))
    z = self.encoder.body(self.encoder.with_cls(visible))
    pred = self.predictor(z, vis, msk)
    with torch.no_grad():
      masked = torch.gather(tokens, 1, msk[..., None].expand(-1, -1, d))
      target = self.target(self.encoder.with_cls(masked))[:, 1:]
    loss_m2d = norm_mse(pred, target)
    loss_clap = clip_infonce(self.audio_proj(z[:, 1:]), self.text_proj(text_emb), self.logit_scale)
    loss = loss_m2d + self.clap_weight * loss_clap
    return loss, {
      "loss": loss.detach(),
      "loss_m2d": loss_m2d.detach(),
      "loss_clap": loss_clap.detach(),
    }


_NO_DECAY = ("cls_token", "mask_token", "sem_token", "pos", "logit_scale")


def make_optimizer(
  model: TorchM2D,
  *,
  lr: float,
  weight_decay: float = 0.05,
  betas: tuple[float, float] = (0.9, 0.95),
) -> torch.optim.AdamW:
  """AdamW with the paper's decay mask (none on biases, norms, tokens, temperature)."""
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    if not p.requires_grad:
      continue
    skip = p.ndim <= 1 or any(n in name.split(".") for n in _NO_DECAY)
    (no_decay if skip else decay).append(p)
  return torch.optim.AdamW(
    [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
    lr=lr,
    betas=betas,
    foreach=True,
  )  # Multi-tensor kernels, as the default on GPU.


def train_step(
  model: TorchM2D,
  opt: torch.optim.Optimizer,
  wave: torch.Tensor,
  text_emb: torch.Tensor,
  *,
  ema_decay: float,
  grad_clip: float = 3.0,
  bf16: bool = False,
) -> dict[str, torch.Tensor]:
  """One update: loss, backward, clip, AdamW, logit-scale clamp, EMA target update.

  `bf16`: the forward under CPU bf16 autocast (the CPU analogue of the official GPU
  autocast): matmuls take bf16 operands, parameters and optimizer stay float32.
  """
  opt.zero_grad(set_to_none=True)
  with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
    loss, metrics = model(wave, text_emb)
  loss.backward()
  if grad_clip > 0:
    metrics["grad_norm"] = nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
  opt.step()
  with torch.no_grad():
    model.logit_scale.clamp_(0.0, jax_m2d.LOGIT_SCALE_MAX)
    torch._foreach_lerp_(
      list(model.target.parameters()), list(model.encoder.body.parameters()), 1.0 - ema_decay
    )
  return metrics


def _torch_key(jax_key: str) -> str:
  """'encoder.body.block_3.attn.qkv.kernel' → 'encoder.body.blocks.3.attn.qkv.weight'."""
  key = re.sub(r"\bsem_block_(\d+)\b", r"sem_blocks.\1", jax_key)
  key = re.sub(r"\bblock_(\d+)\b", r"blocks.\1", key)
  if key == "encoder.patch_embed.kernel":
    return "encoder.patch_embed.proj.weight"
  if key == "encoder.patch_embed.bias":
    return "encoder.patch_embed.proj.bias"
  return re.sub(r"\.(kernel|scale)$", ".weight", key)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, name + "."))
    else:
      out[name] = np.asarray(v, np.float32)
  return out


def load_jax_params(model: TorchM2D, online: Mapping[str, Any], target: Mapping[str, Any]) -> None:
  """Copies unboxed jaxclap (online, target) params into `model`; every tensor must match."""
  flat = {**_flatten(online), **_flatten(target, "target.")}
  state = model.state_dict()
  converted = {}
  for jkey, value in flat.items():
    tkey = _torch_key(jkey)
    if tkey not in state:
      raise KeyError(f"load_jax_params: JAX param {jkey!r} → {tkey!r} has no torch match")
    if jkey.endswith("patch_embed.kernel"):
      p = int(math.isqrt(value.shape[0]))
      value = value.T.reshape(value.shape[1], 1, p, p)  # (freq, time) row-major pixels.
    elif jkey.endswith("kernel"):
      value = value.T
    if tuple(value.shape) != tuple(state[tkey].shape):
      raise ValueError(
        f"load_jax_params: {jkey!r} shape {value.shape} != torch {tkey!r} "
        f"{tuple(state[tkey].shape)}"
      )
    converted[tkey] = torch.from_numpy(np.array(value, np.float32, copy=True))
  missing = sorted(set(state) - set(converted))
  if missing:
    raise KeyError(f"load_jax_params: torch params without a JAX source: {missing}")
  model.load_state_dict(converted, strict=True)
