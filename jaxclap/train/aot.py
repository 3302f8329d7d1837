"""Ahead-of-time compile of a config's train and eval steps for a Cloud TPU slice, without one.

`python -m jaxclap.main --config=C --workdir=DIR --compile_for=v5p-64` lowers the real steps
(`step.jit_steps`, the run's shardings) on compile-only TPU devices from libtpu
(`jax.experimental.topologies`), with an abstract state and batch: no array is made, no
dataset read, no checkpoint written. It prints per-chip memory from XLA's
`memory_analysis()` against the chip's HBM, FLOPs per step from `cost_analysis()` beside the
network count, and projected step and run times at the chip's peak for an MFU range; a
config that does not fit says by how much and which knob to turn, and exits non-zero.
libtpu comes with the `tpu` extra: `pip install -e '.[tpu]'`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.experimental import topologies
from tokenizers import Tokenizer
from tokenizers import models as tok_models

from jaxclap import sharding as shd
from jaxclap.audio import frontend as fe
from jaxclap.data import builders, mixture
from jaxclap.models import flops, masks, patches
from jaxclap.models import network as network_lib
from jaxclap.run_meta import RunMeta
from jaxclap.text import bert, registry, tokenize
from jaxclap.text.assets import TextAssets
from jaxclap.train import config as config_lib
from jaxclap.train import objectives, optim
from jaxclap.train import state as state_lib
from jaxclap.train import step as step_lib

INSTALL = "pip install -c constraints.txt -e '.[tpu]'"
GIB = 1024**3
MFU_RANGE = (0.3, 0.6)  # A first run's cautious MFU to a tuned run's.
STAGES = ("stage1", "stage2")  # Whose objectives `objectives.build` makes from a config.


class NoLibtpu(ValueError):
  """libtpu (the `tpu` extra) is not installed: no TPU compiler to compile with."""


class DoesNotFit(ValueError):
  """A compiled step needs more memory per chip than the chip's HBM."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation: how libtpu names its topologies, its HBM and its dense bf16 peak."""

  topology: str  # Prefix of libtpu's topology names ("v5e" in "v5e:2x2"; v5p is "v5").
  accelerator: str  # gcloud's accelerator-type prefix (v5e slices are "v5litepod-N").
  cores_per_chip: int  # TensorCores a slice name counts per chip (v4-8 is 4 chips).
  dims: int  # Torus dimensions.
  hbm_gib: float
  peak_bf16: float  # FLOP/s per chip, data sheet, no sparsity.


CHIPS = {
  "v4": Chip("v4", "v4", 2, 3, 32.0, 275e12),
  "v5e": Chip("v5e", "v5litepod", 1, 2, 16.0, 197e12),
  "v5p": Chip("v5", "v5p", 2, 3, 95.0, 459e12),
  "v6e": Chip("v6e", "v6e", 1, 2, 32.0, 918e12),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}
_BY_TOPOLOGY = {c.topology: g for g, c in CHIPS.items()}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice (or several, multi-slice) as libtpu's topology description takes it."""

  name: str  # As the user wrote it.
  generation: str  # Key of CHIPS.
  shape: tuple[int, ...]  # Chips along each torus dimension of one slice.
  num_slices: int = 1

  @property
  def chip(self) -> Chip:
    return CHIPS[self.generation]

  @property
  def chips(self) -> int:
    return math.prod(self.shape) * self.num_slices

  @property
  def topology(self) -> str:
    return f"{self.chip.topology}:{'x'.join(map(str, self.shape))}"

  @property
  def accelerator_type(self) -> str:
    """gcloud's --accelerator-type of one slice (v5litepod-16, v5p-64, ...)."""
    return f"{self.chip.accelerator}-{math.prod(self.shape) * self.chip.cores_per_chip}"

  def topology_kwargs(self) -> dict[str, Any]:
    """Everything but the name that `get_topology_desc` takes for this slice (as MaxText)."""
    dims = self.shape + (1,) * (3 - len(self.shape))
    if self.chip.dims == 3:
      wrap = (min(self.shape) >= 4,) * 3  # Full cubes (4x4x4 and up) close the torus.
    else:
      wrap = tuple(d == 16 for d in dims[:2]) + (False,)  # A full v5e/v6e row or column.
    return {
      "chip_config_name": "megacore" if self.chip.cores_per_chip == 2 else "default",
      "chips_per_host_bounds": (1, 1, 1) if math.prod(dims) == 1 else (2, 2, 1),
      "num_slices": self.num_slices,
      "wrap": wrap,
    }


