"""Train-step speed: compile time, ms/step, FLOPs, the fraction of the machine's matmul peak.

  python -m benchmarks.train_step [--configs demo,xil_encdec_fm_96,...] [--steps 10] [--parts]
                                  [--pairs 3] [--baseline REF] [--xil] [--xla_flags "..."]

Every measurement runs in a fresh process (`--one NAME` is that process), so no run inherits
another's caches, threads or heap. Per config it reports:
  compile_s         lower + compile of the jitted train step (the training loop's own `jax.jit`)
  ms                median / min / max over `--steps` steps after 2 warm-up steps
  gflop             FLOPs of one step from the compiled step's XLA cost analysis
  peak_gflops       a float32 [N, N] x [N, N] matmul timed in the same process before and after
                    the steps (best of 5 each): what this machine's cores can do right now
  frac_of_peak      achieved GFLOP/s over the mean of the two peaks
  rss_mb            peak resident memory of the process
  parts (--parts)   ms of the image encoder's forward + backward, of the whole loss's forward +
                    backward, and of the optimiser + EMA update alone; the transformer and heads
                    are loss - image encoder, host work is step - loss - optimiser.
Comparisons alternate A, B, A, B, ... in fresh processes (`--pairs` times) and print each pair's
ratio and the median (this machine's speed drifts within minutes: only ratios measured side by
side mean anything):
  --baseline REF    the same configs on commit REF (a temporary git worktree), e.g. 628941d
  --xil             X-IL's own PyTorch step at the same size (../shared/peer_xil/run_xil.sh,
                    set up as its README says); only the xil_* configs
  --xla_flags F     the same code with XLA_FLAGS=F against without
Prints one JSON line per process and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XIL_RUNNER = os.path.join(REPO, '..', 'shared', 'peer_xil', 'run_xil.sh')

# X-IL's EgoDex recipe at its default width (docs/performance.md): ResNet-18 with GroupNorm,
# width 256, 4 heads, H = 60, batch 32; EncDec 4 + 6 layers; Dec 4 layers (X-IL's decoder-only
# backbone is its TransformerEncoder with `encoder_n_layer` = 4 layers; `decoder_n_layer` unused).
# The ResNet in chunks of 4 images (image.chunk_size: the same maths, faster on XLA:CPU).
_XIL = dict(emb_dim=256, num_heads=4, mlp_ratio=4, image=dict(chunk_size=4))
CONFIGS = {
    'tiny': dict(size='tiny', backbone='encdec', head='fm', image=16, batch=8, horizon=8,
                 model={}),  # tests/test_benchmarks.py
    'demo': dict(size='demo', backbone='encdec', head='fm', image=64, batch=32, horizon=30,
                 model={}),
    'xil_encdec_fm_96': dict(size='paper', backbone='encdec', head='fm', image=96, batch=32,
                             horizon=60, model=dict(_XIL, enc_layers=4, dec_layers=6),
                             xil=('encdec_fm', 96)),
    'xil_encdec_fm_224': dict(size='paper', backbone='encdec', head='fm', image=224, batch=32,
                              horizon=60, model=dict(_XIL, enc_layers=4, dec_layers=6),
                              xil=('encdec_fm', 224)),
    'xil_dec_bc_96': dict(size='paper', backbone='dec', head='bc', image=96, batch=32, horizon=60,
                          model=dict(_XIL, num_layers=4), xil=('dec_bc', 96)),
    'xil_dec_bc_224': dict(size='paper', backbone='dec', head='bc', image=224, batch=32,
                           horizon=60, model=dict(_XIL, num_layers=4), xil=('dec_bc', 224)),
    'mid': dict(size='paper', backbone='encdec', head='fm', image=224, batch=16, horizon=60,
                model=dict(emb_dim=512, num_heads=8, enc_layers=4, dec_layers=4)),
    'paper': dict(size='paper', backbone='encdec', head='fm', image=224, batch=4, horizon=60,
                  model={}),
}
DEFAULT = 'demo,xil_encdec_fm_96,xil_dec_bc_96,xil_encdec_fm_224,xil_dec_bc_224,mid,paper'
INSTRUCTIONS = ['pick up the cup and put it on the mat', 'open the box', 'close the lid']


# ----------------------------------------------------------------------------- one process

def _build(spec: dict):
  """(jitted step, state, batch, (policy, optimizer, normalizer)) with this checkout's API
  (benchmarks/step_setup.py), or with the v1 API of 628941d for `--baseline`."""
  from egodex_jax import sharding as sharding_lib
  from egodex_jax import train
  mesh = sharding_lib.make_mesh(1)
  if hasattr(train, 'make_train_step'):
    return _build_v1(spec, mesh)
  from benchmarks import step_setup
  setup = step_setup.build(spec['size'], image_size=spec['image'], head=spec['head'],
                           backbone=spec['backbone'], horizon=spec['horizon'],
                           batch_size=spec['batch'], model=spec['model'])
  _, shardings = setup.abstract_state(mesh)
  batch = step_setup.random_batch(spec['batch'], spec['horizon'], spec['image'])
  return (setup.jit_step(mesh, shardings), setup.create_state(shardings),
          sharding_lib.global_batch(batch, mesh), (setup.policy, setup.optimizer,
                                                   setup.normalizer))


def _build_v1(spec: dict, mesh):
  """628941d: models/policies.py, make_train_step, no normaliser, no image.chunk_size."""
  import ml_collections
  import numpy as np
  from egodex_jax import sharding as sharding_lib
  from egodex_jax import train
  from egodex_jax.models import policies
  optim = ml_collections.ConfigDict(dict(lr=1e-4, schedule='constant', warmup_steps=1000,
                                         end_factor=0.0, b1=0.9, b2=0.999, weight_decay=1e-4,
                                         grad_clip=1.0))
  optimizer, schedule = train.make_optimizer(optim, 50_000)
  h, b, s = spec['horizon'], spec['batch'], spec['image']
  model = dict(spec['model'], backbone=spec['backbone'], head=spec['head'])
  model['image'] = {k: v for k, v in model.get('image', {}).items() if k != 'chunk_size'}
  policy = policies.make_policy(policies.model_config(spec['size'], **model), horizon=h,
                                instructions=INSTRUCTIONS)
  step_fn = train.make_train_step(policy, optimizer, schedule, None, ema_decay=0.995)
  example = policies.dummy_batch(batch_size=1, horizon=h, image_size=s)
  _, shardings = train.abstract_state(policy, optimizer, example, 0, mesh)
  state = train.create_state(policy, optimizer, example, 0, shardings)
  rng = np.random.default_rng(0)
  batch = policies.dummy_batch(batch_size=b, horizon=h, image_size=s)
  batch['image'] = rng.integers(0, 256, batch['image'].shape, dtype=np.uint8)
  batch['state'] = rng.normal(0, 0.1, batch['state'].shape).astype(np.float32)
  batch['actions'] = rng.normal(0, 0.1, batch['actions'].shape).astype(np.float32)
  batch['instruction_id'] = rng.integers(0, len(INSTRUCTIONS), b).astype(np.int32)
  return (train.jit_train_step(step_fn, mesh, shardings), state,
          sharding_lib.global_batch(batch, mesh), (policy, optimizer, None))


def _time(fn, args, n: int) -> list[float]:
  import jax
  out = []
  for _ in range(n):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out.append(time.perf_counter() - t)
  return out


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
  """float32 GFLOP/s of one [n, n] matmul, best of `repeats`: this machine's limit right now."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
  jax.block_until_ready(f(a, a))
  return 2 * n**3 / min(_time(f, (a, a), repeats)) / 1e9


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def _parts(policy, optimizer, normalizer, state, batch, n: int) -> dict:
  """ms of the image encoder fwd+bwd, the loss fwd+bwd and the optimiser + EMA alone."""
  import jax
  import jax.numpy as jnp
  import optax
  params = state.params
  nb = normalizer.normalize_batch(batch) if normalizer is not None else batch

  def image_loss(p):
    feats = policy.net.apply({'params': p}, nb['image'],
                             method=lambda m, x: m.image_encoder(x, train=True))
    return jnp.sum(feats.astype(jnp.float32))

  rng = jax.random.PRNGKey(1)
  fns = dict(
      image_fwd_bwd=(jax.jit(jax.grad(image_loss)), (params,)),
      loss_fwd_bwd=(jax.jit(jax.value_and_grad(
          lambda p: policy.loss(p, nb, rng, train=True), has_aux=True)), (params,)))

  def opt_ema(st, grads):
    updates, opt_state = optimizer.update(grads, st.opt_state, st.params)
    p = optax.apply_updates(st.params, updates)
    ema = jax.tree.map(lambda e, q: 0.995 * e + 0.005 * q, st.ema_params, p)
    return p, opt_state, ema

  fns['optimizer_ema'] = (jax.jit(opt_ema), (state, jax.tree.map(jnp.ones_like, params)))
  out = {}
  for name, (fn, args) in fns.items():
    compiled = fn.lower(*args).compile()
    _time(compiled, args, 1)
    out[name] = round(1e3 * statistics.median(_time(compiled, args, n)), 1)
  return out


