"""Tests of the synthetic demo corpus generator."""

import hashlib

import numpy as np
import pytest

from jaxclap.data import synth


def generate(num_clips, seed=0):
  """Clips 0 .. num_clips-1 of the demo corpus."""
  return (synth.make_clip(i, seed) for i in range(num_clips))


def _digest(clips):
  h = hashlib.sha256()
  for c in clips:
    h.update(c.audio.tobytes())
    h.update("|".join(c.spec.captions).encode())
    h.update(str(c.spec.label).encode())
  return h.hexdigest()


def test_same_seed_gives_identical_bytes():
  assert _digest(generate(40, seed=7)) == _digest(generate(40, seed=7))


def test_different_seed_gives_different_clips():
  a, b = synth.make_clip(0, seed=1), synth.make_clip(0, seed=2)
  assert a.spec.captions != b.spec.captions or not np.array_equal(a.audio, b.audio)


def test_clip_does_not_depend_on_how_many_are_made():
  many = list(generate(30, seed=3))
  alone = synth.make_clip(29, seed=3)
  assert many[29].spec == alone.spec
  np.testing.assert_array_equal(many[29].audio, alone.audio)


def test_clip_properties():
  clips = list(generate(200, seed=0))
  labels = {c.spec.label for c in clips}
  assert len(synth.CLASS_NAMES) >= 10
  assert labels == set(range(len(synth.CLASS_NAMES)))  # 200 draws cover all 13 classes.
  for c in clips:
    assert c.audio.dtype == np.float32 and c.audio.ndim == 1
    assert 2.0 * synth.SAMPLE_RATE <= c.audio.size <= 6.0 * synth.SAMPLE_RATE
    assert np.isfinite(c.audio).all() and np.abs(c.audio).max() <= 1.0
    assert np.abs(c.audio).max() > 1e-3  # Not silent.
    assert len(c.spec.captions) >= 2 and len(set(c.spec.captions)) == len(c.spec.captions)
    assert all(cap.strip() for cap in c.spec.captions)
  assert any(len(c.spec.sources) == 2 for c in clips)  # Mixtures occur.
  assert {c.spec.loudness for c in clips} == set(synth.LOUDNESS)


def test_loudness_levels_are_ordered():
  rms = {level: [] for level in synth.LOUDNESS}
  for c in generate(150, seed=0):
    rms[c.spec.loudness].append(np.sqrt(np.mean(c.audio.astype(np.float64) ** 2)))
  med = {k: np.median(v) for k, v in rms.items()}
  assert med["quiet"] < med["moderate"] < med["loud"]


def test_captions_name_the_pitch_of_tones():
  for i in range(300):
    spec = synth.clip_spec(i, seed=0)
    if synth.CLASS_NAMES[spec.label] == "sine tone" and len(spec.sources) == 1:
      ((freq, _),) = spec.sources[0].params["partials"]
      audio = synth.render(spec)
      spectrum = np.abs(np.fft.rfft(audio))
      peak_hz = np.argmax(spectrum) * synth.SAMPLE_RATE / audio.size
      assert abs(peak_hz - freq) < 2.0
      midi = int(round(69 + 12 * np.log2(freq / 440.0)))
      assert any(synth.note_name(midi) in cap for cap in spec.captions)
      return
  pytest.fail("no pure sine tone among the first 300 clips")


def test_rising_chirp_rises():
  for i in range(300):
    spec = synth.clip_spec(i, seed=0)
    if synth.CLASS_NAMES[spec.label] == "rising chirp" and len(spec.sources) == 1:
      audio = synth.render(spec)
      half = audio.size // 2
      centroid = [np.argmax(np.abs(np.fft.rfft(x))) / x.size for x in (audio[:half], audio[half:])]
      assert centroid[1] > centroid[0]
      return
  pytest.fail("no rising chirp among the first 300 clips")


def test_negative_index_is_rejected():
  with pytest.raises(ValueError, match="index"):
    synth.clip_spec(-1)
