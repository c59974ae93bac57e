"""The oracle rows (evaluate/oracle.py) and the counterfactual re-simulation they rest on."""

import itertools
import math
import os
import shutil

import h5py
import numpy as np
import pytest

from egodex_jax import skeleton
from egodex_jax.data import egodex
from egodex_jax.data import pipeline
from egodex_jax.data import synthetic
from egodex_jax.evaluate import metric
from egodex_jax.evaluate import oracle

HORIZON = 8
SOURCE = dict(seed=0, min_frames=30, max_frames=40)  # as helpers.build_synthetic_dataset


def _raw(data_dir):
  return os.path.join(os.path.dirname(data_dir), 'raw')


def _episodes(data_dir):
  """[(split, table row, hdf5 path)] of every built episode."""
  meta = pipeline.load_metadata(data_dir)
  return [(s, e, os.path.join(_raw(data_dir), e['path'])) for s in meta.splits
          for e in meta.episodes[s]]


def test_fixture_covers_both_multimodal_tasks(tiny_data):
  tasks = {e['task'] for _, e, _ in _episodes(tiny_data)}
  assert set(synthetic.MULTIMODAL_TASKS) <= tasks and tasks - set(synthetic.MULTIMODAL_TASKS)


@pytest.mark.parametrize('task', list(synthetic.TASKS))
def test_forced_mode_consumes_the_same_draws(task):
  free = synthetic.episode_rng(3, 1)
  sim = synthetic.simulate(task, free, 40)
  modes = (0, 1) if task in synthetic.MULTIMODAL_TASKS else (-1,)
  for m in modes:
    rng = synthetic.episode_rng(3, 1)
    forced = synthetic.simulate(task, rng, 40, mode=m)
    assert rng.bit_generator.state == free.bit_generator.state  # later draws do not shift
    assert forced['plan'].mode == m
    same = m == sim['plan'].mode or m == -1
    assert all(np.array_equal(forced['scene'][j], sim['scene'][j]) for j in sim['scene']) == same
  with pytest.raises(ValueError, match='mode'):
    synthetic.simulate(task, synthetic.episode_rng(3, 1), 40, mode=-1 if len(modes) == 2 else 0)


def test_resimulation_reproduces_the_written_transforms(tiny_data):
  for _, e, path in _episodes(tiny_data):
    poses = synthetic.counterfactual_poses(path)
    assert len(poses) == (2 if e['task'] in synthetic.MULTIMODAL_TASKS else 1)
    written = egodex.load_episode(path, check_video=False).transforms
    own = poses[max(e['mode'], 0)]
    assert set(own) == set(written)
    for name, T in written.items():
      assert own[name].dtype == np.float32 and np.array_equal(own[name], T), name


def test_true_mode_future_is_the_stored_ground_truth(tiny_data):
  meta = pipeline.load_metadata(tiny_data)
  for split, e, path in _episodes(tiny_data):
    windows, valid = oracle.mode_futures(path, e['mode'], meta.max_horizon)
    true = max(e['mode'], 0)
    assert valid[true].all()
    recs = pipeline.RecordSource(meta, split).get_many(
        list(range(e['first_index'], e['first_index'] + e['num_frames'])))
    assert np.array_equal(windows[true], np.stack([r['window'] for r in recs]))


def test_counterfactual_forks_then_differs(tiny_data):
  meta = pipeline.load_metadata(tiny_data)
  for _, e, path in _episodes(tiny_data):
    if e['task'] not in synthetic.MULTIMODAL_TASKS:
      continue
    windows, valid = oracle.mode_futures(path, e['mode'], meta.max_horizon)
    true, other = e['mode'], 1 - e['mode']
    assert valid[other, 0] and not valid[other, -1]  # possible at the start, not at the end
    fork = int(np.argmin(valid[other]))  # the first frame where the other outcome is ruled out
    assert not valid[other, fork:].any()  # once ruled out, never possible again
    kp = skeleton.keypoints(windows[:, :, 1:])  # [2, N, M, 12, 3]
    gap = np.linalg.norm(kp[other] - kp[true], axis=-1).max(axis=(-1, -2))  # [N]
    assert gap[fork - 1] > 0.01  # the future a frame before the fork already tells them apart
    # The right wrist ends where each mode's target is: far apart.
    end = np.linalg.norm(windows[other, -1, 0, 24:27] - windows[true, -1, 0, 24:27])
    assert end > 0.1


