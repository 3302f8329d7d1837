"""Stage 2 of M2D-CLAP: CLAP on the frozen stage-1.1 encoder with a fine-tuned BERT-base.

The official chain is 1 → 1.1 → 2 → 2.1: stage 2 starts from the stage-1 encoder after its
supervised AudioSet-2M fine-tuning (stage 1.1, 80×1001, its position table resized from
38 to 62 columns and kept), not from stage 1 itself. So first fine-tune (the same trainer):

  python -m jaxclap.main --config=configs/finetune.py:as2m --workdir=STAGE1_1_WORKDIR \
      --config.init.workdir=STAGE1_WORKDIR

which ends with an Orbax checkpoint (stage-1 layout, stored position table, 1001-frame grid),
then train stage 2 from it:

  python -m jaxclap.main --config=configs/stage2.py --workdir=DIR \
      --config.init.workdir=STAGE1_1_WORKDIR --config.text.model=/models/bert-base-uncased

Starting from a stage-1 workdir also works (the 608-frame table is then resized to the
10 s crops, and the checkpoint records the 1001-frame grid it trained on), but departs from
the official chain: the run warns. Temperature
restarts at 0.01; structured patch masking 0.3, its row/column counts drawn per batch.
"""

from jaxclap.train import config as config_lib


def get_config():
  """The paper's stage-2 recipe (docs/method.md, "Stage 2 and 2.1"), from base_config()."""
  c = config_lib.base_config()
  c.stage = "stage2"
  # By size; AudioCaps merged into AudioSet (configs/stage1.py).
  c.data.train = config_lib.PAPER_TRAIN
  c.data.val = "audiocaps:validation"
  c.data.build_demo = False
  c.data.num_workers = 8
  c.data.crop_frames = 1001  # 10 s.
  c.init.workdir = ""  # The stage-1.1 (fine-tuned) workdir (required; stage 1 warns).
  c.init.parts = "audio_encoder"
  c.text.kind = "bert"
  c.text.model = "google-bert/bert-base-uncased"  # Hub id; offline a local folder. 768-d.
  c.text.pooling = "cls"
  c.text.max_len = 512  # The official BertXEncoder's max_length (BERT's position limit).
  c.model.size = "base"
  c.model.structured_mask = 0.3
  c.model.finetune_audio = False
  c.model.dtype = "bfloat16"
  c.train.global_batch = 2048
  c.train.epochs = 30.0
  c.optim.base_lr = 3e-6  # × batch/256 = 2.4e-5 at 2048.
  c.optim.warmup_epochs = 5.0
  return c
