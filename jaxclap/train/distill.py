"""Distillation as an objective of the one trainer: a small student learns a trained model.

The teacher is any jaxclap checkpoint (a workdir, a converted official model, or a release
name that `jaxclap.main` fetched first), frozen in the train state. The student is a network
of the teacher's own stage (M2D with CLAP heads for stage 1, CLAP for stage 2) with a smaller
encoder (`model.size`, `model.patch_size`/`patch_time`) and a fresh audio head, trained on
any audio (captions optional) to match

  - the teacher's patch tokens (its frame features) through a learned adapter: the
    student's tokens → Dense(teacher width) → resized to the teacher's patch grid, as a
    relative MSE (`distill.feature_weight`);
  - the teacher's CLAP audio embedding, 1 − cosine (`distill.embedding_weight`);
  - optionally InfoNCE against the teacher's text embeddings of the captions
    (`distill.infonce_weight`, with the teacher's fixed temperature).

The student keeps the teacher's text side (stage 1: `text_proj` and the sentence model;
stage 2: the text tower and tokenizer) and `logit_scale`, so it lives in the teacher's
embedding space. Teacher outputs are computed in the step, on the same random crop as the
student (a cache would fix one crop per clip and, for frame features, hold T'·F'·D floats
per clip; bench/RESULTS.md has the measured cost). When the run ends, `write_student`
writes the student as the workdir's final checkpoint in its stage's layout, with
meta["distill"] naming the teacher: `jaxclap.load`, `convert to_torch` and the evaluators
read it like any model.

State layout: params = {"encoder", "audio_proj" (the student's), "adapter"}; frozen =
{"teacher": everything the teacher network applies}.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxclap import layers, losses
from jaxclap.audio import frontend as fe
from jaxclap.models import features, flops, patches, sizes
from jaxclap.models import network as network_lib
from jaxclap.run_meta import RunMeta
from jaxclap.text.assets import TextAssets
from jaxclap.train import checkpoint as ckpt
from jaxclap.train import config as config_lib

STUDENT_KEYS = ("encoder", "audio_proj")  # What the student trains of its network.
# Model knobs the student takes from the distillation config; the rest is the teacher's.
STUDENT_MODEL_KEYS = ("size", "patch_size", "patch_time", "dtype", "remat", "attention")
RESULT_FILE = "distill.json"  # Written last: a finished distillation.


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen trained model: its network, parameters and facts."""

  source: str  # The checkpoint step directory.
  name: str  # As the config named it (a path or a release name).
  config: ml_collections.ConfigDict
  meta: RunMeta
  net: network_lib.Network
  params: dict[str, Any]  # Everything `net.model` applies (host arrays).
  text: TextAssets | None  # Stage 2: the text tower's architecture and tokenizer.

  @property
  def stage(self) -> str:
    return self.config.stage


def load_teacher(path: str, name: str = "") -> Teacher:
  """The teacher checkpoint at `path` (workdir, checkpoints dir or step dir)."""
  if not path:
    raise ValueError("Bad config value distill.teacher='': name the teacher's workdir or release")
  if not os.path.exists(path) and "://" not in path:
    raise ValueError(
      f"Bad config value distill.teacher={path!r}: no such workdir (a release name is fetched "
      "by `python -m jaxclap.main`; `jaxclap.list_models()` lists them)"
    )
  saved = ckpt.load(path)
  config = config_lib.config_from_meta(saved.meta, saved.source)
  if config.stage not in ("stage1", "stage2"):
    raise ValueError(
      f"Bad config value distill.teacher={path!r}: a {config.stage!r} checkpoint; the teacher "
      "is a stage-1 or stage-2 (CLAP) model"
    )
  net = network_lib.build(config, saved.meta, text_assets=saved.text)
  state = saved.state
  if config.stage == "stage1":
    params = dict(state["params"])
  else:
    params = {**state["frozen"], **state["params"]}
  return Teacher(
    source=saved.source,
    name=name or path,
    config=config,
    meta=saved.meta,
    net=net,
    params=params,
    text=saved.text,
  )


