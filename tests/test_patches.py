"""Patch order, sin-cos position values and chunking vs independent numpy computations."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap.models import patches


def test_patchify_order_and_inverse():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 80, 608 + 7)).astype(np.float32)  # trailing frames drop
  out = np.asarray(patches.patchify(jnp.asarray(x), 16))
  assert out.shape == (2, 5 * 38, 256)
  for b in range(2):
    for f in range(5):
      for t in (0, 1, 37):
        expected = x[b, f * 16 : (f + 1) * 16, t * 16 : (t + 1) * 16].reshape(-1)
        np.testing.assert_array_equal(out[b, f * 38 + t], expected)
  back = np.asarray(patches.unpatchify(jnp.asarray(out), (5, 38), 16))
  np.testing.assert_array_equal(back, x[:, :, :608])


def test_patchify_matches_conv_weight_flattening():
  """A Dense on patchify output equals the official OIHW conv (stride = kernel = 16)."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1, 32, 48)).astype(np.float32)
  w = rng.standard_normal((3, 1, 16, 16)).astype(np.float32)  # [D, C=1, kh(freq), kw(time)]
  conv = np.zeros((3, 2, 3))
  for f in range(2):
    for t in range(3):
      conv[:, f, t] = np.tensordot(
        w[:, 0], x[0, f * 16 : (f + 1) * 16, t * 16 : (t + 1) * 16], axes=([1, 2], [0, 1])
      )
  expected = conv.reshape(3, -1).T  # flatten [D, F', T'] → tokens f·T' + t
  dense = np.asarray(patches.patchify(jnp.asarray(x), 16))[0] @ w.reshape(3, -1).T
  np.testing.assert_allclose(dense, expected, rtol=1e-4, atol=1e-4)


def test_sincos_values():
  dim, gf, gt = 32, 5, 38
  table = patches.sincos_pos_embed(dim, (gf, gt))
  assert table.shape == (1 + gf * gt, dim)
  assert not table[0].any()
  q = dim // 4
  for f, t in [(0, 0), (1, 0), (0, 1), (4, 37), (2, 17)]:
    row = table[1 + f * gt + t]
    for k in range(q):
      w = 1.0 / 10000 ** (k / q)
      assert row[k] == pytest.approx(math.sin(t * w), abs=1e-6)
      assert row[q + k] == pytest.approx(math.cos(t * w), abs=1e-6)
      assert row[2 * q + k] == pytest.approx(math.sin(f * w), abs=1e-6)
      assert row[3 * q + k] == pytest.approx(math.cos(f * w), abs=1e-6)
  with pytest.raises(ValueError, match="divisible by 4"):
    patches.sincos_pos_embed(30, (2, 2))


def test_fit_pos_embed_truncates_time_columns():
  table = patches.sincos_pos_embed(16, (5, 38), cls_token=False)
  short = np.asarray(patches.fit_pos_embed(table, (5, 38), (5, 13)))
  expected = table.reshape(5, 38, 16)[:, :13].reshape(-1, 16)
  np.testing.assert_array_equal(short, expected)
  # Truncation equals a table computed for the smaller grid (values depend on (f, t) only).
  np.testing.assert_allclose(
    short, patches.sincos_pos_embed(16, (5, 13), cls_token=False), atol=1e-6
  )
  same = np.asarray(patches.fit_pos_embed(table, (5, 38), (5, 38)))
  np.testing.assert_array_equal(same, table)


def test_fit_pos_embed_resizes_longer_grid_bicubically():
  table = patches.sincos_pos_embed(16, (5, 38), cls_token=False)
  longer = np.asarray(patches.fit_pos_embed(table, (5, 38), (5, 62)))
  assert longer.shape == (5 * 62, 16)
  grid = longer.reshape(5, 62, 16)
  # Frequency half is untouched by a time-only resize; time half stays within [-1, 1]-ish
  # and is smooth (first column close to the original first column).
  np.testing.assert_allclose(
    grid[:, :, 8:], table.reshape(5, 38, 16)[:, :1, 8:].repeat(62, 1), atol=1e-5
  )
  np.testing.assert_allclose(grid[:, 0, :8], table.reshape(5, 38, 16)[:, 0, :8], atol=0.35)
  assert np.abs(grid).max() < 1.3