def _evaluator_static(data_dir, split, ks):
  """The static baseline as the evaluator scores it: make_dataset's batches, metric.minima."""
  acc = metric.BestOfKAccumulator(ks)
  ds = pipeline.make_dataset(data_dir, split, batch_size=16, horizon=HORIZON, shuffle=False,
                             num_epochs=1, drop_remainder=False, max_samples=50)
  for batch in ds:
    static = np.broadcast_to(batch['state'][None, :, None], (1,) + batch['actions'].shape)
    acc.update(*(np.asarray(x) for x in metric.minima(batch['actions'], batch['padding'], static,
                                                      ks)), task_id=batch['task_id'])
  return acc


def test_oracle_rows(tiny_data):
  meta = pipeline.load_metadata(tiny_data)
  ks = (1, 2, 5, 10)
  forked = 0
  for split in meta.splits:
    r = oracle.oracle_results(tiny_data, _raw(tiny_data), split, horizon=HORIZON, ks=ks,
                              max_samples=50)
    forked += r['num_forked']
    # The same samples and figures as the evaluator's static row.
    acc = _evaluator_static(tiny_data, split, ks)
    assert r['num_samples'] == acc.count > 0
    for key, value in acc.result().items():
      assert r['static'][key] == pytest.approx(value, rel=1e-5)
    assert sum(v['num_samples'] for v in r['per_task'].values()) == r['num_samples']
    for task, rows in r['per_task'].items():
      single, sampler, static = rows['oracle_single'], rows['oracle_sampler'], rows['static']
      for key in single:
        assert single[key] <= static[key], (task, key)
      if task not in synthetic.MULTIMODAL_TASKS:
        assert all(v == 0.0 for row in (single, sampler) for v in row.values()), task
        continue
      # Two valid futures at distances 0 (the true one) and d: the median is d / 2 away, the
      # sampler's K draws miss the true one with probability 2^-K.
      for k in ks:
        for what in ('avg', 'final'):
          assert single[f'{what}@{k}'] == single[f'{what}@1']
          assert sampler[f'{what}@{k}'] == pytest.approx(single[f'{what}@1'] / 2**(k - 1),
                                                         rel=1e-6, abs=1e-9)
  assert forked > 0


def test_expected_min_closed_form():
  rng = np.random.default_rng(0)
  dist = rng.uniform(0, 1, (3, 5))
  valid = np.array([[True] * 5, [True, True, False, True, False], [True, False, False, True,
                                                                    True]])
  ks = (1, 2, 3, 4)
  got = oracle.expected_min(dist, valid, ks)
  for b in range(5):
    rows = dist[valid[:, b], b]
    for i, k in enumerate(ks):
      draws = list(itertools.product(rows, repeat=k))  # every sequence equally likely
      assert got[b, i] == pytest.approx(np.mean([min(d) for d in draws]), rel=1e-12)
  two = oracle.expected_min(np.array([[0.0], [0.3]]), np.ones((2, 1), bool), ks)
  np.testing.assert_allclose(two[0], [0.3 / 2**k for k in ks])


def test_errors(tiny_data, tmp_path):
  path = _episodes(tiny_data)[0][2]
  copy = str(tmp_path / 'old.hdf5')
  shutil.copy(path, copy)
  with h5py.File(copy, 'a') as f:
    del f.attrs['synthetic_source']  # as files written before it was recorded
  with pytest.raises(ValueError, match='no recorded seed|not a synthetic episode'):
    synthetic.counterfactual_poses(copy)
  # The generator's arguments given instead: checked against the file, never trusted.
  assert len(synthetic.counterfactual_poses(copy, source=SOURCE)) >= 1
  with pytest.raises(ValueError, match='does not reproduce'):
    synthetic.counterfactual_poses(copy, source=dict(SOURCE, seed=1))
  with pytest.raises(ValueError, match='raw episode missing'):
    oracle.oracle_results(tiny_data, str(tmp_path / 'nowhere'), 'train', horizon=HORIZON)


def test_gap_closed():
  assert oracle.gap_closed(0.10, 0.05, 0.0) == pytest.approx(0.5)
  assert oracle.gap_closed(0.10, 0.02, 0.02) == pytest.approx(1.0)
  assert oracle.gap_closed(0.10, 0.12, 0.02) == pytest.approx(-0.25)
  assert math.isnan(oracle.gap_closed(0.05, 0.04, 0.05))
