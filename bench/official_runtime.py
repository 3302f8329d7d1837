"""Manual check: a jaxclap ViT-B export loads, strictly, in nttcslab/m2d's portable runtime.

The official examples/portable_m2d.py (needs timm, einops, nnAudio) cannot be vendored or
reached from CI, so this is run by hand:

  python -m jaxclap.convert to_torch --checkpoint=RUN --output=OUT --tag=t
  python -m jaxclap.convert to_torch --checkpoint=RUN --output=OUT --tag=t10 --params_only \
      --input_frames=1001
  python bench/official_runtime.py --m2d_examples=PATH/TO/m2d/examples --run=RUN \
      --export_608=OUT/m2d_clap_vit_base-80x608p16x16p16k-t/checkpoint-N.pth \
      --export_1001=OUT/m2d_clap_vit_base-80x1001p16x16p16k-t10/checkpoint-N.pth
"""

import argparse
import sys

import numpy as np
import torch

ap = argparse.ArgumentParser()
ap.add_argument("--m2d_examples", required=True, help="folder holding portable_m2d.py")
ap.add_argument("--run", required=True, help="the jaxclap workdir that was exported")
ap.add_argument("--export_608", required=True)
ap.add_argument("--export_1001", required=True)
args = ap.parse_args()
sys.path.insert(0, args.m2d_examples)
import jax.numpy as jnp
from portable_m2d import PortableM2D

import jaxclap
from jaxclap import restore
from jaxclap.audio import frontend as fe

torch.set_grad_enabled(False)
rng = np.random.default_rng(0)
waves = (0.1 * rng.standard_normal((2, 16000 * 10))).astype(np.float32)  # 10 s
waves[:, : 16000 * 3] *= np.sin(np.arange(16000 * 3) / 7.0)[None]  # some structure
jm = jaxclap.load(args.run)
r = restore.restore(args.run)
cfg = fe.FrontendConfig()
lms = np.asarray(fe.normalize(fe.log_mel(jnp.asarray(waves), None, cfg), *r.norm_stats))  # [B,80,T]
print("log-mel frames", lms.shape)

w608 = args.export_608
pm = PortableM2D(w608)  # flat_features=False → [B, T', 3840]
print("norm_stats official", pm.cfg.mean, pm.cfg.std, "jaxclap", r.norm_stats)
x = torch.from_numpy(lms.copy()).unsqueeze(1)
ref_frames = pm.encode_lms(x).numpy()
jf = jm.frame_features(waves, sample_rate=16000)
print(
  "frame features",
  ref_frames.shape,
  jf.shape,
  "max abs (same log-mel input)",
  float(np.abs(ref_frames - jf).max()),
  "max |value|",
  float(np.abs(jf).max()),
)
# End to end from the waveform: the official nnAudio front end vs jaxclap's.
e2e = pm.encode(torch.from_numpy(waves)).numpy()
print(
  "frame features from waveforms (nnAudio vs jaxclap front end) max abs",
  float(np.abs(e2e - jf).max()),
  "clip-feature cosine",
  float(
    np.min(
      np.sum(e2e.mean(1) * jf.mean(1), -1)
      / np.linalg.norm(e2e.mean(1), axis=-1)
      / np.linalg.norm(jf.mean(1), axis=-1)
    )
  ),
)
pmf = PortableM2D(w608, flat_features=True)
tokens = pmf.encode_lms(x)
ref_clap = pmf.backbone.audio_proj(tokens).numpy()
ref_clap /= np.linalg.norm(ref_clap, axis=-1, keepdims=True)
jc = jm.audio_embedding(waves, sample_rate=16000)
print("CLAP audio embedding (normalised) max abs", float(np.abs(ref_clap - jc).max()))

w1001 = args.export_1001
p10 = PortableM2D(w1001)
ref10 = p10.encode_lms(x).numpy()
tok = r.model.apply({"params": r.params}, jnp.asarray(lms[..., :1001]), method="encode")
from jaxclap.models import patches

j10 = np.asarray(patches.tokens_to_frames(tok, 5))
print(
  "80x1001 export (position table fitted to 62 columns) vs jaxclap encoding 1001 frames at once:",
  ref10.shape,
  j10.shape,
  "max abs",
  float(np.abs(ref10 - j10).max()),
)
