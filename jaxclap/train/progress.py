"""Metric logging: TensorBoard event files and a progress line with ETA (process 0 only)."""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
  """Collects per-step device metrics and writes their means every `flush`."""

  def __init__(self, workdir: str, *, start: int, total: int, global_batch: int):
    self._total = total
    self._batch = global_batch
    self._pending: list[Any] = []
    self._last_time = time.perf_counter()
    self._last_step = start
    self._timed_first = False
    self._first_seconds = 0.0
    self._history: list[dict[str, float]] = []
    self._writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # Writes TensorBoard events without TensorFlow.

      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def record(self, step: int, metrics: dict[str, Any]) -> None:
    """Keeps the step's metrics on device until the next flush (no host sync after the first).

    The first step of a run waits for its result once: it holds the compilation, which
    would otherwise inflate the first step time and ETA; it is reported on its own.
    """
    self._pending.append(metrics)
    if not self._timed_first:
      self._timed_first = True
      jax.block_until_ready(metrics)
      now = time.perf_counter()
      self._first_seconds = now - self._last_time
      if jax.process_index() == 0:
        print(f"step {step} compiled and ran in {_fmt_time(self._first_seconds)}", flush=True)
      self._last_time, self._last_step = now, step

  def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
    if self._writer is not None:
      for k, v in scalars.items():
        self._writer.add_scalar(k, v, step)
      self._writer.flush()

  def flush(self, step: int) -> dict[str, float]:
    """Averages pending metrics, writes them, prints one progress line."""
    if not self._pending:
      return {}
    fetched = jax.device_get(self._pending)
    means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    now = time.perf_counter()
    steps = step - self._last_step
    dt = now - self._last_time
    if steps == 0:  # Only the first (compiling) step since the last line: its own time.
      steps, dt = 1, self._first_seconds
    means["step_time"] = dt / max(steps, 1)
    means["clips_per_s"] = steps * self._batch / max(dt, 1e-9)
    self._pending, self._last_time, self._last_step = [], now, step
    self._history.append(dict(means, step=step))
    self.log_scalars(step, {("total" if k == "loss" else k): v for k, v in means.items()})
    if jax.process_index() == 0:
      eta = means["step_time"] * (self._total - step)
      shown = [
        f"{k.replace('loss_', '')} {means[k]:.4f}"
        # Distillation's terms too (train/distill.py); absent keys are skipped.
        for k in ("loss", "loss_m2d", "loss_clap", "loss_feature", "loss_embedding", "fidelity")
        if k in means
      ]
      print(
        f"step {step}/{self._total}  " + "  ".join(shown) + f"  lr {means['lr']:.2e}"
        f"  gnorm {means['grad_norm']:.3f}  {means['clips_per_s']:.1f} clips/s"
        f"  ETA {_fmt_time(eta)}",
        flush=True,
      )
    return means

  def summary(self) -> dict[str, Any]:
    if not self._history:
      return {}
    first, last = self._history[0], self._history[-1]
    return {"first_logged": first, "last_logged": last}

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
