"""Short training clips follow wav_to_lms.py: waveform zero-padded to 6.1 s, then log-mel.

The reference below is the official rule written out in numpy: pad the waveform with zeros
to int(16000 · 6.1) samples, log-mel with centred reflect-padded frames (nnAudio
MelSpectrogram, center=True), log(mel + eps), then crop the first `crop` frames or pad the
log-mel with 0 (audio_dataset.py). jaxclap's pipeline batch goes through
`frontend.log_mel` and must give the same array.
"""

import itertools

import librosa
import numpy as np
import pytest

from jaxclap.audio import frontend, norm_stats
from jaxclap.data import pipeline

SR = 16_000
MIN_SECONDS = 6.1
EPS = float(np.finfo(np.float32).eps)
CFG = frontend.FrontendConfig()


def official_log_mel(pcm: np.ndarray, crop_frames: int) -> np.ndarray:
  """[80, crop_frames]: wav_to_lms.py + SpectrogramDataset (crop at 0) in float64 numpy."""
  wave = pcm.astype(np.float64) / 32768.0
  min_length = int(SR * MIN_SECONDS)
  if wave.size < min_length:
    wave = np.pad(wave, (0, min_length - wave.size))
  half = CFG.n_fft // 2
  padded = np.pad(wave, (half, half), mode="reflect")
  n_frames = 1 + wave.size // CFG.hop_length
  idx = np.arange(CFG.n_fft)[None, :] + CFG.hop_length * np.arange(n_frames)[:, None]
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(CFG.n_fft) / CFG.n_fft)  # Periodic Hann.
  power = np.abs(np.fft.rfft(padded[idx] * window, axis=-1)) ** 2
  mel_fb = librosa.filters.mel(
    sr=SR,
    n_fft=CFG.n_fft,
    n_mels=CFG.n_mels,
    fmin=CFG.fmin,
    fmax=CFG.fmax,
    htk=False,
    norm="slaney",
  ).astype(np.float64)
  lms = np.log(mel_fb @ power.T + EPS)
  if lms.shape[1] >= crop_frames:
    return lms[:, :crop_frames]
  return np.pad(lms, ((0, 0), (0, crop_frames - lms.shape[1])))


