"""The embedded demo: stage 1 on synthetic captioned sounds, on a laptop CPU in minutes.

Builds the demo dataset (MiniLM caption embeddings, no PyTorch) if it is missing, trains a
small M2D + CLAP model and prints the loss and validation retrieval as it goes.
"""

from jaxclap.train import config as config_lib


def get_config():
  """Small model and crops; CLAP weighted up so retrieval moves within minutes."""
  c = config_lib.base_config()
  c.data.train = "jaxclap_demo:train:1.0"
  c.data.val = "jaxclap_demo:validation"
  c.data.zero_shot = "jaxclap_demo:test"
  c.data.build_demo = True
  c.data.demo_clips = 2000
  c.data.crop_frames = 208  # 2.08 s crops: 5×13 patches.
  c.model.size = "tiny"
  c.model.predictor_width = 192
  c.model.predictor_depth = 2
  c.model.predictor_heads = 6
  c.model.clap_dim = 192
  c.model.text_dim = 384  # all-MiniLM-L6-v2.
  c.train.global_batch = 64
  c.train.epochs = 6.0
  c.train.clap_weight = 0.3
  c.train.ema_start = 0.99  # Demo-sized EMA: a short run needs a target that moves.
  c.train.ema_end = 0.999
  c.train.log_every = 10
  c.train.checkpoint_every = 50
  c.train.val_every = 100
  c.train.val_batches = 0
  c.optim.base_lr = 1e-3
  c.optim.warmup_epochs = 1.0
  c.frontend.norm_stats_crops = 500
  return c
