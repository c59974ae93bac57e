"""benchmarks/gpu_check.py on CPU with the tiny config: its JSON, and that it imports nothing of
the data pipeline or logging (a bare GPU machine has jax, flax and optax only)."""

import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN = ('grain', 'tensorflow', 'tensorflow_datasets', 'cv2', 'h5py', 'tensorboardX')


def _imported(importtime_stderr: str) -> set[str]:
  """Top-level package names from `python -X importtime` lines ('import time: a | b | mod')."""
  names = set()
  for line in importtime_stderr.splitlines():
    if line.startswith('import time:') and line.count('|') == 2:
      names.add(line.rsplit('|', 1)[1].strip().split('.')[0])
  return names


def test_gpu_check_tiny_on_cpu(tmp_path):
  out = tmp_path / 'gpu_check.json'
  # No extra warm-up, 10 timed steps, one sampling batch: a smoke run of every phase.
  p = subprocess.run(
      [sys.executable, '-X', 'importtime', os.path.join(REPO, 'benchmarks', 'gpu_check.py'),
       '--tiny', '--warmup', '1', '--json_out', str(out)],
      cwd=str(tmp_path), capture_output=True, text=True, timeout=240,
      env=dict(os.environ, PYTHONPATH=REPO,
               # LLVM without optimisation: a third less CPU compile time, same programs.
               XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0'))
  assert p.returncode == 0, p.stderr[-3000:]
  lines = [l for l in p.stdout.splitlines() if l.startswith('{')]
  assert len(lines) == 1, p.stdout
  r = json.loads(lines[0])
  assert r == json.loads(out.read_text())
  assert 'MFU' in p.stdout and 'sampling K=10 x 16 steps' in p.stdout  # the readable summary

  assert r['config']['size'] == 'tiny' and r['config']['compute_dtype'] == 'bfloat16'
  assert r['config']['param_dtype'] == 'float32'
  assert r['batch'] == 8 and r['batch_tried'] == {'8': 'ok'}
  assert r['params'] > 1000 and r['device_kind'] and r['platform'] == 'cpu'
  ms = r['ms_per_step']
  assert ms['n'] >= 10
  for v in (ms['median'], ms['min'], ms['max'], r['compile_s']):
    assert math.isfinite(v) and v > 0
  assert ms['min'] <= ms['median'] <= ms['max']
  assert r['flops_per_step'] > 0 and r['achieved_tflops'] > 0
  assert r['matmul_peak_tflops']['before'] > 0 and r['matmul_peak_tflops']['after'] > 0
  assert 0 < r['mfu'] < 1.5
  assert r['peak_memory_bytes'] > 0 and r['memory_analysis']['argument_size_in_bytes'] > 0
  s = r['sampling']
  assert (s['k'], s['steps']) == (10, 16) and s['s'] > 0 and r['skipped'] == []

  assert r['forbidden_modules_loaded'] == []
  imported = _imported(p.stderr)
  assert {'jax', 'flax', 'optax', 'egodex_jax'} <= imported  # the parse sees real imports
  assert not imported & set(FORBIDDEN), sorted(imported & set(FORBIDDEN))
