"""Builders for local audio folders: captioned (AudioCaps / Clotho / WavCaps style)
and labelled (ESC-50, labels.csv, folder per class) evaluation sets.

Both read `manual_dir` (layouts in `manifests.py`), decode every file to 16 kHz mono
(`jaxclap.audio.io`) and store it as int16 with the embeddings of its captions. The
dataset is named `<builder>/<config>`, e.g. `captioned_folder/clotho`, so one
builder serves many sources; pass `config=tfds.core.BuilderConfig(name=...)`.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from jaxclap.audio import io as audio_io
from jaxclap.data import caption_merge, manifests, schema
from jaxclap.data.builders import CaptionedAudioBuilder

_DECODE_CHUNK = 32  # Files decoded concurrently; bounds memory held ahead of the writer.


def _decode(item: manifests.Item, sample_rate: int) -> np.ndarray | Exception:
  """Decoded waveform of one item, or the error (so a worker thread never raises)."""
  try:
    return audio_io.load_audio(item.path, sample_rate)
  except audio_io.AudioDecodeError as e:
    return schema.BadInputError(f"{item.where}: {e}")


class _FolderBuilder(CaptionedAudioBuilder, skip_registration=True):
  """Shared generation for builders that read a `manifests.Manifest` from manual_dir."""

  def __init__(
    self,
    *,
    manual_dir: str | os.PathLike | None = None,
    num_threads: int | None = None,
    **kwargs: Any,
  ):
    self._manual_dir_arg = manual_dir
    self._num_threads = num_threads or min(8, os.cpu_count() or 1)
    self._class_names: list[str] = []
    super().__init__(**kwargs)

  def read_manifest(self, manual_dir: Path) -> manifests.Manifest:
    raise NotImplementedError

  def class_names(self) -> list[str]:
    return self._class_names

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    manual_dir = Path(self._manual_dir_arg or dl_manager.manual_dir)
    manifest = self.read_manifest(manual_dir)
    for error in manifest.bad:
      self.report.bad(error)
    if not manifest.items:
      raise schema.BadInputError(f"{manual_dir}: no usable clips found")
    self._class_names = manifest.class_names
    items = [i for i in manifest.items if self.owns(i.split, i.clip_id)]  # All but in parallel.
    table = schema.embed_unique(
      (c for item in items for c in item.captions),
      self.embedder,
      dtype=self._embedding_dtype,
    )
    by_split = {s: [i for i in items if i.split == s] for s in manifest.splits()}
    return {s: self._generate_examples(mine, table) for s, mine in by_split.items() if mine}

  def _generate_examples(
    self, items: list[manifests.Item], table: dict[str, np.ndarray]
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    written = 0
    with concurrent.futures.ThreadPoolExecutor(self._num_threads) as pool:
      for start in range(0, len(items), _DECODE_CHUNK):
        chunk = items[start : start + _DECODE_CHUNK]
        waveforms = pool.map(_decode, chunk, [self.sample_rate] * len(chunk))
        for item, waveform in zip(chunk, waveforms):
          if isinstance(waveform, Exception):
            self.report.bad(waveform)
            continue
          written += 1
          yield (
            item.clip_id,
            self.record(
              clip_id=item.clip_id,
              waveform=waveform,
              captions=item.captions,
              table=table,
              label=item.label,
              **self.extra_values(item),
            ),
          )
    if not written:
      raise schema.BadInputError(
        f"all {len(items)} clips of a split failed to decode (first: {items[0].where})"
      )
    self.update_metadata()  # Refreshed after every split; TFDS stores the last call's.

  def extra_values(self, item: manifests.Item) -> dict[str, Any]:
    """Values of `extra_features` for one item."""
    return {}


class CaptionedFolder(_FolderBuilder, skip_registration=True):
  """Captioned audio from a local folder + CSV (AudioCaps / Clotho / WavCaps layouts).

  `merge_captions`: extra caption CSVs whose rows join the clips of the same YouTube id
  (`caption_merge`), e.g. AudioCaps captions into an AudioSet set; the build metadata's
  `merged_captions` says how many matched.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, merge_captions: Sequence[str | os.PathLike] = (), **kwargs: Any):
    self._merge_paths = list(merge_captions)
    self._merge_report: caption_merge.MergeReport | None = None
    self._missing: list[str] = []
    super().__init__(**kwargs)

  def read_layout(self, manual_dir: Path) -> manifests.Manifest:
    """The clips of manual_dir before merging (corpus builders read their own layout)."""
    return manifests.read_captioned(manual_dir)

  def read_manifest(self, manual_dir: Path) -> manifests.Manifest:
    manifest = self.read_layout(manual_dir)
    self._missing = list(manifest.missing)
    if self._missing:
      logging.warning(
        "%d listed clips have no audio under %s and are left out (e.g. %s)",
        len(self._missing),
        manual_dir,
        self._missing[:5],
      )
    if self._merge_paths:
      self._merge_report = caption_merge.merge(manifest, self._merge_paths)
      log = logging.warning if self._merge_report.unmatched_ids else logging.info
      log("%s", self._merge_report.message())
    return manifest

  def update_metadata(self) -> None:
    super().update_metadata()
    if self._merge_report is not None:
      self.info.metadata["build"]["merged_captions"] = self._merge_report.as_dict()
    if self._missing:  # Listed by the corpus, not downloaded.
      self.info.metadata["build"]["missing_audio"] = {
        "clips": len(self._missing),
        "examples": self._missing[:10],
      }


class LabelledFolder(_FolderBuilder, skip_registration=True):
  """Labelled audio for evaluation (ESC-50 layout, labels.csv, or a folder per class).

  Single- or multi-label (label lists in labels.csv; grammar in `manifests`). Every record
  has `labels`, the int32 class indices of the clip (variable length, at least one), and
  `label` (the class index; -1 in a multi-label set). The metadata's `multi_label` says
  which kind the set is.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, **kwargs: Any):
    self._multi_label = False
    super().__init__(**kwargs)

  def read_manifest(self, manual_dir: Path) -> manifests.Manifest:
    manifest = manifests.read_labelled(manual_dir)
    self._multi_label = manifest.multi_label
    return manifest

  def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
    return {
      # ESC-50 style cross-validation folds; 0 when the source has none.
      "fold": tfds.features.Scalar(dtype=np.int32),
      # All class indices of the clip; raw bytes, as a variable-length int array.
      "labels": tfds.features.Tensor(
        shape=(None,), dtype=np.int32, encoding=tfds.features.Encoding.BYTES
      ),
    }

  def extra_values(self, item: manifests.Item) -> dict[str, Any]:
    labels = item.labels or [item.label]
    return {"fold": item.fold, "labels": np.asarray(labels, np.int32)}

  def update_metadata(self) -> None:
    super().update_metadata()
    self.info.metadata["multi_label"] = bool(self._multi_label)


class NamedFolder(_FolderBuilder, skip_registration=True):
  """A plain folder of audio whose file names say what each clip is (`manifests.read_named`).

  Captions, labels (the sound source) and a train / held-out `test` split by source all
  come from the names; e.g. the OLPC Berklee Sound Library ("dog_bark_1.mp3" -> "dog bark").
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def read_manifest(self, manual_dir: Path) -> manifests.Manifest:
    return manifests.read_named(manual_dir)
