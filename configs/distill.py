"""Distillation: a small student of a trained jaxclap or official model, on any audio.

The teacher (`distill.teacher`: a workdir, step dir or release name) is frozen; the student
is the teacher's kind of network (stage-1 M2D with CLAP heads, or stage-2 CLAP) with the
encoder `model.size`/`model.patch_size` and the teacher's text side, trained on
`data.train` (captions optional) by the one trainer (jaxclap/train/distill.py). The run ends
by writing the student as the workdir's last checkpoint: `jaxclap.load(workdir)` is the
student, in the teacher's embedding space.

  python -m jaxclap.main --config=configs/distill.py --workdir=DIR \
    --config.distill.teacher=/tmp/jaxclap_demo/stage2_1                     # demo (default)
  python -m jaxclap.main --config=configs/distill.py:real_small --workdir=DIR \
    --config.distill.teacher=RUNS/real_small                                # Berklee
  python -m jaxclap.main --config=configs/distill.py:release --workdir=DIR \
    --config.distill.teacher=m2d_clap_vit_base-80x1001p16x16p16kpBpTI-2025 \
    --config.data.train=audioset:train                                      # a released model
"""

import ml_collections

from jaxclap.train import config as config_lib

PRESETS = ("demo", "real_small", "release")


def distill_knobs() -> ml_collections.ConfigDict:
  """The `distill` group: the teacher and the losses' weights."""
  c = ml_collections.ConfigDict()
  # The teacher: a jaxclap workdir / checkpoints dir / step dir, or the name of an official
  # release (`jaxclap.list_models()`), which `python -m jaxclap.main` fetches first.
  c.teacher = ""
  c.teacher_name = ""  # Set by jaxclap.main to the release name it fetched (metadata).
  # Losses: the student's patch tokens through a learned adapter (Dense + resize to the
  # teacher's patch grid) against the teacher's, as MSE relative to the teacher's mean square;
  c.feature_weight = 1.0
  # 1 - cosine of the student's CLAP audio embedding to the teacher's;
  c.embedding_weight = 1.0
  # InfoNCE of the student's audio embeddings against the teacher's text embeddings of the
  # batch's captions, at the teacher's temperature (needs captions).
  c.infonce_weight = 0.0
  # The data has captions (stage-1 teachers read the records' sentence embeddings, stage-2
  # teachers tokenise the text): InfoNCE, validation retrieval and the retrieval evaluator
  # need them. False for unlabelled audio.
  c.captions = True
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """A distillation run of the one trainer; `arg` picks a preset (PRESETS, default demo)."""
  preset = arg or "demo"
  if preset not in PRESETS:
    raise ValueError(f"configs/distill.py: unknown preset {preset!r}; use one of {PRESETS}")
  c = config_lib.base_config()
  c.stage = "distill"
  c.seed = 0  # Seeds the student, the adapter, crops and data order.
  c.distill = distill_knobs()
  # The student's encoder (the rest of its network is the teacher's kind and text side).
  c.model.size = "mini"  # jaxclap.models.sizes: 96 wide, 6 blocks (1/8 of tiny's weights).
  c.model.patch_size = 16
  c.data.crop_frames = 0  # 0: the teacher's trained input length.
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  c.optim.base_lr = 2e-3  # Per 256 clips: 5e-4 at the demo's batch of 64.
  c.optim.weight_decay = 0.05
  c.optim.decay_rule = "jaxclap"
  if preset in ("demo", "real_small"):
    dataset = "jaxclap_demo" if preset == "demo" else "named_folder/berklee"
    c.data.train = f"{dataset}:train"
    c.data.build_demo = preset == "demo"
    c.data.demo_clips = 2000
    c.data.min_seconds = 2.1  # As the teacher's 2.08 s crops were padded.
    c.train.global_batch = 64
    c.train.epochs = 8.0  # 200 steps of 64 on the demo's 1,600 training clips.
    c.optim.warmup_epochs = 1.0
    held_out = "jaxclap_demo:test" if preset == "demo" else f"{dataset}:test"
    c.data.val = "jaxclap_demo:validation" if preset == "demo" else ""
    c.data.zero_shot = held_out if preset == "demo" else ""
    c.train.val_every = 100
    c.train.val_batches = 0
    c.evaluate.evaluators = ml_collections.ConfigDict(
      {
        "fidelity": {"kind": "fidelity", "data": held_out, "every": 100},
        "probe": {"kind": "linear_probe", "data": held_out, "every": 100},
        "knn": {"kind": "knn", "data": held_out, "every": 100},
        "zero_shot": {"kind": "zero_shot", "data": held_out, "every": 100},
      }
    )
    if preset == "demo":  # Zero-shot on the validation split too (labelled in the demo set).
      c.evaluate.evaluators.zero_shot_val = ml_collections.ConfigDict(
        {"kind": "zero_shot", "data": "jaxclap_demo:validation", "every": 100}
      )
    c.evaluate.max_clips = 0
    # The demo's captions: InfoNCE against the teacher's text side kept zero-shot at 1.15x
    # the teacher's (0.485 vs 0.420); without it the student reached 0.290 (README).
    c.distill.infonce_weight = 1.0 if preset == "demo" else 0.0
  else:  # A released ViT-B teacher on a large corpus: the paper-scale shape.
    c.data.train = "audioset:train"
    c.data.build_demo = False
    c.model.size = "small"
    c.train.global_batch = 512
    c.train.epochs = 20.0
    c.train.checkpoint_every = 1000
    c.optim.warmup_epochs = 1.0
  return c
