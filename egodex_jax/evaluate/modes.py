"""Mode coverage and precision: does a sampler reach the true mode without spraying samples?

Where the data records the true mode (synthetic episodes: batch `mode >= 0`, `mode_targets
[B, 2, 3]` = where the right wrist ends up under each mode, camera frame t). Only the right
wrist's position at the chunk's last frame is used: s now (the state), g for the ground truth,
p for a sample, c_true / c_other the targets.
- a trajectory GOES TO mode m when its final right wrist is nearer to c_m than to the other
  target by at least `margin` metres (nearest target, with a dead zone between them);
- a sample is COMMITTED when it is unpadded and its ground truth goes to its true mode and ends
  at least `margin` nearer to c_true than s is (it is heading there, not just starting nearer);
- the ground truth's MIRROR under the other mode is g' = g + progress * (c_other - c_true), with
  progress = clip(1 - |g - c_true| / |s - c_true|, 0, 1): a hand that has not moved yet ends
  at the same place under either mode, one that reached its target would have reached the other;
- a prediction HITS the true mode when it goes to it and |p - g| <= radius; it is PLAUSIBLE when
  it ends within `radius` of g or of g' (near the end of SOME valid outcome);
- coverage@K = fraction of committed samples whose true mode is hit by one of the first K
  predictions; precision = fraction of the first max(K) predictions of the unpadded samples with
  a known mode that are plausible. Spraying predictions buys coverage only at the cost of
  precision, and a sampler that always picks the same mode covers about half of balanced data.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from egodex_jax import skeleton
from egodex_jax.evaluate import metric

DEFAULT_MODE_MARGIN = 0.03   # metres
DEFAULT_MODE_RADIUS = 0.08   # metres (the synthetic modes' targets lie ~0.3-0.4 m apart)
RIGHT_WRIST = slice(skeleton.hand_offset("right") + skeleton.WRIST_POS,
                    skeleton.hand_offset("right") + skeleton.WRIST_POS + 3)


def _goes_to(final_wrist, targets, margin):
  """final_wrist [..., B, 3], targets [B, 2, 3] -> [..., B] int: mode index, -1 when undecided."""
  d = jnp.linalg.norm(final_wrist[..., None, :] - targets, axis=-1)  # [..., B, 2]
  m = jnp.argmin(d, axis=-1)
  gap = jnp.abs(d[..., 0] - d[..., 1])
  return jnp.where(gap >= margin, m, -1)


@functools.partial(jax.jit, static_argnames=("ks",))
def mode_hits(state, mode, mode_targets, gt_actions, gt_padding, pred_actions,
              ks=metric.DEFAULT_KS, margin=DEFAULT_MODE_MARGIN, radius=DEFAULT_MODE_RADIUS):
  """Per-sample mode statistics (jitted; see the module docstring for the definitions).

  Args:
    state [B, 48], mode [B] int (-1 unknown), mode_targets [B, 2, 3], gt_actions [B, T, 48],
    gt_padding [B, T] bool, pred_actions [N, B, T, 48] (canonical, metres, camera frame t).
  Returns:
    (known [B] bool: unpadded with a known mode, committed [B] bool, covered [B, len(ks)] bool,
     plausible [B] int32: plausible predictions among the first max(ks), 0 where not known).
  """
  metric.check_ks(ks, pred_actions.shape[0])
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

  def __init__(self, ks: Sequence[int] = metric.DEFAULT_KS):
    self.ks = metric.check_ks(ks)
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
