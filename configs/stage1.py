"""Stage 1 of M2D-CLAP (2025): M2D + 0.01·CLAP on ViT-B/16, 80×608 crops, batch 2048.

The paper trains 300 epochs on AudioSet (+VGGSound, Auto-ACD captions), WavCaps, AudioCaps
and Clotho with NV-Embed-v2 (4096-d) caption embeddings. Build those datasets first with
`python -m jaxclap.data.build` (captioned-folder builder, --text_model=nvidia/NV-Embed-v2
--backend=st) and name them in data.train.
"""

from jaxclap.train import config as config_lib


def get_config():
  """Paper recipe; see jaxclap/train/config.py for every knob."""
  c = config_lib.base_config()
  c.data.train = "audioset:train:1.0,wavcaps:train:1.0,audiocaps:train:1.0,clotho:train:1.0"
  c.data.val = "audiocaps:validation"
  c.data.build_demo = False
  c.data.num_workers = 8  # Per host; decoding and cropping keep up with a v5e host at 8.
  c.model.size = "base"
  c.model.text_dim = 4096  # NV-Embed-v2.
  c.model.dtype = "bfloat16"  # Mixed precision as in the paper; params stay float32.
  c.train.global_batch = 2048
  c.train.epochs = 300.0
  c.optim.warmup_epochs = 20.0
  return c