def _grid(chips: int, dims: int, name: str) -> tuple[int, ...]:
  """The torus shape of a slice of `chips` chips (v5e-16 → 4x4, v5p-64 → 2x4x4)."""
  shape = [2, 2, 1] if dims == 3 else [1, 1]
  while math.prod(shape) < chips:
    smallest = min(shape)
    shape[max(i for i, d in enumerate(shape) if d == smallest)] *= 2
  if math.prod(shape) != chips:
    least = "4 chips and " if dims == 3 else ""
    raise ValueError(
      f"--compile_for={name}: {chips} chips is not a slice size this maps ({least}powers of "
      "two); name the topology instead, e.g. v4:4x4x12"
    )
  return tuple(shape)


def parse_slice(name: str) -> Slice:
  """A slice from the names users know: v5e-4, v4-32, v5p-64, v6e-8, v5litepod-16, 2xv5e-256
  (two slices), or a libtpu topology name such as v5e:4x8 or v4:4x4x12."""
  text = name.strip().lower()
  raw = re.fullmatch(r"(?:(\d+)x)?(v\d+[a-z]*):(\d+(?:x\d+)+)", text)
  if raw:
    n, prefix, dims = raw.groups()
    if prefix not in _BY_TOPOLOGY:
      raise ValueError(f"--compile_for={name}: unknown topology prefix {prefix!r}")
    return Slice(name, _BY_TOPOLOGY[prefix], tuple(int(d) for d in dims.split("x")), int(n or 1))
  m = re.fullmatch(r"(?:(\d+)x)?([a-z0-9]+)-(\d+)", text)
  generation = _ALIASES.get(m.group(2), m.group(2)) if m else None
  if generation not in CHIPS:
    raise ValueError(
      f"--compile_for={name}: expected a slice such as v5e-4, v4-32, v5p-64, v6e-8 (optionally "
      f"2x... for two slices) or a topology such as v5e:4x8; generations {sorted(CHIPS)}"
    )
  chip = CHIPS[generation]
  count = int(m.group(3))
  if count % chip.cores_per_chip:
    raise ValueError(f"--compile_for={name}: {generation} slices count 2 cores per chip")
  shape = _grid(count // chip.cores_per_chip, chip.dims, name)
  return Slice(name, generation, shape, int(m.group(1) or 1))


def _has_libtpu() -> bool:
  """Whether JAX can find libtpu (the `libtpu` package or TPU_LIBRARY_PATH)."""
  if os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", "")):
    return True
  try:
    return importlib.util.find_spec("libtpu") is not None
  except ImportError:
    return False


@contextlib.contextmanager
def _libtpu_env(slc: Slice) -> Iterator[None]:
  """libtpu's settings while the topology is made (only where unset), then put back.

  Off a TPU VM libtpu warns about each of the first two, which a VM's metadata gives. Any
  JAX process holds libtpu's lockfile once libtpu is installed; a compile touches no chip,
  so it need not wait for the lock.
  """
  wanted = {
    "TPU_ACCELERATOR_TYPE": slc.accelerator_type,
    "TPU_WORKER_HOSTNAMES": "localhost",
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
  }
  added = [k for k in wanted if k not in os.environ]
  os.environ.update({k: wanted[k] for k in added})
  try:
    yield
  finally:
    for k in added:
      os.environ.pop(k, None)


def devices(slc: Slice) -> list[Any]:
  """Compile-only TPU devices of the slice (no TPU needed, libtpu is)."""
  if not _has_libtpu():
    raise NoLibtpu(
      f"--compile_for needs libtpu, the TPU compiler (no TPU): {INSTALL} "
      "(the `tpu` extra; a ~200 MB download, ~0.7 GB installed)"
    )
  with _libtpu_env(slc):
    topo = topologies.get_topology_desc(slc.topology, "tpu", **slc.topology_kwargs())
  return list(topo.devices)


# ----------------------------------------------------------------------------------------------
# The abstract run: objective, optimizer, state and batch as shapes with their shardings.

# Train-split sizes of the paper's corpora as published, in clips (a built split is smaller
# by what failed to download). Only the run-time projection reads them.
PAPER_SPLITS = {
  "audioset:train": 2_000_000,  # AS balanced + unbalanced train, as docs/capacity.md.
  "vggsound:train": 183_000,  # The VGGSound train list.
  "wavcaps/freesound:train": 262_300,  # WavCaps paper, Table 1.
  "wavcaps/bbc_sound_effects:train": 31_201,
  "wavcaps/soundbible:train": 1_232,
  "clotho:train": 3_839,  # Clotho v2 development.
}


def _split_size(config: ml_collections.ConfigDict, name: str, split: str) -> int | None:
  """Clips of a training split: the demo set's from its size, the paper's from the table."""
  if name == "jaxclap_demo":
    return sum(builders.demo_split(i) == split for i in range(config.data.demo_clips))
  return PAPER_SPLITS.get(f"{name}:{split}")


def total_steps(config: ml_collections.ConfigDict) -> tuple[int | None, int, str]:
  """(total steps or None, steps per epoch, where they come from), as `loop.py` counts them."""
  specs = config_lib.parse_sources(config.data.train, with_weight=True)
  sizes = [_split_size(config, n, s) for n, s, _ in specs]
  batch = config.train.global_batch
  if None in sizes:
    unknown = ", ".join(f"{n}:{s}" for (n, s, _), z in zip(specs, sizes) if z is None)
    if config.train.num_steps > 0:
      return config.train.num_steps, 0, "train.num_steps"
    return None, 0, f"sizes of {unknown} unknown here: give --config.train.num_steps"
  clips = int(mixture.epoch_counts(sizes, mixture.spec_weights(specs)).sum())
  per_epoch = max(clips // batch, 1)
  if config.train.num_steps > 0:
    return config.train.num_steps, per_epoch, "train.num_steps"
  steps = int(round(config.train.epochs * per_epoch))
  how = f"{config.train.epochs:g} epochs × {per_epoch:,} steps (an epoch: {clips:,} clips)"
  return steps, per_epoch, how


def _stand_in_tokenizer() -> str:
  """A one-word tokenizer.json: a compile needs the tower's shapes, never its vocabulary."""
  return Tokenizer(tok_models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]")).to_str()


# The architecture of the paper's text model, for compiling without its folder at hand.
_KNOWN_BERT = {
  name: bert.BertConfig() for name in ("google-bert/bert-base-uncased", "bert-base-uncased")
}


def _objective(config: ml_collections.ConfigDict, meta: RunMeta):
  """The config's objective; a stage-2 BERT whose folder is not here is built from its
  architecture alone when this module knows it (the compile needs shapes, not weights)."""
  try:
    return objectives.build(config, meta)
  except registry.TextModelNotFoundError:
    known = config.text.model in _KNOWN_BERT
    if config.stage != "stage2" or config.text.kind != "bert" or not known:
      raise
  logging.warning(
    "text.model=%s is not here: compiling with its architecture (BERT-base) and no weights",
    config.text.model,
  )
  assets = TextAssets(
    kind="bert",
    bert_config=dataclasses.asdict(_KNOWN_BERT[config.text.model]),
    tokenizer_json=_stand_in_tokenizer(),
    lowercase=True,
  )
  net = network_lib.build(config, meta, text_assets=assets)
  # As objectives.build does for stage 2: the structured-mask variants of the patch grid.
  gf, gt = patches.grid_size(
    net.frontend_cfg.n_mels, config.data.crop_frames, patches.of_config(config.model)
  )
  variants = masks.stage2_variants(
    gf, gt, config.model.structured_mask, config.model.structured_mask_counts
  )
  return objectives.Stage2(net=net, mask_variants=variants)


def batch_fields(config: ml_collections.ConfigDict, batch: int) -> dict[str, tuple]:
  """(shape, dtype) of each batch key an objective may read, as `step.device_batch` gives it.

  A new objective's `batch_keys` plug in here.
  """
  fcfg = fe.FrontendConfig.for_sample_rate(config.frontend.sample_rate)
  samples = (config.data.crop_frames - 1) * fcfg.hop_length
  tokens = tokenize.length_buckets(config.text.max_len)[-1]  # The longest bucket: worst case.
  return {
    "audio": ((batch, samples), jnp.float32),
    "audio_len": ((batch,), jnp.int32),
    "caption_embedding": ((batch, config.model.text_dim), jnp.float32),
    "input_ids": ((batch, tokens), jnp.int32),
    "attention_mask": ((batch, tokens), jnp.int32),
  }


def abstract_batch(
  config: ml_collections.ConfigDict, keys: Sequence[str], mesh
) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch of `keys` as ShapeDtypeStructs, split over the mesh as training does."""
  fields = batch_fields(config, config.train.global_batch)
  missing = [k for k in keys if k not in fields]
  if missing:
    raise ValueError(
      f"the objective reads batch keys {missing} that jaxclap/train/aot.py:batch_fields "
      "does not describe; add their shapes there"
    )
  sharding = shd.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct(*fields[k], sharding=sharding) for k in keys}


@dataclasses.dataclass(frozen=True)
class Memory:
  """XLA's plan of one compiled step's memory on one chip, in bytes."""

  arguments: int
  outputs: int
  aliased: int  # Outputs written into donated arguments (counted once).
  temporaries: int
  code: int

  @classmethod
  def of(cls, compiled) -> Memory:
    m = compiled.memory_analysis()
    return cls(
      m.argument_size_in_bytes,
      m.output_size_in_bytes,
      m.alias_size_in_bytes,
      m.temp_size_in_bytes,
      m.generated_code_size_in_bytes,
    )

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


@dataclasses.dataclass(frozen=True)
class Compiled:
  """What compiling a config for a slice gave: memory, FLOPs, compile times."""

  slice: Slice
  device_kind: str
  mesh_shape: dict[str, int]
  memory: dict[str, Memory]  # "train", "eval".
  seconds: dict[str, float]  # Compile time of each step.
  xla_flops: float  # One train step, all chips (cost analysis is per chip).
  network_flops: float | None  # One train step from the network's shapes (stage 1).
  global_batch: int
  steps: tuple[int | None, int, str]  # total_steps(config).

  @property
  def hbm(self) -> float:
    return self.slice.chip.hbm_gib * GIB

  @property
  def peak_memory(self) -> int:
    return max(m.total for m in self.memory.values())

  @property
  def fits(self) -> bool:
    return self.peak_memory <= self.hbm

  @property
  def model_flops(self) -> float:
    """FLOPs per step the MFU counts: the network's, else XLA's."""
    return self.network_flops or self.xla_flops

  def step_seconds(self, mfu: float) -> float:
    return self.model_flops / (self.slice.chips * self.slice.chip.peak_bf16 * mfu)


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


def network_flops(config: ml_collections.ConfigDict) -> float | None:
  """The stage-1 step's matmul FLOPs from the network's shapes (`models.flops`); None
  where jaxclap has no count (stage 2, non-square patches)."""
  if config.stage != "stage1" or config.model.patch_time:
    return None
  n_mels = fe.FrontendConfig.for_sample_rate(config.frontend.sample_rate).n_mels
  return flops.stage1_step_flops(
    config.model,
    config.data.crop_frames,
    config.train.global_batch,
    n_mels=n_mels,
    patch=config.model.patch_size,
  )


def _check_config(config: ml_collections.ConfigDict, chips: int) -> ml_collections.ConfigDict:
  """The config validated as training validates it; stage 2's start checkpoint is not read."""
  if "stages" in config:
    raise ValueError("--compile_for takes one stage: e.g. --config=configs/demo.py:stage1")
  if config.stage not in STAGES:
    # A new objective plugs in at _objective (how it is built) and batch_fields (its keys).
    raise ValueError(f"--compile_for compiles stages {STAGES}; stage {config.stage!r} not yet")
  checked = ml_collections.ConfigDict(config.to_dict())
  if checked.stage == "stage2" and not checked.init.workdir:
    checked.init.workdir = "(not read by --compile_for)"
  config_lib.validate(checked)
  if config.train.global_batch % chips:
    raise ValueError(
      f"train.global_batch={config.train.global_batch} must be a multiple of the {chips} chips"
    )
  return config


@dataclasses.dataclass(frozen=True)
class AbstractRun:
  """A config's steps ready to lower for a slice: jitted with the run's shardings, and
  their arguments as ShapeDtypeStructs."""

  slice: Slice
  mesh: Any
  state: state_lib.TrainState  # ShapeDtypeStructs carrying their shardings.
  batch: dict[str, jax.ShapeDtypeStruct]
  jitted: dict[str, Callable]  # step.jit_steps: "train", "eval", ...
  steps: tuple[int | None, int, str]  # total_steps(config).


def abstract_run(config: ml_collections.ConfigDict, slc: Slice) -> AbstractRun:
  """Mesh, objective, optimizer, state and batch of the config on the slice; no array made."""
  config = _check_config(config, slc.chips)
  mesh = shd.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp, devices=devices(slc))
  steps = total_steps(config)
  total, per_epoch = steps[0] or 1, max(steps[1], 1)
  schedule = optim.learning_rate(
    config.optim,
    global_batch=config.train.global_batch,
    steps_per_epoch=per_epoch,
    total_steps=total,
  )
  tx = optim.make_optimizer(config.optim, schedule)
  objective = _objective(config, RunMeta(total_steps=total, steps_per_epoch=per_epoch))
  state, state_sh = state_lib.abstract_sharded_state(
    init_params=objective.init,
    tx=tx,
    mesh=mesh,
    rules=[tuple(r) for r in config.mesh.rules],
    seed=config.seed,
  )
  jitted = step_lib.jit_steps(
    mesh=mesh,
    state_sh=state_sh,
    objective=objective,
    tx=tx,
    schedule=schedule,
    grad_accum=config.train.grad_accum,
  )
  batch = abstract_batch(config, objective.batch_keys, mesh)
  return AbstractRun(slc, mesh, state, batch, jitted, steps)


def compile_steps(
  config: ml_collections.ConfigDict,
  slc: Slice,
  *,
  which: Sequence[str] = ("train", "eval"),
  log: Callable[[str], None] = lambda s: None,
) -> Compiled:
  """Lowers and compiles the config's steps for the slice with the run's shardings."""
  run = abstract_run(config, slc)
  memory, seconds, xla = {}, {}, 0.0
  for name in which:
    log(f"compiling the {name} step for {slc.name} ({slc.topology}, {slc.chips} chips) ...")
    start = time.perf_counter()
    try:
      compiled = run.jitted[name].lower(run.state, run.batch).compile()
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      raise DoesNotFit(refusal(str(e), name, config, slc)) from None
    seconds[name] = time.perf_counter() - start
    memory[name] = Memory.of(compiled)
    if name == "train":
      xla = _flops(compiled) * slc.chips  # Cost analysis counts one chip's share.
  return Compiled(
    slice=slc,
    device_kind=run.mesh.devices.flat[0].device_kind,
    mesh_shape=dict(run.mesh.shape),
    memory=memory,
    seconds=seconds,
    xla_flops=xla,
    network_flops=network_flops(config),
    global_batch=config.train.global_batch,
    steps=run.steps,
  )


# ----------------------------------------------------------------------------------------------
# The report.


def _gib(n: float) -> str:
  return f"{n / GIB:.3f}"


def _hours(seconds: float) -> str:
  if seconds >= 3600:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _step_time(seconds: float) -> str:
  return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} µs"


