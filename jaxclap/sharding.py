"""Device mesh, logical-axis rules and the shardings of params, state and batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # The batch is split over every device, FSDP style.


def make_mesh(*, data: int = -1, fsdp: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (all by default); data=-1 takes the rest.

  `jax.make_mesh` orders the devices by their physical topology (TPU torus coordinates) so
  that each mesh axis runs over neighbouring chips; elsewhere that is the list order. Auto
  axes: shardings come from the rules and `jit`, not from JAX's explicit-sharding types.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} must divide the device count {n}")
  if data == -1:
    data = n // fsdp
  if data * fsdp != n:
    raise ValueError(f"mesh.data={data} × mesh.fsdp={fsdp} must equal the device count {n}")
  return jax.make_mesh(
    (data, fsdp), MESH_AXES, devices=devices, axis_types=(AxisType.Auto,) * len(MESH_AXES)
  )


def _divisible(shape: tuple[int, ...], spec: P, mesh: Mesh) -> P:
  """Drops mesh axes from `spec` where they do not divide the dimension (replicate instead)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    size = int(np.prod([mesh.shape[a] for a in names]))
    out.append(axes if dim % size == 0 else None)
  return P(*out)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for a (possibly nn.Partitioned-boxed) abstract tree from its axis names."""
  specs = nn.get_partition_spec(boxed_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = nn.unbox(boxed_tree)

  def one(shape_leaf, spec):
    spec = spec if isinstance(spec, P) else P()
    return NamedSharding(mesh, _divisible(tuple(shape_leaf.shape), spec, mesh))

  return jax.tree.map(one, shapes, mesh_specs, is_leaf=lambda x: isinstance(x, P) or x is None)


def replicated(mesh: Mesh) -> NamedSharding:
  """A sharding that keeps a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over all mesh axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into global, batch-sharded arrays."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
  }
