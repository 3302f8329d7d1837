"""The evaluator kinds: one scoring function each, the one place a kind's number is computed.

The training loop (periodic evaluators, `train/evaluators.py`; validation,
`train/validation.py`; the fine-tuning objective's epoch score), `python -m jaxclap.evaluate`
and the paper suite (`eval/suite.py`) differ only in how they obtain the arrays: a jitted pass
over a TFDS split in the loop, a loaded model over decoded files offline. Each then calls
`score(kind, Inputs(...), Options(...))`.

Kinds and what they report:
  zero_shot     accuracy (mAP when multi-label) of class prompts, every round's test clips pooled
  retrieval     audio→text and text→audio R@1/5/10 and mAP@10 over the given clips and captions
  linear_probe  EVAR's linear probe (Adam, early stopping), mean over seeds and then rounds
  few_shot      linear probes on k clips per class, per k, mean over seeds and rounds
  ridge         closed-form ridge classifier, accuracy over every round's test clips pooled
  knn           cosine k-NN, accuracy over every round's test clips pooled
  finetune      accuracy (mAP when multi-label) of a fine-tuned classifier's logits
  fidelity      mean cosine of a student's CLAP audio embeddings to its teacher's
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from jaxclap import metrics
from jaxclap.score import closed_form, crossval, probe


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The arrays of one evaluated set; a kind reads the fields its `needs` names."""

  plan: Sequence[crossval.Round] = ()  # Rounds over the clips: which train, which are scored.
  labels: np.ndarray | None = None  # int [N], or multi-hot [N, C] on a multi-label set.
  num_classes: int = 0
  features: np.ndarray | None = None  # Clip features [N, D] (encoder or log-mel statistics).
  audio: np.ndarray | None = None  # CLAP audio embeddings [N, E].
  class_text: np.ndarray | None = None  # Class prompt embeddings [C, E].
  captions: np.ndarray | None = None  # Caption embeddings [M, E] of the clips in `audio`.
  caption_clip: np.ndarray | None = None  # Clip of each caption; None: caption i is clip i's.
  logits: np.ndarray | None = None  # A classifier's outputs [N, C].
  teacher_audio: np.ndarray | None = None  # A distillation teacher's embeddings [N, E].


@dataclasses.dataclass(frozen=True)
class Options:
  """Knobs of the kinds that train something."""

  seeds: tuple[int, ...] = (0,)  # linear_probe, few_shot: the mean over these seeds.
  shots: tuple[int, ...] = (1, 5)  # few_shot: clips per class.
  probe_config: probe.ProbeConfig = probe.ProbeConfig()  # linear_probe, few_shot: optimiser.
  knn_k: int = 3  # knn: neighbours that vote.


@dataclasses.dataclass(frozen=True)
class Kind:
  """One evaluator kind: the `Inputs` fields it reads and its scoring function."""

  name: str
  needs: tuple[str, ...]
  trains: bool  # Whether its plan's rounds must hold training clips.
  fn: Callable[[Inputs, Options], dict[str, float]]


def _zero_shot(inp: Inputs, opt: Options) -> dict[str, float]:
  return crossval.zero_shot(inp.audio, inp.labels, inp.class_text, inp.plan)


def _retrieval(inp: Inputs, opt: Options) -> dict[str, float]:
  return metrics.retrieval_from_embeddings(inp.audio, inp.captions, inp.caption_clip)


def _linear_probe(inp: Inputs, opt: Options) -> dict[str, float]:
  return crossval.linear_eval(
    inp.features,
    inp.labels,
    inp.plan,
    num_classes=inp.num_classes,
    seeds=opt.seeds,
    config=opt.probe_config,
  )


def _few_shot(inp: Inputs, opt: Options) -> dict[str, float]:
  return crossval.few_shot(
    inp.features,
    inp.labels,
    inp.plan,
    num_classes=inp.num_classes,
    shots=opt.shots,
    seeds=opt.seeds,
    config=opt.probe_config,
  )


def _pooled(inp: Inputs, kind: str, fit_score: Callable) -> dict[str, float]:
  """Accuracy over every round's test clips, each scored by a model fitted on its round's
  training clips (single-label sets only)."""
  y = np.asarray(inp.labels)
  if y.ndim != 1:
    raise ValueError(
      f"evaluator kind {kind!r} scores single-label sets; labels have shape {y.shape}"
    )
  y, x = y.astype(np.int64), np.asarray(inp.features, np.float64)
  correct = scored = 0
  for r in inp.plan:
    scores = fit_score(x[r.train], y[r.train], x[r.test])
    correct += int(np.sum(np.argmax(scores, axis=1) == y[r.test]))
    scored += r.test.size
  return {"accuracy": correct / scored}


def _ridge(inp: Inputs, opt: Options) -> dict[str, float]:
  return _pooled(inp, "ridge", lambda a, b, c: closed_form.ridge_scores(a, b, c, inp.num_classes))


def _knn(inp: Inputs, opt: Options) -> dict[str, float]:
  return _pooled(
    inp, "knn", lambda a, b, c: closed_form.knn_scores(a, b, c, inp.num_classes, opt.knn_k)
  )


def _finetune(inp: Inputs, opt: Options) -> dict[str, float]:
  y = np.asarray(inp.labels)
  if y.ndim == 2:
    return {"mAP": metrics.mean_average_precision(inp.logits, y)}
  return {"accuracy": metrics.accuracy(inp.logits, y)}


def _fidelity(inp: Inputs, opt: Options) -> dict[str, float]:
  # Both sides are L2-normalised embeddings: the row-wise dot product is their cosine.
  return {"cosine": float(np.mean(np.sum(inp.audio * inp.teacher_audio, axis=-1)))}


KINDS: dict[str, Kind] = {
  k.name: k
  for k in (
    Kind("zero_shot", ("plan", "labels", "audio", "class_text"), False, _zero_shot),
    Kind("retrieval", ("audio", "captions"), False, _retrieval),
    Kind("linear_probe", ("plan", "labels", "features"), True, _linear_probe),
    Kind("few_shot", ("plan", "labels", "features"), True, _few_shot),
    Kind("ridge", ("plan", "labels", "features"), True, _ridge),
    Kind("knn", ("plan", "labels", "features"), True, _knn),
    Kind("finetune", ("labels", "logits"), False, _finetune),
    Kind("fidelity", ("audio", "teacher_audio"), False, _fidelity),
  )
}
# Kinds that read clip features only: the ones a log-mel statistics baseline can take.
FEATURE_KINDS = tuple(n for n, k in KINDS.items() if set(k.needs) <= {"plan", "labels", "features"})


def score(kind: str, inputs: Inputs, options: Options = Options()) -> dict[str, float]:
  """The metrics of evaluator `kind` on `inputs`."""
  if kind not in KINDS:
    raise ValueError(f"unknown evaluator kind {kind!r}; known: {sorted(KINDS)}")
  k = KINDS[kind]
  missing = [f for f in k.needs if f != "plan" and getattr(inputs, f) is None]
  if missing or ("plan" in k.needs and not inputs.plan):
    raise ValueError(f"evaluator kind {kind!r} needs {missing or ['plan']} in its inputs")
  if k.trains and any(r.train.size == 0 for r in inputs.plan):
    raise ValueError(f"evaluator kind {kind!r} trains on each round; a round has no training clips")
  return k.fn(inputs, options)
