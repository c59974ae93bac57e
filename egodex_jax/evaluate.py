"""Best-of-K evaluation: the EgoDex metric, baselines, mode coverage, result files and plots.

The metric (egodex_format.md section 4), always in metres on de-normalised canonical positions:
for test sample b and prediction i, over the 12 keypoints (`skeleton.KEYPOINT_DIMS`)
  avg[b, i]   = mean over the T frames and 12 keypoints of the Euclidean distance to ground truth,
  final[b, i] = mean over the 12 keypoints at the last frame.
For each K: the per-sample minimum over the FIRST K predictions (avg and final minimised
independently), averaged over the test samples with no padded frame. Sums of per-sample minima
and counts are accumulated over the whole split (`BestOfKAccumulator`), overall and per task, never
means of batch means; `best_of_k` is that accumulator fed one batch, so there is one code path.

K larger than the number of predictions N is an error (a clear ValueError): clamping would report
the K = 1 figure under the name K = 10. A deterministic policy (BC) is evaluated by repeating its
one sample, which `evaluate` does itself. When no sample is unpadded the figures are NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from egodex_jax import skeleton

DEFAULT_KS = (1, 5, 10)
RIGHT_WRIST = slice(skeleton.hand_offset("right") + skeleton.WRIST_POS,
                    skeleton.hand_offset("right") + skeleton.WRIST_POS + 3)
METRIC_COLUMNS = ("avg@1", "avg@5", "avg@10", "final@1", "final@5", "final@10")


def _check_ks(ks: Sequence[int], num_predictions: int | None = None) -> tuple[int, ...]:
  ks = tuple(int(k) for k in ks)
  if not ks or min(ks) < 1:
    raise ValueError(f"ks must be a non-empty tuple of positive integers, got {ks}.")
  if num_predictions is not None and max(ks) > num_predictions:
    raise ValueError(f"Best-of-K needs at least K predictions per sample: K = {max(ks)} asked, "
                     f"{num_predictions} given (repeat a deterministic prediction to score it).")
  return ks


# --- Per-sample distances ------------------------------------------------------------------------

def keypoint_distances(gt_actions, pred_actions):
  """gt [B, T, 48], pred [N, B, T, 48] -> (avg [N, B], final [N, B]) distances in metres."""
  d = jnp.linalg.norm(skeleton.keypoints(pred_actions) - skeleton.keypoints(gt_actions)[None],
                      axis=-1)  # [N, B, T, 12]
  return d.mean(axis=(-1, -2)), d[..., -1, :].mean(axis=-1)


def _min_over_first_k(dist, ks):
  """[N, B] -> [B, len(ks)]: min over the first k rows for each k."""
  return jnp.stack([dist[:k].min(axis=0) for k in ks], axis=-1)


@functools.partial(jax.jit, static_argnames=("ks",))
def per_sample_min_distances(gt_actions, gt_padding, pred_actions, ks=DEFAULT_KS):
  """Per-sample Best-of-K minima (jitted).

  Args:
    gt_actions: [B, T, 48] canonical ground truth (metres).
    gt_padding: [B, T] bool, True past the episode end.
    pred_actions: [N, B, T, 48] predictions, N >= max(ks).
    ks: static tuple of K values.
  Returns:
    (avg_min [B, len(ks)], final_min [B, len(ks)], valid [B] bool): a sample is valid when none
    of its frames is padded; minima of invalid samples are computed but must be ignored.
  """
  _check_ks(ks, pred_actions.shape[0])
  avg, final = keypoint_distances(gt_actions, pred_actions)
  valid = ~jnp.any(gt_padding, axis=-1)
  return _min_over_first_k(avg, ks), _min_over_first_k(final, ks), valid


# --- Streaming accumulation ----------------------------------------------------------------------

@dataclasses.dataclass
class _Sums:
  avg: np.ndarray    # [len(ks)] float64 sums of per-sample minima
  final: np.ndarray
  count: int = 0


class BestOfKAccumulator:
  """Sums per-sample Best-of-K minima and counts over a split, overall and per task id."""

  def __init__(self, ks: Sequence[int] = DEFAULT_KS):
    self.ks = _check_ks(ks)
    self.total = self._new()
    self.tasks: dict[int, _Sums] = {}

  def _new(self) -> _Sums:
    return _Sums(np.zeros(len(self.ks)), np.zeros(len(self.ks)))

  def update(self, avg_min, final_min, valid, task_id=None) -> None:
    """avg_min, final_min [B, len(ks)], valid [B] bool, task_id [B] int (optional)."""
    avg_min = np.asarray(avg_min, np.float64)
    final_min = np.asarray(final_min, np.float64)
    valid = np.asarray(valid, bool)
    if avg_min.shape != final_min.shape or avg_min.shape != (valid.shape[0], len(self.ks)):
      raise ValueError(f"Accumulator update expects minima [B, {len(self.ks)}] and valid [B], got "
                       f"{avg_min.shape}, {final_min.shape}, {valid.shape}.")
    self._add(self.total, avg_min[valid], final_min[valid])
    if task_id is not None:
      task_id = np.asarray(task_id).reshape(-1)[valid]
      for t in np.unique(task_id):
        sel = task_id == t
        self._add(self.tasks.setdefault(int(t), self._new()), avg_min[valid][sel],
                  final_min[valid][sel])

  @staticmethod
  def _add(sums: _Sums, avg, final) -> None:
    sums.avg += avg.sum(axis=0)
    sums.final += final.sum(axis=0)
    sums.count += int(avg.shape[0])

  def _figures(self, sums: _Sums) -> dict[str, float]:
    out = {}
    n = sums.count
    for i, k in enumerate(self.ks):
      out[f"avg@{k}"] = float(sums.avg[i] / n) if n else math.nan
      out[f"final@{k}"] = float(sums.final[i] / n) if n else math.nan
    return out

  @property
  def count(self) -> int:
    return self.total.count

  def result(self) -> dict[str, float]:
    """{"avg@k": metres, "final@k": metres} over all valid samples seen (NaN when none)."""
    return self._figures(self.total)

  def per_task(self) -> dict[int, dict[str, float]]:
    """task_id -> figures (with "num_samples"), for the tasks that had a valid sample."""
    return {t: {**self._figures(s), "num_samples": s.count}
            for t, s in sorted(self.tasks.items()) if s.count}


def best_of_k(gt_actions, gt_padding, pred_actions, ks=DEFAULT_KS) -> dict[str, float]:
  """The EgoDex Best-of-K metric on one set of samples (a contract: see docs/interfaces.md).

  Args:
    gt_actions: [B, T, 48] canonical ground truth, metres, camera frame t.
    gt_padding: [B, T] bool, True = padded frame; samples with any padded frame are excluded.
    pred_actions: [N, B, T, 48] canonical predictions; the first K are used for each K.
    ks: the K values; max(ks) > N raises ValueError.
  Returns:
    {"avg@1": float, "final@1": float, "avg@5": ...} in metres; NaN values when no sample is
    unpadded.
  """
  ks = _check_ks(ks, np.shape(pred_actions)[0])
  acc = BestOfKAccumulator(ks)
  acc.update(*per_sample_min_distances(jnp.asarray(gt_actions), jnp.asarray(gt_padding, bool),
                                       jnp.asarray(pred_actions), ks=ks))
  return acc.result()


# --- Mode coverage -------------------------------------------------------------------------------
# Where the data records the true mode (synthetic episodes: batch `mode >= 0`, `mode_targets
# [B, 2, 3]` = where the right wrist ends up under each mode, camera frame t). Only the right
# wrist's position at the chunk's last frame is used: s now (the state), g for the ground truth,
# p for a sample, c_true / c_other the targets.
# - a trajectory GOES TO mode m when its final right wrist is nearer to c_m than to the other
#   target by at least `margin` metres (nearest target, with a dead zone between them);
# - a sample is COMMITTED when it is unpadded and its ground truth goes to its true mode and ends
#   at least `margin` nearer to c_true than s is (it is heading there, not just starting nearer);
# - the ground truth's MIRROR under the other mode is g' = g + progress * (c_other - c_true), with
#   progress = clip(1 - |g - c_true| / |s - c_true|, 0, 1): a hand that has not moved yet ends
#   at the same place under either mode, one that reached its target would have reached the other;
# - a prediction HITS the true mode when it goes to it and |p - g| <= radius; it is PLAUSIBLE when
#   it ends within `radius` of g or of g' (near the end of SOME valid outcome);
# - coverage@K = fraction of committed samples whose true mode is hit by one of the first K
#   predictions; precision = fraction of the first max(K) predictions of the unpadded samples with
#   a known mode that are plausible. Spraying predictions buys coverage only at the cost of
#   precision, and a sampler that always picks the same mode covers about half of balanced data.

DEFAULT_MODE_MARGIN = 0.03   # metres
DEFAULT_MODE_RADIUS = 0.08   # metres (the synthetic modes' targets lie ~0.3-0.4 m apart)


def _goes_to(final_wrist, targets, margin):
  """final_wrist [..., B, 3], targets [B, 2, 3] -> [..., B] int: mode index, -1 when undecided."""
  d = jnp.linalg.norm(final_wrist[..., None, :] - targets, axis=-1)  # [..., B, 2]
  m = jnp.argmin(d, axis=-1)
  gap = jnp.abs(d[..., 0] - d[..., 1])
  return jnp.where(gap >= margin, m, -1)


@functools.partial(jax.jit, static_argnames=("ks",))
def mode_hits(state, mode, mode_targets, gt_actions, gt_padding, pred_actions, ks=DEFAULT_KS,
              margin=DEFAULT_MODE_MARGIN, radius=DEFAULT_MODE_RADIUS):
  """Per-sample mode statistics (jitted; see the section comment for the definitions).

  Args:
    state [B, 48], mode [B] int (-1 unknown), mode_targets [B, 2, 3], gt_actions [B, T, 48],
    gt_padding [B, T] bool, pred_actions [N, B, T, 48] (canonical, metres, camera frame t).
  Returns:
    (known [B] bool: unpadded with a known mode, committed [B] bool, covered [B, len(ks)] bool,
     plausible [B] int32: plausible predictions among the first max(ks), 0 where not known).
  """
  _check_ks(ks, pred_actions.shape[0])
  idx = jnp.maximum(mode, 0)
  s = state[:, RIGHT_WRIST]                                        # [B, 3]
  g = gt_actions[:, -1, RIGHT_WRIST]                               # [B, 3]
  c_true = jnp.take_along_axis(mode_targets, idx[:, None, None], axis=1)[:, 0]
  c_other = jnp.take_along_axis(mode_targets, (1 - idx)[:, None, None], axis=1)[:, 0]
  known = (mode >= 0) & ~jnp.any(gt_padding, axis=-1)
  d_now, d_end = jnp.linalg.norm(s - c_true, axis=-1), jnp.linalg.norm(g - c_true, axis=-1)
  committed = known & (_goes_to(g, mode_targets, margin) == mode) & (d_now - d_end >= margin)
  progress = jnp.clip(1.0 - d_end / jnp.maximum(d_now, 1e-6), 0.0, 1.0)
  mirror = g + progress[:, None] * (c_other - c_true)              # [B, 3]
  p = pred_actions[:max(ks), :, -1, RIGHT_WRIST]                   # [N, B, 3]
  to_gt = jnp.linalg.norm(p - g, axis=-1)                          # [N, B]
  plausible = jnp.minimum(to_gt, jnp.linalg.norm(p - mirror, axis=-1)) <= radius
  hit = (_goes_to(p, mode_targets, margin) == mode) & (to_gt <= radius)
  covered = jnp.stack([jnp.any(hit[:k], axis=0) for k in ks], axis=-1) & committed[:, None]
  return known, committed, covered, jnp.sum(plausible, axis=0).astype(jnp.int32) * known


class ModeCoverageAccumulator:
  """Sums of `mode_hits` outputs over a split."""

  def __init__(self, ks: Sequence[int] = DEFAULT_KS):
    self.ks = _check_ks(ks)
    self.num_known = 0
    self.num_committed = 0
    self.covered = np.zeros(len(self.ks), np.int64)
    self.plausible = 0

  def update(self, known, committed, covered, plausible) -> None:
    self.num_known += int(np.sum(known))
    self.num_committed += int(np.sum(committed))
    self.covered += np.asarray(covered, np.int64).sum(axis=0)
    self.plausible += int(np.sum(plausible))

  def result(self) -> dict[str, float]:
    """{"coverage@k", "precision", "num_committed", "num_with_mode"}; NaN where undefined."""
    out: dict[str, float] = {"num_committed": self.num_committed, "num_with_mode": self.num_known}
    for i, k in enumerate(self.ks):
      out[f"coverage@{k}"] = (float(self.covered[i] / self.num_committed) if self.num_committed
                              else math.nan)
    n_pred = self.num_known * max(self.ks)
    out["precision"] = float(self.plausible / n_pred) if n_pred else math.nan
    return out


# --- Baselines -----------------------------------------------------------------------------------

def mean_trajectory(batches: Iterable[dict], *, max_batches: int | None = None) -> np.ndarray:
  """Mean training chunk relative to the current state: mean of (actions - state) over unpadded
  frames, per frame index -> [H, 48] float32 (rows never unpadded stay 0). Feed train batches."""
  total, count = None, None
  for i, batch in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    actions = np.asarray(batch["actions"], np.float64)            # [B, H, 48]
    delta = actions - np.asarray(batch["state"], np.float64)[:, None]
    keep = ~np.asarray(batch["padding"], bool)                    # [B, H]
    if total is None:
      total, count = np.zeros(actions.shape[1:]), np.zeros(actions.shape[1])
    total += np.where(keep[..., None], delta, 0.0).sum(axis=0)
    count += keep.sum(axis=0)
  if total is None:
    raise ValueError("mean_trajectory got no batches.")
  return (total / np.maximum(count, 1)[:, None]).astype(np.float32)


def static_prediction(state, horizon: int):
  """The current hand state held for `horizon` frames: [B, 48] -> [1, B, H, 48]."""
  return jnp.broadcast_to(state[None, :, None, :], (1, state.shape[0], horizon, state.shape[-1]))


def mean_traj_prediction(state, mean_delta):
  """state [B, 48] + mean delta [H, 48] -> [1, B, H, 48]."""
  return (state[:, None, :] + mean_delta[None])[None]


def _minima(gt, padding, pred, ks):
  """Like per_sample_min_distances, but a single (deterministic) prediction counts for every K."""
  avg, final = keypoint_distances(gt, pred)
  if pred.shape[0] == 1:
    avg, final = (jnp.broadcast_to(x, (max(ks),) + x.shape[1:]) for x in (avg, final))
  return _min_over_first_k(avg, ks), _min_over_first_k(final, ks), ~jnp.any(padding, axis=-1)


# --- The evaluator -------------------------------------------------------------------------------

def is_deterministic(policy) -> bool:
  """BC policies give one sample; the evaluator repeats it for every K (`policy.head.stochastic`
  as in models/policies.py, else a `deterministic` attribute, else stochastic)."""
  head = getattr(policy, "head", None)
  if head is not None and hasattr(head, "stochastic"):
    return not bool(head.stochastic)
  return bool(getattr(policy, "deterministic", False))


def _policy_obs(batch, normalizer):
  """The normalised observation a policy samples from; the ground-truth chunk is NOT passed
  (zeros of the right shape stand in, for policies that read its shape)."""
  obs = {k: v for k, v in batch.items() if k in ("image", "goal_image", "instruction_id",
                                                   "padding", "task_id")}
  obs["state"] = normalizer.normalize_state(batch["state"])
  obs["actions"] = jnp.zeros_like(batch["actions"])
  return obs


def _denormalize(normalizer, samples, state):
  """[N, B, H, 48] normalised -> canonical; passes the (canonical) state when the normalizer's
  `denormalize_actions` takes one (state-relative action spaces)."""
  if "state" in inspect.signature(normalizer.denormalize_actions).parameters:
    return normalizer.denormalize_actions(samples, state=state[None])
  return normalizer.denormalize_actions(samples)


_STEP_CACHE: dict[tuple, tuple[Any, Any, Any]] = {}


def make_eval_step(policy, normalizer, *, ks=DEFAULT_KS, deterministic=None,
                   margin=DEFAULT_MODE_MARGIN, radius=DEFAULT_MODE_RADIUS):
  """One jitted function per batch: sample, de-normalise, score model and baselines.

  step(params, batch, rng, mean_delta [H, 48] or None) -> dict of per-sample arrays and the
  canonical samples [max(ks), B, H, 48]. Cached per (policy, normalizer, options) so a periodic
  evaluation during training compiles once.
  """
  ks = _check_ks(ks)
  if deterministic is None:
    deterministic = is_deterministic(policy)
  key = (id(policy), id(normalizer), ks, bool(deterministic), float(margin), float(radius))
  hit = _STEP_CACHE.get(key)
  if hit is not None and hit[0] is policy and hit[1] is normalizer:
    return hit[2]
  num_samples = 1 if deterministic else max(ks)

  @jax.jit
  def step(params, batch, rng, mean_delta):
    gt, padding, state = batch["actions"], batch["padding"], batch["state"]
    samples = policy.sample(params, _policy_obs(batch, normalizer), rng, num_samples)
    samples = _denormalize(normalizer, samples, state).astype(jnp.float32)  # [n, B, H, 48]
    samples = jnp.broadcast_to(samples, (max(ks),) + samples.shape[1:])
    out = {"samples": samples,
           "model": _minima(gt, padding, samples, ks),
           "static": _minima(gt, padding, static_prediction(state, gt.shape[1]), ks)}
    if mean_delta is not None:
      out["mean_traj"] = _minima(gt, padding, mean_traj_prediction(state, mean_delta), ks)
    if "mode" in batch and "mode_targets" in batch:
      out["modes"] = mode_hits(state, batch["mode"], batch["mode_targets"], gt, padding, samples,
                               ks=ks, margin=margin, radius=radius)
    return out

  _STEP_CACHE.clear()  # one live step at a time: the cache holds references to its objects
  _STEP_CACHE[key] = (policy, normalizer, step)
  return step


_DEVICE_KEYS = ("image", "goal_image", "state", "actions", "padding", "instruction_id", "task_id",
                "mode", "mode_targets")


def _pad_rows(x, size: int, is_padding: bool):
  """[b, ...] -> [size, ...] by repeating row 0; padded rows are marked padded (never scored)."""
  x = np.asarray(x)
  if x.shape[0] >= size:
    return x
  fill = np.ones_like(x[:1]) if is_padding else x[:1]
  return np.concatenate([x, np.repeat(fill, size - x.shape[0], axis=0)])


def evaluate(policy, params, batches: Iterable[dict], normalizer, *, ks=DEFAULT_KS, rng,
             tasks: Sequence[str] | None = None, mean_trajectory=None,
             max_batches: int | None = None, deterministic: bool | None = None,
             margin: float = DEFAULT_MODE_MARGIN, radius: float = DEFAULT_MODE_RADIUS,
             workdir: str | None = None, num_plot_examples: int = 4,
             intrinsic=None, frame_size=None) -> dict[str, Any]:
  """Best-of-K over test batches (canonical metres, as docs/interfaces.md's batch table).

  For each batch: normalise the state, sample max(ks) trajectories (a deterministic policy: one,
  repeated), de-normalise, score, accumulate; beside the baselines on the same samples: `static`
  (the current hand state held for H frames) and `mean_traj` (the state plus `mean_trajectory`
  [H, 48], see `mean_trajectory()`; omitted when None). Mode coverage (see `mode_hits`) over the
  samples with a known mode. With `workdir`, writes eval_results.json/.md and the plots in
  WORKDIR/vis/ (`intrinsic`/`frame_size`: K and (W, H) of the full frames the S x S batch images
  were resized from, without crop; EgoDex's constant K at 1920x1080 by default).

  Returns {"model": figures, "static": ..., "mean_traj": ..., "per_task": {task: {"model": ...,
  "static": ..., "mean_traj": ..., "num_samples": n}}, "mode_coverage": {...}, "num_samples": n,
  "num_batches": b, "ks": [...]}. Figures are NaN when no sample was unpadded.
  """
  ks = _check_ks(ks)
  step = make_eval_step(policy, normalizer, ks=ks, deterministic=deterministic, margin=margin,
                        radius=radius)
  mean_delta = None if mean_trajectory is None else jnp.asarray(mean_trajectory, jnp.float32)
  accs = {name: BestOfKAccumulator(ks) for name in ("model", "static", "mean_traj")}
  modes = ModeCoverageAccumulator(ks)
  examples = None
  num_batches = 0
  full_size = 0  # a smaller last batch is padded to the first one's size: no recompilation
  for i, batch in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    size = len(batch["actions"])
    full_size = full_size or size
    task_id = np.asarray(batch["task_id"]) if "task_id" in batch else None
    device_batch = {k: jnp.asarray(_pad_rows(v, full_size, k == "padding"))
                    for k, v in batch.items() if k in _DEVICE_KEYS}
    out = step(params, device_batch, jax.random.fold_in(rng, i), mean_delta)
    samples = out.pop("samples")  # fetched only for the plotted examples
    out = jax.device_get(out)
    for name, acc in accs.items():
      if name in out:
        acc.update(*(x[:size] for x in out[name]), task_id=task_id)
    if "modes" in out:
      modes.update(*(x[:size] for x in out["modes"]))
    if examples is None and num_plot_examples > 0:
      n = min(num_plot_examples, len(batch["actions"]))
      examples = {"image": np.asarray(batch["image"][:n]),
                  "actions": np.asarray(batch["actions"][:n]),
                  "padding": np.asarray(batch["padding"][:n]),
                  "samples": np.asarray(jax.device_get(samples[:, :n]))}
    num_batches += 1

  names = [n for n in accs if n != "mean_traj" or mean_delta is not None]
  results: dict[str, Any] = {name: accs[name].result() for name in names}
  per_task: dict[str, Any] = {}
  task_figs = {name: accs[name].per_task() for name in names}
  for t, figs in task_figs["model"].items():
    label = tasks[t] if tasks is not None and 0 <= t < len(tasks) else str(t)
    per_task[label] = {name: {k: v for k, v in task_figs[name][t].items() if k != "num_samples"}
                       for name in names}
    per_task[label]["num_samples"] = figs["num_samples"]
  results["per_task"] = per_task
  results["mode_coverage"] = modes.result()
  results["num_samples"] = accs["model"].count
  results["num_batches"] = num_batches
  results["ks"] = list(ks)
  if workdir is not None:
    write_results(workdir, results)
    if examples is not None:
      plot_examples(os.path.join(workdir, "vis", "examples.png"), examples, intrinsic=intrinsic,
                    frame_size=frame_size)
    plot_vs_k(os.path.join(workdir, "vis", "best_of_k.png"), results)
  return results


# --- Result files --------------------------------------------------------------------------------

def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return None if not math.isfinite(float(x)) else float(x)  # strict JSON has no NaN
  return x


def _fmt(v) -> str:
  return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def results_markdown(results: dict[str, Any]) -> str:
  """Markdown tables (metres): model/static/mean_traj x avg/final @K, then per task (model)."""
  ks = results.get("ks", list(DEFAULT_KS))
  cols = [f"avg@{k}" for k in ks] + [f"final@{k}" for k in ks]
  lines = [f"# Best-of-K ({results.get('num_samples', 0)} samples, metres)", "",
           "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name in ("model", "static", "mean_traj"):
    if name in results:
      lines.append(f"| {name} | " + " | ".join(_fmt(results[name].get(c)) for c in cols) + " |")
  if results.get("per_task"):
    lines += ["", "## Per task (model)", "", "| task | n | " + " | ".join(cols) + " |",
              "|---" * (len(cols) + 2) + "|"]
    for task, figs in results["per_task"].items():
      lines.append(f"| {task} | {figs.get('num_samples', '')} | "
                   + " | ".join(_fmt(figs["model"].get(c)) for c in cols) + " |")
  mc = results.get("mode_coverage")
  if mc and mc.get("num_committed"):
    keys = [k for k in mc if k.startswith("coverage@")] + ["precision"]
    lines += ["", f"## Mode coverage ({mc['num_committed']} committed samples)", "",
              "| " + " | ".join(keys) + " |", "|---" * len(keys) + "|",
              "| " + " | ".join(_fmt(mc[k]) for k in keys) + " |"]
  return "\n".join(lines) + "\n"


def write_results(workdir: str, results: dict[str, Any]) -> tuple[str, str]:
  """Writes WORKDIR/eval_results.json (NaN as null) and WORKDIR/eval_results.md; returns paths."""
  os.makedirs(workdir, exist_ok=True)
  clean = _jsonable(results)
  json_path = os.path.join(workdir, "eval_results.json")
  md_path = os.path.join(workdir, "eval_results.md")
  with open(json_path, "w") as f:
    json.dump(clean, f, indent=2, allow_nan=False)
  with open(md_path, "w") as f:
    f.write(results_markdown(clean))
  return json_path, md_path


# --- Plots ---------------------------------------------------------------------------------------

def scaled_intrinsic(intrinsic, frame_size, image_size: int) -> np.ndarray:
  """K of the full W x H frame -> K of its S x S resize (no crop): x by S/W, y by S/H."""
  w, h = frame_size
  return np.diag([image_size / w, image_size / h, 1.0]) @ np.asarray(intrinsic, np.float64)


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_examples(path: str, examples: dict, *, intrinsic=None, frame_size=None) -> str:
  """A grid of test frames with the ground-truth keypoint paths (green) and the K predicted
  paths (red) reprojected through the intrinsics scaled to the S x S image."""
  from egodex_jax import geometry
  plt = _pyplot()
  frame_size = frame_size or (skeleton.IMAGE_WIDTH, skeleton.IMAGE_HEIGHT)
  intrinsic = skeleton.default_intrinsic(*frame_size) if intrinsic is None else intrinsic
  images, gt, samples = examples["image"], examples["actions"], examples["samples"]
  n, s = images.shape[0], images.shape[1]
  K = scaled_intrinsic(intrinsic, frame_size, s)
  fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
  for b in range(n):
    ax = axes[0, b]
    ax.imshow(images[b])
    for pred in samples[:, b]:                                  # [H, 48]
      uv = geometry.project(skeleton.keypoints(np.asarray(pred, np.float64)), K)  # [H, 12, 2]
      for j in range(uv.shape[1]):
        ax.plot(uv[:, j, 0], uv[:, j, 1], color="red", lw=0.6, alpha=0.5)
    uv = geometry.project(skeleton.keypoints(np.asarray(gt[b], np.float64)), K)
    for j in range(uv.shape[1]):
      ax.plot(uv[:, j, 0], uv[:, j, 1], color="lime", lw=1.2)
    ax.set_xlim(0, s)
    ax.set_ylim(s, 0)
    ax.set_axis_off()
    ax.set_title(f"sample {b}", fontsize=8)
  fig.suptitle("ground truth (green), K predictions (red)", fontsize=9)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def plot_vs_k(path: str, results: dict[str, Any]) -> str:
  """avg and final distance against K for the model and each baseline."""
  plt = _pyplot()
  ks = results.get("ks", list(DEFAULT_KS))
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
  for ax, metric in zip(axes, ("avg", "final")):
    for name in ("model", "static", "mean_traj"):
      if name in results:
        ax.plot(ks, [results[name][f"{metric}@{k}"] for k in ks], marker="o", label=name)
    ax.set_xlabel("K")
    ax.set_ylabel(f"{metric} distance (m)")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path
