"""Stage 2.1 of M2D-CLAP: stage 2 continued from its checkpoint without masking.

  python -m jaxclap.main --config=configs/stage2_1.py --workdir=DIR \
      --config.init.workdir=STAGE2_WORKDIR --config.text.model=/models/bert-base-uncased
"""

import importlib.util
import os

import ml_collections


def _stage2_config() -> ml_collections.ConfigDict:
  """configs/stage2.py's recipe (loaded by path: this file may be run from anywhere)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stage2.py")
  spec = importlib.util.spec_from_file_location("jaxclap_configs_stage2", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  """Stage 2's recipe with structured masking off, every parameter taken from stage 2."""
  c = _stage2_config()
  c.model.structured_mask = 0.0
  c.init.parts = "all"
  return c
