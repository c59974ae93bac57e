"""Held-out tasks (the paper's OOD study): matching, nothing of them in training, the ID / OOD
sections of the evaluation, and a clear failure for a fragment that matches nothing."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from egodex_jax import train
from egodex_jax.data import holdout
from egodex_jax.data import normalize
from egodex_jax.data import pipeline
from helpers import REPO, TINY_ARG, TINY_OVERRIDES, tiny_config

# Real EgoDex task folders are snake_case-ish; a few of them, with the paper's six OOD tasks.
REAL_LIKE = ['assemble_jigsaw_puzzle', 'blowdry_hair', 'fold_towel', 'knit_scarf',
             'play_reversi', 'stamp_paper', 'stack_cups', 'tetra_board', 'Tie Shoelaces']


def test_fragments_match_ignoring_case_spaces_and_underscores():
  assert holdout.resolve('paper', REAL_LIKE) == [
      'assemble_jigsaw_puzzle', 'blowdry_hair', 'knit_scarf', 'play_reversi', 'stamp_paper',
      'tetra_board']
  assert holdout.resolve('Stamp Paper+tie_shoelaces', REAL_LIKE) == ['stamp_paper',
                                                                    'Tie Shoelaces']
  assert holdout.resolve(['STACK-CUPS', 'fold towel'], REAL_LIKE) == ['fold_towel', 'stack_cups']
  assert holdout.resolve('', REAL_LIKE) == [] and holdout.resolve((), REAL_LIKE) == []
  with pytest.raises(ValueError) as e:
    holdout.resolve('stamp_paper,juggle', REAL_LIKE)
  assert "'juggle' matches none of the dataset's 9 tasks" in str(e.value)
  assert '\n' not in str(e.value)


def _held_config(tiny_data, task):
  c = tiny_config(tiny_data, 'bc_dec')
  c.data.holdout_tasks = task.replace('_', ' ').upper()  # a fragment, not the folder name
  return c


def _a_task_in_both_splits(meta):
  train_tasks = {e['task'] for e in meta.episodes['train']}
  return next(e['task'] for e in meta.episodes['test'] if e['task'] in train_tasks)


def test_no_training_window_and_no_statistic_comes_from_a_held_out_task(tiny_data):
  full = pipeline.load_metadata(tiny_data)
  task = _a_task_in_both_splits(full)
  c = _held_config(tiny_data, task)
  meta = train.load_meta(c)
  assert meta.episodes['test'] == full.episodes['test']  # evaluated from the test split
  kept = [e for e in full.episodes['train'] if e['task'] != task]
  assert meta.episodes['train'] == kept and len(kept) < len(full.episodes['train'])

  # Every window of an epoch and more: none from the held-out task, nor with its instructions
  # (those no other training task shares).
  task_id = full.tasks.index(task)
  held_texts = ({e['instruction'] for e in full.episodes['train'] if e['task'] == task}
                - {e['instruction'] for e in kept})
  held_ids = {full.instructions.index(t) for t in held_texts}
  assert held_ids
  it = train.make_train_iter(c, meta, 8)
  seen = set()
  for _ in range(sum(e['num_frames'] for e in kept) // 8 + 2):
    b = next(it)
    assert task_id not in set(b['task_id'].tolist())
    assert not held_ids & set(b['instruction_id'].tolist())
    seen |= set(zip(b['episode_id'].tolist(), b['frame'].tolist()))
  assert len(seen) == sum(e['num_frames'] for e in kept)

  # The statistics (and the mean_traj baseline) of the other tasks' windows exactly.
  got = train.fit_normalizer(c, meta).stats
  source = pipeline.RecordSource(full, 'train')
  recs = [source[e['first_index'] + t] for e in kept for t in range(e['num_frames'])]
  want = normalize.horizon_stats(
      [(np.stack([r['window'] for r in recs]), np.array([r['num_future'] for r in recs]))],
      c.data.horizon)
  for key in ('state', 'actions', 'delta'):
    assert got[key]['count'] == want[key]['count']
    for stat in ('mean', 'std', 'p01', 'p99'):
      np.testing.assert_allclose(got[key][stat], want[key][stat], rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(got['mean_delta'], want['mean_delta'], rtol=1e-6, atol=1e-9)
  c.data.holdout_tasks = ''
  everything = train.fit_normalizer(c, full).stats
  assert everything['state']['count'] > got['state']['count']
  assert not np.allclose(everything['mean_delta'], got['mean_delta'])


class _ZeroPolicy:
  """Predicts zeros in the policy's space: no network to compile, real figures to pool."""
  is_deterministic = True

  def __init__(self, horizon):
    self.horizon = horizon

  def sample(self, params, obs, rng, num_samples):
    del params, rng
    return jnp.zeros((num_samples, obs['state'].shape[0], self.horizon, 48), jnp.float32)


def test_the_evaluation_reports_id_and_ood_side_by_side(tiny_data, tmp_path):
  full = pipeline.load_metadata(tiny_data)
  task = _a_task_in_both_splits(full)
  c = _held_config(tiny_data, task)
  meta = train.load_meta(c)
  normalizer = train.fit_normalizer(c, meta)
  evaluator = train.make_evaluator(c, _ZeroPolicy(c.data.horizon), normalizer)
  wd = str(tmp_path / 'wd')
  res = train.run_evaluation(c, meta, evaluator, None, normalizer, num_batches=-1, workdir=wd)
  assert np.isfinite(res['model']['avg@1'])
  with open(os.path.join(wd, 'eval_results.json')) as f:
    on_disk = json.load(f)
  ood, iid = on_disk['held_out'], on_disk['in_distribution']
  assert ood['tasks'] == [task] and task not in iid['tasks']
  assert set(ood['per_task']) == {task} and ood['per_task'][task]['held_out'] is True
  assert iid['per_task'] and not any(r['held_out'] for r in iid['per_task'].values())
  assert ood['num_samples'] > 0 and iid['num_samples'] > 0
  assert ood['num_samples'] + iid['num_samples'] == on_disk['num_samples']
  for sec in (ood, iid):   # each section's rows are its tasks' samples pooled
    n = sum(r['num_samples'] for r in sec['per_task'].values())
    assert sec['num_samples'] == n
    pooled = sum(r['model']['avg@1'] * r['num_samples'] for r in sec['per_task'].values()) / n
    assert sec['model']['avg@1'] == pytest.approx(pooled, rel=1e-6)
    assert set(sec) >= {'model', 'static', 'mean_traj', 'confident'}
  assert on_disk['confident']['num_samples'] > 0
  md = open(os.path.join(wd, 'eval_results.md')).read()
  assert 'In-distribution vs held-out tasks' in md and f'{task} (held out)' in md

  # A checkpoint is evaluated and resumed with the tasks it held out, never silently without.
  saved = train.dataset_signature(c, meta)
  assert saved['holdout_tasks'] == task
  c.data.holdout_tasks = ''
  with pytest.raises(train.UserError, match='holdout_tasks'):
    train.check_signature(saved, train.dataset_signature(c, full), wd)


def test_a_fragment_that_matches_nothing_fails_in_one_sentence(tiny_data, tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'egodex_jax.main', '--config=configs/bc_dec.py:' + TINY_ARG,
       f'--workdir={tmp_path / "wd"}', f'--config.data.data_dir={tiny_data}', *TINY_OVERRIDES,
       '--config.data.holdout_tasks=lift_cup,juggle_knives'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr + proc.stdout, proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "'juggle_knives' matches none of the dataset's" in proc.stderr
