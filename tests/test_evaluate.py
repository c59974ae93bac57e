"""Best-of-K metric, streaming accumulation and mode coverage against hand-made answers."""

import math
import os

import numpy as np
import pytest

from egodex_jax import evaluate
from egodex_jax.evaluate import report
from egodex_jax import skeleton
from egodex_jax.data import batch as batch_lib


def _numpy_best_of_k(gt, padding, pred, ks):
  """Plain loops, straight from docs/metric.md."""
  n, b_size, t_size, _ = pred.shape
  sums = {f"{m}@{k}": 0.0 for k in ks for m in ("avg", "final")}
  count = 0
  for b in range(b_size):
    if padding[b].any():
      continue
    count += 1
    avg = np.zeros(n)
    final = np.zeros(n)
    for i in range(n):
      per_frame = []
      for t in range(t_size):
        d = [np.linalg.norm(pred[i, b, t, dims] - gt[b, t, dims])
             for dims in skeleton.KEYPOINT_DIMS]
        per_frame.append(np.mean(d))
      avg[i] = np.mean(per_frame)
      final[i] = per_frame[-1]
    for k in ks:
      sums[f"avg@{k}"] += avg[:k].min()
      sums[f"final@{k}"] += final[:k].min()
  return {key: v / count for key, v in sums.items()}


def _random_case(rng, n=10, b=6, t=5):
  gt = rng.normal(size=(b, t, 48)).astype(np.float32) * 0.1
  pred = (gt[None] + rng.normal(size=(n, b, t, 48)) * 0.05).astype(np.float32)
  padding = np.zeros((b, t), bool)
  padding[1, -2:] = True
  padding[4, -1] = True
  return gt, padding, pred


def test_best_of_k_matches_numpy_loops():
  rng = np.random.default_rng(0)
  gt, padding, pred = _random_case(rng)
  got = evaluate.best_of_k(gt, padding, pred, ks=(1, 5, 10))
  want = _numpy_best_of_k(gt, padding, pred, (1, 5, 10))
  assert set(got) == {"avg@1", "final@1", "avg@5", "final@5", "avg@10", "final@10"}
  for key in want:
    assert isinstance(got[key], float)
    assert got[key] == pytest.approx(want[key], rel=1e-5), key
  assert got["avg@10"] <= got["avg@5"] <= got["avg@1"]


def test_exact_prediction_in_slot_3_counts_from_k_5():
  rng = np.random.default_rng(1)
  gt = rng.normal(size=(2, 4, 48)).astype(np.float32)
  pred = gt[None] + 0.3 * np.ones((10, 2, 4, 48), np.float32)
  pred[3] = gt
  res = evaluate.best_of_k(gt, np.zeros((2, 4), bool), pred)
  assert res["avg@5"] == pytest.approx(0.0, abs=1e-6)
  assert res["avg@10"] == pytest.approx(0.0, abs=1e-6)
  assert res["final@5"] == pytest.approx(0.0, abs=1e-6)
  assert res["avg@1"] == pytest.approx(0.3 * math.sqrt(3), rel=1e-4)
  assert res["final@1"] == pytest.approx(0.3 * math.sqrt(3), rel=1e-4)


def test_avg_and_final_minimised_independently():
  gt = np.zeros((1, 3, 48), np.float32)
  pred = np.zeros((2, 1, 3, 48), np.float32)
  pred[0, 0, -1, skeleton.POSITION_DIMS] = 0.2  # good path, bad end: avg 0.2*sqrt(3)/3
  pred[1, 0, :, skeleton.POSITION_DIMS] = 0.1   # constant offset: avg = final = 0.1*sqrt(3)
  res = evaluate.best_of_k(gt, np.zeros((1, 3), bool), pred, ks=(1, 2))
  s3 = math.sqrt(3)
  assert res["avg@2"] == pytest.approx(0.2 * s3 / 3, rel=1e-5)   # slot 0
  assert res["final@2"] == pytest.approx(0.1 * s3, rel=1e-5)     # slot 1
  assert res["final@1"] == pytest.approx(0.2 * s3, rel=1e-5)


