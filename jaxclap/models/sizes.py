"""ViT sizes by name: (width, depth, heads). "test" is a tiny size for fast CPU tests;
"nano" and "mini" are distillation students (train/distill.py) of "test" and "tiny"."""

from __future__ import annotations

import types
from typing import NamedTuple


class ViTSize(NamedTuple):
  """Encoder width, number of blocks and attention heads."""

  width: int
  depth: int
  heads: int


SIZES = types.MappingProxyType(
  {
    "nano": ViTSize(32, 2, 2),
    "test": ViTSize(64, 2, 2),
    "mini": ViTSize(96, 6, 3),
    "tiny": ViTSize(192, 12, 3),
    "small": ViTSize(384, 12, 6),
    "base": ViTSize(768, 12, 12),
    "large": ViTSize(1024, 24, 16),
  }
)


def get_size(name: str) -> ViTSize:
  """Look up a size by name, with an error listing the known names."""
  if name not in SIZES:
    raise ValueError(f"unknown ViT size {name!r}; known sizes: {sorted(SIZES)}")
  return SIZES[name]
