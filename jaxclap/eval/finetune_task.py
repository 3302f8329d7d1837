"""Stage 1.1 from Python and the paper suite, and fine-tuned classifiers read back.

`run_finetune` runs the one trainer (`jaxclap.train.loop`, objective `train.finetune`) on a
fine-tuning config (configs/finetune.py), as `python -m jaxclap.main` does;
`load_classifier` rebuilds the whole classifier (encoder, BatchNorm, Linear) of a
fine-tuned workdir for scoring.

  from configs import finetune as ft_config
  run_finetune("/runs/stage1", data_dir="~/jaxclap_data", dataset="jaxclap_demo",
               config=ft_config.get_config(), workdir="/runs/ft")
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxclap import restore as restore_lib
from jaxclap.models import classifier
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import export, loop
from jaxclap.train import finetune as ft_lib


def trainer_config(
  checkpoint: str, *, data_dir: str, dataset: str, config: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
  """`config` (configs/finetune.py) starting from `checkpoint` on `dataset` in `data_dir`."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.init.workdir = checkpoint
  c.finetune.dataset = dataset
  c.data.data_dir = data_dir
  return c


def run_finetune(
  checkpoint: str,
  *,
  data_dir: str,
  dataset: str,
  config: ml_collections.ConfigDict,
  workdir: str | None = None,
) -> dict[str, Any]:
  """Fine-tunes `checkpoint`'s encoder on `dataset` with the one trainer; its result dict.

  With a workdir: the run resumes there, ends with the best epoch as an Orbax checkpoint
  (when `finetune.save_checkpoint`) and finetune.json; rerun on a finished workdir, returns
  its finetune.json. Without one, the run lives in a temporary folder.
  """
  c = trainer_config(checkpoint, data_dir=data_dir, dataset=dataset, config=config)
  if workdir:
    return loop.train_and_evaluate(c, os.path.expanduser(workdir))
  with tempfile.TemporaryDirectory(prefix="jaxclap_finetune_") as tmp:
    c.finetune.save_checkpoint = False
    return loop.train_and_evaluate(c, tmp)


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A fine-tuned classifier: the objective's network, its variables and facts."""

  objective: ft_lib.Finetune
  variables: dict[str, Any]  # {"params": {"encoder", "classifier"}, "batch_stats"}.
  norm_stats: tuple[float, float]
  facts: dict[str, Any]  # meta["finetune"]: dataset, classes, scores, best epoch, ...

  def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Logits [B, classes] of whole clips {audio, audio_len}."""
    v, clips = self.variables, {k: batch[k] for k in ("audio", "audio_len")}
    return np.asarray(
      _logits(self.objective, v["params"], v["batch_stats"], clips, self.norm_stats)
    )


@functools.partial(jax.jit, static_argnums=0)
def _logits(objective, params, batch_stats, batch, norm_stats):
  return objective.logits(params, batch_stats, batch, norm_stats)


def load_classifier(workdir: str) -> Classifier:
  """The whole fine-tuned classifier of a fine-tuning workdir."""
  saved = ckpt.load(workdir)
  state, meta, source = saved.state, saved.meta, saved.source
  facts = meta.finetune
  if facts is None or export.HEAD not in state:
    raise ValueError(
      f"{source}: not a fine-tuning checkpoint (no meta 'finetune' or state '{export.HEAD}')"
    )
  restored = restore_lib.restore(workdir)
  head = state[export.HEAD]
  model, frames = restored.model, int(meta.input_frames)
  net = classifier.FinetuneNet(
    size=model.size,
    num_classes=len(facts["class_names"]),
    patch_size=model.patch_size,
    n_mels=model.n_mels,
    input_frames=frames,
    unit_frames=frames,
    head_input=facts["head_input"],
    dtype=model.dtype,
    pos_table=restored.config.model.pos_table,
  )
  objective = ft_lib.Finetune(
    net=net, frontend_cfg=restored.frontend_cfg, multi_label=bool(facts["multi_label"])
  )
  variables = {
    "params": {"encoder": restored.params["encoder"], "classifier": head["classifier"]},
    "batch_stats": head["batch_stats"],
  }
  return Classifier(objective, variables, restored.norm_stats, facts)
