"""Supervised fine-tuning of a trained jaxclap audio encoder (the stage-1.1 recipe).

`get_config()` (or `get_config("demo")`) is sized for the demo on a laptop CPU;
`get_config("as2m")` is the paper's AudioSet-2M recipe as m2d's `util/ft-as2m.sh` runs
EVAR's `finetune.py`: timm Lars (weight decay 0: SGD, momentum 0.9) at lr 2.0, batch 64,
70 epochs of 200,000 clips drawn with AudioSet weights, timm cosine with 15 warm-up
epochs, the best epoch picked on the eval set, mixup 0.5, structured masking 0.5 drawn
per batch with the mean-token head, SpecAugment 30/192, 10 s input.
Run through the one trainer, like every stage (sharded, multi-host, resumable):

  python -m jaxclap.main --config=configs/finetune.py:as2m --workdir=DIR \
      --config.init.workdir=STAGE1_WORKDIR --config.finetune.dataset=audioset_labelled

(or `jaxclap.eval.finetune_task.run_finetune(checkpoint, data_dir=..., dataset=..., config=...,
workdir=...)`, which calls the same code); the workdir ends with an Orbax checkpoint of the
best epoch that stage 2's `init.workdir`, `jaxclap.load` and `convert to_torch` accept.

`get_config("as20k" | "esc50" | "spcv2" | "vc1")`: the paper's other fine-tuning rows
as m2d's `util/ft-as20k.sh`, `ft-esc50.sh`, `ft-spc.sh`, `ft-vc1.sh` run EVAR's
`finetune.py`: the flags of each script over EVAR's `config/m2d.yaml` fine-tuning
defaults (`EVAR_M2D_YAML`) and `finetune.py`'s fixed choices (`EVAR_FINETUNE_PY`). The
paper suite runs them on the EVAR layouts (`jaxclap.eval.suite`; ESC-50 over its 5 folds).
"""

import ml_collections

from jaxclap.train import config as config_lib