def memory_table(c: Compiled) -> list[str]:
  """Per-chip memory lines, one column per compiled step."""
  names = list(c.memory)
  rows = [
    ("arguments", lambda m: m.arguments),
    ("outputs", lambda m: m.outputs),
    ("aliased (donated)", lambda m: m.aliased),
    ("temporaries", lambda m: m.temporaries),
    ("generated code", lambda m: m.code),
    ("total", lambda m: m.total),
  ]
  lines = ["per-chip memory (GiB)  " + "".join(f"{n:>10}" for n in names)]
  for label, get in rows:
    lines.append(f"  {label:<21}" + "".join(f"{_gib(get(c.memory[n])):>10}" for n in names))
  share = c.peak_memory / c.hbm
  lines.append(f"  {'HBM':<21}{c.slice.chip.hbm_gib:>10.2f}   ({share:.0%} used at the peak)")
  return lines


def flops_lines(c: Compiled) -> list[str]:
  """FLOPs per step (XLA and the network count) and per clip."""
  if "train" not in c.memory:
    return []
  per_clip = lambda f: f / c.global_batch / 1e9
  line = f"FLOPs per train step: XLA {c.xla_flops:.3e} ({per_clip(c.xla_flops):.1f} GFLOP/clip)"
  if c.network_flops:
    ratio = c.xla_flops / c.network_flops
    line += (
      f"; network count {c.network_flops:.3e} ({per_clip(c.network_flops):.1f} GFLOP/clip), "
      f"XLA/network {ratio:.3f}"
    )
  else:
    line += "; no network count for this stage (MFU counts XLA's FLOPs)"
  return [line]


