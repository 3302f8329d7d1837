"""The paper's evaluation tasks: EVAR task presets with their layouts, protocols and prompts.

One row per reported task (nttcslab/m2d `all_eval.sh`: linear evaluation of nine tasks,
zero-shot of seven; EVAR `retr_a2t_t2a.py`: retrieval; `util/ft-*.sh`: fine-tuning). Facts
from EVAR (`evar/ds_tasks.py` folders and clip lengths, `evar/utils/make_metadata.py`
layouts, `zeroshot.py` prompts). `REFERENCES` holds, per published model, the numbers found
with their source; a task without one leaves the table's paper cell empty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from jaxclap.eval import layouts

CREMAD_PROMPTS = {  # EVAR zeroshot.py class_to_caption (before " can be heard").
  "ANG": "angry person talking",
  "DIS": "someone talking in disgust",
  "FEA": "someone talking with a sense of fear",
  "HAP": "someone talking happily and joyfully",
  "NEU": "someone talking calmly",
  "SAD": "someone talking sadly",
}


@dataclasses.dataclass(frozen=True)
class Paper:
  """A published number (as a fraction, like our metrics) and where it is printed."""

  value: float
  source: str


@dataclasses.dataclass(frozen=True)
class Preset:
  """One evaluation task: where its data lies, how it is read and scored."""

  name: str  # Row name, e.g. "le_esc50".
  protocol: str  # "linear", "zero_shot", "retrieval" or "finetune".
  folder: str  # Under --data_root (EVAR's folder names).
  reader: Callable  # layouts reader of the folder.
  unit_sec: float  # EVAR's clip length: longer clips are cut, shorter ones zero-padded.
  metric: str  # "accuracy", "mAP" or "retrieval" (RETRIEVAL_METRICS, one row each).
  prompt: Callable[[str], str] | None = None  # Class name -> zero-shot caption.

  @property
  def metrics(self) -> tuple[str, ...]:
    """The result keys this preset reports, one table row each."""
    return RETRIEVAL_METRICS if self.metric == "retrieval" else (self.metric,)


# EVAR retr_a2t_t2a.py reports R@1/5/10 and mAP@10 both ways.
RETRIEVAL_METRICS = tuple(
  f"{d}_{m}" for d in ("a2t", "t2a") for m in ("R@1", "R@5", "R@10", "mAP@10")
)


def _caption(name: str) -> str:
  """EVAR's default caption: underscores to spaces, then ' can be heard'."""
  return name.replace("_", " ") + " can be heard"


def _gtzan(name: str) -> str:
  return _caption(name + " music")


def _nsynth(name: str) -> str:
  return _caption("the musical instrument sound of " + name)


def _cremad(name: str) -> str:
  return _caption(CREMAD_PROMPTS.get(name, name))


# (name, protocol, folder, reader, unit_sec, metric, prompt)
PRESETS: tuple[Preset, ...] = (
  Preset("le_esc50", "linear", "ESC-50-master", layouts.esc50, 5.0, "accuracy"),
  Preset("le_us8k", "linear", "UrbanSound8K", layouts.us8k, 4.0, "accuracy"),
  Preset("le_spcv2", "linear", "spcv2", layouts.spcv2, 1.0, "accuracy"),
  Preset("le_vc1", "linear", "vc1", layouts.vc1, 8.2, "accuracy"),
  Preset("le_voxforge", "linear", "voxforge", layouts.voxforge, 5.8, "accuracy"),
  Preset("le_cremad", "linear", "cremad", layouts.cremad, 2.5, "accuracy"),
  Preset("le_gtzan", "linear", "gtzan", layouts.gtzan, 30.0, "accuracy"),
  Preset("le_nsynth", "linear", "nsynth", layouts.nsynth, 4.0, "accuracy"),
  Preset("le_surge", "linear", "surge", layouts.surge, 4.0, "accuracy"),
  Preset("zs_esc50", "zero_shot", "ESC-50-master", layouts.esc50, 5.0, "accuracy", _caption),
  Preset("zs_us8k", "zero_shot", "UrbanSound8K", layouts.us8k, 4.0, "accuracy", _caption),
  Preset("zs_cremad", "zero_shot", "cremad", layouts.cremad, 2.5, "accuracy", _cremad),
  Preset(
    "zs_gtzan",
    "zero_shot",
    "gtzan",
    layouts.gtzan,
    30.0,
    "accuracy",
    _gtzan,
  ),
  Preset("zs_nsynth", "zero_shot", "nsynth", layouts.nsynth, 4.0, "accuracy", _nsynth),
  Preset("zs_fsd50k", "zero_shot", "fsd50k", layouts.fsd50k, 7.6358, "mAP", _caption),
  Preset("zs_as", "zero_shot", "AudioSet", layouts.as_eval, 10.0, "mAP", _caption),
  Preset("retr_audiocaps", "retrieval", "audiocaps", layouts.audiocaps, 10.0, "retrieval"),
  Preset("retr_clotho", "retrieval", "clotho", layouts.clotho, 30.0, "retrieval"),
  Preset("ft_as20k", "finetune", "AudioSet", layouts.as20k, 10.0, "mAP"),
  Preset("ft_as2m", "finetune", "AudioSet", layouts.as2m, 10.0, "mAP"),
  Preset("ft_esc50", "finetune", "ESC-50-master", layouts.esc50, 5.0, "accuracy"),
  Preset("ft_spcv2", "finetune", "spcv2", layouts.spcv2, 1.0, "accuracy"),
  Preset("ft_vc1", "finetune", "vc1", layouts.vc1, 8.2, "accuracy"),
)
# Fine-tuning rows -> their recipe in configs/finetune.py (ft_as2m is its stage-1.1 `as2m`;
# the others are m2d's util/ft-as20k.sh, ft-esc50.sh, ft-spc.sh, ft-vc1.sh).
FINETUNE_CONFIGS = {
  "ft_as20k": "configs/finetune.py:as20k",
  "ft_as2m": "configs/finetune.py:as2m",
  "ft_esc50": "configs/finetune.py:esc50",
  "ft_spcv2": "configs/finetune.py:spcv2",
  "ft_vc1": "configs/finetune.py:vc1",
}
FINETUNE_PRESETS = tuple(p.name for p in PRESETS if p.protocol == "finetune")
SUITES = {"paper": tuple(p.name for p in PRESETS)}