# EVAR config/m2d.yaml fine-tuning defaults (keys: ours), used where a util/ft-*.sh script
# passes no flag: warmup_epochs 5, ft_bs 128, ft_epochs 200, ft_freq_mask 30,
# ft_time_mask 192, mixup 0.5, ft_rrc True, training_mask 0.0, flat_features False.
EVAR_M2D_YAML = {
  "warmup_epochs": 5.0,
  "batch": 128,
  "epochs": 200,
  "freq_mask": 30,
  "time_mask": 192,
  "mixup": 0.5,
  "rrc": True,
  "mask_ratio": 0.0,
}
# EVAR finetune.py's fixed choices: run_eval's default optim 'sgd' (torch SGD, momentum 0.9,
# weight decay 0: the same update as timm Lars at decay 0, our "timm_lars"); timm
# CosineLRScheduler(lr_min=1e-7, warmup_lr_init=0); loss_nll = -mean(gts * log_softmax),
# a mean over clips and classes.
EVAR_FINETUNE_PY = {
  "optimizer": "timm_lars",
  "momentum": 0.9,
  "weight_decay": 0.0,
  "lr_min": 1e-7,
  "warmup_lr": 0.0,
  "class_mean_loss": True,
}
# Each script's flags (m2d util/ft-*.sh; dur_frames as crop_seconds: 1001 frames = 10 s,
# 501 = 5 s, 821 = 8.2 s; ft-spc.sh sets none: EVAR's 1 s SPCV2 unit). A training mask
# makes the official runtime average tokens (flat_features), our head_input "tokens".
EVAR_SCRIPTS = {
  # ft-as20k.sh: --lr=0.5 --freq_mask 30 --time_mask 192 --training_mask 0.5 --mixup 0.3
  # --rrc True --batch_size 64, dur_frames=1001.
  "as20k": {
    "lr": 0.5,
    "freq_mask": 30,
    "time_mask": 192,
    "mask_ratio": 0.5,
    "mixup": 0.3,
    "rrc": True,
    "batch": 64,
    "crop_seconds": 10.0,
  },
  # ft-esc50.sh: --lr=0.5 --freq_mask 15 --time_mask 48 --training_mask 0.5 --mixup 0.0
  # --rrc True, dur_frames=501, freeze_embed=True.
  "esc50": {
    "lr": 0.5,
    "freq_mask": 15,
    "time_mask": 48,
    "mask_ratio": 0.5,
    "mixup": 0.0,
    "rrc": True,
    "crop_seconds": 5.0,
    "freeze_patch_embed": True,
  },
  # ft-spc.sh: --lr=0.5 --freq_mask 30 --time_mask 48 --training_mask 0.5 --mixup 0.3
  # --rrc True.
  "spcv2": {
    "lr": 0.5,
    "freq_mask": 30,
    "time_mask": 48,
    "mask_ratio": 0.5,
    "mixup": 0.3,
    "rrc": True,
    "crop_seconds": 1.0,
  },
  # ft-vc1.sh: --optim adamw --lr=0.0005 --freq_mask 30 --time_mask 48 --training_mask 0.0
  # --mixup 0.0 --rrc False --epochs 50 --batch_size 64, dur_frames=821; finetune.py's AdamW:
  # weight_decay=0.0001, betas=(0.9, 0.95), eps=1e-08, amsgrad=True.
  "vc1": {
    "optimizer": "adamw",
    "lr": 0.0005,
    "weight_decay": 0.0001,
    "freq_mask": 30,
    "time_mask": 48,
    "mask_ratio": 0.0,
    "mixup": 0.0,
    "rrc": False,
    "epochs": 50,
    "batch": 64,
    "crop_seconds": 8.2,
  },
}
# No validation split: EVAR picks the best epoch on the test set (AS20K's metadata has none;
# an ESC-50 fold round has none either).
_NO_VALIDATION = ("as20k", "esc50")
PRESETS = ("demo", "as2m", *EVAR_SCRIPTS)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """A stage-1.1 run of the one trainer (`python -m jaxclap.main`): `init.workdir` is the
  checkpoint fine-tuned, `finetune` the recipe of preset `arg` (`finetune_knobs`)."""
  c = config_lib.base_config()
  c.stage = "finetune"
  c.seed = 0  # Seeds the head, crops, mixup, SpecAugment and patch masks.
  c.init.workdir = ""  # The checkpoint fine-tuned (stage 1; any jaxclap or imported one).
  c.train.log_every = 50  # Steps between loss log lines.
  c.train.checkpoint_every = 500  # Steps between (resumable) checkpoints.
  c.finetune = finetune_knobs(arg)
  if (arg or "demo") == "as2m":
    c.finetune.dataset = "audioset_labelled"  # AudioSet-2M, built as a labelled set.
  return c