def test_rotations_are_not_scored_and_padded_samples_excluded():
  gt = np.zeros((2, 3, 48), np.float32)
  pred = np.zeros((1, 2, 3, 48), np.float32)
  pred[..., skeleton.ROTATION_DIMS] = 5.0
  pred[0, 1] = 1.0  # sample 1 is far off, but padded
  padding = np.zeros((2, 3), bool)
  padding[1, 2] = True
  res = evaluate.best_of_k(gt, padding, pred, ks=(1,))
  assert res == {"avg@1": 0.0, "final@1": 0.0}


def test_all_padded_gives_nan_and_too_few_predictions_raise():
  gt = np.zeros((2, 3, 48), np.float32)
  res = evaluate.best_of_k(gt, np.ones((2, 3), bool), np.zeros((10, 2, 3, 48), np.float32))
  assert all(math.isnan(v) for v in res.values())
  with pytest.raises(ValueError, match="K = 10 asked, 4 given"):
    evaluate.best_of_k(gt, np.zeros((2, 3), bool), np.zeros((4, 2, 3, 48), np.float32))


def test_streaming_equals_one_shot_overall_and_per_task():
  rng = np.random.default_rng(2)
  gt, padding, pred = _random_case(rng, n=5, b=12, t=4)
  task = rng.integers(0, 3, size=12)
  ks = (1, 5)
  acc = evaluate.BestOfKAccumulator(ks)
  for lo, hi in ((0, 5), (5, 7), (7, 12)):  # uneven batches: means of batch means would differ
    acc.update(*evaluate.per_sample_min_distances(gt[lo:hi], padding[lo:hi], pred[:, lo:hi], ks=ks),
               task_id=task[lo:hi])
  one_shot = evaluate.best_of_k(gt, padding, pred, ks=ks)
  for key, v in acc.result().items():
    assert v == pytest.approx(one_shot[key], rel=1e-6)
  assert acc.count == int((~padding.any(-1)).sum())
  per_task = acc.per_task()
  for t in np.unique(task):
    sel = task == t
    want = _numpy_best_of_k(gt[sel], padding[sel], pred[:, sel], ks)
    for key in want:
      assert per_task[int(t)][key] == pytest.approx(want[key], rel=1e-5)
    assert per_task[int(t)]["num_samples"] == int((~padding[sel].any(-1)).sum())


# --- Mode coverage -------------------------------------------------------------------------------

RW = slice(24, 27)


def _mode_batch(b=8, t=6, seed=0):
  """Right wrist at the origin, two targets 0.4 m apart; balanced true modes, ground truth goes
  halfway towards its target (committed)."""
  rng = np.random.default_rng(seed)
  targets = np.tile(np.array([[-0.2, 0.0, 0.4], [0.2, 0.0, 0.4]], np.float32), (b, 1, 1))
  state = np.zeros((b, 48), np.float32)
  state[:, RW] = [0.0, 0.0, 0.2]
  targets[:, :, 2] = 0.2 + 0.2
  mode = np.arange(b) % 2
  gt = np.zeros((b, t, 48), np.float32) + state[:, None]
  frac = np.linspace(0.1, 0.6, t)[None, :, None]
  to_target = targets[np.arange(b), mode][:, None] - state[:, None, RW]
  gt[..., RW] = state[:, None, RW] + frac * to_target
  gt[..., :24] += rng.normal(size=(b, t, 24)) * 0.01
  return state, mode.astype(np.int32), targets, gt, np.zeros((b, t), bool)


def _towards(state, targets, m, t, frac=0.6):
  """[B, T, 48] trajectories heading to target index m [B]."""
  b = state.shape[0]
  traj = np.zeros((b, t, 48), np.float32) + state[:, None]
  f = np.linspace(0.1, frac, t)[None, :, None]
  traj[..., RW] = state[:, None, RW] + f * (targets[np.arange(b), m][:, None] - state[:, None, RW])
  return traj


