"""Stage 2.1 of M2D-CLAP: stage 2 continued from its checkpoint without masking.

  python -m jaxclap.main --config=configs/stage2_1.py --workdir=DIR \
      --config.init.workdir=STAGE2_WORKDIR --config.text.model=/models/bert-base-uncased
"""

from jaxclap.train import config as config_lib


def get_config():
  """Stage 2's recipe with structured masking off, every parameter taken from stage 2."""
  c = config_lib.paper_stage2()
  c.model.structured_mask = 0.0
  c.init.parts = "all"
  return c
