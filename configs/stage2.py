"""Stage 2 of M2D-CLAP: CLAP on the frozen stage-1.1 encoder with a fine-tuned BERT-base.

The official chain is 1 → 1.1 → 2 → 2.1: stage 2 starts from the stage-1 encoder after its
supervised AudioSet-2M fine-tuning (stage 1.1, 80×1001, its position table resized from
38 to 62 columns and kept), not from stage 1 itself. So first fine-tune:

  from configs import finetune
  from jaxclap.eval.finetune import run_finetune
  run_finetune(STAGE1_WORKDIR, data_dir=DATA_DIR, dataset="audioset_labelled",
               config=finetune.get_config("as2m"), workdir=STAGE1_1_WORKDIR)

which writes an Orbax workdir (stage-1 layout, stored position table, 1001-frame grid),
then train stage 2 from it:

  python -m jaxclap.main --config=configs/stage2.py --workdir=DIR \
      --config.init.workdir=STAGE1_1_WORKDIR --config.text.model=/models/bert-base-uncased

Starting from a stage-1 workdir also works (the 608-frame table is then resized to the
10 s crops, and the checkpoint records the 1001-frame grid it trained on). Temperature
restarts at 0.01; structured patch masking 0.3, its row/column counts drawn per batch.
"""

from jaxclap.train import config as config_lib


def get_config():
  """Paper recipe (REFERENCE.md, "Stage 2 and 2.1"); see jaxclap/train/config.py."""
  return config_lib.paper_stage2()