def test_tokens_to_frames_layout():
  rng = np.random.default_rng(2)
  tokens = rng.standard_normal((2, 5 * 7, 4)).astype(np.float32)
  out = np.asarray(patches.tokens_to_frames(jnp.asarray(tokens), 5))
  assert out.shape == (2, 7, 20)
  for t in range(7):
    np.testing.assert_array_equal(
      out[:, t], np.concatenate([tokens[:, f * 7 + t] for f in range(5)], axis=-1)
    )


def test_split_time_chunks_as_official_runtime():
  x = jnp.ones((1, 80, 1001))
  chunks = patches.split_time_chunks(x, 608, 16)
  assert [c.shape[-1] for c in chunks] == [608, 400]  # 393 frames padded by 7 to 400
  assert float(chunks[1][..., 393:].sum()) == 0.0
  assert [c.shape[-1] for c in patches.split_time_chunks(jnp.ones((1, 80, 1216)), 608)] == [
    608,
    608,
  ]


def _official_chunks(x: np.ndarray, unit: int, p: int) -> list[np.ndarray]:
  """m2d runtime_audio.encode_lms: pad the whole input, then slice whole units."""
  pad = (p - (x.shape[-1] % unit % p)) % p
  x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return [x[..., i * unit : (i + 1) * unit] for i in range(-(-(x.shape[-1] - pad) // unit))]


@pytest.mark.parametrize("unit", [64, 100, 1001])
def test_split_time_chunks_numpy_and_jax_match_the_official_slicing(unit):
  """One splitter for the host (numpy views) and jitted code; a unit that is no patch
  multiple (1001) caps the last chunk at the unit, as the official slicing does."""
  for t in (1, 15, 16, 63, 64, 65, 100, 999, 1000, 1001, 2000, 2002, 3000):
    x = np.random.default_rng(t).standard_normal((2, 4, t)).astype(np.float32)
    want = _official_chunks(x, unit, 16)
    host = patches.split_time_chunks(x, unit, 16)
    assert all(isinstance(c, np.ndarray) for c in host)
    for got in (host, patches.split_time_chunks(jnp.asarray(x), unit, 16)):
      assert len(got) == len(want), (unit, t)
      for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), w)
    for g, w in zip(patches.split_time_chunks(x[0], unit, 16), want):  # [F, T] input.
      np.testing.assert_array_equal(g, w[0])
    whole = patches.split_time_chunks(x, unit, 16, whole_units=True)
    assert all(c.shape[-1] == unit for c in whole)
    np.testing.assert_array_equal(np.concatenate(whole, axis=-1)[..., :t], x)
    assert not np.concatenate(whole, axis=-1)[..., t:].any()


def test_encode_chunks_in_one_batch_equals_chunk_by_chunk():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((3, 32, 100)).astype(np.float32))
  encode = lambda c: patches.patchify(c, 16)[..., :5] + jnp.mean(c, axis=(1, 2))[:, None, None]
  single = patches.encode_chunks(encode, x, 48, 16)
  batched = patches.encode_chunks(encode, x, 48, 16, one_batch=True)
  assert [c.shape for c in batched] == [(3, 6, 5)] * 3  # The last chunk: a whole unit.
  for s, b in zip(single[:2], batched[:2]):
    np.testing.assert_allclose(b, s, rtol=1e-6)
  np.testing.assert_allclose(
    batched[2][:, [0, 3]],
    encode(jnp.pad(x[..., 96:], ((0, 0), (0, 0), (0, 44))))[:, [0, 3]],
    rtol=1e-6,
  )


def test_encode_in_chunks_concatenates_frame_features():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 32, 100)).astype(np.float32)
  encode = lambda c: patches.patchify(c, 16)[..., :3] * 2.0  # any token-wise "encoder"
  out = np.asarray(patches.encode_in_chunks(encode, jnp.asarray(x), 48, 16))
  # 100 frames → chunks 48, 48, 4 → padded to 16 → 3 + 3 + 1 time patches.
  assert out.shape == (2, 7, 2 * 3)
  xp = np.pad(x, ((0, 0), (0, 0), (0, 12)))
  for t in range(7):
    for f in range(2):
      patch = xp[:, f * 16 : (f + 1) * 16, t * 16 : (t + 1) * 16].reshape(2, -1)[:, :3] * 2.0
      np.testing.assert_allclose(out[:, t, f * 3 : (f + 1) * 3], patch, rtol=1e-6)
