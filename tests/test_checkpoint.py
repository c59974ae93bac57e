"""Checkpoints: real orbax save/restore of a sharded TrainState and a real Grain iterator."""

import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from egodex_jax import checkpoint, sharding, train


def _state(mesh, seed=0):
  params = {'w': jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32) + seed, 'b': jnp.ones(3)}
  opt = optax.adamw(1e-3)
  state = train.TrainState(step=jnp.asarray(7, jnp.int32), params=params,
                           opt_state=opt.init(params), ema_params=jax.tree.map(jnp.copy, params),
                           rng=jax.random.PRNGKey(seed))
  shardings = sharding.tree_shardings(mesh, state, min_size=256)
  return jax.device_put(state, shardings), shardings


def _iterator():
  return iter(grain.MapDataset.range(100).seed(3).shuffle().batch(4).to_iter_dataset())


def test_save_restore_state_iterator_config_and_keep(tmp_path):
  mesh = sharding.make_mesh(2)
  state, shardings = _state(mesh)
  it = _iterator()
  for _ in range(3):
    next(it)
  manager = checkpoint.make_manager(str(tmp_path), save_every=2, keep=2)
  stats = {'actions': {'p01': [0.0] * 48}}
  for step in (2, 3, 4, 6):
    checkpoint.save(manager, step, state, data_iter=it, config_json=json.dumps({'seed': step}),
                    normalizer=stats)
  manager.wait_until_finished()
  assert manager.all_steps() == [4, 6]  # step 3 is off-interval, keep=2 drops 2
  expected_next = next(it)

  # A fresh process's view: new manager, new iterator, abstract state with shardings.
  manager = checkpoint.make_manager(str(tmp_path), save_every=2, keep=2)
  fresh_it = _iterator()
  other, _ = _state(mesh, seed=5)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          other, shardings)
  restored, step = checkpoint.restore(manager, abstract, data_iter=fresh_it)
  assert step == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
  assert restored.params['w'].sharding.spec == state.params['w'].sharding.spec
  assert 'fsdp' in tuple(restored.params['w'].sharding.spec)
  np.testing.assert_array_equal(next(fresh_it), expected_next)  # the data resumes where it was
  assert checkpoint.restore_json(manager, 'config') == {'seed': 6}
  assert checkpoint.restore_json(manager, 'normalizer') == stats


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
  manager = checkpoint.make_manager(str(tmp_path), save_every=1, keep=1)
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    checkpoint.restore(manager, {})
