"""Tests of audio decoding, resampling and int16 conversion."""

import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
from conftest import write_wav

from jaxclap.audio import io as audio_io


def _tone(sr, seconds=1.0, hz=440.0, channels=1):
  t = np.arange(int(sr * seconds)) / sr
  x = 0.5 * np.sin(2 * np.pi * hz * t).astype(np.float32)
  return np.stack([x] * channels, axis=1) if channels > 1 else x


def _peak_hz(x, sr):
  return np.argmax(np.abs(np.fft.rfft(x))) * sr / x.size


@pytest.mark.parametrize(
  "sr,channels,fmt", [(44100, 2, "wav"), (8000, 1, "wav"), (22050, 1, "flac"), (48000, 2, "ogg")]
)
def test_decode_resamples_to_16k_mono(tmp_path, sr, channels, fmt):
  path = tmp_path / f"x.{fmt}"
  subtype = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS"}[fmt]
  write_wav(path, _tone(sr, channels=channels), sr, subtype=subtype)
  x = audio_io.load_audio(path)
  assert x.dtype == np.float32 and x.ndim == 1
  assert abs(x.size - 16000) <= 2
  assert abs(_peak_hz(x, 16000) - 440.0) < 2.0
  assert 0.3 < np.abs(x).max() <= 0.55


def test_decode_mp3(tmp_path):
  path = tmp_path / "x.mp3"
  sf.write(str(path), _tone(44100), 44100, format="MP3")
  x = audio_io.load_audio(path)
  assert abs(x.size - 16000) < 0.05 * 16000  # MP3 adds encoder padding.
  assert abs(_peak_hz(x, 16000) - 440.0) < 3.0


def test_stereo_is_averaged(tmp_path):
  left = _tone(16000)
  path = write_wav(
    tmp_path / "s.wav", np.stack([left, np.zeros_like(left)], axis=1), 16000, subtype="FLOAT"
  )
  np.testing.assert_allclose(audio_io.load_audio(path), left / 2, atol=1e-6)


def test_pcm16_round_trip():
  x = np.array([-1.0, -0.5, 0.0, 0.25, 0.9999], np.float32)
  pcm = audio_io.float_to_pcm16(x)
  assert pcm.dtype == np.int16
  np.testing.assert_array_equal(pcm, [-32768, -16384, 0, 8192, 32765])
  np.testing.assert_allclose(audio_io.pcm16_to_float(pcm), x, atol=1 / 32768)
  assert audio_io.float_to_pcm16(np.array([2.0, -2.0]))[0] == 32767  # Clipped, no wrap.


def test_missing_file(tmp_path):
  with pytest.raises(audio_io.AudioDecodeError, match="nope.wav.*not found"):
    audio_io.load_audio(tmp_path / "nope.wav")


def test_empty_file(tmp_path):
  (tmp_path / "empty.wav").write_bytes(b"")
  with pytest.raises(audio_io.AudioDecodeError, match="empty.wav.*empty"):
    audio_io.load_audio(tmp_path / "empty.wav")


def test_corrupt_file(tmp_path):
  (tmp_path / "bad.flac").write_bytes(b"this is not audio" * 100)
  with pytest.raises(audio_io.AudioDecodeError, match="bad.flac.*cannot decode"):
    audio_io.load_audio(tmp_path / "bad.flac")


