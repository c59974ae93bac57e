"""Sharding: the FSDP rule, and the same losses on every ('data', 'fsdp') mesh as on one device."""

import functools

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from egodex_jax import sharding, train
from egodex_jax.data import normalize
from egodex_jax.data import batch as batch_lib
from egodex_jax.models import config as config_lib
from egodex_jax.models import policy as policy_lib


def test_fsdp_rule_splits_largest_divisible_axis_of_big_arrays():
  assert sharding.fsdp_spec((256, 1024), 4, min_size=1000) == P(None, 'fsdp')
  assert sharding.fsdp_spec((1024, 6), 4, min_size=1000) == P('fsdp', None)
  assert sharding.fsdp_spec((1026, 6), 4, min_size=1000) == P()      # nothing divisible
  assert sharding.fsdp_spec((16, 16), 4, min_size=1000) == P()       # too small
  assert sharding.fsdp_spec((256, 1024), 1, min_size=1000) == P()    # no fsdp axis


def test_mesh_shapes_and_bad_fsdp():
  assert jax.device_count() == 8  # conftest forces 8 CPU devices
  mesh = sharding.make_mesh(2)
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2}
  with pytest.raises(ValueError, match='does not divide'):
    sharding.make_mesh(3)
  with pytest.raises(ValueError, match='not divisible'):
    sharding.check_batch_size(12, mesh)


def _optim():
  return ml_collections.ConfigDict(dict(
      lr=3e-3, schedule='cosine', warmup_steps=2, end_factor=0.1, b1=0.9, b2=0.999,
      weight_decay=1e-4, grad_clip=1.0))


def _losses(policy, batches, normalizer, fsdp, devices):
  mesh = sharding.make_mesh(fsdp, devices)
  optimizer, schedule = train.make_optimizer(_optim(), 10)
  example = jax.tree.map(lambda x: np.asarray(x)[:1], normalizer.normalize_obs(batches[0]))
  abstract, shardings = train.abstract_state(policy, optimizer, example, 0, mesh, min_shard_size=256)
  state = train.create_state(policy, optimizer, example, 0, shardings)
  step = train.jit_train_step(
      functools.partial(train.train_step, policy=policy, optimizer=optimizer, schedule=schedule,
                        normalizer=normalizer, ema_decay=0.9), mesh, shardings)
  losses = []
  for b in batches:
    state, m = step(state, sharding.global_batch(
        batch_lib.select(b, batch_lib.TRAIN_KEYS), mesh))
    losses.append(float(m['loss']))
  specs = {tuple(x.sharding.spec) for x in jax.tree.leaves(state.params)}
  return np.array(losses), specs, jax.device_get(state.ema_params)


def _tiny_batches(n, b=16, h=4, s=16, seed=0):
  """Pipeline-layout batches (canonical metres) with a learnable action: a function of the state."""
  r = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    state = r.normal(size=(b, 48)).astype(np.float32) * 0.1
    actions = state[:, None, :] + 0.01 * np.arange(1, h + 1, dtype=np.float32)[None, :, None]
    out.append(dict(image=r.integers(0, 255, (b, s, s, 3), dtype=np.uint8), state=state,
                    actions=actions.astype(np.float32), padding=np.zeros((b, h), bool),
                    instruction_id=r.integers(0, 2, b).astype(np.int32)))
  return out


def test_same_losses_on_every_mesh():
  batches = _tiny_batches(4)
  stats = {'state': normalize.compute_stats([b['state'] for b in batches]),
           'actions': normalize.compute_stats([b['actions'].reshape(-1, 48) for b in batches])}
  normalizer = normalize.Normalizer(stats, 'minmax')
  policy = policy_lib.make_policy(config_lib.model_config('tiny', backbone='encdec', head='fm'),
                                horizon=4, instructions=['pick up the cup', 'put it down'])
  tiny_batches = batches
  ref, ref_specs, ref_ema = _losses(policy, tiny_batches, normalizer, 1, jax.devices()[:1])
  assert np.all(np.isfinite(ref)) and ref[-1] < ref[0]
  assert all(not any(s) for s in ref_specs)
  for fsdp in (1, 2, 8):
    losses, specs, ema = _losses(policy, tiny_batches, normalizer, fsdp, jax.devices())
    np.testing.assert_allclose(losses, ref, rtol=2e-4, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5), ema, ref_ema)
    if fsdp > 1:  # big arrays really are split over 'fsdp'
      assert any('fsdp' in s for s in specs), specs
