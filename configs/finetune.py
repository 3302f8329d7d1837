"""Supervised fine-tuning of a trained jaxclap audio encoder (the stage-1.1 recipe).

`get_config()` (or `get_config("demo")`) is sized for the demo on a laptop CPU;
`get_config("as2m")` is the paper's AudioSet-2M recipe (LARS lr 2.0, batch 64, 70 epochs,
15 warm-up, mixup 0.5, structured masking 0.5, SpecAugment 30/192, 10 s input).
Run with `jaxclap.eval.finetune.run_finetune(checkpoint, data_dir=..., dataset=..., config=...)`.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Fine-tuning knobs; `arg` picks a preset: "demo" (default) or "as2m"."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds the head, crops, mixup, SpecAugment and patch masks.

  # Data: splits of a built labelled TFDS set (jaxclap_demo, labelled_folder/<name>).
  c.train_split = "train"
  c.val_split = "validation"  # Picks the best epoch; "" (or a missing split): the test split.
  c.test_split = "test"  # Scored once with the best epoch's parameters.
  # Single-label (softmax CE, accuracy) or multi-label (BCE, mAP); None: from the data
  # (the builder's `multi_label` metadata).
  c.multi_label = ml_collections.config_dict.placeholder(bool)
  c.num_workers = 0  # grain worker processes reading the training split (0: main process).

  # Input. The encoder's position table is resized (bicubic) from its trained width to
  # the crop's patch columns, as the recipe's 38 → 62 columns for 10 s.
  c.crop_seconds = 0.0  # Random training crop; 0: the checkpoint's trained input length.
  # Evaluation sees whole clips: padded to this many seconds (0: the longest clip of the
  # validation/test splits) and encoded in crop-length chunks (as jaxclap.features);
  # the feature averages the time patches that hold audio.
  c.eval_seconds = 0.0
  c.eval_batch = 64  # Clips per evaluation batch (the last batch is padded, then dropped).

  # Optimiser: LARS (momentum 0.9; 1-D params excluded from trust ratio and decay).
  c.lr = 2.0  # Peak learning rate (absolute: not scaled with the batch).
  c.batch = 64  # Training clips per step.
  c.epochs = 70  # Passes over the training split (one validation after each).
  c.warmup_epochs = 15.0  # Linear warm-up, then half-cosine to 0 per step.
  c.max_steps = 0  # Stop after this many steps (0: epochs × steps per epoch); for tests.
  c.weight_decay = 0.0  # LARS weight decay on matrices.
  c.momentum = 0.9  # LARS momentum.
  c.trust_coefficient = 0.001  # LARS trust coefficient η.

  # Augmentation.
  c.mixup = 0.5  # Beta(α, α) mixup of log-mels and label vectors; 0 disables it.
  c.mask_ratio = 0.5  # Structured patch masking ratio during training; 0 disables it.
  c.freq_mask = 30  # SpecAugment: one band of < freq_mask mel bins per clip (0: off).
  c.time_mask = 192  # ... and of < time_mask frames, quoted for 10 s (1001 frames) and
  # scaled down in proportion for shorter crops (192 → 40 for 208 frames).

  # Head: BatchNorm (no affine) + Linear.
  # "frames": the time-averaged F'·D feature (3840-d for ViT-B; masking drops time columns);
  # "tokens": the average D-dim token (the official runtime's flat features when masking;
  # masking drops frequency rows and time columns).
  c.head_input = "frames"
  c.bn_momentum = 0.9  # Running-average decay (PyTorch momentum 0.1).
  c.head_init_std = 0.01  # Normal init of the linear layer (bias 0), as EVAR's head.

  c.log_every = 50  # Steps between loss log lines.
  c.save_params = True  # Write the best epoch's parameters to <workdir>/finetuned.npz.

  preset = arg or "demo"
  if preset == "demo":
    c.batch = 32
    c.epochs = 8
    c.warmup_epochs = 1.0
    c.eval_batch = 50
  elif preset != "as2m":
    raise ValueError(f"configs/finetune.py: unknown preset {preset!r}; use 'demo' or 'as2m'")
  else:
    c.crop_seconds = 10.0  # 1001 frames: the 608-frame table resized from 38 to 62 columns.
  return c