def time_lines(c: Compiled, mfus: Sequence[float] = MFU_RANGE) -> list[str]:
  """Projected step and run time at the chip's bf16 peak for each MFU."""
  if "train" not in c.memory:
    return []
  total, _, how = c.steps
  lines = [f"projected at {c.slice.chips} × {c.slice.chip.peak_bf16 / 1e12:.0f} TFLOP/s (bf16):"]
  for mfu in mfus:
    step = c.step_seconds(mfu)
    line = f"  MFU {mfu:.0%}: {_step_time(step)}/step, {c.global_batch / step:,.0f} clips/s"
    if total:
      run = step * total
      line += f"; run {_hours(run)} ({run * c.slice.chips / 3600:,.0f} chip-hours)"
    lines.append(line)
  lines.append(f"  steps: {total:,} ({how})" if total else f"  run time: {how}")
  return lines


def format_report(c: Compiled, config: ml_collections.ConfigDict) -> str:
  """The whole report as printed."""
  m = config.model
  per_chip = c.global_batch // c.slice.chips
  head = [
    f"compile_for {c.slice.name}: {c.slice.topology} × {c.slice.num_slices} slice(s), "
    f"{c.slice.chips} chips ({c.device_kind}), {c.slice.chip.hbm_gib:g} GiB HBM each",
    f"config: {config.stage}, ViT {m.size}, {m.dtype}, remat {m.remat}, attention "
    f"{m.attention}, crop {config.data.crop_frames} frames; mesh "
    + " × ".join(f"{k} {v}" for k, v in c.mesh_shape.items())
    + f"; global batch {c.global_batch} ({per_chip} per chip)"
    + (
      f"; text {config.text.kind}, {config.text.max_len} tokens" if config.stage == "stage2" else ""
    ),
    "compile time: " + ", ".join(f"{k} step {v:.1f} s" for k, v in c.seconds.items()),
  ]
  return "\n".join(head + memory_table(c) + flops_lines(c) + time_lines(c))


