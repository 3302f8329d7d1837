"""Head initialisation as the official models: PyTorch default for text_proj and the 2024
MLP head (created after MAE's initialize_weights), xavier/zero for the semantic pooler."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxclap.models import clap_heads, m2d


def _check_torch_default(w: np.ndarray, fan_in: int) -> None:
  """nn.Linear default: kaiming_uniform(a=√5) ≡ U(−1/√fan_in, 1/√fan_in), bias the same."""
  bound = 1.0 / math.sqrt(fan_in)
  assert np.abs(w).max() <= bound
  assert np.abs(w).max() > 0.95 * bound  # Fills the interval (not a narrower law).
  assert abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.05
  assert abs(w.mean()) < 0.1 * bound


def test_text_projection_is_torch_default():
  d_text, out = 1024, 512
  p = clap_heads.TextProjection(out).init(jax.random.key(0), jnp.zeros((1, d_text)))
  p = nn.unbox(p)["params"]["proj"]
  _check_torch_default(np.asarray(p["kernel"]), d_text)
  _check_torch_default(np.asarray(p["bias"]), d_text)


def test_mlp_head_is_torch_default():
  d = 768
  p = clap_heads.MeanMlpHead(out_dim=d).init(jax.random.key(1), jnp.zeros((1, 3, d)))
  p = nn.unbox(p)["params"]
  for layer in ("fc1", "fc2"):
    _check_torch_default(np.asarray(p[layer]["kernel"]), d)
    _check_torch_default(np.asarray(p[layer]["bias"]), d)


def test_semantic_pooler_is_mae_init():
  """AudioToSemantic applies _init_weights: xavier-uniform Linear, zero bias, zero token."""
  d = 256
  p = nn.unbox(jax.jit(clap_heads.SemanticPooler().init)(jax.random.key(2), jnp.zeros((1, 3, d))))
  p = p["params"]
  assert not np.any(np.asarray(p["sem_token"]))
  for path, leaf in jax.tree_util.tree_leaves_with_path(p["sem_block_0"]):
    names = [k.key for k in path]
    leaf = np.asarray(leaf)
    if names[-1] == "kernel":
      bound = math.sqrt(6.0 / (leaf.shape[0] + leaf.shape[1]))
      assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.95 * bound, names
    elif names[-1] == "bias":
      assert not np.any(leaf), names
    else:
      np.testing.assert_array_equal(leaf, 1.0)  # LayerNorm scale.


def test_stage1_model_uses_these_heads():
  model = m2d.build_model(
    {
      "size": "test",
      "predictor_width": 32,
      "predictor_depth": 1,
      "predictor_heads": 2,
      "clap_dim": 64,
      "text_dim": 96,
      "input_frames": 64,
      "clap_head": "mlp",
    }
  )
  online, _ = nn.unbox(m2d.init_params(model, jax.random.key(3), n_frames=64, text_dim=96))
  bias = np.asarray(online["text_proj"]["proj"]["bias"])
  assert np.any(bias) and np.abs(bias).max() <= 1 / math.sqrt(96)
  bias = np.asarray(online["audio_proj"]["fc1"]["bias"])
  assert np.any(bias) and np.abs(bias).max() <= 1 / math.sqrt(64)
