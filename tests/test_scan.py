"""Scanned layers (model.scan_layers): the same numerics as unrolled, the layer axis never split by
FSDP, and checkpoints saved before the field restore in their own (unrolled) layout."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from egodex_jax import checkpoint, inference, sharding, train
from egodex_jax.data import batch as batch_lib
from egodex_jax.data import normalize
from egodex_jax.models import config as config_lib
from egodex_jax.models import policy as policy_lib
from egodex_jax.models import transformer
from egodex_jax.models.network import PolicyNet
from helpers import tiny_config

H, B, S = 4, 2, 16
INSTRUCTIONS = ["pick up the cup", "open the drawer"]


def _policy(backbone, scan, head="fm"):
  # Two layers per stack (one would not test the stacking order); the smallest image encoder.
  cfg = ml_collections.ConfigDict(dict(
      size="tiny", backbone=backbone, head=head, scan_layers=scan, num_layers=3, enc_layers=2,
      dec_layers=2, image=dict(stage_sizes=(1,), width=8), state=dict(num_layers=1)))
  return policy_lib.make_policy(cfg, horizon=H, instructions=INSTRUCTIONS)


def _batch():
  rng = np.random.default_rng(0)
  batch = batch_lib.dummy_batch(batch_size=B, horizon=H, image_size=S)
  batch["image"] = rng.integers(0, 256, batch["image"].shape).astype(np.uint8)
  batch["state"] = rng.normal(size=batch["state"].shape).astype(np.float32)
  batch["actions"] = rng.normal(size=batch["actions"].shape).astype(np.float32)
  batch["instruction_id"] = np.array([0, 1], np.int32)
  return batch


@pytest.mark.parametrize("backbone", ["dec", "encdec"])
def test_scanned_equals_unrolled_forward_loss_and_cached_sampling(backbone):
  unrolled, scanned = _policy(backbone, False), _policy(backbone, True)
  batch = _batch()
  params = unrolled.init(jax.random.PRNGKey(0), batch)
  stacked = transformer.stack_layers(params)
  # The converted tree is exactly the scanned model's own layout (names and [L, ...] shapes).
  own = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), batch)
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(lambda s: s.shape, own)
  names = {"dec": ["blocks"], "encdec": ["enc_blocks", "dec_blocks"]}[backbone]
  assert all(n in stacked["backbone"] for n in names)
  assert not any(k.startswith(("block_", "enc_block_", "dec_block_")) for k in stacked["backbone"])
  jax.tree.map(np.testing.assert_array_equal, transformer.unstack_layers(stacked), params)

  x_t = jax.random.normal(jax.random.PRNGKey(3), (B, H, 48))
  t = jnp.full((B,), 0.3)

  @jax.jit
  def run(p_unrolled, p_scanned):
    out = {}
    for name, pol, p in (("u", unrolled, p_unrolled), ("s", scanned, p_scanned)):
      inputs = pol.inputs(batch)
      out[name + "_full"] = pol.net.apply({"params": p}, inputs, x_t, t, method=PolicyNet.full)
      out[name + "_loss"] = pol.loss(p, batch, jax.random.PRNGKey(1), train=True)[0]
    # The cached path of the scanned model: memory [B, L, ...] (stacked caches), one decode;
    # and K = 2 samples end to end (K folded into the batch: memory leaves stay batch-leading).
    memory = scanned.encode(p_scanned, batch)
    out["s_cached"] = scanned.predict(p_scanned, memory, x_t, t)
    out["s_sample"] = scanned.sample(p_scanned, batch, jax.random.PRNGKey(2), 2)
    out["s_naive"] = scanned.sample_naive(p_scanned, batch, jax.random.PRNGKey(2), 2)
    return out

  out = jax.device_get(run(params, stacked))
  tol = dict(rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["s_full"], out["u_full"], **tol)
  np.testing.assert_allclose(out["s_loss"], out["u_loss"], **tol)
  np.testing.assert_allclose(out["s_cached"], out["s_full"], **tol)  # decode(encode) == full
  assert out["s_sample"].shape == (2, B, H, 48)
  np.testing.assert_allclose(out["s_sample"], out["s_naive"], **tol)


def test_fsdp_never_splits_the_layer_axis():
  # Unstacked, the rule would split axis 0 (32, the largest divisible by 8): stacked, never.
  assert sharding.fsdp_spec((32, 16, 6), 8, min_size=10) == P('fsdp', None, None)
  assert sharding.fsdp_spec((32, 16, 6), 8, min_size=10, stacked=True) == P(None, 'fsdp', None)
  assert sharding.fsdp_spec((8, 256, 1024), 8, min_size=10, stacked=True) == P(None, None, 'fsdp')
  # min_size counts one layer, as when unrolled.
  assert sharding.fsdp_spec((64, 16, 16), 8, min_size=1000, stacked=True) == P()
  mesh = sharding.make_mesh(8)
  shapes = {name: policy_lib.param_shapes(
      config_lib.model_config("tiny", backbone="encdec", scan_layers=scan), horizon=H,
      image_size=S) for name, scan in (("u", False), ("s", True))}
  got = {n: sharding.tree_shardings(mesh, s, min_size=256) for n, s in shapes.items()}
  stacked = got["s"]["backbone"]["dec_blocks"]
  specs = [tuple(x.spec) for x in jax.tree.leaves(stacked)]
  assert specs and all(not s or s[0] is None for s in specs)
  assert any('fsdp' in s for s in specs)
  # Each layer is sharded as its unrolled block is (the optimizer state follows the same paths).
  layer = jax.tree.map(lambda x: tuple(x.spec)[1:], stacked)
  unrolled = jax.tree.map(lambda x: tuple(x.spec), got["u"]["backbone"]["dec_block_0"])
  assert layer == unrolled
  state = {"mu": shapes["s"], "count": jnp.zeros(())}
  mu = sharding.tree_shardings(mesh, state, min_size=256)["mu"]["backbone"]["dec_blocks"]
  assert jax.tree.map(lambda x: x.spec, mu) == jax.tree.map(lambda x: x.spec, stacked)


def test_checkpoint_saved_without_scan_layers_restores_unrolled(tmp_path):
  """A checkpoint of an older version (saved config without model.scan_layers, unrolled params)
  restores for inference, evaluation and resumption even when today's config says
  scan_layers=True: the layout is the checkpoint's."""
  config = tiny_config(str(tmp_path / "no_data"), name="bc_encdec")
  config.model.scan_layers = True  # today's config asks for scanned layers
  old = config.copy_and_resolve_references()
  old.model.scan_layers = False
  spec = dict(instructions=INSTRUCTIONS, image_size=S, vocab_instructions=INSTRUCTIONS)
  policy = train.policy_from_spec(old, spec)
  optimizer, _ = train.make_optimizer(old.optim, int(old.train.num_steps))
  obs = batch_lib.dummy_batch(batch_size=1, horizon=old.data.horizon, image_size=S)
  mesh = sharding.make_mesh(1, jax.devices()[:1])
  _, shardings = train.abstract_state(policy, optimizer, obs, 0, mesh)
  state = train.create_state(policy, optimizer, obs, 0, shardings)
  saved = json.loads(old.to_json_best_effort())
  del saved["model"]["scan_layers"]  # as written before the field existed
  stats = {"state": normalize.compute_stats([np.ones((4, 48), np.float32)]),
           "actions": normalize.compute_stats([np.ones((4, 48), np.float32)])}
  manager = checkpoint.make_manager(str(tmp_path), save_every=1, keep=1, async_save=False)
  checkpoint.save(manager, 1, state, config_json=json.dumps(saved), policy=spec,
                  normalizer=normalize.Normalizer(stats, "minmax").to_json(), force=True)
  manager.wait_until_finished()

  # Training / --mode=eval: today's config is read in the checkpoint's layout.
  assert train.with_checkpoint_layout(config, manager, str(tmp_path)).model.scan_layers is False
  assert config.model.scan_layers  # the caller's config is left alone
  config.model.scan_layers = False  # same layout: the config itself comes back
  assert train.with_checkpoint_layout(config, manager, str(tmp_path)) is config
  config.model.scan_layers = True
  # Inference: the saved config alone.
  loaded = inference.load_policy(str(tmp_path))
  assert loaded.config.model.scan_layers is False
  assert "dec_block_0" in loaded.params["backbone"]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded.params),
               jax.device_get(state.ema_params))
  # stack_layers loads the same weights into today's scanned model.
  scanned = train.policy_from_spec(config, spec)
  want = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), obs)
  assert (jax.tree.map(jnp.shape, transformer.stack_layers(loaded.params))
          == jax.tree.map(lambda s: s.shape, want))


def test_remat_gives_the_same_gradients_and_caches_are_stacked():
  d, t = 16, 5
  x = jax.random.normal(jax.random.PRNGKey(0), (2, t, d))
  mask = np.ones((t, t), bool)
  plain = transformer.Decoder(dim=d, num_heads=2, num_layers=2, scan=True)
  remat = transformer.Decoder(dim=d, num_heads=2, num_layers=2, scan=True, remat=True)
  params = plain.init(jax.random.PRNGKey(1), x, mask)

  @jax.jit
  def run(p):
    grads = [jax.grad(lambda q: m.apply(q, x, mask).sum())(p) for m in (plain, remat)]
    return grads, plain.apply(p, x, mask, method=transformer.Decoder.prefix)

  grads, (k, v) = run(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *grads)
  assert k.shape == v.shape == (2, 2, t, 2, d // 2)  # [L, B, T, heads, D/heads]