def _fitting_batch(per_chip: int, scaled: float, room: float) -> int:
  """The largest power-of-two per-chip batch whose batch-scaled bytes fit in `room`."""
  fit = per_chip * room / scaled if scaled > 0 and room > 0 else 0
  return 2 ** int(math.log2(fit)) if fit >= 1 else 0


def _knobs(config: ml_collections.ConfigDict, slc: Slice, fit: int, state: int | None) -> str:
  """The settings that lower a step's memory per chip, in the order to try them."""
  per_chip = config.train.global_batch // slc.chips
  knobs = []
  if config.model.remat != "full":
    after = "save_dots" if config.model.remat == "none" else "full"
    knobs.append(f"--config.model.remat={after} (recomputes activations in the backward pass)")
  batch = f"train.global_batch: {per_chip} clips per chip now"
  if fit:
    batch += f", about {fit} fit: --config.train.global_batch={fit * slc.chips}"
  knobs.append(batch + " (or a slice with more chips)")
  if config.mesh.fsdp < slc.chips:
    now = f", {_gib(state)} GiB of arguments per chip now" if state else ""
    knobs.append(
      f"--config.mesh.fsdp={2 * config.mesh.fsdp} (shards parameters and optimizer state{now})"
    )
  return "Turn: " + "; ".join(knobs)