def finetune_knobs(arg: str | None = None) -> ml_collections.ConfigDict:
  """The `finetune` group; `arg` picks a preset: "demo" (default), "as2m" or an EVAR script."""
  c = ml_collections.ConfigDict()
  # Data: splits of a built labelled TFDS set (jaxclap_demo, labelled_folder/<name>).
  c.dataset = "jaxclap_demo"
  c.train_split = "train"
  # Picks the best epoch; "": the test split (EVAR on AudioSet, which has no validation
  # split); a named split that is missing or empty also falls back to the test split.
  c.val_split = "validation"
  c.test_split = "test"  # Scored once with the best epoch's parameters.
  # Single-label (softmax CE, accuracy) or multi-label (BCE, mAP); None: from the data
  # (the builder's `multi_label` metadata).
  c.multi_label = ml_collections.config_dict.placeholder(bool)

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
  # over its labels ^ (1/1.5)) from the training split's labels (jaxclap.data.sampling).
  c.sample_weights = "none"

  # Optimiser (jaxclap.train.optim). "timm_lars": EVAR's `--optim lars`, timm.optim.Lars,
  # which applies the trust ratio only with weight decay != 0, so at weight_decay 0 it is
  # SGD with momentum (all params alike). "lars": true LARS (optax; trust ratio and decay
  # on matrices only). "adamw": EVAR's `--optim adamw` (AMSGrad, betas (momentum, 0.95),
  # eps 1e-8, decoupled weight decay).
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
  # Single-label loss: False: softmax cross-entropy averaged over clips; True: also divided
  # by the class count, as EVAR's loss_nll (-mean(target * log_softmax) over clips and
  # classes), which scales the gradients of an SGD run by 1/classes.
  c.class_mean_loss = False
  # Freeze the patch embedding (EVAR's freeze_embed, m2d ft-esc50.sh): no updates to it.
  c.freeze_patch_embed = False

  # Augmentation.
  c.mixup = 0.5  # Beta(α, α) mixup of log-mels and label vectors; 0 disables it.
  c.mask_ratio = 0.5  # Structured patch masking ratio during training; 0 disables it.
  c.freq_mask = 30  # SpecAugment: one band of < freq_mask mel bins per clip (0: off).
  c.time_mask = 192  # ... and of < time_mask frames, quoted for 10 s (1001 frames) and
  # scaled down in proportion for shorter crops (192 → 40 for 208 frames), unless:
  c.time_mask_as_is = False  # True: time_mask frames at any crop length (EVAR's flag).
  # Random resize crop of each training log-mel after SpecAugment (EVAR's --rrc,
  # byol-a's RandomResizeCrop: virtual canvas 1.0 × 1.5, scales 0.6-1.5, bicubic).
  c.rrc = False

  # Head: BatchNorm (no affine) + Linear.
  # "frames": the time-averaged F'·D feature (3840-d for ViT-B; masking drops time columns);
  # "tokens": the average D-dim token (the official runtime's flat features when masking;
  # masking drops frequency rows and time columns, their counts drawn per batch as
  # masks.official_variants).
  c.head_input = "frames"
  c.bn_momentum = 0.9  # Running-average decay (PyTorch momentum 0.1).
  c.head_init_std = 0.01  # Normal init of the linear layer (bias 0), as EVAR's head.

  # Compute dtype of the encoder: "float32" (EVAR fine-tunes in fp32), "bfloat16", or ""
  # (the checkpoint's own, e.g. a bf16 stage-1 run's).
  c.dtype = "float32"
  # Write the best epoch as the workdir's final checkpoint (jaxclap.train.export): what
  # stage 2's init.workdir, jaxclap.load and convert to_torch read.
  c.save_checkpoint = True

  preset = arg or "demo"
  if preset not in PRESETS:
    raise ValueError(f"configs/finetune.py: unknown preset {preset!r}; use one of {PRESETS}")
  if preset in EVAR_SCRIPTS:
    for knobs in (EVAR_M2D_YAML, EVAR_FINETUNE_PY, EVAR_SCRIPTS[preset]):
      c.update(knobs)
    c.time_mask_as_is = True  # EVAR's SpecAugment takes the script's width as it is.
    c.eval_seconds = c.crop_seconds  # EVAR cuts (or pads) test clips to the task's unit.
    c.head_input = "tokens" if c.mask_ratio > 0 else "frames"
    c.val_split = "" if preset in _NO_VALIDATION else "validation"
  elif preset == "demo":  # The official update rule and schedule, on a laptop-sized run.
    c.batch = 32
    # With wd=0 the official rule is plain SGD: lr 2.0 suits ViT-B on AS2M but makes the
    # demo's tiny encoder diverge (2 epochs from the demo's stage 1, test accuracy: lr 2.0
    # 0.30, 0.5 0.11, 0.05 0.43, 0.02 0.49, 0.005 0.55; measured).
    c.lr = 0.005
    c.epochs = 8
    c.warmup_epochs = 1.0
    c.eval_batch = 50
  else:
    c.crop_seconds = 10.0  # 1001 frames: the 608-frame table resized from 38 to 62 columns.
    c.val_split = ""  # AS2M has no validation split: EVAR picks the best epoch on eval.
    c.epoch_clips = 200_000  # 3,125 steps of 64 per epoch.
    c.sample_weights = "audioset"
    c.head_input = "tokens"  # With a training mask the runtime uses flat (mean) features.
  return c
