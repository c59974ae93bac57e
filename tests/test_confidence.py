"""Tracking confidences: the future frames' confidences in batches, the loss mask of
data.min_confidence, the confident-only Best-of-K, and the synthetic bursts' corrupted poses."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from egodex_jax import evaluate
from egodex_jax import train
from egodex_jax import skeleton
from egodex_jax.data import batch as batch_lib
from egodex_jax.data import confidence as confidence_lib
from egodex_jax.data import normalize
from egodex_jax.data import pipeline
from egodex_jax.data.files import CONFIDENCE_FILE
from egodex_jax.models import heads


# --- the batch key -------------------------------------------------------------------------------

def test_batches_hold_the_confidences_of_frames_t_plus_1_to_h(tiny_data):
  meta = pipeline.load_metadata(tiny_data)
  h = 8
  path = os.path.join(meta.data_dir, CONFIDENCE_FILE.format(split='train'))
  assert os.path.getsize(path) == meta.num_records('train') * 12 * 4  # the builder wrote it
  batch = next(iter(pipeline.make_dataset(tiny_data, 'train', batch_size=16, horizon=h, seed=3,
                                          meta=meta, confidence=True)))
  assert batch['confidence'].shape == (16, h, 12) and batch['confidence'].dtype == np.float32
  source = pipeline.RecordSource(meta, 'train')
  first = {e['episode_id']: e['first_index'] for e in meta.episodes['train']}
  for b in range(16):
    i = first[int(batch['episode_id'][b])] + int(batch['frame'][b])
    for k in np.flatnonzero(~batch['padding'][b]):
      np.testing.assert_array_equal(batch['confidence'][b, k], source[i + 1 + k]['confidence'])
  plain = next(iter(pipeline.make_dataset(tiny_data, 'train', batch_size=16, horizon=h, seed=3,
                                          meta=meta)))
  assert 'confidence' not in plain


def test_a_build_without_the_table_reads_the_records_instead(tiny_data, tmp_path):
  meta = pipeline.load_metadata(tiny_data)
  copy = str(tmp_path / 'build')
  shutil.copytree(meta.data_dir, copy)
  for split in meta.splits:
    os.remove(os.path.join(copy, CONFIDENCE_FILE.format(split=split)))
  old = pipeline.load_metadata(copy)
  for split in meta.splits:
    from_file = confidence_lib.FutureConfidence(meta, split).table()
    from_records = confidence_lib.FutureConfidence(old, split).table()
    assert isinstance(from_file, np.memmap) and not isinstance(from_records, np.memmap)
    np.testing.assert_array_equal(from_records, from_file)
  assert (np.asarray(from_file) < 0.5).any()  # the synthetic bursts are in there


# --- the loss mask -------------------------------------------------------------------------------

def _known_batch(b=3, h=4):
  rng = np.random.default_rng(0)
  padding = np.zeros((b, h), bool)
  padding[2, 3] = True
  conf = np.full((b, h, 12), 0.9, np.float32)
  conf[0, 1, 0] = 0.2    # left wrist: its position and rotation, dims 0:9
  conf[1, 2, 7] = 0.49   # right thumb tip: dims 33:36
  conf[1, 0, 3] = 0.5    # exactly at the threshold: kept
  return dict(actions=rng.normal(size=(b, h, 48)).astype(np.float32), padding=padding,
              confidence=conf)


def test_the_mask_leaves_out_exactly_the_low_confidence_dims_and_padding():
  batch = _known_batch()
  mask = np.asarray(batch_lib.loss_padding(batch, 0.5))
  want = np.zeros((3, 4, 48), bool)
  want[0, 1, 0:9] = True
  want[1, 2, 33:36] = True
  want[2, 3, :] = True
  np.testing.assert_array_equal(mask, want)
  with pytest.raises(KeyError, match='confidence=True'):
    batch_lib.loss_padding({k: batch[k] for k in ('actions', 'padding')}, 0.5)


@pytest.mark.parametrize('head_name', ['bc', 'fm'])
def test_the_loss_ignores_masked_dims_only(head_name):
  batch = _known_batch()
  mask = batch_lib.loss_padding(batch, 0.5)
  head = heads.get(head_name).from_config(dict(heads.get(head_name).DEFAULTS))
  pred = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4, 48)), jnp.float32)
  predict = lambda x_t, t: pred if x_t is None else 0.5 * x_t + pred  # elementwise in x_t

  def loss(actions):
    return float(head.loss(predict, jnp.asarray(actions), mask, jax.random.key(0))[0])

  base = loss(batch['actions'])
  garbage = batch['actions'].copy()
  garbage[np.asarray(mask)] = 1e3   # every excluded element
  assert loss(garbage) == pytest.approx(base, rel=1e-6)
  kept = batch['actions'].copy()
  kept[1, 2, 0] += 1.0              # a frame with a masked keypoint, but this dim is kept
  assert loss(kept) != pytest.approx(base, rel=1e-4)
  if head_name == 'bc':             # the MSE over exactly the kept elements
    err = (np.asarray(pred) - batch['actions']) ** 2
    assert base == pytest.approx(err[~np.asarray(mask)].mean(), rel=1e-5)
    frames = float(head.loss(predict, jnp.asarray(batch['actions']),
                             jnp.asarray(batch['padding']), jax.random.key(0))[0])
    assert frames == pytest.approx(err[~batch['padding']].mean(), rel=1e-5)  # [B, H] as before


class _MeanPolicy:
  """A loss without a network: one learnt [48] vector against the batch's chunk."""

  def loss(self, params, batch, rng, train=True):
    del rng, train
    pred = jnp.broadcast_to(params['w'], batch['actions'].shape)
    loss = heads.base.masked_mse(pred, batch['actions'], batch['padding'])
    return loss, {}


