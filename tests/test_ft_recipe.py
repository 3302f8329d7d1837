"""The stage-1.1 recipe's official rules, each against an independent numpy re-implementation:
timm's Lars step and cosine schedule as EVAR drives them, AudioMAE's AudioSet sampling
weights with EVAR's per-epoch weighted draw, and the per-batch structured-mask counts."""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import finetune as ft_config
from jaxclap.data import sampling
from jaxclap.models import masks
from jaxclap.train import augment, optim

# ---------------------------------------------------------------------- update rule


def _timm_lars_numpy(
  params,
  grad_seq,
  lr_seq,
  *,
  momentum=0.9,
  dampening=0.0,
  wd=0.0,
  nesterov=False,
  trust_coeff=1e-3,
  eps=1e-8,
  always_adapt=False,
):
  """timm.optim.Lars.step (timm 0.9), one parameter group, in numpy float64."""
  params = {k: v.astype(np.float64) for k, v in params.items()}
  bufs = {}
  for grads, lr in zip(grad_seq, lr_seq):
    for k, p in params.items():
      g = grads[k].astype(np.float64)
      if wd != 0 or always_adapt:
        w_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
        ratio = trust_coeff * w_norm / (g_norm + w_norm * wd + eps)
        ratio = ratio if (w_norm > 0 and g_norm > 0) else 1.0
        g = (g + wd * p) * ratio
      if momentum != 0:
        bufs[k] = g.copy() if k not in bufs else momentum * bufs[k] + (1 - dampening) * g
        g = g + momentum * bufs[k] if nesterov else bufs[k]
      params[k] = p - lr * g
  return params


def _run_optax(tx, params, grad_seq):
  state = tx.init(params)
  for grads in grad_seq:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize(
  "kw",
  [
    {},  # EVAR's call: momentum 0.9, weight_decay 0 → no trust ratio.
    {"wd": 1e-2},  # With decay timm applies the trust ratio (true LARS).
    {"wd": 1e-2, "dampening": 0.1},
    {"nesterov": True},
  ],
)
def test_timm_lars_matches_numpy(kw):
  rng = np.random.default_rng(0)
  params = {
    "w": rng.standard_normal((4, 3)).astype(np.float32),
    "b": np.zeros(3, np.float32),
  }  # Zero norm: trust ratio 1.
  grad_seq = [
    {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    for _ in range(5)
  ]
  lrs = [0.0, 0.5, 2.0, 1.5, 0.7]
  expected = _timm_lars_numpy(params, grad_seq, lrs, **kw)
  tx = optim.timm_lars(
    lambda count: jnp.asarray(lrs)[count],
    momentum=0.9,
    dampening=kw.get("dampening", 0.0),
    weight_decay=kw.get("wd", 0.0),
    nesterov=kw.get("nesterov", False),
  )
  got = _run_optax(tx, {k: jnp.asarray(v) for k, v in params.items()}, grad_seq)
  for k in params:
    np.testing.assert_allclose(got[k], expected[k], rtol=2e-5, atol=2e-6, err_msg=k)
  if not kw:  # In effect SGD with momentum 0.9 (no Nesterov, no dampening).
    sgd = _run_optax(
      optax.sgd(lambda c: jnp.asarray(lrs)[c], momentum=0.9),
      {k: jnp.asarray(v) for k, v in params.items()},
      grad_seq,
    )
    for k in params:
      np.testing.assert_allclose(got[k], sgd[k], rtol=1e-6, atol=1e-6)
  else:  # The options really change the update.
    plain = _timm_lars_numpy(params, grad_seq, lrs)
    assert not np.allclose(plain["w"], expected["w"], atol=1e-4)


# ------------------------------------------------------------------------- schedule


def _timm_cosine_lr(t, *, lr, t_initial, warmup_t, warmup_lr_init, lr_min):
  """timm CosineLRScheduler._get_lr (cycle_mul 1, cycle_limit 1, no prefix, no noise)."""
  if t < warmup_t:
    return warmup_lr_init + t * (lr - warmup_lr_init) / warmup_t
  if t // t_initial >= 1:
    return lr_min
  return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * t / t_initial))


