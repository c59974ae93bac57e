"""Two real JAX processes on localhost (CPU, gloo), two devices each: one global batch, the same
steps and losses in both, one checkpoint holding both processes' data-iterator states."""

import os
import socket
import subprocess
import sys


from egodex_jax import metrics
from helpers import REPO, TINY_ARG, TINY_OVERRIDES



def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_in_lockstep_and_write_one_checkpoint(tiny_data, tmp_path):
  wd, port, steps = str(tmp_path / 'wd'), _free_port(), 6
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'egodex_jax.main', '--config=configs/bc_encdec.py:' + TINY_ARG,
       f'--workdir={wd}', f'--config.data.data_dir={tiny_data}', *TINY_OVERRIDES,
       f'--config.train.num_steps={steps}', '--config.train.log_all_processes=True',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "'data': 4" in outs[0] and "'fsdp': 1" in outs[0]  # 4 global devices
  main = metrics.read_metrics(wd)
  other = metrics.read_metrics_file(os.path.join(wd, 'metrics.process1.jsonl'))
  assert [r['step'] for r in main] == list(range(1, steps + 1))
  assert [r['loss'] for r in main] == [r['loss'] for r in other]
  ckpts = os.path.join(wd, 'checkpoints')
  assert sorted(os.listdir(ckpts)) == ['4', '6']
  # one iterator-state file per process (orbax may add its own commit marker beside them)
  assert sorted(f for f in os.listdir(os.path.join(ckpts, '6', 'data')) if f.endswith('.json')) == [
      'process_0-of-2.json', 'process_1-of-2.json']
