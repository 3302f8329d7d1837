"""Supervised fine-tuning of a trained jaxclap audio encoder (the stage-1.1 recipe).

`get_config()` (or `get_config("demo")`) is sized for the demo on a laptop CPU;
`get_config("as2m")` is the paper's AudioSet-2M recipe as m2d's `util/ft-as2m.sh` runs
EVAR's `finetune.py`: timm Lars (weight decay 0: SGD, momentum 0.9) at lr 2.0, batch 64,
70 epochs of 200,000 clips drawn with AudioSet weights, timm cosine with 15 warm-up
epochs, the best epoch picked on the eval set, mixup 0.5, structured masking 0.5 drawn
per batch with the mean-token head, SpecAugment 30/192, 10 s input.
Run with `jaxclap.eval.finetune.run_finetune(checkpoint, data_dir=..., dataset=...,
config=..., workdir=...)`; the workdir gets an Orbax checkpoint that stage 2's
`init.workdir`, `jaxclap.load` and `convert to_torch` accept.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Fine-tuning knobs; `arg` picks a preset: "demo" (default) or "as2m"."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds the head, crops, mixup, SpecAugment and patch masks.

  # Data: splits of a built labelled TFDS set (jaxclap_demo, labelled_folder/<name>).
  c.train_split = "train"
  # Picks the best epoch; "": the test split (EVAR on AudioSet, which has no validation
  # split); a named split that is missing or empty also falls back to the test split.
  c.val_split = "validation"
  c.test_split = "test"  # Scored once with the best epoch's parameters.
  # Single-label (softmax CE, accuracy) or multi-label (BCE, mAP); None: from the data
  # (the builder's `multi_label` metadata).
  c.multi_label = ml_collections.config_dict.placeholder(bool)
  c.num_workers = 0  # grain worker processes reading the training split (0: main process).

  # Input. The encoder's position table is resized (bicubic) from its trained width to
  # the crop's patch columns, as the recipe's 38 → 62 columns for 10 s.
  c.crop_seconds = 0.0  # Random training crop; 0: the checkpoint's trained input length.
  # Evaluation sees whole clips: padded to this many seconds (0: the longest clip of the
  # validation/test splits) and encoded in crop-length chunks (patches.encode_chunks);
  # the feature averages the time patches that hold audio.
  c.eval_seconds = 0.0
  c.eval_batch = 64  # Clips per evaluation batch (the last batch is padded, then dropped).

  # Epochs: a shuffled pass over the training split, or (epoch_clips > 0) that many clips
  # drawn per epoch without replacement (EVAR's AS2M: 200,000, WeightedRandomSampler).
  c.epoch_clips = 0  # Clips per epoch; 0: every training clip once.
  # "none": uniform; "audioset": AudioMAE's weights (class 1000/(count+0.01), clip: sum
  # over its labels ^ (1/1.5)) from the training split's labels (jaxclap.eval.sampling).
  c.sample_weights = "none"

  # Optimiser (jaxclap.train.optim). "timm_lars": EVAR's `--optim lars`, timm.optim.Lars,
  # which applies the trust ratio only with weight decay != 0, so at weight_decay 0 it is
  # SGD with momentum (all params alike). "lars": true LARS (optax; trust ratio and decay
  # on matrices only).
  c.optimizer = "timm_lars"
  c.lr = 2.0  # Peak learning rate (absolute: not scaled with the batch).
  c.batch = 64  # Training clips per step.
  c.epochs = 70  # Epochs (one validation after each).
  c.max_steps = 0  # Stop after this many steps (0: epochs × steps per epoch); for tests.
  c.weight_decay = 0.0  # Weight decay (with it, timm_lars applies its trust ratio).
  c.momentum = 0.9  # Momentum (dampening 0, no Nesterov).
  c.trust_coefficient = 0.001  # Trust coefficient η (true LARS, or timm_lars with decay).
  # Schedule. "timm_cosine": timm's CosineLRScheduler as EVAR steps it per update at the
  # fractional epoch: one cosine lr → lr_min over all epochs from t = 0, the first
  # warmup_epochs replaced by a linear ramp warmup_lr → lr. "warmup_cosine": optax's
  # per-step warm-up prefix, then cosine to lr_min.
  c.schedule = "timm_cosine"
  c.warmup_epochs = 15.0  # Warm-up length in epochs (timm warmup_t).
  c.warmup_lr = 0.0  # Warm-up start (timm warmup_lr_init).
  c.lr_min = 1e-7  # Final learning rate (timm lr_min).

  # Augmentation.
  c.mixup = 0.5  # Beta(α, α) mixup of log-mels and label vectors; 0 disables it.
  c.mask_ratio = 0.5  # Structured patch masking ratio during training; 0 disables it.
  c.freq_mask = 30  # SpecAugment: one band of < freq_mask mel bins per clip (0: off).
  c.time_mask = 192  # ... and of < time_mask frames, quoted for 10 s (1001 frames) and
  # scaled down in proportion for shorter crops (192 → 40 for 208 frames).

  # Head: BatchNorm (no affine) + Linear.
  # "frames": the time-averaged F'·D feature (3840-d for ViT-B; masking drops time columns);
  # "tokens": the average D-dim token (the official runtime's flat features when masking;
  # masking drops frequency rows and time columns, their counts drawn per batch as
  # masks.official_variants).
  c.head_input = "frames"
  c.bn_momentum = 0.9  # Running-average decay (PyTorch momentum 0.1).
  c.head_init_std = 0.01  # Normal init of the linear layer (bias 0), as EVAR's head.

  c.log_every = 50  # Steps between loss log lines.
  # Write the best epoch as an Orbax checkpoint in <workdir> (jaxclap.eval.ft_checkpoint).
  c.save_checkpoint = True

  preset = arg or "demo"
  if preset == "demo":  # The official update rule and schedule, on a laptop-sized run.
    c.batch = 32
    # With wd=0 the official rule is plain SGD: lr 2.0 suits ViT-B on AS2M but makes the
    # demo's tiny encoder diverge (2 epochs from the demo's stage 1, test accuracy: lr 2.0
    # 0.30, 0.5 0.11, 0.05 0.43, 0.02 0.49, 0.005 0.55; measured).
    c.lr = 0.005
    c.epochs = 8
    c.warmup_epochs = 1.0
    c.eval_batch = 50
  elif preset != "as2m":
    raise ValueError(f"configs/finetune.py: unknown preset {preset!r}; use 'demo' or 'as2m'")
  else:
    c.crop_seconds = 10.0  # 1001 frames: the 608-frame table resized from 38 to 62 columns.
    c.val_split = ""  # AS2M has no validation split: EVAR picks the best epoch on eval.
    c.epoch_clips = 200_000  # 3,125 steps of 64 per epoch.
    c.sample_weights = "audioset"
    c.head_input = "tokens"  # With a training mask the runtime uses flat (mean) features.
  return c
