"""FSDP on paper, checked by the compiler: per-device train-state bytes of the 200M / 500M step.

  python benchmarks/fsdp_memory.py [--sizes paper,large] [--fsdp 8] [--image_size 64]
                                   [--batch 8] [--once_size demo]

For each size, the real train step (train.jit_train_step of train.train_step, the state sharded
by train.abstract_state's big_vision rule) is lowered and compiled, nothing run, on a
('data', 'fsdp') mesh of 8 devices (forced CPU devices when there is no accelerator) with
fsdp = 8 and, for comparison, fsdp = 1. Reported per device: the state's bytes (params + AdamW
moments + EMA + step/rng) from the compiled step's `memory_analysis()` (its argument bytes less
the batch shard's), the same computed from the shardings (sum of the leaves' shard shapes), the
unsharded figure, their ratio (target <= 1/6) and the leaves left replicated (below
`min_shard_size`, or no axis divisible by fsdp). Parameter bytes do not depend on the image
size, so the default is 64 px (224 px only lengthens compilation).
Compile-once: the compiled step's output state has the input's shapes, dtypes and shardings (so
the next step hits the cache), and `--once_size` runs 3 real steps on 8 tiny batches, counting
traces and the jit's cache entries (1 each).
Prints one JSON line per size and mesh, then the compile-once line.
"""

from __future__ import annotations

import os
import sys

if __name__ == '__main__':  # before JAX starts: 8 CPU devices; the fast-compiling threefry
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()
  os.environ.setdefault('JAX_THREEFRY_PARTITIONABLE', '0')
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import step_setup  # noqa: E402
from egodex_jax import sharding as sharding_lib  # noqa: E402

TARGET = 1 / 6


def counted_step(setup, mesh, shardings):
  """The jitted train step and a list that grows by one each time it is traced (compiled)."""
  traces = []
  real = setup.step_fn()

  def step_fn(state, batch):
    traces.append(1)  # runs at trace time only
    return real(state, batch)

  return setup.jit_step(mesh, shardings, step_fn), traces


def state_memory(setup, mesh, batch_size: int, min_shard_size: int | None = None,
                 step=None) -> dict:
  """Per-device state bytes of the compiled step (memory_analysis) vs the shardings' figure.
  `step`: the jitted step to compile (ahead of time; a later call with the same shapes and
  shardings reuses the executable), by default a new one."""
  abstract, shardings = setup.abstract_state(mesh, min_shard_size)
  batch = setup.abstract_batch(batch_size, mesh)
  step = step or setup.jit_step(mesh, shardings)
  t = time.perf_counter()
  compiled = step.lower(abstract, batch).compile()
  compile_s = time.perf_counter() - t
  m = compiled.memory_analysis()
  batch_dev = step_setup.tree_bytes(batch, per_device=True)
  state_dev = int(m.argument_size_in_bytes) - batch_dev   # what one device holds of the state
  unsharded = step_setup.tree_bytes(abstract)
  exact = step_setup.tree_bytes(abstract, per_device=True)
  replicated = step_setup.replicated_leaves(abstract.params)
  rep_state = step_setup.replicated_leaves(abstract)
  return dict(
      mesh=dict(mesh.shape), batch=batch_size, image_size=setup.image_size,
      min_shard_size=int(min_shard_size or setup.config.mesh.min_shard_size),
      params=int(sum(x.size for x in jax.tree.leaves(abstract.params))),
      compile_s=round(compile_s, 1),
      state_bytes_per_device=state_dev, state_bytes_per_device_from_shardings=exact,
      state_bytes_unsharded=unsharded, ratio=round(state_dev / unsharded, 5),
      at_most_one_sixth=bool(state_dev <= TARGET * unsharded),
      per_device=dict(params=step_setup.tree_bytes(abstract.params, True),
                      opt_state=step_setup.tree_bytes(abstract.opt_state, True),
                      ema_params=step_setup.tree_bytes(abstract.ema_params, True)),
      replicated_param_leaves=len(replicated),
      replicated_param_bytes=sum(b for _, b in replicated),
      replicated_state_bytes=sum(b for _, b in rep_state),
      largest_replicated=[f'{p} ({b} B)' for p, b in sorted(replicated, key=lambda x: -x[1])[:5]],
      memory_analysis={k: int(getattr(m, k)) for k in (
          'argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
          'temp_size_in_bytes')},
      same_out_as_in=same_signature(compiled, abstract, shardings))


def same_signature(compiled, abstract, shardings) -> bool:
  """The compiled step returns the state with the shapes, dtypes and shardings it takes: the
  condition for every later step to reuse this executable."""
  out_state = compiled.out_info[0]
  out_shardings = compiled.output_shardings[0]
  shapes = jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype),
                        abstract, out_state)
  same = jax.tree.map(lambda a, b, x: a.is_equivalent_to(b, len(x.shape)),
                      shardings, out_shardings, abstract)
  return all(jax.tree.leaves(shapes)) and all(jax.tree.leaves(same))


def compiles_once(setup, mesh, step, traces, shardings, steps: int = 3,
                  batch_size: int = 8) -> dict:
  """Runs `steps` real steps of `step` (from counted_step) on `batch_size` random rows each:
  its traces and jit cache entries must stay at 1."""
  state = setup.create_state(shardings)
  losses = []
  for i in range(steps):
    batch = sharding_lib.global_batch(
        step_setup.random_batch(batch_size, setup.horizon, setup.image_size, seed=i), mesh)
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  cache = step._cache_size() if hasattr(step, '_cache_size') else None  # private, where present
  return dict(steps=steps, traces=len(traces), cache_size=cache, losses=losses,
              step=int(state.step), compiled_once=len(traces) == 1 and cache in (1, None))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--sizes', default='paper,large')
  p.add_argument('--fsdp', type=int, default=8)
  p.add_argument('--compare_fsdp', type=int, default=1, help='the mesh to compare with (0: none)')
  p.add_argument('--image_size', type=int, default=64)
  p.add_argument('--horizon', type=int, default=60)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--min_shard_size', type=int, default=None, help="default: the config's")
  p.add_argument('--once_size', default='demo', help="compile-once run ('' to skip)")
  a = p.parse_args()
  print(f'{jax.device_count()} devices ({jax.devices()[0].platform}), jax {jax.__version__}',
        file=sys.stderr, flush=True)
  for size in a.sizes.split(','):
    setup = step_setup.build(size, image_size=a.image_size, horizon=a.horizon,
                             batch_size=a.batch)
    for fsdp in [a.fsdp] + ([a.compare_fsdp] if a.compare_fsdp else []):
      mesh = sharding_lib.make_mesh(fsdp)
      r = dict(size=size, **state_memory(setup, mesh, a.batch, a.min_shard_size))
      print(json.dumps(r), flush=True)
  if a.once_size:
    setup = step_setup.build(a.once_size, image_size=32, horizon=a.horizon, batch_size=8)
    mesh = sharding_lib.make_mesh(a.fsdp)
    _, shardings = setup.abstract_state(mesh, a.min_shard_size)
    step, traces = counted_step(setup, mesh, shardings)
    r = compiles_once(setup, mesh, step, traces, shardings)
    print(json.dumps(dict(size=a.once_size, mesh=dict(fsdp=a.fsdp), **r)), flush=True)


if __name__ == '__main__':
  main()