def test_the_train_step_leaves_low_confidence_dims_out_of_the_loss(tiny_data):
  c = helpers.tiny_config(tiny_data, 'bc_dec')
  c.data.min_confidence = 0.5
  meta = train.load_meta(c)
  normalizer = train.fit_normalizer(c, meta)
  it = train.make_train_iter(c, meta, 8)
  batch = dict(next(it))
  batch['confidence'] = batch['confidence'].copy()
  batch['confidence'][0, 2, 3] = 0.1     # one fingertip at one frame
  batch['confidence'][1, :, 6] = 0.2     # the right wrist (position and rotation), every frame
  optimizer, schedule = train.make_optimizer(c.optim, 10)
  params = {'w': jnp.asarray(np.random.default_rng(0).normal(size=48), jnp.float32)}
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=optimizer.init(params), ema_params=params,
                           rng=jax.random.PRNGKey(0))

  def loss(min_confidence):
    step = functools.partial(train.train_step, policy=_MeanPolicy(), optimizer=optimizer,
                             schedule=schedule, normalizer=normalizer, ema_decay=0.9,
                             min_confidence=min_confidence)
    return float(step(state, batch)[1]['loss'])

  target = np.asarray(normalizer.normalize_batch(batch)['actions'])
  err = (np.asarray(params['w']) - target) ** 2                       # [B, H, 48]
  kept = ~np.asarray(batch_lib.loss_padding(batch, 0.5))
  assert 0 < (~kept & ~batch['padding'][..., None]).sum()            # something to leave out
  assert loss(0.5) == pytest.approx(err[kept].mean(), rel=1e-5)
  assert loss(0.0) == pytest.approx(err[~batch['padding']].mean(), rel=1e-5)


# --- the confident-only metric -------------------------------------------------------------------

def _numpy_confident(gt, padding, pred, weights, ks):
  """The confident-only Best-of-K by loops (the definition in docs/metric.md)."""
  sums, count = {f'{m}@{k}': 0.0 for m in ('avg', 'final') for k in ks}, 0
  for b in range(gt.shape[0]):
    w = weights[b]
    if padding[b].any() or not w[-1].any():
      continue
    count += 1
    avgs, finals = [], []
    for i in range(pred.shape[0]):
      d = np.linalg.norm(skeleton.keypoints(pred[i, b]) - skeleton.keypoints(gt[b]), axis=-1)
      avgs.append(d[w].mean())
      finals.append(d[-1][w[-1]].mean())
    for k in ks:
      sums[f'avg@{k}'] += min(avgs[:k])
      sums[f'final@{k}'] += min(finals[:k])
  return {key: v / count for key, v in sums.items()}


def _case(seed=0, n=4, b=6, t=5):
  rng = np.random.default_rng(seed)
  gt = rng.normal(size=(b, t, 48)).astype(np.float32)
  pred = (gt[None] + rng.normal(size=(n, b, t, 48)) * 0.3).astype(np.float32)
  padding = np.zeros((b, t), bool)
  padding[-1, 2] = True  # the last sample is never scored
  conf = rng.uniform(0.6, 1.0, size=(b, t, 12)).astype(np.float32)
  return gt, padding, pred, conf


def test_confident_metric_equals_the_standard_one_when_all_confident():
  gt, padding, pred, conf = _case()
  ks = (1, 2, 4)
  standard = evaluate.best_of_k(gt, padding, pred, ks=ks)
  confident = evaluate.best_of_k(gt, padding, pred, ks=ks, keypoint_weights=conf >= 0.5)
  assert confident == pytest.approx(standard, rel=1e-5)