def _mode_stats(state, mode, targets, gt, padding, pred, ks):
  acc = evaluate.ModeCoverageAccumulator(ks)
  acc.update(*evaluate.mode_hits(state, mode, targets, gt, padding, pred, ks=ks))
  return acc.result()


def test_mode_coverage_both_modes_one_mode_and_sprayer():
  state, mode, targets, gt, padding = _mode_batch()
  b, t = gt.shape[:2]
  to0 = _towards(state, targets, np.zeros(b, int), t)
  to1 = _towards(state, targets, np.ones(b, int), t)
  ks = (1, 2)

  both = np.stack([to0, to1])  # every sample tries both modes
  res = _mode_stats(state, mode, targets, gt, padding, both, ks)
  assert res["num_committed"] == b
  assert res["coverage@2"] == 1.0 and res["coverage@1"] == 0.5 and res["precision"] == 1.0

  always0 = np.stack([to0, to0])
  res = _mode_stats(state, mode, targets, gt, padding, always0, ks)
  assert res["coverage@2"] == pytest.approx(0.5) and res["precision"] == 1.0

  static = np.broadcast_to(state[None, :, None], (2, b, t, 48))  # the hand has moved: no mode
  res = _mode_stats(state, mode, targets, gt, padding, static, ks)
  assert res["coverage@2"] == 0.0 and res["precision"] == 0.0

  res = _mode_stats(state, mode, targets, gt, padding, np.stack([gt, gt]), ks)
  assert res["coverage@1"] == 1.0 and res["precision"] == 1.0

  rng = np.random.default_rng(3)
  spray = np.stack([to0, to1] * 10)
  spray[..., RW] = rng.uniform(-1.0, 1.0, size=spray[..., RW].shape)
  res = _mode_stats(state, mode, targets, gt, padding, spray, (1, 20))
  assert res["precision"] < 0.2
  assert res["coverage@20"] < 1.0


def test_mode_coverage_ignores_unknown_uncommitted_and_padded():
  state, mode, targets, gt, padding = _mode_batch(b=4)
  mode[0] = -1                     # unknown mode
  gt[1, :, RW] = state[1, RW]      # ground truth still at the start, equidistant: uncommitted
  padding[2, -1] = True            # padded
  pred = np.stack([_towards(state, targets, mode.clip(0), gt.shape[1])])
  res = _mode_stats(state, mode, targets, gt, padding, pred, (1,))
  assert res["num_with_mode"] == 2 and res["num_committed"] == 1
  assert res["coverage@1"] == 1.0


# --- Result files and plots ----------------------------------------------------------------------

def test_write_results_and_plots(tmp_path):
  figs = lambda x: {f"{m}@{k}": x * (2 if m == "final" else 1) / k for m in ("avg", "final")
                    for k in (1, 5, 10)}
  results = {"model": figs(0.04), "static": figs(0.1), "mean_traj": figs(0.08),
             "per_task": {"pour": {"model": figs(0.05), "static": figs(0.1),
                                   "mean_traj": figs(0.07), "num_samples": 3}},
             "mode_coverage": {"num_committed": 0, "num_with_mode": 0, "coverage@1": math.nan,
                               "precision": math.nan},
             "num_samples": 3, "ks": [1, 5, 10]}
  json_path, md_path = evaluate.write_results(str(tmp_path), results)
  import json
  with open(json_path) as f:
    back = json.load(f)
  assert back["model"]["avg@5"] == pytest.approx(0.008)
  assert back["mode_coverage"]["precision"] is None  # NaN is written as null (strict JSON)
  md = open(md_path).read()
  assert "| model | 0.0400 | 0.0080 | 0.0040 | 0.0800 | 0.0160 | 0.0080 |" in md
  assert "| pour | 3 |" in md
  png = evaluate.plot_vs_k(str(tmp_path / "vis" / "k.png"), results)
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_scaled_intrinsic_maps_full_frame_pixels_to_the_square_image():
  K = skeleton.default_intrinsic(160, 120)
  Ks = evaluate.scaled_intrinsic(K, (160, 120), 64)
  p = np.array([0.1, -0.05, 0.5])
  uv_full = (K @ p)[:2] / p[2]
  uv_small = (Ks @ p)[:2] / p[2]
  np.testing.assert_allclose(uv_small, uv_full * [64 / 160, 64 / 120], rtol=1e-6)