def run_one(name: str, steps: int, parts: bool) -> dict:
  import jax
  import numpy as np
  spec = CONFIGS[name]
  peak0 = matmul_peak_gflops()
  step, state, batch, (policy, optimizer, normalizer) = _build(spec)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  t = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  gflop = _flops(compiled) / 1e9
  for _ in range(2):  # warm-up: first-touch allocations, thread pools
    state, m = compiled(state, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  ms = 1e3 * statistics.median(times)
  out = dict(config=name, params_m=round(n_params / 1e6, 2), batch=spec['batch'],
             image=spec['image'], compile_s=round(compile_s, 1), ms=round(ms, 1),
             ms_min=round(1e3 * min(times), 1), ms_max=round(1e3 * max(times), 1),
             gflop=round(gflop, 3), loss=float(m['loss']))
  if parts:
    out['parts'] = _parts(policy, optimizer, normalizer, state, batch, max(3, steps // 2))
  peak1 = matmul_peak_gflops()
  out.update(peak_gflops=[round(peak0, 1), round(peak1, 1)],
             achieved_gflops=round(gflop / (ms / 1e3), 1),
             frac_of_peak=round(gflop / (ms / 1e3) / ((peak0 + peak1) / 2), 3),
             rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
             xla_flags=os.environ.get('XLA_FLAGS', ''))
  return out


# ----------------------------------------------------------------------------- the driver

def _spawn(name: str, args, *, pythonpath: str = REPO, xla_flags: str | None = None) -> dict:
  env = dict(os.environ, PYTHONPATH=pythonpath, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  if xla_flags:
    env['XLA_FLAGS'] = xla_flags
  cmd = [sys.executable, os.path.abspath(__file__), '--one', name, '--steps', str(args.steps)]
  if args.parts:
    cmd.append('--parts')
  p = subprocess.run(cmd, env=env, cwd=pythonpath, capture_output=True, text=True)
  lines = [l for l in p.stdout.splitlines() if l.startswith('{')]
  if p.returncode or not lines:
    raise SystemExit(f'train_step.py: {name} failed in {pythonpath} (exit {p.returncode}):\n'
                     f'{p.stderr[-3000:]}')
  return json.loads(lines[-1])


def _xil(name: str) -> dict:
  model, img = CONFIGS[name]['xil']
  p = subprocess.run(['bash', XIL_RUNNER, model, str(img)], capture_output=True, text=True)
  lines = [l for l in p.stdout.splitlines() if l.startswith('{')]
  if p.returncode or not lines:
    raise SystemExit(f'train_step.py: X-IL {model} {img} px failed (set it up as '
                     f'../shared/peer_xil/README.md says):\n{p.stderr[-2000:]}')
  r = json.loads(lines[-1])
  return dict(config=name, ms=float(r['train_ms']['median']), params_m=r['params']['total'] / 1e6,
              raw=r)


def _worktree(ref: str) -> str:
  path = os.path.join(tempfile.gettempdir(), f'egodex_baseline_{ref}')
  if not os.path.isdir(path):
    subprocess.run(['git', '-C', REPO, 'worktree', 'add', '--detach', path, ref], check=True,
                   capture_output=True)
  return path


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--configs', default=DEFAULT)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--parts', action='store_true')
  p.add_argument('--pairs', type=int, default=1)
  p.add_argument('--baseline', default='')
  p.add_argument('--xil', action='store_true')
  p.add_argument('--xla_flags', default='')
  p.add_argument('--one', default='', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.one:
    print(json.dumps(run_one(args.one, args.steps, args.parts)), flush=True)
    return
  names = [n for n in args.configs.split(',') if n]
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    sys.exit(f'train_step.py: unknown config(s) {unknown}; known: {list(CONFIGS)}.')
  if args.xil:
    names = [n for n in names if 'xil' in CONFIGS[n]]
  # A = this checkout; B = the baseline, X-IL or the flags (None: no comparison).
  if args.baseline:
    tree = _worktree(args.baseline)
    other, label = (lambda n: _spawn(n, args, pythonpath=tree)), args.baseline
  elif args.xil:
    other, label = _xil, 'X-IL'
  elif args.xla_flags:
    other, label = (lambda n: _spawn(n, args, xla_flags=args.xla_flags)), args.xla_flags
  else:
    other, label = None, ''
  rows = []
  for name in names:
    ours, theirs = [], []
    for _ in range(args.pairs):
      if other is not None:  # B first: a slow first run should not always be ours
        theirs.append(other(name))
        print(json.dumps(dict(theirs[-1], side=label)), flush=True)
      ours.append(_spawn(name, args))
      print(json.dumps(dict(ours[-1], side='ours')), flush=True)
    rows.append((name, ours, theirs))
  _table(rows, label)


def _join(values, digits: int = 0) -> str:
  return ', '.join(f'{v:.{digits}f}' for v in values)


def _table(rows, label: str) -> None:
  print('\n| config | params | compile s | ms/step (median of runs; runs) | GFLOP | '
        '% of matmul peak |' + (f' {label} ms/step | {label} / ours (pairs; median) |'
                                if label else ''))
  print('|---|---|---|---|---|---|' + ('---|---|' if label else ''))
  for name, ours, theirs in rows:
    med = statistics.median(r['ms'] for r in ours)
    cells = [name, f"{ours[0]['params_m']:.2f}M",
             f"{statistics.median(r['compile_s'] for r in ours):.1f}",
             f"{med:.0f} ({_join(r['ms'] for r in ours)})",
             f"{ours[0]['gflop']:.0f}",
             f"{100 * statistics.median(r['frac_of_peak'] for r in ours):.0f}"]
    if label:
      ratios = [t['ms'] / o['ms'] for t, o in zip(theirs, ours)]
      cells += [_join(t['ms'] for t in theirs),
                f'{_join(ratios, 2)}; **{statistics.median(ratios):.2f}**']
    print('| ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
