"""Sharded training: 8 simulated CPU devices (data, data×fsdp) match 1 device."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import xla_flags

_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, ml_collections
    from jaxclap import sharding as shd
    from jaxclap.audio import frontend as fe
    from jaxclap.train import config as config_lib, objectives, optim, state as state_lib
    from jaxclap.train import step as step_lib
    from jaxclap.run_meta import RunMeta

    c = config_lib.base_config()
    c.model.size = "test"; c.model.predictor_width = 32; c.model.predictor_depth = 1
    c.model.predictor_heads = 2; c.model.clap_dim = 32; c.model.text_dim = 24
    c.data.crop_frames = 64; c.train.global_batch = 8; c.optim.warmup_epochs = 1.0
    c.model.mask_ratio = 0.5
    fcfg = fe.FrontendConfig()
    objective = objectives.build(c, RunMeta(total_steps=10))
    sched = optim.learning_rate(c.optim, global_batch=8, steps_per_epoch=2, total_steps=10)
    tx = optim.make_optimizer(c.optim, sched)
    rng = np.random.default_rng(0)
    samples = (c.data.crop_frames - 1) * fcfg.hop_length
    batches = [{"audio": rng.standard_normal((8, samples)).astype(np.float32) * 0.1,
                "audio_len": rng.integers(samples // 2, samples + 1, 8).astype(np.int32),
                "caption_embedding": rng.standard_normal((8, 24)).astype(np.float32)}
               for _ in range(3)]
    out = {}
    for name, devices, fsdp in [("one", jax.devices()[:1], 1), ("data", jax.devices(), 1),
                                ("data_fsdp", jax.devices(), 2), ("fsdp", jax.devices(), 8)]:
      mesh = shd.make_mesh(fsdp=fsdp, devices=devices)
      state, sh = state_lib.create_sharded_state(init_params=objective.init, tx=tx, seed=0,
          norm_stats=(-7.1, 4.2), mesh=mesh, rules=[("embed", "fsdp")])
      train = step_lib.jit_steps(mesh=mesh, state_sh=sh, objective=objective, tx=tx,
                                 schedule=sched)["train"]
      losses = []
      for b in batches:
        state, m = train(state, shd.global_batch(b, mesh))
        losses.append(float(m["loss"]))
      split = sum(not l.sharding.is_fully_replicated for l in jax.tree.leaves(state.params))
      first = mesh.devices.flat[0]
      def per_device(tree):
        return sum(s.data.nbytes for l in jax.tree.leaves(tree) for s in l.addressable_shards
                   if s.device == first)
      out[name] = {"losses": losses, "split_params": split,
                   "param_bytes": sum(l.nbytes for l in jax.tree.leaves(state.params)),
                   "param_bytes_per_device": per_device(state.params),
                   "opt_bytes_per_device": per_device(state.opt_state)}
    # ViT-B (paper size), from shapes and shardings alone: bytes per device under fsdp=8.
    from jaxclap.models import m2d
    base = m2d.build_model({"size": "base", "text_dim": 768, "input_frames": 608})
    boxed = jax.eval_shape(lambda r: m2d.init_params(base, r, n_frames=608, text_dim=768),
                           jax.random.key(0))
    for name, fsdp in (("vit_b_data", 1), ("vit_b_fsdp", 8)):
      shardings = shd.logical_shardings(boxed, shd.make_mesh(fsdp=fsdp), [("embed", "fsdp")])
      shapes = jax.tree.leaves(m2d.nn.unbox(boxed))
      shards = jax.tree.leaves(shardings)
      out[name] = {"param_bytes_per_device": sum(
          int(np.prod(sh.shard_shape(x.shape))) * 4 for x, sh in zip(shapes, shards))}
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def sharded_result():
  # No persistent compilation cache: 8-device executables reloaded from it can hang in a
  # collective (test_multihost.py, _NO_JIT_CACHE).
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR="")
  proc = subprocess.run(
    [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT") :])


def test_data_parallel_matches_one_device(sharded_result):
  one, data = sharded_result["one"]["losses"], sharded_result["data"]["losses"]
  for a, b in zip(one, data):
    assert abs(a - b) <= 1e-5 * abs(a)


def test_fsdp_matches_one_device_and_shards_params(sharded_result):
  one, fsdp = sharded_result["one"]["losses"], sharded_result["data_fsdp"]["losses"]
  for a, b in zip(one, fsdp):
    assert abs(a - b) <= 1e-5 * abs(a)
  # Some parameters really are split over the fsdp axis (not all replicated).
  assert sharded_result["data_fsdp"]["split_params"] > 0
  assert sharded_result["data"]["split_params"] == 0


def test_fsdp_divides_per_device_parameter_and_optimizer_bytes(sharded_result):
  data, fsdp = sharded_result["data"], sharded_result["fsdp"]
  for a, b in zip(sharded_result["one"]["losses"], fsdp["losses"]):
    assert abs(a - b) <= 1e-5 * abs(a)
  assert data["param_bytes_per_device"] == data["param_bytes"]  # Replicated.
  # fsdp=8: every parameter with an "embed" axis is split 8 ways; what stays whole is the
  # scalars and the few vectors without one (MLP biases), which weigh ~6% in a width-64 test
  # model ...
  for key in ("param_bytes_per_device", "opt_bytes_per_device"):
    ratio = data[key] / fsdp[key]
    assert 7.0 <= ratio <= 8, (key, ratio)
  # ... and 0.2% in ViT-B (stage-1 online + target parameters), where the fall is the factor.
  ratio = (
    sharded_result["vit_b_data"]["param_bytes_per_device"]
    / sharded_result["vit_b_fsdp"]["param_bytes_per_device"]
  )
  assert 7.95 <= ratio <= 8, ratio


def test_make_mesh_names_shape_and_auto_axes():
  import jax
  from jax.sharding import AxisType

  from jaxclap import sharding as shd

  devices = [jax.devices()[0]] * 1
  mesh = shd.make_mesh(devices=devices)
  assert mesh.axis_names == ("data", "fsdp") and dict(mesh.shape) == {"data": 1, "fsdp": 1}
  assert tuple(mesh.axis_types) == (AxisType.Auto, AxisType.Auto)  # jax.make_mesh: Explicit.
  with pytest.raises(ValueError, match="mesh.fsdp=3 must divide the device count 1"):
    shd.make_mesh(fsdp=3, devices=devices)
  with pytest.raises(ValueError, match=r"mesh.data=2 × mesh.fsdp=1 must equal"):
    shd.make_mesh(data=2, devices=devices)


def _is_box(group) -> bool:
  """Whether TPU devices fill a box of the torus: physical neighbours, no hop across it."""
  coords = [d.coords for d in group]
  spans = [max(c[a] for c in coords) - min(c[a] for c in coords) + 1 for a in range(3)]
  return int(np.prod(spans)) == len(coords)


def test_tpu_mesh_axes_follow_the_torus():
  """v5p-32 (2x2x4 chips, libtpu's compile-only devices) with mesh.fsdp=8: every fsdp group
  and every data pair is a box of neighbouring chips (in list order the data pairs are not)."""
  from jaxclap import sharding as shd
  from jaxclap.train import aot

  devices = aot.devices(aot.parse_slice("v5p-32"))
  mesh = shd.make_mesh(fsdp=8, devices=devices)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 8}
  assert all(_is_box(group) for group in mesh.devices)
  assert all(_is_box(pair) for pair in mesh.devices.T)
  in_list_order = np.asarray(devices).reshape(2, 8)
  assert not all(_is_box(pair) for pair in in_list_order.T)  # What the topology order fixes.
