"""The command line: clear one-line errors, eval mode from a trained workdir, the outputs."""

import json
import os
import subprocess
import sys


from helpers import REPO, TINY_ARG, TINY_OVERRIDES



def _main(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'egodex_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def _assert_clean_failure(proc, *needles):
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr + proc.stdout, proc.stderr
  for n in needles:
    assert n in proc.stderr, proc.stderr


def test_missing_dataset_says_where_it_looked_and_the_two_ways_forward(tmp_path):
  missing = str(tmp_path / 'nowhere')
  proc = _main('--config=configs/bc_dec.py', f'--workdir={tmp_path / "wd"}',
               f'--config.data.data_dir={missing}')
  _assert_clean_failure(proc, missing, 'python -m tfds_builder.egodex', ':demo')
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_bad_config_path_and_bad_override_are_clear_errors(tmp_path):
  proc = _main('--config=configs/no_such_model.py', f'--workdir={tmp_path}')
  _assert_clean_failure(proc, 'no_such_model.py')
  proc = _main('--config=configs/fm_dec.py', f'--workdir={tmp_path}', '--config.train.no_field=3')
  _assert_clean_failure(proc, 'no_field')
  proc = _main('--config=configs/fm_dec.py:hh=3', f'--workdir={tmp_path}')
  _assert_clean_failure(proc, 'hh')


def test_eval_mode_without_checkpoint_is_a_clear_error(tiny_data, tmp_path):
  proc = _main('--config=configs/bc_encdec.py:' + TINY_ARG, f'--workdir={tmp_path}', '--mode=eval',
               f'--config.data.data_dir={tiny_data}', *TINY_OVERRIDES)
  _assert_clean_failure(proc, 'no checkpoint')


def test_train_then_eval_mode_writes_results(tiny_data, tmp_path):
  wd = str(tmp_path / 'wd')
  common = ['--config=configs/ddpm_dec.py:' + TINY_ARG, f'--workdir={wd}',
            f'--config.data.data_dir={tiny_data}', *TINY_OVERRIDES,
            '--config.train.num_steps=6']
  proc = _main(*common)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'steps/s' in proc.stdout and 'samples/s' in proc.stdout and 'ETA' in proc.stdout
  # Library INFO logs (absl format "I1203 ...", orbax's checkpoint manager) are off by default.
  info = [l for l in proc.stderr.splitlines() if l[:1] == 'I' and l[1:5].isdigit()]
  assert not info, info[:3]
  assert not os.path.exists(os.path.join(wd, 'eval_results.json'))  # final eval disabled here
  proc = _main(*common, '--mode=eval', '--config.eval.final_num_batches=1', '--verbosity=0')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'checkpoint_manager' in proc.stderr  # --verbosity brings them back
  assert 'step 6' in proc.stdout
  with open(os.path.join(wd, 'eval_results.json')) as f:
    results = json.load(f)
  for row in ('model', 'static'):
    assert set(results[row]) >= {'avg@1', 'avg@10', 'final@1', 'final@10'}
  assert os.path.exists(os.path.join(wd, 'eval_results.md'))
