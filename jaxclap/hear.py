"""HEAR 2021 API (hearbenchmark.com) over a jaxclap checkpoint.

    import jaxclap.hear as module
    model = module.load_model("path/to/workdir")
    scene = module.get_scene_embeddings(audio, model)              # [n_sounds, F'·D]
    emb, ts = module.get_timestamp_embeddings(audio, model)        # ts in milliseconds

`audio` is [n_sounds, n_samples] at `model.sample_rate`. Scene embeddings are clip features
(frame features averaged over time), timestamp embeddings the frame features, one per
patch column (160 ms at 16 kHz), stamped at the centre of the column's log-mel frames.
Long sounds stream through the encoder in chunks (see `jaxclap.inference`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxclap import inference


class HearModel:
  """The HEAR-facing wrapper: a `jaxclap.inference.Model` plus the attributes HEAR reads."""

  def __init__(self, model: inference.Model):
    self.model = model
    self.sample_rate = model.sample_rate
    self.scene_embedding_size = model.feature_dim
    self.timestamp_embedding_size = model.feature_dim


def load_model(model_file_path: str = "", **kwargs: Any) -> HearModel:
  """Loads a jaxclap workdir / checkpoints dir / step dir; kwargs go to `jaxclap.load`."""
  if not model_file_path:
    raise ValueError(
      "jaxclap.hear.load_model: model_file_path must name a jaxclap workdir "
      "or checkpoint directory (no weights are bundled)"
    )
  kwargs.setdefault("progress", False)
  return HearModel(inference.load(model_file_path, **kwargs))


def _audio(audio: Any, model: HearModel) -> np.ndarray:
  """[n_sounds, n_samples] float32 from numpy or any framework tensor."""
  if hasattr(audio, "detach"):  # A torch tensor (possibly on a GPU).
    audio = audio.detach().cpu().numpy()
  x = np.asarray(audio, np.float32)
  if x.ndim != 2:
    raise ValueError(
      f"HEAR audio must be [n_sounds, n_samples] at {model.sample_rate} Hz, got shape {x.shape}"
    )
  return x


def get_scene_embeddings(audio: Any, model: HearModel) -> np.ndarray:
  """Scene embeddings [n_sounds, scene_embedding_size] (float32)."""
  x = _audio(audio, model)
  return model.model.clip_features(x, sample_rate=model.sample_rate).astype(np.float32)


def get_timestamp_embeddings(audio: Any, model: HearModel) -> tuple[np.ndarray, np.ndarray]:
  """(embeddings [n_sounds, n_timestamps, size], timestamps [n_sounds, n_timestamps] in ms)."""
  x = _audio(audio, model)
  emb, seconds = model.model.frame_features(
    x, sample_rate=model.sample_rate, return_timestamps=True
  )
  return emb.astype(np.float32), (np.asarray(seconds, np.float64) * 1000.0).astype(np.float32)
