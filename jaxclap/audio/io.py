"""Audio decoding to 16 kHz mono float32, and int16 PCM for storage.

Every dataset builder goes through `load_audio`, so all data reaches the front end
at one sample rate, in one channel layout and in one value range, whatever the
source format (wav / flac / mp3 / ogg, any rate, mono or multi-channel). libsndfile (through
soundfile >= 0.12, whose wheels bundle libsndfile >= 1.1) decodes all four itself. Video files
(VGGSound's .mp4) go through the ffmpeg command line, which is what librosa's deprecated
audioread fallback ran for them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
FFMPEG_EXTENSIONS = (".mp4",)  # Read through ffmpeg: libsndfile reads no video container.
# int16 full scale; `pcm16_to_float` divides by the same constant, so the round trip
# is exact for values already on the int16 grid.
_PCM16_SCALE = 32768.0


class AudioDecodeError(ValueError):
  """Raised when a file cannot be turned into a finite, non-empty waveform."""


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
  """Reads with libsndfile; returns [time, channels] float32 and the rate."""
  data, sr = sf.read(path, dtype="float32", always_2d=True)
  return data, int(sr)


def _read_ffmpeg(path: str) -> tuple[np.ndarray, int]:
  """A video file's audio track through ffmpeg (to a temporary float WAV), at its own rate."""
  exe = shutil.which("ffmpeg")
  if exe is None:
    raise AudioDecodeError(
      f"{path}: {os.path.splitext(path)[1]} files need the ffmpeg command on PATH "
      "(e.g. apt-get install ffmpeg)"
    )
  with tempfile.TemporaryDirectory(prefix="jaxclap-ffmpeg-") as tmp:
    wav = os.path.join(tmp, "audio.wav")
    cmd = [exe, "-nostdin", "-v", "error", "-i", path, "-vn", "-c:a", "pcm_f32le", wav]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not os.path.isfile(wav):
      why = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
      raise AudioDecodeError(f"{path}: ffmpeg cannot decode its audio ({why[0]})")
    return _read_soundfile(wav)


def decode(path: str | os.PathLike) -> tuple[np.ndarray, int]:
  """Decodes a file to ([time, channels] float32, native sample rate)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise AudioDecodeError(f"{path}: audio file not found")
  if os.path.getsize(path) == 0:
    raise AudioDecodeError(f"{path}: file is empty (0 bytes)")
  ext = os.path.splitext(path)[1].lower()
  if ext in FFMPEG_EXTENSIONS:
    return _read_ffmpeg(path)
  try:
    return _read_soundfile(path)
  except Exception as e:  # libsndfile raises several types (LibsndfileError, RuntimeError).
    supported = AUDIO_EXTENSIONS + FFMPEG_EXTENSIONS
    hint = "" if ext in AUDIO_EXTENSIONS else f" (supported: {', '.join(supported)})"
    raise AudioDecodeError(f"{path}: cannot decode audio ({e}){hint}") from e


def to_mono(data: np.ndarray) -> np.ndarray:
  """Averages a [time, channels] array to [time]."""
  if data.ndim == 1:
    return data
  return data.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
  """Resamples a 1-D float32 waveform with soxr (high quality)."""
  if orig_sr == target_sr:
    return x
  return soxr.resample(x, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def check_waveform(x: np.ndarray, name: str) -> np.ndarray:
  """Raises AudioDecodeError unless `x` is a non-empty finite 1-D waveform."""
  if x.ndim != 1:
    raise AudioDecodeError(f"{name}: expected a 1-D waveform, got shape {x.shape}")
  if x.size == 0:
    raise AudioDecodeError(f"{name}: audio has zero samples")
  finite = np.isfinite(x)
  if not finite.all():
    bad = int(x.size - finite.sum())
    raise AudioDecodeError(f"{name}: audio contains {bad} NaN/inf samples")
  return x


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Decodes, mixes to mono and resamples a file; float32 in [-1, 1]."""
  path = os.fspath(path)
  data, sr = decode(path)
  # Check before resampling: NaNs would spread through the filter.
  x = check_waveform(to_mono(data), path)
  x = check_waveform(resample(x, sr, sample_rate), path)
  # Resampling can overshoot full scale slightly; int16 storage needs [-1, 1].
  return np.clip(x, -1.0, 1.0)


def float_to_pcm16(x: np.ndarray) -> np.ndarray:
  """Converts float audio in [-1, 1] to int16 PCM (clipping out-of-range values)."""
  scaled = np.round(np.asarray(x, np.float64) * _PCM16_SCALE)
  return np.clip(scaled, -32768, 32767).astype(np.int16)


def pcm16_to_float(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
  """Converts int16 PCM to float32 in [-1, 1); into `out` (float32, x's shape) when given.

  Multiplying by 2**-15 is exact, so this equals dividing by the scale, bit for bit; with
  `out` no intermediate float copy is made (the loader fills batch rows in place).
  """
  return np.multiply(
    np.asarray(x, np.int16), np.float32(1.0 / _PCM16_SCALE), out=out, dtype=np.float32
  )