# Published results of the official models (fractions). Sources: the 2024 M2D-CLAP paper
# (arXiv 2406.02032) Tables 3-5, whose images nttcslab/m2d keeps as clap/image_Table*.png;
# the M2D TASLP 2024 paper Tables V-VI (audioset/table-V*.png, table-VI*.png there); for
# the 2025 M2D-CLAP, the authors' linear-evaluation table in the nttcslab/eval-audio-repr
# README (section 7-2) and its paper's abstract (arXiv 2503.22104). Empty cells: not found.
_LINEAR = tuple(p.name for p in PRESETS if p.protocol == "linear")  # Tables' column order.
_FINETUNE = ("ft_as2m", "ft_as20k", "ft_esc50", "ft_spcv2", "ft_vc1")
_ZERO_SHOT = ("zs_as", "zs_fsd50k", "zs_esc50", "zs_us8k", "zs_cremad", "zs_gtzan", "zs_nsynth")
_CLAP24 = "Niizumi et al. 2024 (arXiv 2406.02032)"
_M2D24 = "Niizumi et al. 2024, M2D (TASLP 32)"


def _row(names: tuple[str, ...], source: str, percents: tuple[float, ...]) -> dict[str, Paper]:
  """One table row (in %, in the table's column order) as preset -> Paper."""
  assert len(percents) == len(names), source
  return {n: Paper(round(v / 100, 4), source) for n, v in zip(names, percents)}


REFERENCES: dict[str, dict[str, Paper]] = {
  "m2d_clap_2025": {
    **_row(
      _LINEAR,
      "nttcslab/eval-audio-repr README 7-2, 'M2D-CLAP (2025)'",
      (97.9, 89.7, 94.8, 56.3, 97.1, 69.7, 86.3, 76.7, 41.1),
    ),
    **_row(("ft_as2m",), "Niizumi et al. 2025 (arXiv 2503.22104), abstract", (49.0,)),
  },
  "m2d_clap_2024": {
    **_row(
      _LINEAR,
      f"{_CLAP24} Table 3, 'M2D-CLAP/0.7'",
      (96.3, 88.8, 95.8, 70.3, 98.3, 73.4, 84.1, 78.0, 42.4),
    ),
    **_row(_FINETUNE, f"{_CLAP24} Table 4, 'M2D-CLAP/0.7'", (48.5, 41.8, 97.4, 98.3, 95.5)),
    **_row(
      _ZERO_SHOT,
      f"{_CLAP24} Table 5, 'M2D-CLAP/0.7'",
      (27.24, 40.82, 75.45, 72.40, 17.73, 75.17, 23.39),
    ),
  },
  "m2d": {
    **_row(
      _LINEAR,
      f"{_M2D24} Table V, 'M2D/0.7'",
      (91.3, 87.6, 96.0, 73.4, 98.3, 73.0, 84.1, 75.7, 42.1),
    ),
    **_row(_FINETUNE, f"{_M2D24} Table VI, 'M2D/0.7'", (47.9, 38.6, 96.0, 98.4, 96.3)),
  },
  "m2d_as": {
    **_row(
      _LINEAR,
      f"{_M2D24} Table V, 'M2D-AS/0.7'",
      (96.1, 89.8, 95.7, 68.3, 98.4, 73.1, 86.9, 75.2, 41.7),
    ),
    **_row(_FINETUNE, f"{_M2D24} Table VI, 'M2D-AS/0.7'", (48.5, 41.8, 97.2, 98.4, 95.6)),
  },
}
DEFAULT_REFERENCE = "m2d_clap_2025"  # The method this repository reproduces (M2D2 stage 1+2).


def by_name(names: list[str] | tuple[str, ...]) -> list[Preset]:
  """The presets called `names`, in table order; unknown names raise ValueError."""
  known = {p.name: p for p in PRESETS}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"unknown preset(s) {unknown}; known: {sorted(known)}")
  return [p for p in PRESETS if p.name in set(names)]
