"""ViT encoder: parameter count, shapes, logical names, block maths vs numpy."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from jaxclap import layers
from jaxclap.models import patches, sizes, vit


def encoder(size: str, frames: int = 608, dtype=jnp.float32) -> vit.ViTEncoder:
  w, d, h = sizes.get_size(size)
  return vit.ViTEncoder(w, d, h, input_frames=frames, dtype=dtype)


def abstract_params(module, *args):
  return jax.eval_shape(lambda r: module.init(r, *args), jax.random.key(0))["params"]


def test_vit_base_parameter_count():
  params = abstract_params(encoder("base"), jnp.zeros((1, 80, 608)))
  counts = {
    k: sum(math.prod(p.shape) for p in jax.tree.leaves(v)) for k, v in nn.unbox(params).items()
  }
  assert sum(counts.values()) == 85_254_144
  assert counts["patch_embed"] == 197_376 and counts["cls_token"] == 768
  block = sum(math.prod(p.shape) for p in jax.tree.leaves(nn.unbox(params)["body"]["block_0"]))
  assert block == 7_087_872
  assert set(nn.unbox(params)["body"]) == {f"block_{i}" for i in range(12)} | {"norm"}


@pytest.mark.parametrize("frames", [208, 608])
def test_base_shapes(frames):
  enc = encoder("base")
  params = abstract_params(enc, jnp.zeros((1, 80, 608)))
  out = jax.eval_shape(
    lambda p, x: enc.apply({"params": p}, x),
    params,
    jax.ShapeDtypeStruct((2, 80, frames), jnp.float32),
  )
  assert out.shape == (2, 1 + 5 * (frames // 16), 768)


@pytest.mark.parametrize("size,frames", [("test", 208), ("test", 608), ("tiny", 208)])
def test_small_sizes_run(size, frames):
  enc = encoder(size)
  x = jax.random.normal(jax.random.key(1), (2, 80, frames))
  params = enc.init(jax.random.key(0), x)
  out = jax.jit(enc.apply)(params, x)
  assert out.shape == (2, 1 + 5 * (frames // 16), sizes.get_size(size).width)
  assert np.isfinite(np.asarray(out)).all()


def test_every_param_has_logical_names():
  params = abstract_params(encoder("test"), jnp.zeros((1, 80, 64)))
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(p, nn.Partitioned) for p in leaves)
  for p in leaves:
    assert len(p.names) == p.value.ndim
  specs = nn.get_partition_spec(params)
  assert tuple(specs["body"]["block_0"]["attn"]["qkv"]["kernel"]) == ("embed", "qkv")
  assert tuple(specs["body"]["block_0"]["mlp"]["fc1"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["patch_embed"]["kernel"]) == ("patch", "embed")


def test_bf16_compute_keeps_f32_params():
  enc = encoder("test", dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(1), (2, 80, 64))
  params = enc.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.unbox(params)))
  out = enc.apply(params, x)
  assert out.dtype == jnp.float32  # bf16 matmul operands; float32 results and residual stream.
  ref = encoder("test").apply(params, x)
  assert np.abs(np.asarray(out, np.float32) - np.asarray(ref)).max() < 0.1


def test_unknown_size():
  with pytest.raises(ValueError, match="huge"):
    sizes.get_size("huge")


def test_attention_matches_jax_dot_product_attention():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 7, 3, 8))
  np.testing.assert_allclose(
    np.asarray(layers.attention(q, k, v)),
    np.asarray(jax.nn.dot_product_attention(q, k, v)),
    rtol=1e-5,
    atol=1e-5,
  )


def _np_ln(x, p, eps):
  mu = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_dense(x, p):
  return x @ p["kernel"] + p["bias"]


def np_block(x: np.ndarray, p: dict, heads: int, eps: float) -> np.ndarray:
  """Independent pre-norm block: timm layout, qkv rows q|k|v, exact GELU."""
  b, n, d = x.shape
  hd = d // heads
  qkv = _np_dense(_np_ln(x, p["norm1"], eps), p["attn"]["qkv"]).reshape(b, n, 3, heads, hd)
  q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [b, h, n, hd]
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  att = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
  x = x + _np_dense(att, p["attn"]["proj"])
  h = _np_dense(_np_ln(x, p["norm2"], eps), p["mlp"]["fc1"])
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  return x + _np_dense(h, p["mlp"]["fc2"])


def test_block_matches_numpy_reference():
  block = layers.Block(heads=4, mlp_ratio=4.0, eps=1e-6)
  x = np.asarray(jax.random.normal(jax.random.key(2), (2, 9, 32)))
  params = nn.unbox(block.init(jax.random.key(3), x))["params"]
  rng = np.random.default_rng(4)
  params = jax.tree.map(
    lambda a: np.asarray(a) + 0.1 * rng.standard_normal(a.shape), params
  )  # non-trivial norms and biases
  out = np.asarray(block.apply({"params": params}, x))
  ref = np_block(x.astype(np.float64), params, 4, 1e-6)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_embed_uses_truncated_positions_for_short_input():
  enc = encoder("test", frames=608)
  x = jax.random.normal(jax.random.key(5), (1, 80, 64))  # 5 × 4 patches
  params = enc.init(jax.random.key(0), x)
  tokens = enc.apply(params, x, method=vit.ViTEncoder.embed)
  p = nn.unbox(params)["params"]["patch_embed"]
  table = patches.sincos_pos_embed(64, (5, 38), cls_token=False).reshape(5, 38, 64)
  expected = np.asarray(patches.patchify(x)) @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
  expected += table[:, :4].reshape(20, 64)
  np.testing.assert_allclose(np.asarray(tokens)[0], expected[0], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="mel bins"):
    enc.apply(params, jnp.zeros((1, 64, 64)))


def test_key_mask_equals_dropping_padded_keys():
  """Masked keys contribute nothing: same output as attention over the real keys only."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 7, 2, 4)), jnp.float32) for _ in range(3))
  mask = np.ones((2, 7), np.int32)
  mask[:, 5:] = 0
  masked = layers.attention(q, k, v, jnp.asarray(mask))
  short = layers.attention(q, k[:, :5], v[:, :5])
  np.testing.assert_allclose(np.asarray(masked), np.asarray(short), atol=1e-6)


