"""Evaluators of a distillation: the student beside its teacher, and their fidelity.

`train.evaluators` runs these for stage "distill": one pass over a split gives the
student's and the teacher's clip features and CLAP audio embeddings (one jitted function);
the `fidelity` kind (score/kinds.py) scores the mean cosine of the two embeddings, and every
other kind is also scored on the teacher's outputs once per run (the "teacher" baseline), so
zero-shot and the probes of student and teacher sit side by side in the log, TensorBoard and
the table.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxclap.audio import frontend as fe
from jaxclap.models import features
from jaxclap.train import distill


def outputs_fn(objective: distill.Distill, fcfg: fe.FrontendConfig) -> Callable:
  """(state, batch) -> the student's and the teacher's features and embeddings."""

  def fn(state, batch):
    x = fe.waveform_input(batch, fcfg, state.norm_stats)
    student = objective.merged(state.params, state.frozen)
    clip, audio = features.clip_features_and_clap(student, x, model=objective.model)
    teacher = jax.lax.stop_gradient(state.frozen["teacher"])
    t_clip, t_audio = features.clip_features_and_clap(teacher, x, model=objective.teacher.net.model)
    out = {
      "features": clip,
      "logmel": jnp.concatenate([x.mean(axis=-1), x.std(axis=-1)], axis=-1),
      "audio": audio,
      "teacher_features": t_clip,
      "teacher_audio": t_audio,
    }
    if objective.captions:
      out["text"] = objective.text_embed(state.params, state.frozen, batch)
    return out

  return fn


def as_teacher(outs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A pass's outputs with the teacher's features and embeddings in the student's place."""
  return {**outs, "features": outs["teacher_features"], "audio": outs["teacher_audio"]}