def _over(step: str, needed: float, usable: float, slc: Slice) -> str:
  return (
    f"the {step} step needs {_gib(needed)} GiB per chip, {slc.name}'s chips have "
    f"{_gib(usable)} GiB: over by {_gib(needed - usable)} GiB. "
  )


def advice(c: Compiled, config: ml_collections.ConfigDict) -> str:
  """By how much a compiled step is over the chip's HBM, and the knobs that bring it under."""
  name, mem = max(c.memory.items(), key=lambda kv: kv[1].total)
  # Temporaries (activations) scale with the per-chip batch; the rest does not.
  room = c.hbm - (mem.total - mem.temporaries)
  fit = _fitting_batch(c.global_batch // c.slice.chips, mem.temporaries, room)
  return _over(name, mem.total, c.hbm, c.slice) + _knobs(config, c.slice, fit, mem.arguments)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)([KMGT])\b")


def refusal(message: str, step: str, config: ml_collections.ConfigDict, slc: Slice) -> str:
  """The TPU compiler's out-of-memory refusal as advice: its first two sizes are the bytes
  needed (at least) and usable, e.g. "... (610.93G) exceeds available HBM (15.75G)"."""
  sizes = [float(v) * 1024 ** ("KMGT".index(u) + 1) for v, u in _SIZE.findall(message)]
  if len(sizes) < 2:
    return f"the {step} step does not fit {slc.name}'s HBM: {message.strip()}. " + _knobs(
      config, slc, 0, None
    )
  needed, usable = sizes[:2]
  # All of it counted as scaling with the batch: a batch that surely fits, if one does.
  fit = _fitting_batch(config.train.global_batch // slc.chips, needed, usable)
  return _over(step, needed, usable, slc) + _knobs(config, slc, fit, None)


def run(config: ml_collections.ConfigDict, slice_name: str) -> Compiled:
  """The command line's body: compiles, prints the report, raises DoesNotFit when over."""
  slc = parse_slice(slice_name)
  c = compile_steps(config, slc, log=lambda s: print(s, flush=True))
  print(format_report(c, config), flush=True)
  if not c.fits:
    raise DoesNotFit(advice(c, config))
  print(f"fits: {_gib(c.peak_memory)} of {c.slice.chip.hbm_gib:g} GiB per chip", flush=True)
  return c


def use_cpu_host() -> None:
  """Keeps JAX's own backend on the CPU: the TPU compiler is reached through the topology,
  and a TPU VM's chips stay free for the run they belong to."""
  jax.config.update("jax_platforms", "cpu")
