"""Streaming statistics and the reversible normaliser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egodex_jax.data import normalize


def _data(seed=0, n=5000, d=48):
  rng = np.random.default_rng(seed)
  scale = rng.uniform(0.01, 0.5, size=d)
  return (rng.normal(size=(n, d)) * scale + rng.normal(size=d)).astype(np.float32)


def test_stats_match_numpy_when_the_reservoir_holds_everything():
  x = _data()
  s = normalize.compute_stats(np.array_split(x, 7))  # streamed in uneven chunks
  np.testing.assert_allclose(s["mean"], x.astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(s["std"], x.astype(np.float64).std(0), rtol=1e-5)
  np.testing.assert_allclose(s["p01"], np.percentile(x, 1, axis=0), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(s["p99"], np.percentile(x, 99, axis=0), rtol=1e-6, atol=1e-7)
  assert s["count"] == len(x)


def test_reservoir_percentiles_stay_close_with_bounded_memory():
  x = np.random.default_rng(1).uniform(-2.0, 3.0, size=(60_000, 4))
  s = normalize.compute_stats(np.array_split(x, 30), reservoir_rows=5_000)
  # Uniform(-2, 3): 1st / 99th percentiles are -1.95 / 2.95; a 5k sample is within ~0.03.
  np.testing.assert_allclose(s["p01"], -1.95, atol=0.05)
  np.testing.assert_allclose(s["p99"], 2.95, atol=0.05)
  np.testing.assert_allclose(s["mean"], x.mean(0), atol=1e-9)  # sums are exact, not sampled


def test_empty_stream_is_an_error():
  with pytest.raises(ValueError, match="empty"):
    normalize.compute_stats([])


def _stats(x):
  s = normalize.compute_stats([x])
  return {"actions": s, "state": s}


def test_minmax_maps_the_percentile_range_to_unit_interval():
  x = _data()
  n = normalize.Normalizer(_stats(x), "minmax")
  lo = np.percentile(x, 1, axis=0)
  hi = np.percentile(x, 99, axis=0)
  np.testing.assert_allclose(n.normalize_actions(lo), -1.0, atol=1e-5)
  np.testing.assert_allclose(n.normalize_actions(hi), 1.0, atol=1e-5)
  y = n.normalize_state(x)
  inside = np.mean((y >= -1) & (y <= 1))
  assert 0.97 < inside < 0.99  # 98% of the data by construction


def test_meanstd_standardises():
  x = _data()
  y = normalize.Normalizer(_stats(x), "meanstd").normalize_actions(x)
  np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(y.std(0), 1.0, atol=1e-4)


@pytest.mark.parametrize("kind", normalize.KINDS)
def test_round_trip_numpy_and_jitted_jax(kind):
  x = _data(2)
  x[:, 5] = 0.25  # a constant dimension: the guarded range must keep it finite and invertible
  n = normalize.Normalizer(_stats(x), kind)
  y = n.normalize_actions(x)
  assert isinstance(y, np.ndarray) and np.isfinite(y).all()
  np.testing.assert_allclose(n.denormalize_actions(y), x, rtol=1e-6, atol=1e-6)
  chunk = jnp.asarray(x[:60].reshape(2, 30, 48))  # [B, H, 48]
  back = jax.jit(lambda a: n.denormalize_actions(n.normalize_actions(a)))(chunk)
  np.testing.assert_allclose(np.asarray(back), np.asarray(chunk), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.jit(n.normalize_actions)(chunk)),
                             n.normalize_actions(x[:60]).reshape(2, 30, 48), rtol=1e-5, atol=1e-5)


def test_unknown_kind_and_bad_stats_file(tmp_path):
  with pytest.raises(ValueError, match="kind"):
    normalize.Normalizer(_stats(_data()), "zscore")
  p = tmp_path / "norm_stats.json"
  p.write_text('{"actions": {}}')
  with pytest.raises(ValueError, match="state"):
    normalize.load_stats(str(p))
  good = _stats(_data())
  normalize.save_stats(str(p), good)
  assert normalize.load_stats(str(p))["actions"]["count"] == good["actions"]["count"]


def _chunks(seed=3, b=40, h=30):
  """Canonical states [B, 48] and chunks [B, H, 48] that drift away from the state."""
  rng = np.random.default_rng(seed)
  state = (rng.normal(size=(b, 48)) * 0.2 + rng.normal(size=48)).astype(np.float32)
  steps = np.cumsum(rng.normal(size=(b, h, 48)) * 0.01, axis=1)
  return state, (state[:, None] + steps).astype(np.float32)


def _relative_stats(state, actions):
  return {"actions": normalize.compute_stats([actions.reshape(-1, 48)]),
          "state": normalize.compute_stats([state]),
          "delta": normalize.compute_stats([(actions - state[:, None]).reshape(-1, 48)])}


@pytest.mark.parametrize("kind", normalize.KINDS)
def test_relative_round_trip_recovers_the_absolute_chunk(kind):
  state, actions = _chunks()
  n = normalize.Normalizer(_relative_stats(state, actions), kind, "relative")
  y = n.normalize_actions(actions, state=state)
  # What the policy sees is the normalised delta, not the normalised chunk.
  absolute = normalize.Normalizer(_relative_stats(state, actions), kind, "absolute")
  delta = normalize.Normalizer({"actions": _relative_stats(state, actions)["delta"],
                                "state": _relative_stats(state, actions)["state"]}, kind)
  np.testing.assert_allclose(y, delta.normalize_actions(actions - state[:, None]), atol=1e-5)
  assert not np.allclose(y, absolute.normalize_actions(actions), atol=1e-2)
  np.testing.assert_allclose(n.denormalize_actions(y, state=state), actions, atol=1e-5)
  # Jitted, with K samples [K, B, H, 48] against states [1, B, 48] as the evaluator passes them.
  samples = jnp.stack([jnp.asarray(y)] * 3)
  back = jax.jit(lambda s, st: n.denormalize_actions(s, state=st))(samples, state[None])
  np.testing.assert_allclose(np.asarray(back), np.broadcast_to(actions, back.shape), atol=1e-5)
  fwd = jax.jit(lambda a, st: n.normalize_actions(a, state=st))(actions, state)
  np.testing.assert_allclose(np.asarray(fwd), y, atol=1e-5)


def test_relative_needs_delta_stats_and_the_state():
  state, actions = _chunks()
  stats = _relative_stats(state, actions)
  old = {"actions": stats["actions"], "state": stats["state"]}
  with pytest.raises(ValueError, match="rebuild"):
    normalize.Normalizer(old, "minmax", "relative")
  with pytest.raises(ValueError, match="action_repr"):
    normalize.Normalizer(stats, "minmax", "deltas")
  with pytest.raises(ValueError, match="state"):
    normalize.Normalizer(stats, "minmax", "relative").normalize_actions(actions)


def test_horizon_stats_pool_only_the_rows_that_are_not_padding():
  rng = np.random.default_rng(0)
  windows = rng.normal(size=(6, 5, 48)).astype(np.float32)  # [n, M+1, 48], M = 4
  num_future = np.array([4, 3, 0, 2, 4, 1])
  suffix = np.arange(4)[None] >= num_future[:, None]  # [n, M]: the padding num_future implies
  a = normalize.horizon_stats([(windows, num_future)], 3)
  b = normalize.horizon_stats([(windows, suffix)], 3)
  assert a == b and a["actions"]["count"] == int((~suffix[:, :3]).sum())
  holes = suffix.copy()
  holes[0, 1] = holes[4, 0] = True  # non-finite rows inside the future (partial episodes)
  windows[0, 2] = windows[4, 1] = 1e6  # what a padded row holds never reaches the statistics
  c = normalize.horizon_stats([(windows, holes)], 3)
  assert c["actions"]["count"] == a["actions"]["count"] - 2
  assert max(c["actions"]["p99"]) < 10 and max(np.abs(c["mean_delta"]).max(-1)) < 10
