"""Model FLOPs of a stage-1 step, counted from the network's shapes (for MFU and plans)."""

from __future__ import annotations

from typing import Any

from jaxclap.models import m2d, sizes


def blocks_flops(n_tok: int, d: int, depth: int, mlp_ratio: float = 4.0) -> float:
  """Forward matmul FLOPs of `depth` pre-norm blocks on n_tok tokens of width d."""
  linear = 2 * n_tok * d * d * (3 + 1 + 2 * mlp_ratio)  # qkv, proj, fc1 + fc2
  return depth * (linear + 4 * n_tok * n_tok * d)  # + q·kᵀ and p·v


def stage1_step_flops(
  model_cfg: Any, n_frames: int, batch: int = 1, *, n_mels: int = 80, patch: int = 16
) -> float:
  """Matmul FLOPs of one stage-1 step: trained parts fwd+bwd (3×), target forward (1×).

  Parts whose input needs no gradient (patch embedding, text projection) count 2×. The
  front end (rfft + mel, ≈0.03 GFLOP/clip at 80×608) and element-wise ops are left out.
  ViT-B 80×608: 85.9 GFLOP per clip.
  """
  w, depth, _ = sizes.get_size(model_cfg.size)
  n = (n_mels // patch) * (n_frames // patch)
  v = m2d.num_visible(n, model_cfg.mask_ratio)
  m = n - v
  pw, clap, text = model_cfg.predictor_width, model_cfg.clap_dim, model_cfg.text_dim
  online = blocks_flops(v + 1, w, depth)
  predictor = (
    2 * (v + 1) * w * pw + blocks_flops(n + 1, pw, model_cfg.predictor_depth) + 2 * m * pw * w
  )
  head = blocks_flops(v + 1, w, 1, mlp_ratio=1.0) + (2 * w * clap if clap != w else 0)
  no_input_grad = 2 * n * patch * patch * w + (2 * text * clap if text != clap else 0)
  target = blocks_flops(m + 1, w, depth)
  return batch * (3 * (online + predictor + head) + 2 * no_input_grad + target)
