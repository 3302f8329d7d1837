"""Front end vs librosa, batching/padding behaviour, and dataset statistics."""

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from jaxclap.audio import frontend, norm_stats

EPS = np.finfo(np.float32).eps


def librosa_log_mel(y: np.ndarray, cfg: frontend.FrontendConfig) -> np.ndarray:
  mel = librosa.feature.melspectrogram(
    y=y,
    sr=cfg.sample_rate,
    n_fft=cfg.n_fft,
    hop_length=cfg.hop_length,
    win_length=cfg.win_length,
    window="hann",
    center=True,
    pad_mode="reflect",
    power=2.0,
    n_mels=cfg.n_mels,
    fmin=cfg.fmin,
    fmax=cfg.fmax,
    htk=False,
    norm="slaney",
  )
  return np.log(mel + EPS)


def test_signals(sr: int = 16000, seconds: float = 2.0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  n = int(sr * seconds)
  t = np.arange(n) / sr
  src_sr = 44100
  t_src = np.arange(int(src_sr * seconds)) / src_sr
  src = 0.3 * np.sin(2 * np.pi * 1234.5 * t_src) + 0.05 * rng.standard_normal(t_src.size)
  resampled = librosa.resample(src, orig_sr=src_sr, target_sr=sr, res_type="soxr_hq")[:n]
  return {
    "noise": 0.1 * rng.standard_normal(n),
    "tones": 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3100.7 * t),
    "chirp": 0.5 * librosa.chirp(fmin=60, fmax=sr / 2 * 0.95, sr=sr, duration=seconds),
    "resampled": np.pad(resampled, (0, n - resampled.size)),
  }


test_signals.__test__ = False  # helper, not a test


@pytest.mark.parametrize("sample_rate", [16000, 32000])
def test_matches_librosa_on_a_jitted_batch(sample_rate):
  cfg = frontend.FrontendConfig.for_sample_rate(sample_rate)
  signals = test_signals(sample_rate)
  names = list(signals)
  batch = np.stack([signals[k] for k in names]).astype(np.float32)
  out = np.asarray(jax.jit(frontend.log_mel, static_argnums=2)(batch, None, cfg))
  for i, name in enumerate(names):
    ref = librosa_log_mel(batch[i], cfg)
    assert out[i].shape == ref.shape == (80, 1 + batch.shape[1] // cfg.hop_length)
    err = np.abs(out[i] - ref)
    assert err.max() <= 5e-3, (name, err.max())
    assert err.mean() <= 1e-4, (name, err.mean())


def test_ten_seconds_gives_80x1001():
  wave = jnp.zeros((2, 160000), jnp.float32)
  assert frontend.log_mel(wave).shape == (2, 80, 1001)


def test_32k_config_values():
  cfg = frontend.FrontendConfig.for_sample_rate(32000)
  assert (cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.fmax) == (800, 800, 320, 16000)
  with pytest.raises(ValueError, match="22050"):
    frontend.FrontendConfig.for_sample_rate(22050)


@pytest.mark.parametrize("length", [12345, 16000, 3000, 150])
def test_short_clip_reflects_its_own_samples_and_pads_zero(length):
  cfg = frontend.FrontendConfig()
  rng = np.random.default_rng(1)
  full = (0.1 * rng.standard_normal(32000)).astype(np.float32)
  clip = full[:length]
  batch = np.zeros((2, 32000), np.float32)
  batch[0] = full
  batch[1, :length] = clip
  out = np.asarray(frontend.log_mel(batch, np.array([32000, length], np.int32), cfg))
  n_valid = 1 + length // cfg.hop_length
  assert np.array_equal(out[1, :, n_valid:], np.zeros_like(out[1, :, n_valid:]))
  if length > cfg.n_fft // 2:  # librosa's reflect padding needs length > n_fft / 2
    ref = librosa_log_mel(clip, cfg)
    assert ref.shape[1] == n_valid
    assert np.abs(out[1, :, :n_valid] - ref).max() <= 5e-3
  # A zero-padded short clip differs from frames that read the zeros: the last valid frame
  # must not equal the unpadded-length computation on the zero-padded buffer.
  naive = np.asarray(frontend.log_mel(batch[1:], None, cfg))[0]
  assert np.abs(naive[:, n_valid - 1] - out[1, :, n_valid - 1]).max() > 1e-3
  # The full-length row is unaffected by its neighbour.
  assert np.abs(out[0] - librosa_log_mel(full, cfg)).max() <= 5e-3


def test_lengths_none_equals_full_lengths():
  wave = jax.random.normal(jax.random.key(0), (3, 4000)) * 0.1
  a = frontend.log_mel(wave)
  b = frontend.log_mel(wave, jnp.full((3,), 4000, jnp.int32))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_shape_error():
  with pytest.raises(ValueError, match=r"\[batch, samples\]"):
    frontend.log_mel(jnp.zeros((16000,)))


def test_normalize():
  x = jnp.array([[-7.1, 0.0, 1.3]])
  np.testing.assert_allclose(
    np.asarray(frontend.normalize(x, -7.1, 4.2)), (np.asarray(x) + 7.1) / 4.2, rtol=1e-6
  )


def test_filterbank_is_librosa_slaney():
  cfg = frontend.FrontendConfig()
  fb = frontend.mel_filterbank(cfg)
  ref = librosa.filters.mel(
    sr=16000, n_fft=400, n_mels=80, fmin=50, fmax=8000, htk=False, norm="slaney"
  )
  assert fb.shape == (201, 80)
  np.testing.assert_allclose(fb, ref.T, rtol=1e-6)


def test_compute_norm_stats_counts_valid_frames_and_num_crops():
  cfg = frontend.FrontendConfig()
  rng = np.random.default_rng(2)
  batches = []
  for _ in range(3):
    audio = (rng.uniform(0.01, 0.5) * rng.standard_normal((4, 8000))).astype(np.float32)
    lens = rng.integers(1000, 8001, size=4).astype(np.int32)
    for i, n in enumerate(lens):
      audio[i, n:] = 0.0
    batches.append({"audio": audio, "audio_len": lens})
  num_crops = 10  # stops inside the third batch
  vals = []
  for b in batches:
    for a, n in zip(b["audio"], b["audio_len"]):
      if len(vals) < num_crops:
        vals.append(librosa_log_mel(a[:n], cfg))
  ref = np.concatenate([v.reshape(-1) for v in vals]).astype(np.float64)
  mean, std = norm_stats.compute_norm_stats(iter(batches), cfg, num_crops=num_crops)
  assert abs(mean - ref.mean()) < 1e-3
  assert abs(std - ref.std(ddof=1)) < 1e-3


def test_compute_norm_stats_names_missing_key():
  with pytest.raises(KeyError, match="audio_len"):
    norm_stats.compute_norm_stats([{"audio": np.zeros((1, 400), np.float32)}])
