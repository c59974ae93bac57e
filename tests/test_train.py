"""The training loop on a real (tiny, synthetic) ArrayRecord dataset with the real policy:
losses fall, NaN guard, resume after SIGTERM gives the same losses as an uninterrupted run."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from egodex_jax import checkpoint, metrics, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- shared helpers (test_main / test_multihost import these) ---------------------------

def build_tiny_dataset(root) -> str:
  """6 short synthetic episodes at 64x48, built at 16 px with 8 future frames (once per session)."""
  from egodex_jax.data import pipeline, synthetic
  from tfds_builder.egodex import __main__ as builder_cli
  data_dir, raw_dir = os.path.join(root, 'data'), os.path.join(root, 'raw')
  try:
    pipeline.load_metadata(data_dir)
    return data_dir
  except FileNotFoundError:
    pass
  synthetic.generate(raw_dir, 6, seed=0, width=64, height=48, min_frames=30, max_frames=40,
                     workers=1)
  assert builder_cli.main(['--raw_dir', raw_dir, '--data_dir', data_dir, '--image_size', '16',
                           '--max_horizon', '8', '--num_workers', '1']) == 0
  return data_dir


def load_config(name='fm_encdec', arg='demo'):
  spec = importlib.util.spec_from_file_location('cfg_' + name,
                                                os.path.join(REPO, 'configs', name + '.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


TINY_OVERRIDES = [
    '--config.data.synthetic=False', '--config.model.size=tiny', '--config.data.horizon=8',
    '--config.data.batch_size=8', '--config.train.log_every=1', '--config.train.save_every=4',
    '--config.train.eval_every=0', '--config.eval.final_num_batches=0',
    '--config.optim.warmup_steps=2', '--config.eval.batch_size=8']


def tiny_config(data_dir, **train_overrides):
  c = load_config()
  for flag in TINY_OVERRIDES:
    key, value = flag[len('--config.'):].split('=')
    section, field = key.split('.')
    old = c[section][field]
    c[section][field] = type(old)(value == 'True' if isinstance(old, bool) else value)
  c.data.data_dir = data_dir
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
  return build_tiny_dataset(str(tmp_path_factory.getbasetemp() / 'egodex_tiny'))


# --- tests ------------------------------------------------------------------------------

def test_schedule_warmup_then_cosine():
  c = load_config()
  c.optim.update(lr=1.0, warmup_steps=10, schedule='cosine', end_factor=0.1)
  s = train.make_schedule(c.optim, 110)
  assert float(s(0)) == 0.0 and abs(float(s(10)) - 1.0) < 1e-6
  assert abs(float(s(110)) - 0.1) < 1e-6 and float(s(60)) < 1.0


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tiny_data, tmp_path):
  c = tiny_config(tiny_data, num_steps=12, inject_nan_at_step=7)
  with pytest.raises(train.TrainingError, match='at step 7') as e:
    train.train(c, str(tmp_path))
  assert 'step 4' in str(e.value)
  manager = checkpoint.make_manager(str(tmp_path), save_every=4, keep=3)
  assert manager.latest_step() == 4  # nothing saved after the NaN
  assert all(np.isfinite(r['loss']) for r in metrics.read_metrics(str(tmp_path)))


def _run_cli(workdir, data_dir, num_steps, **popen):
  cmd = [sys.executable, '-m', 'egodex_jax.main', '--config=configs/fm_encdec.py:demo',
         f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
         f'--config.train.num_steps={num_steps}'] + TINY_OVERRIDES
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **popen)


def test_sigterm_saves_and_resume_matches_uninterrupted_run(tiny_data, tmp_path):
  num_steps = 80
  ref_dir, run_dir = str(tmp_path / 'ref'), str(tmp_path / 'run')
  train.train(tiny_config(tiny_data, num_steps=num_steps), ref_dir)
  ref = {r['step']: r['loss'] for r in metrics.read_metrics(ref_dir)}
  assert len(ref) == num_steps
  first, last = np.mean([ref[s] for s in range(1, 11)]), np.mean([ref[s] for s in range(71, 81)])
  assert last < 0.8 * first, (first, last)  # it learns

  proc = _run_cli(run_dir, tiny_data, num_steps)
  path = os.path.join(run_dir, 'metrics.jsonl')
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and len(metrics.read_metrics(run_dir)) >= 3:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.05)
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, out
  assert 'saving a checkpoint' in out, out
  stopped = checkpoint.make_manager(run_dir, save_every=4, keep=3).latest_step()
  assert stopped is not None and 3 <= stopped < num_steps, (stopped, out)

  proc = _run_cli(run_dir, tiny_data, num_steps)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  assert f'Resuming from' in out and f'at step {stopped}' in out, out
  records = metrics.read_metrics(run_dir)
  got = {r['step']: r['loss'] for r in records}
  assert [r['step'] for r in records] == list(range(1, num_steps + 1))  # one clean history
  assert got == ref  # exactly, step for step
  assert os.path.exists(os.path.join(run_dir, 'loss.png'))
  assert os.listdir(os.path.join(run_dir, 'tensorboard'))
  with open(os.path.join(run_dir, 'config.json')) as f:
    assert json.load(f)['model']['size'] == 'tiny'


def test_relative_actions_round_trip_and_need_delta_stats(tiny_data, tmp_path):
  import glob
  import shutil
  c = tiny_config(tiny_data)
  assert c.data.action_repr == 'relative'  # the default
  data = train.load_data(c)
  batch = next(train.make_train_iter(c, data, 8))
  out = train.normalize_batch(data.normalizer, batch)
  delta = batch['actions'] - batch['state'][:, None]
  offset, scale = data.normalizer._actions
  np.testing.assert_allclose(out['actions'], (delta - offset) * scale, rtol=1e-5, atol=1e-5)
  back = data.normalizer.denormalize_actions(out['actions'], state=batch['state'])
  np.testing.assert_allclose(back, batch['actions'], atol=1e-5)
  # A dataset built before the delta statistics existed: a one-line error asking to rebuild.
  old = str(tmp_path / 'old')
  shutil.copytree(tiny_data, old)
  (path,) = glob.glob(os.path.join(old, '**', 'norm_stats.json'), recursive=True)
  with open(path) as f:
    stats = json.load(f)
  del stats['delta']
  with open(path, 'w') as f:
    json.dump(stats, f)
  c.data.data_dir = old
  with pytest.raises(train.UserError, match='rebuild'):
    train.load_data(c)