def test_attention_dropout_draws_as_flax():
  """With a key mask and dropout: flax's dot_product_attention, same keep mask (BERT's)."""
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 7, 3, 8))
  mask = jnp.arange(7)[None].repeat(2, 0) < jnp.array([[7], [4]])
  rng = jax.random.key(5)
  got = layers.attention(q, k, v, mask, dropout_rate=0.3, dropout_rng=rng)
  want = nn.dot_product_attention(
    q, k, v, mask=mask[:, None, None, :], dropout_rate=0.3, dropout_rng=rng, deterministic=False
  )
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  assert not np.allclose(np.asarray(got), np.asarray(layers.attention(q, k, v, mask)))


def test_block_num_queries_equals_first_rows_of_full_block():
  """A block computing only its first tokens' outputs gives those rows of the full block."""
  block = layers.Block(heads=2, mlp_ratio=2.0)
  x = jax.random.normal(jax.random.key(1), (2, 9, 16))
  mask = jnp.arange(9)[None].repeat(2, 0) < jnp.array([[9], [6]])
  params = block.init(jax.random.key(2), x)
  full = block.apply(params, x, mask)
  first = block.apply(params, x, mask, 2)
  assert first.shape == (2, 2, 16)
  np.testing.assert_allclose(np.asarray(first), np.asarray(full[:, :2]), atol=1e-5)


def test_stored_position_table_starts_as_sincos_and_stays_fixed():
  """pos_table="stored" (imported official tables): same outputs at init, no gradient, no decay."""
  from jaxclap.train import optim

  x = jax.random.normal(jax.random.key(0), (2, 80, 64))
  kw = dict(width=32, depth=1, heads=2, input_frames=64)
  plain, stored = vit.ViTEncoder(**kw), vit.ViTEncoder(**kw, pos_table="stored")
  p_plain = plain.init(jax.random.key(1), x)["params"]
  p_stored = nn.unbox(stored.init(jax.random.key(1), x)["params"])
  assert p_stored["pos_embed"].shape == (5 * 4, 32)
  rest = {k: v for k, v in p_stored.items() if k != "pos_embed"}
  assert set(nn.unbox(p_plain)) == set(rest)  # The stored table is the only extra parameter.
  np.testing.assert_allclose(
    stored.apply({"params": p_stored}, x), plain.apply({"params": nn.unbox(rest)}, x), atol=1e-6
  )
  grads = jax.grad(lambda p: jnp.sum(stored.apply({"params": p}, x) ** 2))(p_stored)
  assert not np.any(np.asarray(grads["pos_embed"]))
  assert not optim.decay_mask({"encoder": p_stored})["encoder"]["pos_embed"]
  with pytest.raises(ValueError, match="model.pos_table='learned'"):
    vit.ViTEncoder(**kw, pos_table="learned").init(jax.random.key(1), x)
