"""A ViT-B-shaped teacher (random weights) distils into a student for 2 steps on 8 simulated
devices with its parameters sharded over the `fsdp` axis: the shapes and shardings of the
paper-scale case, without its data (train/distill.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import xla_flags

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = """
import json
import flax.linen as nn
import jax
import numpy as np
from configs import distill as distill_config
from jaxclap import sharding as shd
from jaxclap.models import network as network_lib
from jaxclap.run_meta import RunMeta
from jaxclap.train import config as config_lib
from jaxclap.train import distill, optim
from jaxclap.train import state as state_lib
from jaxclap.train import step as step_lib

# The teacher: a stage-1 ViT-B (80x64 crops; a 1-block predictor keeps the tree small).
tc = config_lib.base_config()
tc.model.update(size="base", predictor_width=64, predictor_depth=1, predictor_heads=2)
tc.model.text_dim = 384
tc.data.crop_frames = 64
tmeta = RunMeta(config=json.loads(tc.to_json_best_effort()), norm_stats=(-7.0, 4.0),
                stage="stage1", input_frames=64, unit_frames=64)
tnet = network_lib.build(tc, tmeta)
x, text = jax.numpy.zeros((1, 80, 64)), jax.numpy.zeros((1, 384))
# The online tree only (the teacher applies no EMA target): half of M2D's init.
online = nn.unbox(jax.jit(tnet.model.init)(jax.random.key(1), x, text)["params"])
teacher = distill.Teacher(source="memory", name="random ViT-B", config=tc, meta=tmeta,
                          net=tnet, params=jax.device_get(online), text=None)

c = distill_config.get_config("demo")
c.distill.teacher = "memory"
c.model.size = "nano"
c.train.global_batch = 8
c.mesh.fsdp = 8
config = distill.student_config(c, teacher)
objective = distill.build(config, teacher)
mesh = shd.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp)
schedule = optim.learning_rate(config.optim, global_batch=8, steps_per_epoch=1, total_steps=2)
tx = optim.make_optimizer(config.optim, schedule)
state, state_sh = state_lib.create_sharded_state(
  init_params=objective.init, tx=tx, seed=0, norm_stats=(-7.0, 4.0), mesh=mesh,
  rules=[tuple(r) for r in config.mesh.rules])
state = objective.lay_in(state)
steps = step_lib.jit_steps(mesh=mesh, state_sh=state_sh, objective=objective, tx=tx,
                           schedule=schedule)
rng = np.random.default_rng(0)
samples = (config.data.crop_frames - 1) * 160
batch = {"audio": (0.1 * rng.standard_normal((8, samples))).astype(np.float32),
         "audio_len": np.full((8,), samples, np.int32),
         "caption_embedding": rng.standard_normal((8, 384)).astype(np.float32)}
losses = []
for _ in range(2):
  state, metrics = steps["train"](state, shd.global_batch(batch, mesh))
  losses.append(float(metrics["loss"]))
kernel = state.frozen["teacher"]["encoder"]["body"]["block_0"]["mlp"]["fc1"]["kernel"]
student = state.params["encoder"]["body"]["block_0"]["mlp"]["fc1"]["kernel"]
teacher_ok = np.array_equal(np.asarray(kernel),
                            teacher.params["encoder"]["body"]["block_0"]["mlp"]["fc1"]["kernel"])
print("RESULT " + json.dumps({
  "devices": jax.device_count(), "losses": losses, "step": int(state.step),
  "teacher_kernel": [list(kernel.shape), list(kernel.addressable_shards[0].data.shape)],
  "student_kernel": [list(student.shape), list(student.addressable_shards[0].data.shape)],
  "teacher_unchanged": bool(teacher_ok),
}))
"""


def test_vit_b_teacher_on_8_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
  proc = subprocess.run(
    [sys.executable, "-c", _SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
  out = json.loads(line[len("RESULT ") :])
  assert out["devices"] == 8 and out["step"] == 2
  assert all(np.isfinite(v) for v in out["losses"]), out
  # ViT-B's fc1 [768, 3072]: its `embed` rows split over the 8-way fsdp axis, as the student's.
  assert out["teacher_kernel"] == [[768, 3072], [96, 3072]]
  assert out["student_kernel"] == [[32, 128], [4, 128]]
  assert out["teacher_unchanged"]  # Frozen: two updates leave the teacher as it was.
