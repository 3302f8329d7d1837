"""Dataset log-mel statistics (the scalar mean/std used to normalise the front end)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxclap.audio import frontend

# The statistics official M2D code falls back to; a fresh jaxclap run computes its own, and a
# converted official file without `norm_stats` uses these.
LEGACY_NORM_STATS = (-7.1, 4.2)


def _batch_sums(
  audio: jax.Array, audio_len: jax.Array, cfg: frontend.FrontendConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-example sum, sum of squares and count of valid log-mel values."""
  lm = frontend.log_mel(audio, audio_len, cfg)  # [b, M, T]
  n_valid = jnp.minimum(frontend.valid_frames(audio_len, cfg), lm.shape[-1])
  mask = (jnp.arange(lm.shape[-1])[None, :] < n_valid[:, None])[:, None, :]
  lm = jnp.where(mask, lm, 0.0)
  return lm.sum((1, 2)), (lm * lm).sum((1, 2)), n_valid * lm.shape[1]


_batch_sums_jit = jax.jit(_batch_sums, static_argnums=2)


def compute_norm_stats(
  batches: Iterable[Mapping[str, np.ndarray]],
  cfg: frontend.FrontendConfig = frontend.FrontendConfig(),
  num_crops: int = 5000,
) -> tuple[float, float]:
  """Mean and std of the log-mel over the valid frames of the first `num_crops` crops.

  `batches` yields pipeline batches: dicts with 'audio' [b, S] float32 and 'audio_len' [b]
  int32 (random training crops, as the official recipe samples them).
  """
  total = total_sq = count = 0.0
  seen = 0
  for i, batch in enumerate(batches):
    for key in ("audio", "audio_len"):
      if key not in batch:
        raise KeyError(f"compute_norm_stats: batch {i} has no '{key}' (keys: {sorted(batch)})")
    take = min(num_crops - seen, len(batch["audio"]))
    s, sq, n = _batch_sums_jit(
      jnp.asarray(batch["audio"][:take], jnp.float32),
      jnp.asarray(batch["audio_len"][:take], jnp.int32),
      cfg,
    )
    total += float(np.sum(np.asarray(s, np.float64)))
    total_sq += float(np.sum(np.asarray(sq, np.float64)))
    count += float(np.sum(np.asarray(n, np.float64)))
    seen += take
    if seen >= num_crops:
      break
  if count == 0:
    raise ValueError("compute_norm_stats: no valid frames in the given batches")
  mean = total / count
  var = max(total_sq / count - mean * mean, 0.0) * count / max(count - 1, 1)
  return mean, float(np.sqrt(var))