def student_config(
  config: ml_collections.ConfigDict, teacher: Teacher
) -> ml_collections.ConfigDict:
  """The distillation config with the teacher's facts filled in: its front end and
  normalisation, its crop length when `data.crop_frames` is 0, its text side."""
  c = ml_collections.ConfigDict(config.to_dict())
  t = teacher.config
  with c.unlocked():
    c.frontend.sample_rate = t.frontend.sample_rate
    c.frontend.norm_stats = tuple(float(v) for v in teacher.meta.norm_stats)
    if c.data.crop_frames <= 0:
      c.data.crop_frames = int(teacher.meta.frames(t.data.crop_frames)[1])
    for key in ("clap_head", "clap_dim", "text_dim"):
      c.model[key] = t.model[key]
    c.text = ml_collections.ConfigDict(t.text.to_dict())
  return c


def _student_net_config(config: ml_collections.ConfigDict, teacher: Teacher):
  """(config, meta) of the student network: the teacher's stage and heads, the
  distillation config's encoder, a sin-cos table fitted to the crop."""
  c = ml_collections.ConfigDict(teacher.config.to_dict())
  with c.unlocked():
    for key in STUDENT_MODEL_KEYS:
      c.model[key] = config.model[key]
    c.model.pos_table = "sincos"
    c.data.crop_frames = config.data.crop_frames
    c.seed = config.seed
  frames = int(config.data.crop_frames)
  meta = RunMeta(
    config=json.loads(c.to_json_best_effort()),
    norm_stats=tuple(float(v) for v in teacher.meta.norm_stats),
    text_models=dict(teacher.meta.text_models),
    text_runtime=teacher.meta.text_runtime,
    input_frames=frames,
    unit_frames=frames,
    stage=c.stage,
  )
  return c, meta


class Adapter(nn.Module):
  """Student tokens [B, F's·T's, Ds] → the teacher's grid [B, F't·T't, Dt]: a Dense to the
  teacher's width, then a linear resize over (frequency, time) patches when grids differ."""

  width: int
  student_grid: tuple[int, int]
  teacher_grid: tuple[int, int]

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    b = tokens.shape[0]
    x = layers.dense(self.width, ("embed", None), jnp.float32, "proj")(tokens.astype(jnp.float32))
    if self.student_grid == self.teacher_grid:
      return x
    x = x.reshape(b, *self.student_grid, self.width)
    x = jax.image.resize(x, (b, *self.teacher_grid, self.width), "linear")
    return x.reshape(b, -1, self.width)