def _evar_lrs(*, epochs, iters, **kw):
  """The lr each update runs with in EVAR's loop (scheduler.step(epoch + iter/iters) after
  every update; the scheduler's constructor sets warmup_lr_init first)."""
  current = kw["warmup_lr_init"] if kw["warmup_t"] else kw["lr"]
  used = []
  for epoch in range(epochs):
    for it in range(iters):
      used.append(current)
      current = _timm_cosine_lr(epoch + it / iters, t_initial=epochs, **kw)
  return np.asarray(used)


@pytest.mark.parametrize(
  "epochs,iters,warmup,lr_min,warmup_lr",
  [(7, 5, 2, 1e-7, 0.0), (6, 4, 0, 0.01, 0.0), (5, 3, 1.5, 1e-3, 0.2)],
)
def test_timm_cosine_schedule_matches_evar_loop(epochs, iters, warmup, lr_min, warmup_lr):
  expected = _evar_lrs(
    epochs=epochs, iters=iters, lr=2.0, warmup_t=warmup, warmup_lr_init=warmup_lr, lr_min=lr_min
  )
  schedule = optim.timm_cosine(
    lr=2.0,
    epochs=epochs,
    warmup_epochs=warmup,
    lr_min=lr_min,
    warmup_lr=warmup_lr,
    steps_per_epoch=iters,
  )
  got = np.asarray([schedule(k) for k in range(epochs * iters)])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # After the last epoch: lr_min (one cycle).
  assert float(schedule(epochs * iters + 1)) == pytest.approx(lr_min, rel=1e-5)