def test_zero_length_audio(tmp_path):
  path = write_wav(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
  with pytest.raises(audio_io.AudioDecodeError, match="zero.wav.*zero samples"):
    audio_io.load_audio(path)


def test_nan_audio(tmp_path):
  x = _tone(16000)
  x[100:110] = np.nan
  path = write_wav(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
  with pytest.raises(audio_io.AudioDecodeError, match="nan.wav.*10 NaN/inf"):
    audio_io.load_audio(path)


def test_unreadable_file(tmp_path, monkeypatch):
  # chmod 000 does not stop root (CI containers); make the OS-level read fail instead.
  path = write_wav(tmp_path / "locked.wav", _tone(16000), 16000)

  def denied(p):
    raise PermissionError(13, "Permission denied", p)

  monkeypatch.setattr(audio_io, "_read_soundfile", denied)
  with pytest.raises(audio_io.AudioDecodeError, match="locked.wav.*Permission denied"):
    audio_io.load_audio(path)


def test_corrupt_mp3_names_the_file(tmp_path):
  (tmp_path / "bad.mp3").write_bytes(b"\xff\xfb" + b"not an mp3 frame" * 50)
  with pytest.raises(audio_io.AudioDecodeError, match="bad.mp3: cannot decode audio") as e:
    audio_io.load_audio(tmp_path / "bad.mp3")
  assert "supported" not in str(e.value)  # MP3 is a supported format; the file is bad.


def test_unsupported_format_lists_the_supported_ones(tmp_path):
  (tmp_path / "clip.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
  with pytest.raises(audio_io.AudioDecodeError, match=r"clip.m4a: cannot decode.*supported: .wav"):
    audio_io.load_audio(tmp_path / "clip.m4a")


def test_mp3_is_decoded_without_audioread(tmp_path, monkeypatch):
  """libsndfile reads MP3 itself: the deprecated audioread path is never needed."""
  import sys

  monkeypatch.setitem(sys.modules, "audioread", None)  # Any import of it now fails.
  path = tmp_path / "x.mp3"
  sf.write(str(path), _tone(22050, channels=2), 22050, format="MP3")
  data, sr = audio_io.decode(path)
  assert sr == 22050 and data.shape[1] == 2 and data.dtype == np.float32
  assert abs(_peak_hz(data[:, 0], sr) - 440.0) < 3.0


def test_directory_instead_of_file(tmp_path):
  (tmp_path / "dir.wav").mkdir()
  with pytest.raises(audio_io.AudioDecodeError, match="dir.wav"):
    audio_io.load_audio(tmp_path / "dir.wav")


def _need_ffmpeg() -> str:
  """The ffmpeg command; outside CI a missing one skips (with the reason), in CI it fails."""
  exe = shutil.which("ffmpeg")
  if exe is None:
    reason = "ffmpeg is not installed (apt-get install ffmpeg)"
    if os.environ.get("CI"):
      pytest.fail(reason + " (.ci/run installs it; CI must not skip this test)")
    pytest.skip(reason)
  return exe


def test_mp4_audio_track_through_ffmpeg(tmp_path):
  """VGGSound's videos: the audio track of an .mp4 (AAC, 44.1 kHz stereo) via ffmpeg."""
  exe = _need_ffmpeg()
  path = tmp_path / "clip.mp4"
  tone = "sine=frequency=440:sample_rate=44100:duration=1"
  subprocess.run(
    [exe, "-v", "error", "-f", "lavfi", "-i", tone, "-ac", "2", "-c:a", "aac", str(path)],
    check=True,
  )
  data, sr = audio_io.decode(path)
  assert sr == 44100 and data.shape[1] == 2
  x = audio_io.load_audio(path)
  assert abs(x.size - 16000) < 0.05 * 16000  # AAC adds encoder priming.
  assert abs(_peak_hz(x, 16000) - 440.0) < 3.0


def test_mp4_without_ffmpeg_names_the_file_and_the_tool(tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path))  # No ffmpeg anywhere on it.
  (tmp_path / "v.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
  with pytest.raises(audio_io.AudioDecodeError, match=r"v.mp4: .mp4 files need the ffmpeg command"):
    audio_io.load_audio(tmp_path / "v.mp4")


def test_broken_mp4_reports_ffmpeg_error(tmp_path):
  _need_ffmpeg()
  (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
  with pytest.raises(audio_io.AudioDecodeError, match=r"bad.mp4: ffmpeg cannot decode its audio"):
    audio_io.load_audio(tmp_path / "bad.mp4")