@dataclasses.dataclass(frozen=True)
class Distill:
  """Student ← frozen teacher: feature, embedding and optional InfoNCE losses."""

  teacher: Teacher
  net: network_lib.Network  # The student's network (the teacher's stage).
  student_config: ml_collections.ConfigDict
  student_meta: RunMeta
  crop_frames: int
  feature_weight: float = 1.0
  embedding_weight: float = 1.0
  infonce_weight: float = 0.0
  captions: bool = True  # The data has captions: text inputs ride along in the batch.

  @property
  def model(self) -> nn.Module:
    """The student's Flax module (M2D or CLAP; `encode`/`project_audio` on both)."""
    return self.net.model

  @property
  def batch_keys(self) -> tuple[str, ...]:
    if not self.captions:
      return ("audio", "audio_len")
    if self.teacher.stage == "stage1":
      return ("audio", "audio_len", "caption_embedding")
    return ("audio", "audio_len", "input_ids", "attention_mask")

  def grids(self) -> tuple[tuple[int, int], tuple[int, int]]:
    """(student, teacher) patch grids of one training crop (the teacher's over its chunks)."""
    n_mels = self.net.frontend_cfg.n_mels
    s = patches.grid_size(n_mels, self.crop_frames, self.model.patch_size)
    tmodel = self.teacher.net.model
    unit, (ph, pw) = features.unit_frames(tmodel), patches.hw(tmodel.patch_size)
    chunks = patches.split_time_chunks(np.zeros((n_mels, self.crop_frames)), unit, pw)
    return s, (n_mels // ph, sum(c.shape[-1] // pw for c in chunks))

  def adapter(self) -> Adapter:
    s, t = self.grids()
    width = sizes.get_size(self.teacher.config.model.size).width
    return Adapter(width=width, student_grid=s, teacher_grid=t)

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    """(params, frozen) boxed with logical axes: a fresh student and adapter, and a zero
    teacher (its parameters are laid in by `lay_in`: no constants in the compiled init)."""
    student_key, adapter_key = jax.random.split(rng)
    # Only the audio path (encoder + head): the text side is the teacher's.
    x = jnp.zeros((1, self.net.frontend_cfg.n_mels, self.crop_frames), jnp.float32)
    audio = lambda m, x: m.project_audio(m.encode(x))
    tree = self.model.init(student_key, x, method=audio)["params"]
    student = {k: tree[k] for k in STUDENT_KEYS}
    s, _ = self.grids()
    d = sizes.get_size(self.student_config.model.size).width
    student["adapter"] = self.adapter().init(adapter_key, jnp.zeros((1, s[0] * s[1], d)))["params"]
    shapes = jax.eval_shape(self.teacher.net.init, jax.random.key(0))
    t_params, t_frozen = shapes
    t_tree = dict(t_params) if self.teacher.stage == "stage1" else {**t_frozen, **t_params}
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), t_tree)
    return student, {"teacher": zeros}

  def lay_in(self, state: Any) -> Any:
    """The state with the teacher's parameters in `frozen["teacher"]` (same shardings)."""
    flat = _flatten(self.teacher.params)
    current = _flatten(state.frozen["teacher"])
    bad = sorted(set(flat) ^ set(current))
    bad += [k for k in current if k in flat and np.shape(flat[k]) != current[k].shape]
    if bad:
      raise ValueError(
        f"{self.teacher.source}: teacher parameters do not match its network: {bad[:5]}"
      )

    def put(path, leaf):
      key = "/".join(str(getattr(p, "key", p)) for p in path)
      return jax.device_put(np.asarray(flat[key], leaf.dtype), leaf.sharding)

    teacher = jax.tree_util.tree_map_with_path(put, state.frozen["teacher"])
    return state.replace(frozen={**state.frozen, "teacher": teacher})

  def merged(self, params, frozen) -> dict[str, Any]:
    """The student network's tree: its own encoder and head, the teacher's text side."""
    teacher = jax.lax.stop_gradient(frozen["teacher"])
    text = {k: v for k, v in teacher.items() if k not in (*STUDENT_KEYS, "predictor")}
    return {**text, **{k: params[k] for k in STUDENT_KEYS}}

  # ---- what the trainer and the evaluators call ------------------------------------------

  def text_inputs(self, captions: list[str]) -> dict[str, np.ndarray] | None:
    return self.teacher.net.text_inputs(captions)

  def text_embed(self, params, frozen, text_inputs) -> jax.Array:
    """The teacher's L2-normalised CLAP text embeddings (the student shares its text side)."""
    del params
    teacher = jax.lax.stop_gradient(frozen["teacher"])
    return self.teacher.net.text_embed(teacher, {}, text_inputs)

  def _student(self, params, frozen, x) -> tuple[jax.Array, jax.Array]:
    """(patch tokens [B, F's·T's, Ds], CLAP audio embedding [B, C], not normalised)."""
    p = self.merged(params, frozen)
    chunks = features.encode_tokens(p, x, model=self.model)
    tokens = jnp.concatenate(chunks, axis=1) if len(chunks) > 1 else chunks[0]
    emb = self.model.apply({"params": p}, tokens, method="project_audio").astype(jnp.float32)
    return tokens, emb

  def _teacher(self, frozen, x) -> tuple[jax.Array, jax.Array]:
    """(teacher patch tokens [B, F't·T't, Dt] in frequency-major order, CLAP embedding)."""
    p = jax.lax.stop_gradient(frozen["teacher"])
    model = self.teacher.net.model
    chunks = features.encode_tokens(p, x, model=model)
    emb = model.apply({"params": p}, jnp.concatenate(chunks, axis=1), method="project_audio")
    gf = x.shape[1] // patches.hw(model.patch_size)[0]
    frames = patches.chunks_to_frames(chunks, gf)  # [B, T', F'·D]: chunks joined in time.
    b, t, fd = frames.shape
    tokens = frames.reshape(b, t, gf, fd // gf).transpose(0, 2, 1, 3).reshape(b, gf * t, -1)
    return jax.lax.stop_gradient(tokens.astype(jnp.float32)), jax.lax.stop_gradient(
      emb.astype(jnp.float32)
    )

  def loss(self, params, frozen, batch, rng, norm_stats):
    """The weighted losses of one batch; metrics include the fidelity (mean cosine)."""
    del rng  # Deterministic: the crop is the data pipeline's.
    x = fe.waveform_input(batch, self.net.frontend_cfg, norm_stats)
    s_tokens, s_emb = self._student(params, frozen, x)
    t_tokens, t_emb = self._teacher(frozen, x)
    adapted = self.adapter().apply({"params": params["adapter"]}, s_tokens)
    loss_feature = jnp.mean((adapted - t_tokens) ** 2) / (jnp.mean(t_tokens**2) + 1e-6)
    cos = jnp.sum(losses.l2_normalize(s_emb) * losses.l2_normalize(t_emb), axis=-1)
    loss_embedding = jnp.mean(1.0 - cos)
    loss = self.feature_weight * loss_feature + self.embedding_weight * loss_embedding
    out = {
      "loss_feature": loss_feature,
      "loss_embedding": loss_embedding,
      "fidelity": jnp.mean(cos),
    }
    if self.infonce_weight > 0:
      text = self.text_embed(params, frozen, batch)
      scale = jax.lax.stop_gradient(frozen["teacher"]["logit_scale"])
      loss_nce = losses.clip_infonce(audio_emb=s_emb, text_emb=text, logit_scale=scale)
      loss = loss + self.infonce_weight * loss_nce
      out["loss_infonce"] = loss_nce
    return loss, {"loss": loss, **out}

  def after_update(self, params, frozen, step):
    del step
    return params, frozen, {}

  def audio_embed(self, params, frozen, batch, norm_stats) -> jax.Array:
    """The student's L2-normalised CLAP audio embeddings [B, C]."""
    x = fe.waveform_input(batch, self.net.frontend_cfg, norm_stats)
    return losses.l2_normalize(self._student(params, frozen, x)[1])

  def teacher_audio_embed(self, frozen, batch, norm_stats) -> jax.Array:
    """The teacher's L2-normalised CLAP audio embeddings [B, C] of the same input."""
    x = fe.waveform_input(batch, self.net.frontend_cfg, norm_stats)
    return losses.l2_normalize(self._teacher(frozen, x)[1])


def build(config: ml_collections.ConfigDict, teacher: Teacher) -> Distill:
  """The distillation objective of a config `student_config` filled in."""
  s_config, s_meta = _student_net_config(config, teacher)
  net = network_lib.build(s_config, s_meta, text_assets=teacher.text)
  knobs = config.distill
  if knobs.infonce_weight > 0 and not knobs.captions:
    raise ValueError(
      f"Bad config value distill.infonce_weight={knobs.infonce_weight}: InfoNCE needs "
      "captions (distill.captions=True)"
    )
  return Distill(
    teacher=teacher,
    net=net,
    student_config=s_config,
    student_meta=s_meta,
    crop_frames=int(config.data.crop_frames),
    feature_weight=float(knobs.feature_weight),
    embedding_weight=float(knobs.embedding_weight),
    infonce_weight=float(knobs.infonce_weight),
    captions=bool(knobs.captions),
  )


def _flatten(tree: Any) -> dict[str, Any]:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0]:
    out["/".join(str(getattr(p, "key", p)) for p in path)] = leaf
  return out


