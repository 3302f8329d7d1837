"""On-device log-mel front end, numerically matching the official M2D runtime.

waveform [B, S] float32 → log-mel [B, n_mels, 1 + S // hop]. Frames are centred with reflect
padding of each clip's *true* length, so a zero-padded short clip in a batch gives the same
frames as the clip alone; frames past a clip's end are set to 0 in the log domain (the
official recipe pads short clips with zeros after the log).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import librosa
import numpy as np

LOG_EPS = float(np.finfo(np.float32).eps)


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
  """Mel spectrogram parameters (defaults: the official 16 kHz front end)."""

  sample_rate: int = 16000
  n_fft: int = 400
  win_length: int = 400
  hop_length: int = 160
  n_mels: int = 80
  fmin: float = 50.0
  fmax: float = 8000.0

  @classmethod
  def for_sample_rate(cls, sample_rate: int) -> FrontendConfig:
    """Official parameters for 16 kHz or 32 kHz input."""
    if sample_rate == 16000:
      return cls()
    if sample_rate == 32000:
      return cls(sample_rate=32000, n_fft=800, win_length=800, hop_length=320, fmax=16000.0)
    raise ValueError(
      f"FrontendConfig: unsupported sample_rate={sample_rate} "
      "(official front ends exist for 16000 and 32000)"
    )

  def num_frames(self, num_samples: int) -> int:
    """Frames produced for a clip of `num_samples` samples (centred framing)."""
    return 1 + num_samples // self.hop_length


@functools.lru_cache(maxsize=8)
def mel_filterbank(cfg: FrontendConfig) -> np.ndarray:
  """Slaney mel filterbank [n_fft // 2 + 1, n_mels] float32 from librosa (host constant)."""
  fb = librosa.filters.mel(
    sr=cfg.sample_rate,
    n_fft=cfg.n_fft,
    n_mels=cfg.n_mels,
    fmin=cfg.fmin,
    fmax=cfg.fmax,
    htk=False,
    norm="slaney",
  )
  return np.ascontiguousarray(fb.T.astype(np.float32))


@functools.lru_cache(maxsize=8)
def hann_window(cfg: FrontendConfig) -> np.ndarray:
  """Periodic Hann window of win_length, zero-padded to n_fft (as torch/librosa)."""
  n = np.arange(cfg.win_length)
  win = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / cfg.win_length)
  left = (cfg.n_fft - cfg.win_length) // 2
  out = np.zeros(cfg.n_fft, np.float64)
  out[left : left + cfg.win_length] = win
  return out.astype(np.float32)


def _reflect_pad(wave: jax.Array, lengths: jax.Array, pad: int) -> jax.Array:
  """[B, S] → [B, S + 2·pad]: centred signal with reflect padding at each true length."""
  s = wave.shape[1]
  pos = jnp.arange(-pad, s + pad)[None, :]  # [1, S + 2p]
  n = jnp.maximum(lengths, 1)[:, None]  # [B, 1]
  idx = jnp.abs(pos)  # reflect at the start
  idx = jnp.where(idx > n - 1, 2 * (n - 1) - idx, idx)  # reflect at the true end
  idx = jnp.clip(idx, 0, n - 1)  # clips shorter than pad: clamp instead of re-reflecting
  return jnp.take_along_axis(wave, idx.astype(jnp.int32), axis=1)


def _frames(padded: jax.Array, n_frames: int, n_fft: int, hop: int) -> jax.Array:
  """[B, P] → [B, n_frames, n_fft] with stride hop, built from hop-sized chunks (no gather)."""
  k = -(-n_fft // hop)  # chunks spanned by one frame
  need = (n_frames + k - 1) * hop
  b, p = padded.shape
  padded = jnp.pad(padded, ((0, 0), (0, max(0, need - p))))[:, :need]
  chunks = padded.reshape(b, n_frames + k - 1, hop)
  frames = jnp.concatenate([chunks[:, i : i + n_frames] for i in range(k)], axis=-1)
  return frames[..., :n_fft]


def log_mel(
  wave: jax.Array, lengths: jax.Array | None = None, cfg: FrontendConfig = FrontendConfig()
) -> jax.Array:
  """Log-mel spectrogram [B, n_mels, 1 + S // hop] of waveforms [B, S] (jittable)."""
  wave = jnp.asarray(wave, jnp.float32)
  if wave.ndim != 2:
    raise ValueError(f"log_mel: wave must be [batch, samples], got shape {wave.shape}")
  b, s = wave.shape
  if lengths is None:
    lengths = jnp.full((b,), s, jnp.int32)
  lengths = jnp.minimum(jnp.asarray(lengths, jnp.int32), s)
  n_frames = cfg.num_frames(s)
  padded = _reflect_pad(wave, lengths, cfg.n_fft // 2)
  frames = _frames(padded, n_frames, cfg.n_fft, cfg.hop_length) * hann_window(cfg)
  spec = jnp.fft.rfft(frames, n=cfg.n_fft, axis=-1)
  power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2  # [B, T, n_fft/2+1]
  mel = jnp.einsum("btk,km->bmt", power, mel_filterbank(cfg), precision=jax.lax.Precision.HIGHEST)
  logmel = jnp.log(mel + LOG_EPS)
  valid = jnp.arange(n_frames)[None, :] < (1 + lengths // cfg.hop_length)[:, None]
  return jnp.where(valid[:, None, :], logmel, 0.0)


def valid_frames(lengths: jax.Array, cfg: FrontendConfig = FrontendConfig()) -> jax.Array:
  """Number of valid log-mel frames for clips of `lengths` samples."""
  return 1 + jnp.asarray(lengths) // cfg.hop_length


def normalize(logmel: jax.Array, mean: float, std: float) -> jax.Array:
  """Standardise a log-mel with the dataset's scalar statistics."""
  return (logmel - mean) / std


def waveform_input(
  batch: Mapping[str, jax.Array], frontend_cfg: FrontendConfig, norm_stats: Sequence[float]
) -> jax.Array:
  """Batch audio → normalised log-mel [B, n_mels, frames] (on device)."""
  lm = log_mel(batch["audio"], batch.get("audio_len"), frontend_cfg)
  return normalize(lm, norm_stats[0], norm_stats[1])
