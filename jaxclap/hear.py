"""HEAR 2021 API (hearbenchmark.com) over a jaxclap checkpoint, as the HEAR tools run it.

    import jaxclap.hear as module
    model = module.load_model("path/to/workdir")
    scene = module.get_scene_embeddings(audio, model)              # [n_sounds, F'·D]
    emb, ts = module.get_timestamp_embeddings(audio, model)        # ts in milliseconds

`audio` is [n_sounds, n_samples] at `model.sample_rate`. Scene embeddings are clip features
(frame features averaged over time), timestamp embeddings the frame features, one per
patch column (160 ms at 16 kHz), stamped at the centre of the column's log-mel frames.
Long sounds stream through the encoder in chunks (see `jaxclap.inference`).

With torch installed, `load_model` returns a `torch.nn.Module` and the functions return
float32 torch tensors on the input's device: the HEAR 2021 tools (hear-validator, heareval)
accept only torch or TensorFlow modules and call `.detach()` on outputs. Without torch (or
with `framework="numpy"`) the model is a `HearModel` and outputs are numpy arrays. The
network itself runs in JAX either way. HEAR accepts 16, 22.05, 44.1 and 48 kHz models: one
trained at another rate (32 kHz) declares 48 kHz and resamples inside (soxr).
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import numpy as np

from jaxclap import inference

HEAR_RATES = (16000, 22050, 44100, 48000)  # The only rates hear-validator accepts.
# Declared by models trained at another rate: HEAR's tasks ship at 48 kHz, which is above
# 32 kHz (no band the model hears is lost) and resamples to it by the simple ratio 3:2.
FALLBACK_RATE = 48000
FRAMEWORKS = ("auto", "torch", "numpy")


class HearModel:
  """The HEAR-facing wrapper: a `jaxclap.inference.Model` plus the attributes HEAR reads.

  `sample_rate` is the rate HEAR feeds audio at: the model's own when HEAR accepts it, else
  `FALLBACK_RATE` (or the one given); audio is resampled to the model's rate inside.
  """

  def __init__(self, model: inference.Model, sample_rate: int | None = None):
    if sample_rate is None:
      sample_rate = model.sample_rate if model.sample_rate in HEAR_RATES else FALLBACK_RATE
    if sample_rate not in HEAR_RATES:
      raise ValueError(
        f"HEAR sample_rate must be one of {HEAR_RATES} (the HEAR tools refuse others), got "
        f"{sample_rate}; the model reads {model.sample_rate} Hz and resamples any of them"
      )
    self.model = model
    self.sample_rate = int(sample_rate)
    self.scene_embedding_size = int(model.feature_dim)
    self.timestamp_embedding_size = int(model.feature_dim)

  def scene_embeddings(self, audio: np.ndarray) -> np.ndarray:
    """[n_sounds, scene_embedding_size] float32 for [n_sounds, n_samples] at `sample_rate`."""
    return self.model.clip_features(audio, sample_rate=self.sample_rate).astype(np.float32)

  def timestamp_embeddings(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([n_sounds, n_timestamps, size], [n_sounds, n_timestamps] ms), both float32."""
    emb, seconds = self.model.frame_features(
      audio, sample_rate=self.sample_rate, return_timestamps=True
    )
    ms = (np.asarray(seconds, np.float64) * 1000.0).astype(np.float32)
    return emb.astype(np.float32), ms


@functools.cache
def torch_module_class() -> type:
  """`HearTorchModel`, a `torch.nn.Module` class; defined on first use (torch is optional)."""
  import torch  # Optional dependency (the "torch" extra).

  class HearTorchModel(torch.nn.Module):
    """A `HearModel` as the torch module the HEAR tools require. It holds no parameters (the
    network runs in JAX), so `.to(device)` moves nothing; outputs go to the input's device."""

    def __init__(self, hear: HearModel):
      super().__init__()
      self.hear = hear
      self.sample_rate = hear.sample_rate
      self.scene_embedding_size = hear.scene_embedding_size
      self.timestamp_embedding_size = hear.timestamp_embedding_size

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
      """Scene embeddings, as `get_scene_embeddings`."""
      return get_scene_embeddings(audio, self)

  return HearTorchModel


def load_model(
  model_file_path: str = "",
  *,
  framework: str = "auto",
  sample_rate: int | None = None,
  **kwargs: Any,
) -> Any:
  """Loads a jaxclap workdir / checkpoints dir / step dir / release name as a HEAR model.

  framework: "torch" (a `torch.nn.Module`, torch tensor outputs), "numpy" (a `HearModel`)
  or "auto" (torch when it is installed). sample_rate: the HEAR rate to declare (default:
  the model's, or 48 kHz for a model HEAR does not accept). kwargs go to `jaxclap.load`.
  """
  if framework not in FRAMEWORKS:
    raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
  if not model_file_path:
    raise ValueError(
      "jaxclap.hear.load_model: model_file_path must name a jaxclap workdir, checkpoint "
      "directory or release (no weights are bundled)"
    )
  kwargs.setdefault("progress", False)
  hear = HearModel(inference.load(model_file_path, **kwargs), sample_rate)
  if framework == "auto":
    framework = "torch" if importlib.util.find_spec("torch") is not None else "numpy"
  return torch_module_class()(hear) if framework == "torch" else hear


def _unwrap(model: Any) -> HearModel:
  """The `HearModel` behind either framework's model."""
  return model if isinstance(model, HearModel) else model.hear


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


def _outputs(model: Any, audio: Any, *arrays: np.ndarray) -> tuple[Any, ...]:
  """The arrays as the model's framework returns them: numpy, or torch on the input's device."""
  if isinstance(model, HearModel):
    return arrays
  import torch  # Optional dependency: only a torch model gets here.

  device = audio.device if isinstance(audio, torch.Tensor) else "cpu"
  return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays)


def get_scene_embeddings(audio: Any, model: Any) -> Any:
  """Scene embeddings [n_sounds, scene_embedding_size] (float32)."""
  hear = _unwrap(model)
  (emb,) = _outputs(model, audio, hear.scene_embeddings(_audio(audio, hear)))
  return emb


def get_timestamp_embeddings(audio: Any, model: Any) -> tuple[Any, Any]:
  """(embeddings [n_sounds, n_timestamps, size], timestamps [n_sounds, n_timestamps] in ms)."""
  hear = _unwrap(model)
  emb, ms = _outputs(model, audio, *hear.timestamp_embeddings(_audio(audio, hear)))
  return emb, ms
