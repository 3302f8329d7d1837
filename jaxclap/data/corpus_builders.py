"""Builders for the CLAP corpora as distributed (layouts and readers in `corpora`).

Each is a `CaptionedFolder` that reads its corpus's own layout instead of a generic CSV,
so `merge_captions` (other caption tables joined by YouTube id, e.g. AudioCaps' train.csv or
WavCaps' AudioSet_SL/as_final.json into `audioset`) works the same for all of them. Names:
`audiocaps`, `clotho`, `wavcaps/<source>`, `audioset`, `vggsound`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

from jaxclap.data import caption_merge, corpora, manifests
from jaxclap.data.folder_builders import CaptionedFolder

_VERSION = tfds.core.Version("1.0.0")
_NOTES = {"1.0.0": "Initial release."}


class Audiocaps(CaptionedFolder, skip_registration=True):
  """AudioCaps (train.csv / val.csv / test.csv, audio named by YouTube id)."""

  VERSION, RELEASE_NOTES = _VERSION, _NOTES

  def read_layout(self, manual_dir: Path) -> manifests.Manifest:
    return corpora.read_audiocaps(manual_dir)


class Clotho(CaptionedFolder, skip_registration=True):
  """Clotho v2 (clotho_captions_<split>.csv, development/ validation/ evaluation/)."""

  VERSION, RELEASE_NOTES = _VERSION, _NOTES

  def read_layout(self, manual_dir: Path) -> manifests.Manifest:
    return corpora.read_clotho(manual_dir)


class Wavcaps(CaptionedFolder, skip_registration=True):
  """One WavCaps source (config name = source: audioset_sl, bbc_sound_effects, ...), less
  the clips of the `exclude` blacklists (WavCaps' json_files/blacklist/*.json)."""

  VERSION, RELEASE_NOTES = _VERSION, _NOTES

  def __init__(self, *, exclude: Sequence[str | os.PathLike] = (), **kwargs: Any):
    self._exclude = list(exclude)
    self._excluded: list[str] = []
    super().__init__(**kwargs)

  def read_layout(self, manual_dir: Path) -> manifests.Manifest:
    manifest = corpora.read_wavcaps(manual_dir, self.builder_config.name, self._exclude)
    self._excluded = manifest.excluded
    if self._exclude:
      logging.info("%d clips left out by %s", len(self._excluded), self._exclude)
    return manifest

  def update_metadata(self) -> None:
    super().update_metadata()
    if self._exclude:  # Recorded so that a rebuild with other blacklists is refused.
      self.info.metadata["build"]["excluded"] = {
        "files": [Path(p).name for p in self._exclude],
        "clips": len(self._excluded),
      }


class _AutoAcdCorpus(CaptionedFolder, skip_registration=True):
  """A YouTube corpus whose captions come from Auto-ACD CSVs (`captions`), else its labels."""

  def __init__(self, *, captions: Sequence[str | os.PathLike] = (), **kwargs: Any):
    self._caption_paths = list(captions)
    self._caption_report: caption_merge.MergeReport | None = None
    super().__init__(**kwargs)

  def read_corpus(self, manual_dir: Path) -> tuple[manifests.Manifest, Any]:
    raise NotImplementedError

  def read_layout(self, manual_dir: Path) -> manifests.Manifest:
    manifest, self._caption_report = self.read_corpus(manual_dir)
    if self._caption_report is not None:
      logging.info("%s", self._caption_report.message())
    return manifest

  def update_metadata(self) -> None:
    super().update_metadata()
    if self._caption_report is not None:
      self.info.metadata["build"]["caption_files"] = self._caption_report.as_dict()


class Audioset(_AutoAcdCorpus, skip_registration=True):
  """AudioSet segment CSVs + audio, Auto-ACD captions (label captions where none)."""

  VERSION, RELEASE_NOTES = _VERSION, _NOTES

  def read_corpus(self, manual_dir: Path) -> tuple[manifests.Manifest, Any]:
    return corpora.read_audioset(manual_dir, self._caption_paths)


class Vggsound(_AutoAcdCorpus, skip_registration=True):
  """VGGSound (vggsound.csv + clips), Auto-ACD captions (label captions where none)."""

  VERSION, RELEASE_NOTES = _VERSION, _NOTES

  def read_corpus(self, manual_dir: Path) -> tuple[manifests.Manifest, Any]:
    return corpora.read_vggsound(manual_dir, self._caption_paths)
