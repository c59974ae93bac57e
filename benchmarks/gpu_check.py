"""GPU check: the paper-size train step on one accelerator, its speed, MFU and memory.

  python benchmarks/gpu_check.py                 # the paper's 200M, 224 px, bf16, batch 256
  python benchmarks/gpu_check.py --tiny          # CPU: tiny model, 32 px, batch 8 (tested)

On one device: the train step of configs/common.py at `--size` (train.train_step: loss,
gradients, AdamW, EMA; bf16 compute, float32 parameters), compiled ahead of time at batch 256,
halved on out-of-memory until it fits. Reported: compile time, ms/step (median/min/max of
`--steps` steps after `--warmup`), the step's FLOPs (XLA `cost_analysis()`), the achieved
TFLOP/s, the chip's bf16 matmul rate measured in this process (a large jnp.dot, before and
after the step), MFU = achieved / measured, peak memory (`memory_stats()['peak_bytes_in_use']`,
else the compiled `memory_analysis()`), and the time of K = 10 samples x 16 flow steps of the
EMA params on a batch (policy.sample, as the evaluator runs it).
Prints a readable summary, then one JSON line (also written to `--json_out`).

Needs jax, flax, optax, numpy and ml_collections only (no Grain, TFDS, TensorFlow, cv2, h5py
or tensorboardX); without ml_collections installed, benchmarks/wheels/ml_collections-*.whl (pure
Python) is imported from the wheel itself. `--time_budget_s` (default 420) bounds the run:
later phases are skipped once it is spent, and the process exits 60 s past it in any case.
"""

from __future__ import annotations

import argparse
import faulthandler
import glob
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
try:
  import ml_collections  # noqa: F401
except ImportError:  # a bare accelerator machine: the pure-Python wheel shipped beside this file
  sys.path.extend(sorted(glob.glob(os.path.join(REPO, 'benchmarks', 'wheels',
                                                'ml_collections-*.whl')))[-1:])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import step_setup  # noqa: E402
from egodex_jax import sharding as sharding_lib  # noqa: E402

FORBIDDEN = ('grain', 'tensorflow', 'tensorflow_datasets', 'cv2', 'h5py', 'tensorboardX')
TINY = dict(size='tiny', image_size=32, batch=8, sample_batch=4, matmul_n=512, steps=10)


class Budget:
  def __init__(self, seconds: float):
    self.t0, self.seconds = time.perf_counter(), seconds

  def left(self) -> float:
    return self.seconds - (time.perf_counter() - self.t0)


def is_oom(e: Exception) -> bool:
  s = str(e)
  return 'RESOURCE_EXHAUSTED' in s or 'Out of memory' in s or 'out of memory' in s


def matmul_tflops(n: int, repeats: int = 10) -> float:
  """The best rate of one [n, n] @ [n, n] bf16 matmul (f32 accumulation, as the model's
  Dense layers), in TFLOP/s: the chip's usable peak, measured rather than taken from a sheet."""
  a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), jnp.bfloat16) for i in range(2))
  dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype))
  dot = dot.lower(a, b).compile()
  jax.block_until_ready(dot(a, b))
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e12


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per module
  return float(cost.get('flops', 0.0)) if cost else 0.0


def _memory_analysis(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  keys = ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
          'temp_size_in_bytes', 'generated_code_size_in_bytes')
  out = {k: int(getattr(m, k)) for k in keys if hasattr(m, k)}
  # What the step holds at once: arguments + outputs not aliased to them (donation) + scratch.
  out['total_bytes'] = (out.get('argument_size_in_bytes', 0) + out.get('output_size_in_bytes', 0)
                        - out.get('alias_size_in_bytes', 0) + out.get('temp_size_in_bytes', 0))
  return out


