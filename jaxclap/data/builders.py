"""TFDS builders (ArrayRecord, no TensorFlow) for captioned audio with caption embeddings.

`JaxclapDemo` writes the synthetic corpus of `synth.py`. The folder/CSV builders for
real data live in `folder_builders.py`. Builders are not registered with TFDS by
name: build them through `jaxclap.data.build`, and read the result back from files
with `tfds.data_source(name, data_dir=...)`.

TFDS writes into an `incomplete.*` folder and renames it only after every split and
the metadata are written, so a failed or interrupted build never loads as complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxclap.audio import io as audio_io
from jaxclap.data import parallel_build, schema, synth

SAMPLE_RATES = (16_000, 32_000)  # Rates a front end reads (config.frontend.sample_rate).


class CaptionedAudioBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Common options of jaxclap builders: the text embedder, its storage dtype, skip_bad."""

  def __init__(
    self,
    *,
    embedder: schema.TextEmbedder | None = None,
    embedding_dtype: str = "float16",
    skip_bad: bool = False,
    sample_rate: int = schema.SAMPLE_RATE,
    worker: tuple[int, int] = (0, 1),
    **kwargs: Any,
  ):
    schema.check_embedding_dtype(embedding_dtype)
    self._worker = parallel_build.check_worker(worker)
    if sample_rate not in SAMPLE_RATES:
      raise ValueError(f"sample_rate must be one of {SAMPLE_RATES} (front ends), got {sample_rate}")
    self._embedder = embedder
    self._embedding_dtype = embedding_dtype
    self.sample_rate = int(sample_rate)  # Of the stored PCM (recorded in the metadata).
    self.report = schema.BuildReport(skip_bad, self.sample_rate)
    super().__init__(**kwargs)

  @property
  def embedder(self) -> schema.TextEmbedder:
    if self._embedder is None:
      raise ValueError(
        f"{type(self).__name__} needs a text embedder to build (e.g. "
        "jaxclap.text.sentence.load_sentence_embedder(text_model)); read built data "
        "with tfds.data_source(name, data_dir=...)"
      )
    return self._embedder

  def owns(self, split: str, key: str) -> bool:
    """Whether this build writes record `key` of `split` (a parallel build's share)."""
    index, count = self._worker
    return count == 1 or parallel_build.owner(split, key, count) == index

  def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
    """Builder-specific features added to the common record layout."""
    return {}

  def class_names(self) -> list[str]:
    """Label names, index = label; empty when the source has no labels."""
    return []

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(self.__doc__ or "").strip(),
      features=schema.features_dict(
        self.embedder.dim, self._embedding_dtype, self.extra_features()
      ),
      metadata=tfds.core.MetadataDict(),
    )

  def update_metadata(self) -> None:
    """Records model, dims, classes and the running build report in the metadata."""
    # Called at the end of each split's generator; TFDS writes the metadata after the
    # last split, so the final call's values are the ones stored.
    self.info.metadata.update(
      schema.base_metadata(self.embedder, self._embedding_dtype, self.sample_rate)
    )
    self.info.metadata["class_names"] = list(self.class_names())
    self.info.metadata["build"] = self.report.as_dict()

  def record(
    self,
    *,
    clip_id: str,
    waveform: np.ndarray,
    captions: list[str],
    table: dict[str, np.ndarray],
    label: int,
    **extra: Any,
  ) -> dict[str, Any]:
    """One example dict from a float waveform and its captions; counts it in the report."""
    pcm = audio_io.float_to_pcm16(waveform)
    self.report.add(pcm.size, len(captions))
    if table:  # Vectors in the record; none with `--text_model=none` (caption tables).
      extra["caption_embeddings"] = schema.stack_embeddings(captions, table)
    return dict(
      audio=pcm,
      sample_rate=self.sample_rate,
      id=clip_id,
      captions=captions,
      label=label,
      **extra,
    )


DEMO_SPLITS = ("train", "validation", "test")


def demo_split(index: int) -> str:
  """Split of demo clip `index`: 80% train, 10% validation, 10% test by index."""
  r = index % 10
  return "train" if r < 8 else ("validation" if r == 8 else "test")


class JaxclapDemo(CaptionedAudioBuilder, skip_registration=True):
  """Synthetic captioned sounds (jaxclap.data.synth): tones, chords, noises, chirps..."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, num_clips: int = 2000, seed: int = 0, **kwargs: Any):
    if kwargs.get("sample_rate", schema.SAMPLE_RATE) != schema.SAMPLE_RATE:
      raise ValueError(f"jaxclap_demo is rendered at {schema.SAMPLE_RATE} Hz only")
    if num_clips < len(DEMO_SPLITS) * 10:
      raise ValueError(f"num_clips must be >= 30 so that every split gets clips, got {num_clips}")
    self._num_clips = num_clips
    self._seed = seed
    super().__init__(**kwargs)

  def class_names(self) -> list[str]:
    return list(synth.CLASS_NAMES)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    del dl_manager  # Nothing to download.
    specs = [synth.clip_spec(i, self._seed) for i in range(self._num_clips)]
    specs = [s for s in specs if self.owns(demo_split(s.index), s.clip_id)]
    table = schema.embed_unique(
      (c for s in specs for c in s.captions), self.embedder, dtype=self._embedding_dtype
    )
    by_split = {name: [s for s in specs if demo_split(s.index) == name] for name in DEMO_SPLITS}
    # A parallel build's worker may own no clip of a split: it writes no such split.
    return {n: self._generate_examples(by_split[n], table) for n in DEMO_SPLITS if by_split[n]}

  def _generate_examples(
    self, specs: list[synth.ClipSpec], table: dict[str, np.ndarray]
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    for spec in specs:
      waveform = audio_io.check_waveform(synth.render(spec), spec.clip_id)
      yield (
        spec.clip_id,
        self.record(
          clip_id=spec.clip_id,
          waveform=waveform,
          captions=list(spec.captions),
          table=table,
          label=spec.label,
        ),
      )
    self.update_metadata()
    self.info.metadata["build"].update(num_clips=self._num_clips, seed=self._seed)
