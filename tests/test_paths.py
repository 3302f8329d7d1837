"""Workdirs may be local paths or bucket URLs."""

import os

from jaxclap import paths


def test_urls_stay_urls_and_local_paths_become_absolute(monkeypatch, tmp_path):
  assert str(paths.resolve("gs://bkt/runs/s1")) == "gs://bkt/runs/s1"
  assert paths.data_dir("gs://bkt/tfds") == "gs://bkt/tfds"
  monkeypatch.chdir(tmp_path)
  assert str(paths.resolve("run")) == os.path.join(str(tmp_path), "run")
  monkeypatch.setenv("HOME", str(tmp_path))
  assert str(paths.resolve("~/x")) == os.path.join(str(tmp_path), "x")
  assert paths.data_dir("~/tfds") == os.path.join(str(tmp_path), "tfds")


def test_data_dirs_with_a_tilde_open(monkeypatch, demo_data_dir):
  """`--data_dir=~/...` reaches absl/ConfigDict unexpanded; the data layer expands it."""
  from jaxclap.data import build, pipeline

  monkeypatch.setenv("HOME", os.path.dirname(demo_data_dir))
  tilde = "~/" + os.path.basename(demo_data_dir)
  assert build.dataset_info("jaxclap_demo", tilde)["splits"]["test"] > 0
  assert len(pipeline.open_source("jaxclap_demo", "test", tilde)) > 0