def fit_step(setup, mesh, batch_size: int, min_batch: int, budget: Budget):
  """Compiles and runs one step at batch_size, halving it on out-of-memory.
  -> (compiled, state, batch, batch_size, tried {batch: 'ok' | 'oom'}, compile_s)."""
  tried = {}
  abstract, shardings = setup.abstract_state(mesh)
  step = setup.jit_step(mesh, shardings)
  while True:
    state = batch = None
    try:
      t = time.perf_counter()
      compiled = step.lower(abstract, setup.abstract_batch(batch_size, mesh)).compile()
      compile_s = time.perf_counter() - t
      state = setup.create_state(shardings)  # fresh: a failed step may have consumed (donated) it
      batch = sharding_lib.global_batch(
          step_setup.random_batch(batch_size, setup.horizon, setup.image_size), mesh)
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      tried[batch_size] = 'ok'
      return compiled, state, batch, batch_size, tried, compile_s
    except Exception as e:  # noqa: BLE001  (XlaRuntimeError and friends)
      if not is_oom(e) or batch_size // 2 < min_batch or budget.left() < 0:
        raise
      tried[batch_size] = 'oom'
      del state, batch
      batch_size //= 2


def time_steps(compiled, state, batch, steps: int, warmup: int, budget: Budget):
  """ms of each of `steps` steps after `warmup` more (each synchronised); stops early, after 3,
  when the budget is spent."""
  for _ in range(warmup):
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
  times = []
  for i in range(steps):
    if i >= 3 and budget.left() < 0:
      break
    t = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(1e3 * (time.perf_counter() - t))
  if not np.isfinite(float(m['loss'])):
    raise RuntimeError(f'gpu_check: the train step gave a non-finite loss ({float(m["loss"])}).')
  return state, times


def time_sampling(setup, params, batch_size: int, k: int, repeats: int = 3) -> dict:
  """K samples x S steps of policy.sample on one batch (compiled ahead of time, best of n)."""
  policy = setup.policy
  data = step_setup.random_batch(batch_size, setup.horizon, setup.image_size, seed=1)
  obs = jax.device_put(setup.normalizer.normalize_obs(data), jax.devices()[0])
  rng = jax.random.PRNGKey(2)
  sample = jax.jit(lambda p, o, r: policy.sample(p, o, r, k))
  t = time.perf_counter()
  compiled = sample.lower(params, obs, rng).compile()
  compile_s = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(params, obs, rng))
    times.append(time.perf_counter() - t)
  return dict(k=k, steps=policy.num_steps, batch=batch_size, compile_s=round(compile_s, 2),
              s=round(min(times), 4), ms_per_sample_step=round(1e3 * min(times) / policy.num_steps,
                                                                 3))


def run(a) -> dict:
  budget = Budget(a.time_budget_s)
  dev = jax.devices()[0]
  mesh = sharding_lib.make_mesh(1, devices=[dev])  # one chip: no collectives in the figures
  peak_before = matmul_tflops(a.matmul_n)
  setup = step_setup.build(a.size, image_size=a.image_size, dtype=a.dtype, head=a.head,
                           backbone=a.backbone, horizon=a.horizon, batch_size=a.batch)
  compiled, state, batch, bs, tried, compile_s = fit_step(setup, mesh, a.batch, a.min_batch,
                                                          budget)
  state, times = time_steps(compiled, state, batch, a.steps, a.warmup, budget)
  del batch
  sampling = None
  if budget.left() > 0 and a.k > 0:
    sampling = time_sampling(setup, state.ema_params, min(a.sample_batch, bs), a.k)
  peak_after = matmul_tflops(a.matmul_n)

  flops = _flops(compiled)
  ms = float(np.median(times))
  achieved = flops / (ms / 1e3) / 1e12
  peak = max(peak_before, peak_after)
  stats = dev.memory_stats() or {}
  analysis = _memory_analysis(compiled)
  if 'peak_bytes_in_use' in stats:
    peak_mem, mem_source = int(stats['peak_bytes_in_use']), 'memory_stats.peak_bytes_in_use'
  else:
    peak_mem, mem_source = analysis.get('total_bytes', 0), 'memory_analysis (the step alone)'
  return dict(
      device_kind=dev.device_kind, platform=dev.platform, devices_used=1,
      jax=jax.__version__,
      config=dict(size=a.size, head=a.head, backbone=a.backbone, image_size=a.image_size,
                  horizon=a.horizon, compute_dtype=a.dtype, param_dtype='float32'),
      params=int(sum(x.size for x in jax.tree.leaves(state.params))),
      batch=bs, batch_tried={str(k): v for k, v in tried.items()},
      compile_s=round(compile_s, 2),
      ms_per_step=dict(median=round(ms, 3), min=round(min(times), 3), max=round(max(times), 3),
                       n=len(times)),
      flops_per_step=flops, achieved_tflops=round(achieved, 4),
      matmul_peak_tflops=dict(before=round(peak_before, 4), after=round(peak_after, 4),
                              n=a.matmul_n, dtype='bfloat16'),
      mfu=round(achieved / peak, 4),
      peak_memory_bytes=peak_mem, peak_memory_source=mem_source, memory_analysis=analysis,
      sampling=sampling, skipped=[] if sampling or a.k == 0 else ['sampling (time budget)'],
      wall_s=round(a.time_budget_s - budget.left(), 1),
      forbidden_modules_loaded=sorted(m for m in sys.modules if m.split('.')[0] in FORBIDDEN))


