"""The EgoDex Best-of-K metric (docs/metric.md), in metres on de-normalised canonical positions.

For test sample b and prediction i, over the 12 keypoints (`skeleton.KEYPOINT_DIMS`):
  avg[b, i]   = mean over the T frames and 12 keypoints of the Euclidean distance to ground truth,
  final[b, i] = mean over the 12 keypoints at the last frame.
For each K: the per-sample minimum over the FIRST K predictions (avg and final minimised
independently), averaged over the test samples with no padded frame. Sums of per-sample minima
and counts are accumulated over the whole split (`BestOfKAccumulator`), overall and per task, never
means of batch means; `best_of_k` is that accumulator fed one batch, so there is one code path.

K larger than the number of predictions N is an error (a clear ValueError): clamping would report
the K = 1 figure under the name K = 10. When no sample is unpadded the figures are NaN.

Confident ground truth only (`keypoint_weights` [B, T, 12], 1 = a confidently tracked keypoint):
avg and final are the means over the weighted (frame, keypoint) entries instead of all of them,
and a sample counts when it is unpadded and has a weighted keypoint at the last frame.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from egodex_jax import skeleton

DEFAULT_KS = (1, 5, 10)


def check_ks(ks: Sequence[int], num_predictions: int | None = None) -> tuple[int, ...]:
  """-> ks as a tuple of ints; ValueError when empty, non-positive or above num_predictions."""
  ks = tuple(int(k) for k in ks)
  if not ks or min(ks) < 1:
    raise ValueError(f"ks must be a non-empty tuple of positive integers, got {ks}.")
  if num_predictions is not None and max(ks) > num_predictions:
    raise ValueError(f"Best-of-K needs at least K predictions per sample: K = {max(ks)} asked, "
                     f"{num_predictions} given (repeat a deterministic prediction to score it).")
  return ks


# --- Per-sample distances ------------------------------------------------------------------------

def keypoint_distances(gt_actions, pred_actions, keypoint_weights=None):
  """gt [B, T, 48], pred [N, B, T, 48] -> (avg [N, B], final [N, B]) distances in metres;
  with keypoint_weights [B, T, 12], weighted means (entries of weight 0 left out)."""
  d = jnp.linalg.norm(skeleton.keypoints(pred_actions) - skeleton.keypoints(gt_actions)[None],
                      axis=-1)  # [N, B, T, 12]
  if keypoint_weights is None:
    return d.mean(axis=(-1, -2)), d[..., -1, :].mean(axis=-1)
  w = jnp.asarray(keypoint_weights, jnp.float32)
  avg = (d * w).sum(axis=(-1, -2)) / jnp.maximum(w.sum(axis=(-1, -2)), 1e-12)
  final = (d[..., -1, :] * w[:, -1]).sum(axis=-1) / jnp.maximum(w[:, -1].sum(axis=-1), 1e-12)
  return avg, final


def _valid(gt_padding, keypoint_weights=None):
  """[B] bool: no padded frame (and, with weights, a weighted keypoint at the last frame)."""
  valid = ~jnp.any(gt_padding, axis=-1)
  if keypoint_weights is not None:
    valid &= jnp.any(jnp.asarray(keypoint_weights)[:, -1] > 0, axis=-1)
  return valid


def _min_over_first_k(dist, ks):
  """[N, B] -> [B, len(ks)]: min over the first k rows for each k."""
  return jnp.stack([dist[:k].min(axis=0) for k in ks], axis=-1)


@functools.partial(jax.jit, static_argnames=("ks",))
def per_sample_min_distances(gt_actions, gt_padding, pred_actions, ks=DEFAULT_KS,
                             keypoint_weights=None):
  """Per-sample Best-of-K minima (jitted).

  Args:
    gt_actions: [B, T, 48] canonical ground truth (metres).
    gt_padding: [B, T] bool, True past the episode end.
    pred_actions: [N, B, T, 48] predictions, N >= max(ks).
    ks: static tuple of K values.
    keypoint_weights: optional [B, T, 12]: score the weighted keypoints only (module docstring).
  Returns:
    (avg_min [B, len(ks)], final_min [B, len(ks)], valid [B] bool): a sample is valid when none
    of its frames is padded; minima of invalid samples are computed but must be ignored.
  """
  check_ks(ks, pred_actions.shape[0])
  avg, final = keypoint_distances(gt_actions, pred_actions, keypoint_weights)
  valid = _valid(gt_padding, keypoint_weights)
  return _min_over_first_k(avg, ks), _min_over_first_k(final, ks), valid


def minima(gt_actions, gt_padding, pred_actions, ks, keypoint_weights=None):
  """`per_sample_min_distances` for use inside a jitted step, where a single prediction
  [1, B, T, 48] (a deterministic policy or baseline) counts for every K."""
  avg, final = keypoint_distances(gt_actions, pred_actions, keypoint_weights)
  if pred_actions.shape[0] == 1:
    avg, final = (jnp.broadcast_to(x, (max(ks),) + x.shape[1:]) for x in (avg, final))
  return (_min_over_first_k(avg, ks), _min_over_first_k(final, ks),
          _valid(gt_padding, keypoint_weights))


# --- Streaming accumulation ----------------------------------------------------------------------

@dataclasses.dataclass
class _Sums:
  avg: np.ndarray    # [len(ks)] float64 sums of per-sample minima
  final: np.ndarray
  count: int = 0


class BestOfKAccumulator:
  """Sums per-sample Best-of-K minima and counts over a split, overall and per task id."""

  def __init__(self, ks: Sequence[int] = DEFAULT_KS):
    self.ks = check_ks(ks)
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

  def pooled(self, task_ids) -> dict[str, float]:
    """The figures (and "num_samples") of the samples of `task_ids` pooled: sums over their
    samples, not a mean of per-task means."""
    sums = self._new()
    for t in task_ids:
      part = self.tasks.get(int(t))
      if part is not None:
        sums.avg += part.avg
        sums.final += part.final
        sums.count += part.count
    return {**self._figures(sums), "num_samples": sums.count}

  def result(self) -> dict[str, float]:
    """{"avg@k": metres, "final@k": metres} over all valid samples seen (NaN when none)."""
    return self._figures(self.total)

  def per_task(self) -> dict[int, dict[str, float]]:
    """task_id -> figures (with "num_samples"), for the tasks that had a valid sample."""
    return {t: {**self._figures(s), "num_samples": s.count}
            for t, s in sorted(self.tasks.items()) if s.count}


def best_of_k(gt_actions, gt_padding, pred_actions, ks=DEFAULT_KS, keypoint_weights=None
              ) -> dict[str, float]:
  """The EgoDex Best-of-K metric on one set of samples (a contract: see docs/metric.md).

  Args:
    gt_actions: [B, T, 48] canonical ground truth, metres, camera frame t.
    gt_padding: [B, T] bool, True = padded frame; samples with any padded frame are excluded.
    pred_actions: [N, B, T, 48] canonical predictions; the first K are used for each K.
    ks: the K values; max(ks) > N raises ValueError.
    keypoint_weights: optional [B, T, 12]: the confident-only figures (module docstring).
  Returns:
    {"avg@1": float, "final@1": float, "avg@5": ...} in metres; NaN values when no sample is
    unpadded.
  """
  ks = check_ks(ks, np.shape(pred_actions)[0])
  acc = BestOfKAccumulator(ks)
  w = None if keypoint_weights is None else jnp.asarray(keypoint_weights, jnp.float32)
  acc.update(*per_sample_min_distances(jnp.asarray(gt_actions), jnp.asarray(gt_padding, bool),
                                       jnp.asarray(pred_actions), ks=ks, keypoint_weights=w))
  return acc.result()
