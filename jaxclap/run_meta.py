"""The run metadata saved beside every checkpoint (`<step>/meta`): what rebuilds its network.

Written by training (`train/loop.py`), import (`convert.from_torch`), fine-tuning
(`train/export.py`) and distillation (`train/distill.py`); read by restore, the next stage's
hand-off and conversion.
`to_dict`/`from_dict` keep the JSON layout every jaxclap version wrote: keys absent from an
old checkpoint stay absent, keys this class does not know are carried along unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# Keys in the order the trainer has always written them; `to_dict` keeps it.
_ORDER = (
  "config",
  "norm_stats",
  "text_models",
  "input_frames",
  "unit_frames",
  "stage",
  "total_steps",
  "steps_per_epoch",
  "step",
  "imported",
  "finetune",
  "text_runtime",
  "distill",
)


@dataclasses.dataclass(frozen=True)
class RunMeta:
  """Facts of a run that its config alone does not hold."""

  config: dict[str, Any] | None = None  # The run's config as JSON: the model that trained.
  norm_stats: tuple[float, float] | None = None  # Log-mel (mean, std) the run normalised with.
  # Dataset → the sentence model that embedded its captions (stage 1).
  text_models: dict[str, str] = dataclasses.field(default_factory=dict)
  input_frames: int | None = None  # Width of the encoder's position table (set by stage 1).
  unit_frames: int | None = None  # The input grid the last stage trained on.
  stage: str | None = None  # "stage1" or "stage2".
  total_steps: int | None = None  # Length of the run (the EMA schedule of stage 1 needs it).
  steps_per_epoch: int | None = None
  step: int | None = None  # The saved step.
  imported: dict[str, Any] | None = None  # convert.from_torch: source file, filled parts, notes.
  finetune: dict[str, Any] | None = None  # Fine-tuning: dataset, scores, best epoch, head.
  # Stage 1 from a caption table: the runtime that embedded it ({"backend": "st"|"jax",
  # "trust_remote_code": bool}); prompts go through the same one. None: the default runtime.
  text_runtime: dict[str, Any] | None = None
  # A distilled student (train/distill.py): its teacher, sizes and the losses' weights.
  distill: dict[str, Any] | None = None
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # Keys this class predates.

  @classmethod
  def from_dict(cls, raw: Mapping[str, Any]) -> RunMeta:
    """A saved meta dict (any jaxclap version) as a RunMeta."""
    known = {k: raw[k] for k in _ORDER if k in raw}
    if known.get("norm_stats") is not None:
      known["norm_stats"] = tuple(float(x) for x in known["norm_stats"])
    known["text_models"] = dict(known.get("text_models") or {})
    return cls(**known, extra={k: v for k, v in raw.items() if k not in _ORDER})

  def to_dict(self) -> dict[str, Any]:
    """The JSON dict written to `<step>/meta` (None fields are left out, as before)."""
    out: dict[str, Any] = {}
    for key in _ORDER:
      value = getattr(self, key)
      if value is None:
        continue
      out[key] = list(value) if key == "norm_stats" else value
    out.update(self.extra)
    return out

  def replace(self, **changes: Any) -> RunMeta:
    return dataclasses.replace(self, **changes)

  def frames(self, crop_frames: int) -> tuple[int, int]:
    """(position-table width, trained input grid); runs that predate them used the crop."""
    return (int(self.input_frames or crop_frames), int(self.unit_frames or crop_frames))

  @property
  def pos_table(self) -> str | None:
    """The encoder's position table kind ("sincos" or "stored") the saved config names."""
    return ((self.config or {}).get("model") or {}).get("pos_table")

  @property
  def sentence_model(self) -> str | None:
    """Stage 1: the (first) sentence model whose embeddings the text head learnt from."""
    models = sorted(set(self.text_models.values()))
    return models[0] if models else None