def summary(r: dict) -> str:
  ms, c, s = r['ms_per_step'], r['config'], r['sampling']
  gib = r['peak_memory_bytes'] / 2**30
  lines = [
      f"{r['device_kind']} ({r['platform']}), jax {r['jax']}",
      f"model: {c['size']} {c['backbone']}+{c['head']}, {r['params'] / 1e6:.1f}M params, "
      f"{c['image_size']} px, H={c['horizon']}, {c['compute_dtype']} compute / float32 params",
      f"batch {r['batch']} (tried {r['batch_tried']}), compile {r['compile_s']:.1f} s",
      f"step: {ms['median']:.2f} ms median (min {ms['min']:.2f}, max {ms['max']:.2f}, "
      f"n={ms['n']}); {r['flops_per_step'] / 1e12:.3f} TFLOP/step -> "
      f"{r['achieved_tflops']:.2f} TFLOP/s",
      f"bf16 matmul ({r['matmul_peak_tflops']['n']}^3): {r['matmul_peak_tflops']['before']:.2f} "
      f"before / {r['matmul_peak_tflops']['after']:.2f} after TFLOP/s -> MFU {r['mfu']:.3f}",
      f"peak memory {gib:.2f} GiB ({r['peak_memory_source']})",
      (f"sampling K={s['k']} x {s['steps']} steps, batch {s['batch']}: {s['s']:.3f} s "
       f"(compile {s['compile_s']:.1f} s)") if s else f"sampling skipped: {r['skipped']}",
  ]
  return '\n'.join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--tiny', action='store_true', help=f'CPU smoke run: {TINY}')
  p.add_argument('--size', default='paper', help='tiny | demo | paper (200M) | large (500M)')
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--horizon', type=int, default=60)
  p.add_argument('--head', default='fm')
  p.add_argument('--backbone', default='encdec')
  p.add_argument('--dtype', default='bfloat16', help='compute dtype (parameters stay float32)')
  p.add_argument('--batch', type=int, default=256, help='tried first; halved on out-of-memory')
  p.add_argument('--min_batch', type=int, default=8)
  p.add_argument('--steps', type=int, default=20, help='timed steps (>= 10 is the brief)')
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--k', type=int, default=10, help='samples per observation (0: no sampling)')
  p.add_argument('--sample_batch', type=int, default=256)
  p.add_argument('--matmul_n', type=int, default=8192)
  p.add_argument('--time_budget_s', type=float, default=420.0)
  p.add_argument('--json_out', default='', help='also write the JSON here')
  a = p.parse_args(argv)
  if a.steps < 1:
    p.error(f'--steps={a.steps}: at least one step must be timed.')
  if a.tiny:
    given = {k for k in TINY if f'--{k}' in (argv if argv is not None else sys.argv)}
    for k, v in TINY.items():
      if k not in given:
        setattr(a, k, v)
  return a


def main(argv=None):
  a = parse_args(argv)
  # Past the budget, a hung compile or step still ends the process (with its stack) in time.
  faulthandler.dump_traceback_later(a.time_budget_s + 60, exit=True)
  r = run(a)
  faulthandler.cancel_dump_traceback_later()
  print(summary(r), flush=True)
  line = json.dumps(r, sort_keys=True)
  print(line, flush=True)
  if a.json_out:
    with open(a.json_out, 'w') as f:
      f.write(line + '\n')


if __name__ == '__main__':
  main()
