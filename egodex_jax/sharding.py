"""Device mesh and partition rules: data parallel over ('data', 'fsdp'), FSDP over 'fsdp'.

The batch is split over both mesh axes (every device sees B / num_devices rows). Parameters and
everything shaped like them (optimizer moments, EMA) follow big_vision's FSDP rule: an array of at
least `min_size` elements is split over 'fsdp' along its largest axis divisible by the fsdp size;
smaller arrays (biases, norms, scalars, the rng) are replicated. Parameters of a scanned stack
(`model.scan_layers`: leaves under `transformer.STACKED` names, [L, ...]) never have their layer
axis split (each layer's slice is needed whole by one scan iteration); the rule is applied to
each layer's [...] as if unrolled, so both layouts shard every layer alike.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from egodex_jax.models import transformer

AXES = ('data', 'fsdp')
BATCH_SPEC = P(AXES)


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (all by default); data = num_devices // fsdp."""
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f'mesh.fsdp={fsdp} does not divide the {n} available devices.')
  shape = (n // fsdp, fsdp)
  try:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, AssertionError, NotImplementedError):
    grid = np.asarray(devices).reshape(shape)  # CPU / odd topologies: plain order is fine
  # Mesh(...) keeps Auto axis types (jax.make_mesh would default to Explicit, see docs/stack_notes.md).
  return Mesh(grid, AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over every device; the other axes whole."""
  return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int = 2**14, *,
              stacked: bool = False) -> P:
  """big_vision's rule: split the largest axis divisible by `fsdp`, if the array is big enough.
  stacked: axis 0 is a scanned stack's layer axis: never split; the rule sees one layer."""
  if stacked and len(shape) >= 1:
    layer = fsdp_spec(tuple(shape[1:]), fsdp, min_size)
    return P(None, *layer) if layer else P()
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in np.argsort(shape)[::-1]:  # largest first
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return P(*spec)
  return P()


def is_stacked(path) -> bool:
  """Whether a pytree path (jax.tree_util keys) runs through a scanned stack's params."""
  return any(getattr(k, 'key', None) in transformer.STACKED for k in path)


def tree_shardings(mesh: Mesh, tree, min_size: int = 2**14):
  """NamedShardings for a pytree of arrays or ShapeDtypeStructs (params, optimizer state, ...)."""
  fsdp = mesh.shape['fsdp']

  def one(path, x):
    shape = tuple(getattr(x, 'shape', ()))
    return NamedSharding(mesh, fsdp_spec(shape, fsdp, min_size, stacked=is_stacked(path)))

  return jax.tree_util.tree_map_with_path(one, tree)


def global_batch(batch: dict, mesh: Mesh) -> dict:
  """Per-process NumPy batch -> global jax.Arrays split over the mesh (one process or many).

  Each process passes its own rows (B_global / process_count of them); with one process this is a
  plain sharded device_put.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """The per-process batch size; raises one clear sentence when the sizes do not divide."""
  n, procs = mesh.devices.size, jax.process_count()
  if global_batch_size % n:
    raise ValueError(f'data.batch_size={global_batch_size} is not divisible by the {n} devices '
                     'of the mesh.')
  return global_batch_size // procs