def _host(tree: Any) -> Any:
  return jax.tree.map(lambda a: np.array(a, copy=True), tree)


def student_tree(objective: Distill, state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """(params, frozen) of the student in its stage's checkpoint layout: trained encoder and
  head, the teacher's text side; stage 1's predictor is its initial one (inference never
  reads it) and its EMA target a copy of the trained encoder body."""
  net = objective.net
  merged = _host(objective.merged(state.params, state.frozen))
  if objective.teacher.stage == "stage1":  # M2D without a text tower: a cheap init.
    fresh, _ = nn.unbox(jax.jit(net.init)(jax.random.key(objective.student_config.seed)))
    return {**_host(fresh), **merged}, _host(merged["encoder"]["body"])
  params_shape, frozen_shape = jax.eval_shape(net.init, jax.random.key(0))
  return {k: merged[k] for k in params_shape}, {k: merged[k] for k in frozen_shape}


def encoder_flops(model: nn.Module, n_mels: int, frames: int) -> float:
  """Forward matmul FLOPs of `model`'s encoder and CLAP head on one chunk of `frames`."""
  w, depth, _ = sizes.get_size(model.size)
  ph, pw = patches.hw(model.patch_size)
  n = (n_mels // ph) * (frames // pw)
  head = flops.blocks_flops(n + 1, w, 1, mlp_ratio=1.0)
  return 2 * n * ph * pw * w + flops.blocks_flops(n + 1, w, depth) + head


def encoder_params(tree: dict[str, Any]) -> int:
  """Parameters of an encoder tree (position tables included when stored)."""
  return int(sum(np.size(v) for v in jax.tree.leaves(tree)))


def write_student(
  objective: Distill, state: Any, *, workdir: str, step: int, facts: dict[str, Any]
) -> str:
  """Writes the student as the workdir's checkpoint `step` (its stage's layout, meta
  "distill": the teacher and the run's facts); returns the step directory."""
  params, frozen = student_tree(objective, state)
  meta = objective.student_meta.replace(
    total_steps=int(step), steps_per_epoch=1, step=int(step), distill=facts
  )
  out = {
    "step": np.asarray(step, np.int32),
    "params": params,
    "frozen": frozen,
    "rng": np.asarray(jax.random.PRNGKey(0)),
    "norm_stats": np.asarray(objective.student_meta.norm_stats, np.float32),
    "bad_step": np.asarray(-1, np.int32),
  }
  text = objective.net.text_assets() if objective.teacher.stage == "stage2" else None
  return str(ckpt.write_params_checkpoint(workdir, int(step), out, meta, text))


def facts(objective: Distill, state: Any) -> dict[str, Any]:
  """What meta["distill"] records: the teacher, the sizes, the losses' weights."""
  teacher = objective.teacher
  student = objective.merged(state.params, state.frozen)
  n_mels = objective.net.frontend_cfg.n_mels
  return {
    "teacher": teacher.name,
    "teacher_checkpoint": teacher.source,
    "teacher_stage": teacher.stage,
    "teacher_size": teacher.config.model.size,
    "teacher_encoder_params": encoder_params(teacher.params["encoder"]),
    "student_size": objective.student_config.model.size,
    "student_encoder_params": encoder_params(jax.device_get(student["encoder"])),
    # Forward GFLOPs of encoder + head on one training crop.
    "teacher_gflops": encoder_flops(teacher.net.model, n_mels, objective.crop_frames) / 1e9,
    "student_gflops": encoder_flops(objective.model, n_mels, objective.crop_frames) / 1e9,
    "weights": {
      "feature": objective.feature_weight,
      "embedding": objective.embedding_weight,
      "infonce": objective.infonce_weight,
    },
  }


def finished(workdir: str) -> dict[str, Any] | None:
  """The result of a distillation finished in `workdir` (distill.json), else None."""
  path = os.path.join(workdir, RESULT_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_result(workdir: str, out: dict[str, Any]) -> None:
  """distill.json, written last (its presence marks a finished run)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RESULT_FILE), "w") as f:
      json.dump(out, f, indent=1)
