"""The PyTorch bench baseline (bench/torch_m2d.py) computes the same stage-1 loss as JAX."""

import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

from jaxclap.audio import frontend
from jaxclap.models import m2d
from jaxclap.train import objectives

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import torch_m2d  # noqa: E402  (a bench script module, not part of the package)

FE = frontend.FrontendConfig()
NORM = (-7.1, 4.2)
FRAMES = 64
# clap_dim != width and text_dim != clap_dim, so both optional projections are exercised.
CFG = dict(
  size="test",
  predictor_width=32,
  predictor_depth=2,
  predictor_heads=2,
  clap_dim=48,
  text_dim=24,
  input_frames=FRAMES,
  mask_ratio=0.7,
)


@pytest.fixture(scope="module")
def pair():
  """JAX model + params and a PyTorch baseline holding the same weights, and a batch."""
  model = m2d.build_model(CFG)
  online, target = nn.unbox(
    m2d.init_params(model, jax.random.key(0), n_frames=FRAMES, text_dim=CFG["text_dim"])
  )
  # Non-zero tokens and temperature so that every copied tensor affects the loss.
  online["audio_proj"]["sem_token"] = online["audio_proj"]["sem_token"] + 0.1
  online["logit_scale"] = online["logit_scale"] * 0.5
  torch.manual_seed(0)
  tmodel = torch_m2d.TorchM2D(CFG, n_frames=FRAMES, clap_weight=0.5, norm_stats=NORM)
  torch_m2d.load_jax_params(tmodel, online, target)
  rng = np.random.default_rng(0)
  s = (FRAMES - 1) * FE.hop_length
  batch = {
    "audio": (0.1 * rng.standard_normal((4, s))).astype(np.float32),
    "audio_len": np.full((4,), s, np.int32),
    "caption_embedding": rng.standard_normal((4, CFG["text_dim"])).astype(np.float32),
  }
  return model, online, target, tmodel, batch


def test_torch_loss_matches_jax(pair):
  model, online, target, tmodel, batch = pair
  key = jax.random.key(7)
  loss, metrics = jax.jit(
    lambda o, t, b: objectives.stage1_loss(
      o, t, b, key, model=model, frontend_cfg=FE, norm_stats=NORM, clap_weight=0.5
    )
  )(online, target, batch)
  # stage1_loss draws its masks with sample_masks(key, ...): hand PyTorch the same ones.
  n = (80 // 16) * (FRAMES // 16)
  vis, msk = (np.array(i) for i in m2d.sample_masks(key, 4, n, CFG["mask_ratio"]))
  assert vis.shape == (4, 6) and msk.shape == (4, 14)
  with torch.no_grad():
    tloss, tmetrics = tmodel(
      torch.from_numpy(batch["audio"]),
      torch.from_numpy(batch["caption_embedding"]),
      torch.from_numpy(vis).long(),
      torch.from_numpy(msk).long(),
    )
  for name in ("loss_m2d", "loss_clap"):
    assert abs(float(tmetrics[name]) - float(metrics[name])) <= 1e-4, name
  assert abs(float(tloss) - float(loss)) <= 1e-4
  # The check is not vacuous: other masks give a different M2D loss.
  with torch.no_grad():
    other, _ = tmodel(
      torch.from_numpy(batch["audio"]),
      torch.from_numpy(batch["caption_embedding"]),
      torch.from_numpy(msk[:, :6]).long(),
      torch.from_numpy(np.concatenate([vis, msk[:, 6:]], 1)).long(),
    )
  assert abs(float(other) - float(loss)) > 1e-3


def test_torch_log_mel_matches_jax(pair):
  _, _, _, tmodel, batch = pair
  want = frontend.normalize(frontend.log_mel(batch["audio"], batch["audio_len"], FE), *NORM)
  got = tmodel.frontend(torch.from_numpy(batch["audio"])).numpy()
  assert got.shape == want.shape == (4, 80, FRAMES)
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-3)


def test_torch_train_step_updates_and_ema(pair):
  _, _, _, tmodel, batch = pair
  model = torch_m2d.TorchM2D(CFG, n_frames=FRAMES, clap_weight=0.5, norm_stats=NORM)
  model.load_state_dict(tmodel.state_dict())
  opt = torch_m2d.make_optimizer(model, lr=1e-3)
  before = {k: v.clone() for k, v in model.state_dict().items()}
  wave = torch.from_numpy(batch["audio"])
  text = torch.from_numpy(batch["caption_embedding"])
  metrics = torch_m2d.train_step(model, opt, wave, text, ema_decay=0.9)
  after = model.state_dict()
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  key = "encoder.body.blocks.0.attn.qkv.weight"
  assert not torch.equal(before[key], after[key])
  # EMA: target ← 0.9·target + 0.1·online (updated online weights).
  tkey = "target.blocks.0.attn.qkv.weight"
  want = 0.9 * before[tkey] + 0.1 * after[key]
  torch.testing.assert_close(after[tkey], want, rtol=1e-6, atol=1e-6)
  # Target params get no gradient; the decay mask skips biases, norms and tokens.
  assert all(not p.requires_grad for p in model.target.parameters())
  groups = opt.param_groups
  assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
  assert any(p is model.encoder.cls_token for p in groups[1]["params"])
  assert any(p is model.logit_scale for p in groups[1]["params"])


def test_load_jax_params_rejects_mismatch(pair):
  model, online, target, _, _ = pair
  other = torch_m2d.TorchM2D({**CFG, "clap_dim": 64}, n_frames=FRAMES, clap_weight=0.5)
  with pytest.raises((KeyError, ValueError), match="load_jax_params"):
    torch_m2d.load_jax_params(other, online, target)