def _clip(seconds: float, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  t = np.arange(int(round(seconds * SR))) / SR
  x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
  return np.round(x * 32767).astype(np.int16)


def _record(pcm: np.ndarray) -> dict:
  return {
    "audio": pcm,
    "caption_embeddings": np.zeros((1, 4), np.float32),
    "captions": [b"a tone"],
    "label": -1,
  }


def _batch(clips, crop_frames, *, min_seconds=MIN_SECONDS, random_crop=False, seed=0):
  loader = pipeline.make_loader(
    [[_record(c) for c in clips]],
    global_batch=len(clips),
    crop_samples=(crop_frames - 1) * CFG.hop_length,
    seed=seed,
    shuffle=False,
    num_epochs=1,
    process_index=0,
    process_count=1,
    random_crop=random_crop,
    min_samples=int(min_seconds * SR),
  )
  return next(iter(loader))


def _jaxclap_log_mel(batch) -> np.ndarray:
  return np.asarray(frontend.log_mel(batch["audio"], batch["audio_len"], CFG))


@pytest.mark.parametrize("crop_frames", [608, 1001])
def test_short_clips_match_the_official_log_mel(crop_frames):
  # 3 s: padded to 6.1 s as silence. 7 s (only for the 10 s crop): longer than 6.1 s but
  # shorter than the crop, so only the log-domain zero pad after its end applies.
  seconds = [3.0, 7.0] if crop_frames == 1001 else [3.0, 6.09]
  clips = [_clip(s, i) for i, s in enumerate(seconds)]
  batch = _batch(clips, crop_frames)
  got = _jaxclap_log_mel(batch)
  for row, (pcm, s) in enumerate(zip(clips, seconds)):
    want = official_log_mel(pcm, crop_frames)
    assert got[row].shape == want.shape == (80, crop_frames)
    # A crop that ends inside audio differs in its last two frames (known departure: the
    # pipeline crops the waveform, so those frames reflect at the crop end, while the
    # official code crops a log-mel computed over the whole clip).
    crop = (crop_frames - 1) * CFG.hop_length
    inside = pcm.size > crop - CFG.n_fft // 2 and max(pcm.size, SR * MIN_SECONDS) > crop
    edge = 2 if inside else 0
    err = np.abs(got[row, :, : crop_frames - edge] - want[:, : crop_frames - edge])
    assert err.max() <= 5e-3 and err.mean() <= 1e-4, (s, err.max(), err.mean())
    padded_frames = 1 + max(pcm.size, int(SR * MIN_SECONDS)) // CFG.hop_length
    # Past the waveform pad: log-domain 0, exactly as audio_dataset.py pads.
    assert not got[row, :, padded_frames:].any()
    # Frames wholly in the appended zeros are silence, log(eps), not 0 (the old behaviour).
    first_silent = (pcm.size + CFG.n_fft // 2) // CFG.hop_length + 1
    silent = got[row, :, first_silent : min(padded_frames, crop_frames)]
    if pcm.size < SR * MIN_SECONDS and crop_frames > first_silent:
      assert silent.size and np.allclose(silent, np.log(EPS), atol=1e-6)


def test_three_second_clip_in_a_ten_second_crop_has_611_valid_frames():
  pcm = _clip(3.0, 0)
  batch = _batch([pcm], 1001)
  assert batch["audio_len"][0] == int(SR * MIN_SECONDS) == 97_600
  assert frontend.valid_frames(batch["audio_len"], CFG)[0] == 611
  np.testing.assert_array_equal(batch["audio"][0, : pcm.size], pcm / 32768.0)
  assert not batch["audio"][0, pcm.size :].any()


def test_min_seconds_zero_keeps_the_log_domain_pad():
  pcm = _clip(3.0, 0)
  batch = _batch([pcm], 608, min_seconds=0.0)
  assert batch["audio_len"][0] == pcm.size
  got = _jaxclap_log_mel(batch)[0]
  assert not got[:, 1 + pcm.size // CFG.hop_length :].any()


def test_random_crops_of_a_padded_clip_lie_in_the_padded_waveform():
  pcm = _clip(6.09, 3)  # Longer than the 608-frame crop, shorter than 6.1 s.
  padded = np.pad(pcm, (0, int(SR * MIN_SECONDS) - pcm.size))
  crop = 607 * CFG.hop_length
  windows = np.lib.stride_tricks.sliding_window_view(padded, crop)
  loader = pipeline.make_loader(
    [[_record(pcm)]],
    global_batch=1,
    crop_samples=crop,
    seed=0,
    process_index=0,
    process_count=1,
    min_samples=int(SR * MIN_SECONDS),
  )
  starts = set()
  for batch in itertools.islice(iter(loader), 40):
    got = np.round(batch["audio"][0] * 32768).astype(np.int16)
    hits = np.flatnonzero((windows == got).all(axis=1))
    assert hits.size and batch["audio_len"][0] == crop
    starts.add(int(hits[0]))
  # Official starts are frames 0..2 of 611 (randint(611 - 608)); here any sample in that span.
  assert max(starts) <= int(SR * MIN_SECONDS) - crop and len(starts) > 1


def test_norm_stats_see_the_padded_clips():
  # loop._norm_stats feeds the training loader to compute_norm_stats, so the estimate
  # includes the silence of padded clips, as the official statistics over its LMS files.
  clips = [_clip(s, i) for i, s in enumerate([2.0, 3.5, 5.0, 8.0])]
  batch = _batch(clips, 608)
  mean, std = norm_stats.compute_norm_stats(iter([batch]), CFG, num_crops=4)
  ref = np.stack([official_log_mel(c, 608) for c in clips])
  assert abs(mean - ref.mean()) <= 1e-3 and abs(std - ref.std(ddof=1)) <= 1e-3
