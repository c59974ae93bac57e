"""The training loop on a real (tiny, synthetic) ArrayRecord dataset with the real policy:
losses fall, NaN guard, resume after SIGTERM gives the same losses as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egodex_jax import checkpoint, metrics, train
from helpers import REPO, TINY_ARG, TINY_OVERRIDES, load_config, tiny_config


# --- tests ------------------------------------------------------------------------------

def test_schedule_warmup_then_cosine():
  c = load_config()
  c.optim.update(lr=1.0, warmup_steps=10, schedule='cosine', end_factor=0.1)
  s = train.make_schedule(c.optim, 110)
  assert float(s(0)) == 0.0 and abs(float(s(10)) - 1.0) < 1e-6
  assert abs(float(s(110)) - 0.1) < 1e-6 and float(s(60)) < 1.0


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tiny_data, tmp_path,
                                                                       monkeypatch):
  real_step = train.train_step

  def nan_at_step_7(state, batch, **kw):  # the loss and the parameters of step 7 turn NaN
    new, m = real_step(state, batch, **kw)
    poison = jnp.where(state.step + 1 == 7, jnp.nan, 1.0)
    new = new.replace(params=jax.tree.map(lambda p: p * poison, new.params))
    return new, dict(m, loss=m['loss'] * poison)

  monkeypatch.setattr(train, 'train_step', nan_at_step_7)
  c = tiny_config(tiny_data, num_steps=12)
  with pytest.raises(train.TrainingError, match='at step 7') as e:
    train.train(c, str(tmp_path))
  assert 'step 4' in str(e.value)
  manager = checkpoint.make_manager(str(tmp_path), save_every=4, keep=3)
  assert manager.latest_step() == 4  # nothing saved after the NaN
  assert all(np.isfinite(r['loss']) for r in metrics.read_metrics(str(tmp_path)))


def _run_cli(workdir, data_dir, num_steps, **popen):
  cmd = [sys.executable, '-m', 'egodex_jax.main', '--config=configs/fm_encdec.py:' + TINY_ARG,
         f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
         f'--config.train.num_steps={num_steps}'] + TINY_OVERRIDES
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **popen)


def test_sigterm_saves_and_resume_matches_uninterrupted_run(tiny_data, tmp_path):
  num_steps = 32  # 8 checkpoints a run: saving, not stepping, is most of this test's time
  ref_dir, run_dir = str(tmp_path / 'ref'), str(tmp_path / 'run')
  train.train(tiny_config(tiny_data, num_steps=num_steps), ref_dir)
  ref = {r['step']: r['loss'] for r in metrics.read_metrics(ref_dir)}
  assert len(ref) == num_steps
  first, last = np.mean([ref[s] for s in range(1, 9)]), np.mean([ref[s] for s in range(25, 33)])
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
  assert 'Resuming from' in out and f'at step {stopped}' in out, out
  records = metrics.read_metrics(run_dir)
  got = {r['step']: r['loss'] for r in records}
  assert [r['step'] for r in records] == list(range(1, num_steps + 1))  # one clean history
  assert got == ref  # exactly, step for step
  assert os.path.exists(os.path.join(run_dir, 'loss.png'))
  assert os.listdir(os.path.join(run_dir, 'tensorboard'))
  with open(os.path.join(run_dir, 'config.json')) as f:
    assert json.load(f)['model']['emb_dim'] == 32  # the tiny preset's


def test_relative_actions_round_trip(tiny_data):
  c = tiny_config(tiny_data)
  assert c.data.action_repr == 'relative'  # the default
  meta = train.load_meta(c)
  normalizer = train.fit_normalizer(c, meta)
  batch = next(train.make_train_iter(c, meta, 8))
  out = normalizer.normalize_batch(batch)
  delta = batch['actions'] - batch['state'][:, None]
  offset, scale = normalizer._actions
  np.testing.assert_allclose(out['actions'], (delta - offset) * scale, rtol=1e-5, atol=1e-5)
  back = normalizer.denormalize_samples(out['actions'][None], batch['state'])[0]
  np.testing.assert_allclose(back, batch['actions'], atol=1e-5)


def test_statistics_come_from_the_trained_horizon_and_episodes(tiny_data):
  from egodex_jax.data import normalize, pipeline
  c = tiny_config(tiny_data)
  meta = train.load_meta(c)
  # Rows 1..H only: the normalised targets of the trained horizon fill [-1, 1] (min-max over the
  # 1st..99th percentiles), whatever the longest horizon the dataset stores.
  for h in (2, 8):
    c.data.horizon = h
    normalizer = train.fit_normalizer(c, meta)
    assert normalizer.stats['horizon'] == h and np.shape(normalizer.stats['mean_delta']) == (h, 48)
    x = np.concatenate([normalizer.normalize_batch(b)['actions'][~b['padding']]
                        for b in _batches(c, meta, 4)])
    moving = np.ptp(x, axis=0) > 0.5  # the dims that move at all
    lo, hi = np.percentile(x[:, moving], [1, 99], axis=0)
    assert np.median(hi - lo) > 1.5, (h, np.median(hi - lo))
  # data_fraction: the statistics (and the mean trajectory) of exactly the episodes trained on.
  c.data.data_fraction = 0.5
  half = train.fit_normalizer(c, meta).stats
  chosen = pipeline.select_episodes(meta.episodes['train'], 0.5)
  assert 0 < len(chosen) < len(meta.episodes['train'])
  n = sum(e['num_frames'] for e in chosen)
  assert half['state']['count'] == n
  full = normalize.horizon_stats(pipeline.read_windows(meta, 'train'), c.data.horizon)
  assert full['state']['count'] == meta.num_records('train') > n


def _batches(c, meta, n):
  it = iter(pipeline_dataset(c, meta))
  return [next(it) for _ in range(n)]


def pipeline_dataset(c, meta):
  from egodex_jax.data import pipeline
  return pipeline.make_dataset(meta.data_dir, 'train', batch_size=8, horizon=c.data.horizon,
                               meta=meta, seed=1)


def test_checkpoint_normalizer_is_used_and_a_mismatch_is_refused(tiny_data, tmp_path):
  c = tiny_config(tiny_data, num_steps=2)
  c.data.action_repr = 'absolute'
  c.eval.final_num_batches = 1
  wd = str(tmp_path / 'wd')
  trained = train.train(c, wd)
  c.eval.final_num_batches = 1
  again = train.evaluate_checkpoint(c, wd)  # the same normaliser as training: the same figures
  assert again['model'] == trained['model']
  c.data.action_repr = 'relative'  # today's command line differs from the run's
  with pytest.raises(train.UserError, match='action_repr=.absolute.'):
    train.evaluate_checkpoint(c, wd)
  with pytest.raises(train.UserError, match='action_repr'):
    train.train(c, wd)  # nor resumed silently under another representation


def test_parameter_init_key_is_never_a_step_key():
  seen = {}

  class RecordingPolicy:  # only what init_state touches
    def init(self, rng, obs):
      seen['init'] = np.asarray(jax.random.key_data(rng) if jnp.issubdtype(
          rng.dtype, jax.dtypes.prng_key) else rng)
      return {'w': jnp.zeros(3)}

  optimizer, _ = train.make_optimizer(load_config().optim, 10)
  state = train.init_state(RecordingPolicy(), optimizer, {}, seed=0)
  step_keys = {tuple(np.asarray(jax.random.fold_in(state.rng, s)).tolist()) for s in range(1000)}
  assert tuple(seen['init'].tolist()) not in step_keys