# --- The evaluator end to end on a real tiny policy ----------------------------------------------

def _canonical_batches(num_batches=2, b=4, h=4, s=16, seed=0):
  """Hand-made canonical batches (metres, camera frame t) in the pipeline's layout."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(num_batches):
    state = (rng.normal(size=(b, 48)) * 0.1 + [0, 0, 0.5] * 16).astype(np.float32)
    steps = np.cumsum(rng.normal(size=(b, h, 48)) * 0.01, axis=1)
    actions = (state[:, None] + steps).astype(np.float32)
    padding = np.zeros((b, h), bool)
    padding[0, -1] = i == 0  # one padded sample in the first batch
    targets = np.stack([state[:, 24:27] + [-0.2, 0, 0.1], state[:, 24:27] + [0.2, 0, 0.1]], 1)
    out.append({"image": rng.integers(0, 255, (b, s, s, 3), dtype=np.uint8), "state": state,
                "actions": actions, "padding": padding,
                "instruction_id": rng.integers(0, 2, b).astype(np.int32),
                "task_id": np.array([0, 1, 0, 1], np.int32)[:b],
                "mode": np.array([0, 1, -1, 0], np.int32)[:b],
                "mode_targets": targets.astype(np.float32),
                "episode_id": np.arange(b, dtype=np.int32), "frame": np.zeros(b, np.int32)})
  return out


def _tiny_policy_and_normalizer(batches, head):
  import jax
  from egodex_jax.data import normalize
  from egodex_jax.models import config as config_lib
  from egodex_jax.models import policy as policy_lib
  stats = {"actions": normalize.compute_stats([b["actions"].reshape(-1, 48) for b in batches]),
           "state": normalize.compute_stats([b["state"] for b in batches])}
  normalizer = normalize.Normalizer(stats, "minmax")
  policy = policy_lib.make_policy(config_lib.model_config("tiny", backbone="dec", head=head),
                                  horizon=batches[0]["actions"].shape[1],
                                  instructions=["pick up the cup", "put down the cup"],
                                  image_size=batches[0]["image"].shape[1])
  # Random params of the right shapes without compiling `policy.init` (slow on a loaded CPU).
  shapes = jax.eval_shape(policy.init, jax.random.key(0), normalizer.normalize_obs(batches[0]))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: (rng.normal(size=x.shape) * 0.1).astype(x.dtype), shapes)
  return policy, params, normalizer


class _FakePolicy:
  """Predicts its (normalised) state held for H frames, times `params`; records each trace's
  num_samples and observation keys (a Python side effect runs once per compilation)."""

  def __init__(self, horizon, is_deterministic):
    self.horizon = horizon
    self.is_deterministic = is_deterministic
    self.traces = []

  def sample(self, params, obs, rng, num_samples):
    import jax.numpy as jnp
    del rng
    self.traces.append((num_samples, sorted(obs)))
    state = obs["state"] * params                                  # [B, 48]
    return jnp.broadcast_to(state[None, :, None], (num_samples, state.shape[0], self.horizon, 48))


def test_evaluator_compiles_once_and_shows_the_policy_observations_only():
  import jax
  from egodex_jax.data import normalize
  batches = _canonical_batches()
  stats = normalize.compute_stats([b["state"] for b in batches])
  normalizer = normalize.Normalizer({"actions": stats, "state": stats}, "minmax")
  for deterministic, asked in ((True, 1), (False, 3)):
    policy = _FakePolicy(batches[0]["actions"].shape[1], deterministic)
    evaluator = evaluate.Evaluator(policy, normalizer, ks=(1, 3))
    first = evaluator(1.0, batches, rng=jax.random.key(0))
    second = evaluator(1.0, batches, rng=jax.random.key(0))
    assert policy.traces == [(asked, ["image", "instruction_id", "state"])]  # no ground truth
    for key, v in first["static"].items():  # same stats both ways: the samples are the state
      assert first["model"][key] == pytest.approx(v, rel=1e-5)
    assert second["model"] == first["model"]


def test_evaluate_end_to_end_with_baselines_and_files(tmp_path):
  import jax
  batches = _canonical_batches()
  batches[1] = {k: v[:3] for k, v in batches[1].items()}  # a short last batch (padded inside)
  policy, params, normalizer = _tiny_policy_and_normalizer(batches, "fm")
  ks = (1, 3)
  mean_delta = evaluate.mean_trajectory(batches)
  res = evaluate.evaluate(policy, params, batches, normalizer, ks=ks, rng=jax.random.key(1),
                          tasks=["pour", "stack"], mean_trajectory=mean_delta,
                          workdir=str(tmp_path), frame_size=(160, 120))
  for name in ("model", "static", "mean_traj"):
    assert set(res[name]) == {"avg@1", "avg@3", "final@1", "final@3"}
  assert res["num_samples"] == 6 and res["num_batches"] == 2
  assert set(res["per_task"]) == {"pour", "stack"}
  assert res["per_task"]["pour"]["num_samples"] + res["per_task"]["stack"]["num_samples"] == 6
  assert res["model"]["avg@3"] <= res["model"]["avg@1"]
  assert np.isfinite(res["model"]["avg@1"])

  gt = np.concatenate([b["actions"] for b in batches])
  pad = np.concatenate([b["padding"] for b in batches])
  state = np.concatenate([b["state"] for b in batches])
  static = np.broadcast_to(state[None, :, None], (3,) + gt.shape)
  want = evaluate.best_of_k(gt, pad, static, ks=ks)
  for key, v in want.items():
    assert res["static"][key] == pytest.approx(v, rel=1e-5)
  assert res["static"]["avg@1"] == res["static"]["avg@3"]  # deterministic baseline
  mean_pred = np.broadcast_to((state[:, None] + mean_delta)[None], (3,) + gt.shape)
  want = evaluate.best_of_k(gt, pad, mean_pred, ks=ks)
  for key, v in want.items():
    assert res["mean_traj"][key] == pytest.approx(v, rel=1e-5)
  assert res["mode_coverage"]["num_with_mode"] == 4  # mode >= 0 and unpadded

  for name in ("eval_results.json", "eval_results.md", "vis/examples.png", "vis/best_of_k.png"):
    assert (tmp_path / name).stat().st_size > 0, name
  import json
  on_disk = json.loads((tmp_path / "eval_results.json").read_text())
  assert on_disk["model"]["avg@1"] == pytest.approx(res["model"]["avg@1"])


def test_evaluate_bc_repeats_its_one_sample():
  import jax
  batches = _canonical_batches(num_batches=1)
  policy, params, normalizer = _tiny_policy_and_normalizer(batches, "bc")
  assert policy.is_deterministic
  res = evaluate.evaluate(policy, params, batches, normalizer, ks=(1, 4), rng=jax.random.key(0))
  assert res["model"]["avg@1"] == res["model"]["avg@4"]
  assert res["model"]["final@1"] == res["model"]["final@4"]
  assert "mean_traj" not in res


def test_relative_actions_are_scored_as_absolute_metres():
  """With action_repr='relative' the evaluator adds the state back before scoring."""
  import jax
  import jax.numpy as jnp
  from egodex_jax.data import normalize
  batches = _canonical_batches(num_batches=1)
  policy, params, _ = _tiny_policy_and_normalizer(batches, "fm")
  b = batches[0]
  delta = (b["actions"] - b["state"][:, None]).reshape(-1, 48)
  stats = {"actions": normalize.compute_stats([b["actions"].reshape(-1, 48)]),
           "state": normalize.compute_stats([b["state"]]),
           "delta": normalize.compute_stats([delta])}
  normalizer = normalize.Normalizer(stats, "minmax", "relative")
  ks = (1, 3)
  evaluator = evaluate.Evaluator(policy, normalizer, ks=ks)
  dev = {k: jnp.asarray(v) for k, v in batch_lib.select(b, batch_lib.EVAL_KEYS).items()}
  rng = jax.random.key(3)
  batch_rng = jax.random.fold_in(rng, 0)  # the evaluator samples batch i with fold_in(rng, i)
  out = jax.device_get(evaluator.step(params, dev, batch_rng, None))
  # The policy's own samples (normalised deltas), de-normalised by hand: delta + state.
  raw = np.asarray(policy.sample(params, normalizer.normalize_obs(dev), batch_rng, 3))
  offset, scale = normalizer._actions
  want = raw / scale + offset + b["state"][None, :, None, :]
  np.testing.assert_allclose(out["samples"], want, rtol=1e-4, atol=1e-5)
  assert np.abs(want - b["actions"][None]).mean() < 0.5 * np.abs(b["actions"]).mean()
  res = evaluator(params, batches, rng=rng)  # the same jitted step: no second compilation
  expect = evaluate.best_of_k(b["actions"], b["padding"], want, ks=ks)
  for key, v in expect.items():
    assert res["model"][key] == pytest.approx(v, rel=1e-4)


def test_plotted_examples_come_from_different_tasks_then_episodes(tmp_path):
  from egodex_jax.evaluate import evaluator as evaluator_lib
  picker = evaluator_lib._ExamplePicker(3, ["lid", "cup"])
  b, h = 6, 4
  batch = dict(image=np.zeros((b, 8, 8, 3), np.uint8), actions=np.zeros((b, h, 48), np.float32),
               state=np.zeros((b, 48), np.float32), padding=np.zeros((b, h), bool),
               task_id=np.array([0, 0, 0, 0, 1, 1]), episode_id=np.array([3, 3, 4, 4, 7, 7]),
               frame=np.arange(b))
  batch["padding"][2] = True  # episode 4's first frame is padded: its second is taken instead
  picker.offer(batch, np.arange(2 * b * h * 48, dtype=np.float32).reshape(2, b, h, 48))
  ex = picker.examples()
  assert [t.split("\n")[0] for t in ex["titles"]] == ["lid", "cup", "lid"]  # tasks first
  assert [t.split("\n")[1] for t in ex["titles"]] == ["episode 3, frame 0", "episode 7, frame 4",
                                                      "episode 4, frame 3"]
  assert ex["samples"].shape == (2, 3, h, 48) and ex["image"].shape == (3, 8, 8, 3)
  path = evaluate.plot_examples(str(tmp_path / "ex.png"), ex)
  assert os.path.getsize(path) > 1000


def test_reference_rows_and_gap_closed_in_the_report():
  results = {"ks": [1, 10], "num_samples": 2,
             "model": {"final@1": 0.06, "final@10": 0.04, "avg@1": 0.05, "avg@10": 0.03},
             "static": {"final@1": 0.10, "final@10": 0.10, "avg@1": 0.08, "avg@10": 0.08},
             "per_task": {"lid": {"model": {"final@1": 0.1}, "static": {"final@1": 0.1},
                                  "num_samples": 2}}}
  reference = {"oracle_single": {"final@1": 0.02, "avg@1": 0.02},
               "oracle_sampler": {"final@10": 0.0, "avg@10": 0.0},
               "per_task": {"lid": {"oracle_single": {"final@1": 0.1}}}}
  report.add_reference(results, reference)
  assert results["gap_closed"]["final@1"] == pytest.approx((0.10 - 0.06) / (0.10 - 0.02))
  assert results["gap_closed"]["final@10"] == pytest.approx(0.6)
  assert math.isnan(results["per_task"]["lid"]["gap_closed"]["final@1"])  # static == oracle
  md = report.results_markdown(results)
  assert "oracle_single" in md and "Gap closed" in md and "0.5000" in md  # avg@1 gap
