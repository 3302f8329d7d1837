"""SentencePiece training (API and CLI), round trips, and the from-scratch text tower it feeds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap.data import caption_spm as spm_cli
from jaxclap.data import synth
from jaxclap.text import spm, tokenize
from jaxclap.text import tower as text_tower

CAPTIONS = [c for i in range(40) for c in synth.clip_spec(i).captions]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> Path:
  prefix = tmp_path_factory.mktemp("spm") / "demo_unigram"
  return spm.train_spm(CAPTIONS, vocab_size=150, model_type="unigram", output_prefix=prefix)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_trains_with_fixed_special_ids_and_round_trips(tmp_path, model_type):
  path = spm.train_spm(
    CAPTIONS, vocab_size=120, model_type=model_type, output_prefix=tmp_path / "sub" / model_type
  )
  assert path == tmp_path / "sub" / f"{model_type}.model"
  assert path.is_file() and path.with_suffix(".vocab").is_file()
  sp = spm.load_spm(path)
  assert sp.get_piece_size() == 120
  assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
  for text in CAPTIONS[:30] + ["  Extra   spaces,  UPPER case.  "]:
    normalised = sp.normalize(text).replace("\u2581", " ").strip()
    assert sp.decode(sp.encode(text)) == normalised
    # The model case-folds and collapses whitespace itself.
    assert normalised == " ".join(text.lower().split())
  # Subword pieces, not characters: captions compress.
  assert np.mean([len(sp.encode(t)) for t in CAPTIONS]) < 0.6 * np.mean([len(t) for t in CAPTIONS])


def test_cased_model_keeps_case(tmp_path):
  path = spm.train_spm(
    CAPTIONS, vocab_size=150, model_type="unigram", output_prefix=tmp_path / "c", lowercase=False
  )
  sp = spm.load_spm(path)
  assert sp.decode(sp.encode(CAPTIONS[0])) == CAPTIONS[0]


def test_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="vocab_size=50000 is too large"):
    spm.train_spm(CAPTIONS, vocab_size=50000, model_type="unigram", output_prefix=tmp_path / "x")
  with pytest.raises(ValueError, match="empty caption list"):
    spm.train_spm(["", "   "], vocab_size=100, model_type="bpe", output_prefix=tmp_path / "x")
  with pytest.raises(ValueError, match="model_type='word'"):
    spm.train_spm(CAPTIONS, vocab_size=100, model_type="word", output_prefix=tmp_path / "x")
  with pytest.raises(FileNotFoundError, match="nope.model"):
    spm.load_spm(tmp_path / "nope.model")


def test_tokenizer_pads_truncates_and_decodes(spm_model):
  tok = tokenize.SpmTokenizer(spm_model, max_len=12)
  long_text = " ".join(CAPTIONS[:3])
  batch = tok([CAPTIONS[0], long_text, "a tone"])
  ids, mask = batch["input_ids"], batch["attention_mask"]
  assert ids.shape == mask.shape == (3, 12) and ids.dtype == mask.dtype == np.int32
  assert (ids[:, 0] == spm.BOS_ID).all()
  assert mask[1].sum() == 12 and ids[1, -1] == spm.EOS_ID  # Truncated, EOS kept.
  n = mask[2].sum()
  assert ids[2, n - 1] == spm.EOS_ID
  assert (ids[2, n:] == spm.PAD_ID).all() and (mask[2, n:] == 0).all()
  assert tok.decode(ids)[2] == "a tone"


def test_feeds_scratch_tower(spm_model):
  cfg = dict(
    kind="scratch",
    spm_model=str(spm_model),
    vocab_size=150,
    width=32,
    depth=2,
    heads=4,
    max_len=24,
    pooling="cls",
  )
  tower, tok, init_params = text_tower.build_text_tower(cfg, out_dim=48)
  boxed = init_params(jax.random.PRNGKey(0))
  assert isinstance(boxed["encoder"]["token_embed"]["embedding"], nn.Partitioned)
  spec = nn.get_partition_spec(boxed)["encoder"]["token_embed"]["embedding"]
  assert spec == jax.sharding.PartitionSpec("vocab", "embed")
  params = nn.unbox(boxed)
  assert params["encoder"]["token_embed"]["embedding"].shape == (150, 32)
  assert params["proj"]["kernel"].shape == (32, 48)  # 32 != 48, so a projection.
  batch = tok(CAPTIONS[:4])
  loss_and_grad = jax.jit(
    jax.value_and_grad(
      lambda p: jnp.sum(
        tower.apply({"params": p}, batch["input_ids"], batch["attention_mask"]) ** 2
      )
    )
  )
  loss, grads = loss_and_grad(params)
  assert np.isfinite(loss) and loss > 0
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.isfinite(g).all() and np.abs(g).max() > 0, jax.tree_util.keystr(path)

  # Padding is masked: whatever id sits in padded slots, the output does not change.
  apply_mean = jax.jit(tower.clone(pooling="mean").apply)
  noisy = np.where(batch["attention_mask"] == 1, batch["input_ids"], 7)
  out = apply_mean({"params": params}, batch["input_ids"], batch["attention_mask"])
  assert out.shape == (4, 48) and np.isfinite(out).all()
  np.testing.assert_allclose(
    apply_mean({"params": params}, noisy, batch["attention_mask"]), out, rtol=1e-6, atol=1e-6
  )


def test_scratch_config_errors(spm_model):
  with pytest.raises(ValueError, match="vocab_size=999"):
    text_tower.build_text_tower(
      dict(kind="scratch", spm_model=str(spm_model), vocab_size=999), out_dim=8
    )
  with pytest.raises(ValueError, match="spm_model"):
    text_tower.build_text_tower(dict(kind="scratch"), out_dim=8)


def test_missing_dataset_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="'jaxclap_demo' is not built under"):
    spm_cli.dataset_captions("jaxclap_demo", "train", str(tmp_path))


def test_cli_trains_on_a_built_split(hash_demo_data_dir, tmp_path):
  expected = spm_cli.dataset_captions("jaxclap_demo", "train", hash_demo_data_dir)
  assert expected and all(isinstance(c, str) and c for c in expected)
  prefix = tmp_path / "cli" / "tok"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [
    sys.executable,
    "-m",
    "jaxclap.data.caption_spm",
    "--dataset=jaxclap_demo",
    f"--data_dir={hash_demo_data_dir}",
    "--split=train",
    "--vocab_size=100",
    "--model_type=bpe",
    f"--output={prefix}",
  ]
  run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert run.returncode == 0, run.stderr
  assert f"{len(expected)} captions" in run.stdout
  sp = spm.load_spm(prefix.with_suffix(".model"))
  assert sp.get_piece_size() == 100
  text = expected[0]
  assert sp.decode(sp.encode(text)) == " ".join(text.lower().split())