def test_confident_metric_scores_only_confident_keypoints():
  gt, padding, pred, conf = _case(seed=1)
  conf[0, 1:3, :6] = 0.1        # half of sample 0's keypoints for two frames
  conf[1, -1, :] = 0.2          # no confident keypoint at sample 1's last frame: not scored
  conf[2, :, 4] = 0.3           # one keypoint of sample 2, every frame
  ks = (1, 2, 4)
  w = conf >= 0.5
  confident = evaluate.best_of_k(gt, padding, pred, ks=ks, keypoint_weights=w)
  assert confident == pytest.approx(_numpy_confident(gt, padding, pred, w, ks), rel=1e-5)
  standard = evaluate.best_of_k(gt, padding, pred, ks=ks)
  assert confident['avg@1'] != pytest.approx(standard['avg@1'], rel=1e-3)


class _StatePolicy:
  """Predicts its normalised state held for H frames, times `params` (a deterministic policy)."""
  is_deterministic = True

  def __init__(self, horizon):
    self.horizon = horizon

  def sample(self, params, obs, rng, num_samples):
    del rng
    state = obs['state'] * params
    return jnp.broadcast_to(state[None, :, None], (num_samples, state.shape[0], self.horizon, 48))


def test_evaluator_reports_the_confident_figures_beside_the_standard_ones(tmp_path):
  gt, padding, _, conf = _case(seed=2, b=5)
  gt, padding, conf = gt[:4], padding[:4], conf[:4]  # the unpadded samples
  rng = np.random.default_rng(2)
  state = rng.normal(size=(4, 48)).astype(np.float32)
  batch = dict(image=np.zeros((4, 8, 8, 3), np.uint8), state=state, actions=gt, padding=padding,
               instruction_id=np.zeros(4, np.int32), task_id=np.array([0, 1, 0, 1], np.int32),
               confidence=conf)
  stats = normalize.compute_stats([state])
  normalizer = normalize.Normalizer({'actions': stats, 'state': stats}, 'minmax')
  evaluator = evaluate.Evaluator(_StatePolicy(gt.shape[1]), normalizer, ks=(1,),
                                 min_confidence=0.5)
  high = evaluator(1.0, [batch], rng=jax.random.key(0), tasks=['a', 'b'])
  assert high['confident']['num_samples'] == high['num_samples'] == 4
  assert high['confident']['model'] == pytest.approx(high['model'], rel=1e-5)
  assert high['per_task']['a']['confident']['model'] == pytest.approx(
      high['per_task']['a']['model'], rel=1e-5)

  low = dict(batch, confidence=conf.copy())
  low['confidence'][:, :, 6:] = 0.1   # the right hand: tracked badly everywhere
  res = evaluator(1.0, [low], rng=jax.random.key(0), tasks=['a', 'b'], workdir=str(tmp_path))
  assert res['model'] == high['model']  # the standard figure does not move
  static = np.broadcast_to(state[None, :, None], (1,) + gt.shape)
  want = _numpy_confident(gt, padding, static, low['confidence'] >= 0.5, (1,))
  assert res['confident']['static'] == pytest.approx(want, rel=1e-5)
  assert res['confident']['model'] == pytest.approx(want, rel=1e-5)  # the model is the state
  assert res['confident']['model']['avg@1'] != pytest.approx(res['model']['avg@1'], rel=1e-3)
  on_disk = json.loads((tmp_path / 'eval_results.json').read_text())
  assert on_disk['confident']['min_confidence'] == 0.5
  assert 'Confident ground truth only' in (tmp_path / 'eval_results.md').read_text()

  off = evaluate.Evaluator(_StatePolicy(gt.shape[1]), normalizer, ks=(1,))
  assert 'confident' not in off(1.0, [low], rng=jax.random.key(0))


# --- the synthetic bursts ------------------------------------------------------------------------

def test_synthetic_bursts_corrupt_the_recorded_pose(monkeypatch):
  from egodex_jax.data import synthetic
  from egodex_jax.data.synthetic import tasks
  seen = 0
  for seed in range(8):
    sim = synthetic.simulate('lift_cup', synthetic.episode_rng(seed, 0), 60)
    monkeypatch.setattr(tasks, 'BURST_OFFSET', 0.0)
    monkeypatch.setattr(tasks, 'BURST_JITTER', 0.0)
    clean = synthetic.simulate('lift_cup', synthetic.episode_rng(seed, 0), 60)
    monkeypatch.undo()
    for side in skeleton.SIDES:
      low = sim['confidences'][skeleton.wrist(side)] < 0.5                  # [N]
      for j in skeleton.JOINTS:
        shift = np.linalg.norm(sim['scene'][j][:, :3, 3] - clean['scene'][j][:, :3, 3], axis=-1)
        if j in skeleton.hand_joints(side):
          assert (shift[low] > 0.02).all() and (shift[~low] == 0).all(), (seed, j)
        elif j not in skeleton.HAND_JOINTS:
          assert (shift == 0).all(), (seed, j)   # the rest of the episode is the same draws
      seen += int(low.any())
    for j in skeleton.JOINTS:  # the confidences themselves do not depend on the corruption
      np.testing.assert_array_equal(sim['confidences'][j], clean['confidences'][j])
  assert 0 < seen < 8