def test_as2m_schedule_and_steps():
  c = ft_config.get_config("as2m").finetune
  total = c.epochs * (c.epoch_clips // c.batch)
  assert total == 70 * 3125
  _, schedule = optim.make_finetune_optimizer(c, total)
  expected = _evar_lrs(epochs=70, iters=3125, lr=2.0, warmup_t=15, warmup_lr_init=0.0, lr_min=1e-7)
  ks = np.r_[0:5, 3124:3128, 15 * 3125 - 2 : 15 * 3125 + 3, 100_000, total - 3 : total]
  got = np.asarray([schedule(int(k)) for k in ks])
  np.testing.assert_allclose(got, expected[ks], rtol=1e-5, atol=1e-6)
  # Warm-up is not a prefix: at the end of warm-up the cosine has already decayed.
  assert float(schedule(15 * 3125 + 1)) < 0.9 * 2.0


# ------------------------------------------------------------------ epoch sampling


def _labels(n, num_classes, seed):
  """Random multi-label sets with a skewed class distribution (class 0 common)."""
  rng = np.random.default_rng(seed)
  p = 1.0 / np.arange(1, num_classes + 1) ** 1.5
  p /= p.sum()
  return [np.unique(rng.choice(num_classes, size=rng.integers(1, 4), p=p)) for _ in range(n)]


def test_audioset_weights_match_the_formula():
  labels = _labels(60, 9, seed=1)
  count = np.zeros(9)
  for ls in labels:
    for c in ls:
      count[c] += 1
  class_w = 1000.0 / (count + 0.01)
  expected = np.array([sum(class_w[c] for c in ls) for ls in labels]) ** (1.0 / 1.5)
  np.testing.assert_allclose(sampling.audioset_weights(labels, 9), expected, rtol=1e-12)
  with pytest.raises(ValueError, match=r"class ids must lie in \[0, 9\)"):
    sampling.audioset_weights([np.array([9])], 9)


def test_epoch_order_draws_without_replacement_deterministically():
  w = sampling.audioset_weights(_labels(50, 6, seed=2), 6)
  for weights in (None, w):
    a = sampling.epoch_order(0, 3, 50, 20, weights)
    assert len(a) == 20 and len(set(a.tolist())) == 20 and a.min() >= 0 and a.max() < 50
    np.testing.assert_array_equal(a, sampling.epoch_order(0, 3, 50, 20, weights))
    assert not np.array_equal(a, sampling.epoch_order(0, 4, 50, 20, weights))
  assert sorted(sampling.epoch_order(0, 0, 50, 50, w).tolist()) == list(range(50))
  with pytest.raises(ValueError, match="cannot draw 51 clips without replacement from 50"):
    sampling.epoch_order(0, 0, 50, 51)
  with pytest.raises(ValueError, match="only 1 clips have a non-zero weight"):
    sampling.epoch_order(0, 0, 3, 2, np.array([0.0, 1.0, 0.0]))


def _sequential_draw(rng, weights, clips):
  """torch.multinomial(weights, clips, replacement=False): one draw at a time."""
  w = weights.astype(np.float64).copy()
  out = []
  for _ in range(clips):
    i = rng.choice(len(w), p=w / w.sum())
    out.append(i)
    w[i] = 0.0
  return out


def test_weighted_epochs_follow_torch_sampling_and_favour_rare_classes():
  labels = [np.array([0])] * 6 + [np.array([0, 1])] * 2 + [np.array([2])] * 2
  w = sampling.audioset_weights(labels, 3)
  n, clips, epochs = len(labels), 4, 3000
  ours = np.zeros(n)
  first = np.zeros(n)
  for e in range(epochs):
    order = sampling.epoch_order(7, e, n, clips, w)
    ours[order] += 1
    first[order[0]] += 1
  rng = np.random.default_rng(0)
  ref = np.zeros(n)
  for _ in range(epochs):
    ref[_sequential_draw(rng, w, clips)] += 1
  # Inclusion frequency of each clip as torch's sequential draw (std ≈ 0.009 each).
  np.testing.assert_allclose(ours / epochs, ref / epochs, atol=0.05)
  # The first draw is in proportion to the weights.
  np.testing.assert_allclose(first / epochs, w / w.sum(), atol=0.03)
  # Rare-class clips (class 2: 2 clips) are drawn far more often than common ones.
  assert ours[8:].mean() > 2 * ours[:6].mean()
  # With few draws per epoch, counts over many epochs are in proportion to the weights.
  big = sampling.audioset_weights(_labels(300, 8, seed=3), 8)
  counts = np.zeros(300)
  for e in range(400):
    counts[sampling.epoch_order(1, e, 300, 3, big)] += 1
  expected = 400 * 3 * big / big.sum()
  heavy = expected > 10
  np.testing.assert_allclose(counts[heavy].sum() / expected[heavy].sum(), 1.0, atol=0.1)
  assert np.corrcoef(counts, expected)[0, 1] > 0.8


def test_epoch_source_restarts_each_epoch_on_a_batch():
  src = list(range(10))
  w = np.arange(1.0, 11.0)
  stream = sampling.EpochSource(src, per_epoch=6, epochs=3, seed=5, weights=w)
  assert len(stream) == 18
  for e in range(3):
    np.testing.assert_array_equal(
      [stream[6 * e + i] for i in range(6)], sampling.epoch_order(5, e, 10, 6, w)
    )
  uniform = sampling.EpochSource(src, per_epoch=10, epochs=2, seed=5)
  assert sorted(uniform[i] for i in range(10)) == src  # A full pass: each clip once.


# -------------------------------------------------------------- structured masking


def test_mask_variants_drawn_per_batch_as_the_official_formula():
  f, t, r = 5, 62, 0.5  # The AS2M fine-tuning grid (80x1001 input, 16x16 patches).
  variants = augment.mask_variants("tokens", f, t, r)
  assert [(v[0], v[1]) for v in variants] == [(0, 31), (1, 19), (2, 6), (3, 0)]
  n = 20_000
  keys = jax.random.split(jax.random.key(0), n)
  idx = np.asarray(jax.jit(jax.vmap(lambda k: masks.draw_mask(k, variants)[0]))(keys))
  freq = np.bincount(idx, minlength=len(variants)) / n
  np.testing.assert_allclose(freq, [p for *_, p in variants], atol=0.015)
  # Numpy simulation of the official draw (m2d random_structured_mask).
  u = np.random.default_rng(0).random(n)
  rows = np.minimum((f * (r + 1 / f) * u).astype(int), f - 1)
  cols = (t * np.maximum(r + 0.5 / t - rows / f, 0)).astype(int)
  official = {k: v / n for k, v in collections.Counter(zip(rows, cols)).items()}
  ours = {(v[0], v[1]): p for v, p in zip(variants, freq)}
  assert set(official) == set(ours)
  for pair in ours:
    assert abs(ours[pair] - official[pair]) < 0.02, (pair, ours[pair], official[pair])
  # "frames" heads drop only columns: one fixed variant; ratio 0: no masking.
  assert augment.mask_variants("frames", 5, 62, 0.5) == ((0, 31, 1.0),)
  assert augment.mask_variants("tokens", 5, 62, 0.0) == ((0, 0, 1.0),)
