"""What is achievable on synthetic data: the ORACLE rows, which know every episode's modes.

A synthetic episode is deterministic in (seed, episode), so re-simulating it under each of its
modes (`synthetic.counterfactual_poses`) gives, for every frame t, the future under each outcome
from the same scene. A mode's future is a VALID alternative at t only while that mode's hand is
where the true one is (every scored keypoint within `SAME_STATE_M`): once the hand has visibly
left for one target, the other outcome is no longer possible. On the samples the evaluator scores
(`pipeline.sample_indices`, the same `max_samples`, padded samples excluded), with the evaluator's
accumulators:

  oracle_single   the best single prediction: the per-coordinate median of the valid futures
                  (the one valid future when there is one), counted for every K;
  oracle_sampler  the expected Best-of-K of an ideal sampler that draws the valid futures
                  uniformly with replacement (closed form, avg and final minimised separately);
  static          the evaluator's static baseline on the same samples, to read the rows against.

A model's figure reads against them through `gap_closed(static, model, oracle)`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from egodex_jax import skeleton
from egodex_jax.data import actions as actions_lib
from egodex_jax.data import pipeline
from egodex_jax.data import synthetic
from egodex_jax.evaluate import metric

SAME_STATE_M = 0.01  # a counterfactual stays possible while every keypoint is this close
ROWS = ("oracle_single", "oracle_sampler", "static")


class _Poses:
  """The little of `egodex.Episode` that `actions.action_windows` reads."""

  def __init__(self, transforms: dict[str, np.ndarray]):
    self.transforms = transforms

  @property
  def camera(self) -> np.ndarray:
    return self.transforms[skeleton.CAMERA]


def mode_futures(hdf5_path: str, true_mode: int, max_horizon: int, *,
                 source: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
  """A synthetic episode's windows under each mode, all in the TRUE camera frame of t (the frame
  the policy observes and is scored in) -> (windows [M, N, max_horizon+1, 48] float32, rows as
  `actions.action_windows`', row 0 the state; valid [M, N] bool: mode m is possible at t).

  With the builder's max_horizon the true mode's windows are the stored ones, bit for bit.
  `source`: as `synthetic.counterfactual_poses`' (files that do not record it).
  """
  poses = synthetic.counterfactual_poses(hdf5_path, source=source)  # [{name: [N, 4, 4]}] by mode
  true = max(int(true_mode), 0)
  camera = poses[true][skeleton.CAMERA]
  windows = np.stack([actions_lib.action_windows(_Poses({**p, skeleton.CAMERA: camera}),
                                                 max_horizon)[0] for p in poses])
  state_kp = skeleton.keypoints(windows[:, :, 0].astype(np.float64))  # [M, N, 12, 3]
  gap = np.linalg.norm(state_kp - state_kp[true][None], axis=-1)  # [M, N, 12]
  return windows, np.all(gap <= SAME_STATE_M, axis=-1)


def _distances(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """pred [M, B, H, 48], gt [B, H, 48] -> (avg [M, B], final [M, B]) as `metric` defines them."""
  d = np.linalg.norm(skeleton.keypoints(pred.astype(np.float64))
                     - skeleton.keypoints(gt.astype(np.float64))[None], axis=-1)  # [M, B, H, 12]
  return d.mean(axis=(-1, -2)), d[..., -1, :].mean(axis=-1)


def expected_min(dist: np.ndarray, valid: np.ndarray, ks: Sequence[int]) -> np.ndarray:
  """E[min of K uniform draws with replacement] over the valid rows, in closed form.

  dist [M, B], valid [M, B] bool (at least one per column) -> [B, len(ks)]. With the m valid
  distances sorted, d_(j) is the minimum when no draw falls below rank j and one falls on it:
  P = ((m - j) / m)^K - ((m - j - 1) / m)^K (0-based j); e.g. {0, d} gives d / 2^K.
  """
  m = valid.sum(axis=0).astype(np.float64)  # [B]
  d = np.sort(np.where(valid, dist, np.inf), axis=0)  # [M, B], invalid last
  d = np.where(np.isfinite(d), d, 0.0)
  j = np.arange(dist.shape[0], dtype=np.float64)[:, None]  # [M, 1]
  above = lambda r: np.clip((m - r) / m, 0.0, 1.0)  # P(a draw has rank >= r)
  return np.stack([(d * (above(j) ** k - above(j + 1) ** k)).sum(axis=0) for k in ks], axis=-1)


def _rows(windows, valid, gt, state, ks) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """One episode's scored frames: windows [M, B, H+1, 48] (mode futures), valid [M, B], gt
  [B, H, 48], state [B, 48] -> {row: (avg_min [B, len(ks)], final_min [B, len(ks)])}."""
  futures = windows[:, :, 1:]  # [M, B, H, 48]
  masked = np.where(valid[..., None, None], futures.astype(np.float64), np.nan)
  single = np.nanmedian(masked, axis=0)[None]  # [1, B, H, 48]
  static = np.broadcast_to(state[None, :, None], (1,) + gt.shape)
  avg, final = _distances(futures, gt)
  out = {"oracle_sampler": (expected_min(avg, valid, ks), expected_min(final, valid, ks))}
  for name, pred in (("oracle_single", single), ("static", static)):
    a, f = _distances(pred, gt)  # [1, B]: one prediction for every K
    out[name] = tuple(np.repeat(x[0][:, None], len(ks), axis=1) for x in (a, f))
  return out


def oracle_results(data_dir: str, raw_dir: str, split: str, *, horizon: int,
                   ks: Sequence[int] = metric.DEFAULT_KS, max_samples: int | None = None,
                   tasks: Sequence[str] | None = None, source: dict | None = None
                   ) -> dict[str, Any]:
  """The oracle rows of a built synthetic dataset's split, on the samples the evaluator scores.

  Args:
    data_dir: the build (as `pipeline.load_metadata` takes it).
    raw_dir: the raw tree it was built from (episode paths are relative to it).
    split: e.g. "test".
    horizon: H, as the evaluator's.
    ks: the K values.
    max_samples: as the evaluator's `make_dataset(..., max_samples=...)` (None: every frame).
    tasks: labels of the task ids for "per_task", as the evaluator's `tasks` (default: the
      dataset's task vocabulary).
    source: {seed, min_frames, max_frames} as the episodes were generated, only for raw files
      written before they recorded it (`synthetic.counterfactual_poses`); checked, never trusted.
  Returns:
    {"oracle_single", "oracle_sampler", "static": {"avg@K", "final@K"}, "per_task": {task:
    {"oracle_single", "oracle_sampler", "static", "num_samples"}}, "num_samples": n,
    "num_forked": scored samples with two valid futures, "ks": [...]}; NaN figures when no
    sample is unpadded. ValueError (one sentence) when an episode's raw file is missing, is not a
    re-simulable synthetic episode, or does not give the stored ground truth.
  """
  meta = pipeline.load_metadata(data_dir)
  ks = metric.check_ks(ks)
  if not 1 <= horizon <= meta.max_horizon:
    raise ValueError(f"horizon must be in [1, {meta.max_horizon}] (the dataset's max horizon), "
                     f"got {horizon}")
  labels = list(meta.tasks if tasks is None else tasks)
  idx = pipeline.sample_indices(meta, split, max_samples=max_samples)
  accs = {name: metric.BestOfKAccumulator(ks) for name in ROWS}
  records = pipeline.RecordSource(meta, split) if len(idx) else None
  num_forked = 0
  for e in meta.episodes[split]:
    first, n = e["first_index"], e["num_frames"]
    rec_idx = idx[(idx >= first) & (idx < first + n)]
    t = rec_idx - first
    rec_idx, t = rec_idx[t + horizon <= n - 1], t[t + horizon <= n - 1]  # padded: never scored
    if not len(t):
      continue
    path = os.path.join(raw_dir, e["path"])
    if not os.path.isfile(path):
      raise ValueError(f"{path}: raw episode missing; pass the raw_dir that {meta.data_dir} was "
                       "built from")
    windows, valid = mode_futures(path, e["mode"], meta.max_horizon, source=source)
    windows, valid = windows[:, t, :horizon + 1], valid[:, t]  # [M, B, H+1, 48], [M, B]
    recs = records.get_many([int(i) for i in rec_idx])
    stored = np.stack([r["window"][:horizon + 1] for r in recs])  # [B, H+1, 48]
    true = max(int(e["mode"]), 0)
    if np.abs(windows[true] - stored).max() > 1e-5:
      raise ValueError(f"{path}: its re-simulation does not give the stored ground truth; pass "
                       f"the raw_dir that {meta.data_dir} was built from")
    rows = _rows(windows, valid, stored[:, 1:], stored[:, 0], ks)
    task_id = np.array([r["task_id"] for r in recs])
    for name, (avg, final) in rows.items():
      accs[name].update(avg, final, np.ones(len(t), bool), task_id=task_id)
    num_forked += int((valid.sum(axis=0) >= 2).sum())

  out: dict[str, Any] = {name: acc.result() for name, acc in accs.items()}
  by_task = {name: acc.per_task() for name, acc in accs.items()}
  out["per_task"] = {}
  for tid, figs in by_task["static"].items():
    label = labels[tid] if 0 <= tid < len(labels) else str(tid)
    out["per_task"][label] = {name: {k: v for k, v in by_task[name][tid].items()
                                     if k != "num_samples"} for name in ROWS}
    out["per_task"][label]["num_samples"] = figs["num_samples"]
  out["num_samples"] = accs["static"].count
  out["num_forked"] = num_forked
  out["ks"] = list(ks)
  return out


def gap_closed(static: float, model: float, oracle: float) -> float:
  """The fraction of the static-to-oracle gap a model closes: (static - model) / (static -
  oracle); 1 = as good as the oracle, 0 = no better than holding the hand; NaN when static ==
  oracle (nothing to close)."""
  den = static - oracle
  return (static - model) / den if den != 0 else math.nan
