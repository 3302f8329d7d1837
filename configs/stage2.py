"""Stage 2 of M2D-CLAP: CLAP on the frozen stage-1 encoder with a fine-tuned BERT-base.

  python -m jaxclap.main --config=configs/stage2.py --workdir=DIR \
      --config.init.workdir=STAGE1_WORKDIR --config.text.model=/models/bert-base-uncased

10 s crops (80×1001) on a ViT-B trained at 80×608: the position table is resized
bicubically. Temperature restarts at 0.01; structured patch masking 0.3.
"""

from jaxclap.train import config as config_lib


def get_config():
  """Paper recipe (REFERENCE.md, "Stage 2 and 2.1"); see jaxclap/train/config.py."""
  return config_lib.paper_stage2()
