"""Normalisation statistics of actions and hand state, and the reversible transform.

The builder streams every training window through `StatsAccumulator` (sums for mean/std, a fixed
size row reservoir for the percentiles, so memory does not grow with the dataset) and saves the
result as `norm_stats.json`: `actions` (future rows), `state` (row 0) and `delta` (future rows
minus row 0). `Normalizer` turns canonical metres into the model's space and back; its methods
are plain array arithmetic, so they run on NumPy arrays and inside `jax.jit` alike.

Action representations (`data.action_repr`): 'absolute' normalises the chunk itself; 'relative'
(UMI style, as the EgoDex paper: relative to the chunk's first action, i.e. the current state)
normalises `actions - state[..., None, :]` with the `delta` statistics, and de-normalisation adds
the state back, so the evaluator always scores the absolute chunk in metres.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import numpy as np

from egodex_jax.data import batch as batch_lib

RESERVOIR_ROWS = 100_000  # percentiles from at most this many rows (exact below it)
MIN_RANGE = 1e-4  # metres: dims whose 1..99th percentile range is narrower are only shifted
MIN_STD = 1e-4
KINDS = ("minmax", "meanstd")
ACTION_REPRS = ("absolute", "relative")


class StatsAccumulator:
  """Streaming per-dimension mean, std and 1st/99th percentiles of rows [n, D]."""

  def __init__(self, dim: int, reservoir_rows: int = RESERVOIR_ROWS, seed: int = 0):
    self.dim = dim
    self.count = 0
    self._sum = np.zeros(dim, np.float64)
    self._sumsq = np.zeros(dim, np.float64)
    self._reservoir = np.zeros((reservoir_rows, dim), np.float32)
    self._rng = np.random.default_rng(seed)

  def add(self, rows: np.ndarray) -> None:
    rows = np.asarray(rows, np.float64).reshape(-1, self.dim)
    n = rows.shape[0]
    if n == 0:
      return
    self._sum += rows.sum(0)
    self._sumsq += np.square(rows).sum(0)
    cap = self._reservoir.shape[0]
    fill = max(0, min(n, cap - self.count))
    self._reservoir[self.count:self.count + fill] = rows[:fill]
    if fill < n:  # Algorithm R, vectorised: row i of the stream replaces a slot w.p. cap / (i+1)
      seen = self.count + np.arange(fill, n)
      slot = self._rng.integers(0, seen + 1)
      keep = slot < cap
      self._reservoir[slot[keep]] = rows[fill:][keep]
    self.count += n

  def result(self) -> dict[str, Any]:
    if self.count == 0:
      raise ValueError("no rows were added: cannot compute statistics of an empty set")
    mean = self._sum / self.count
    var = np.maximum(self._sumsq / self.count - np.square(mean), 0.0)
    sample = self._reservoir[:min(self.count, self._reservoir.shape[0])]
    p01, p99 = np.percentile(sample, [1.0, 99.0], axis=0)
    return {"mean": mean.tolist(), "std": np.sqrt(var).tolist(), "p01": p01.tolist(),
            "p99": p99.tolist(), "count": int(self.count)}


def compute_stats(arrays: Iterable[np.ndarray], reservoir_rows: int = RESERVOIR_ROWS
                  ) -> dict[str, Any]:
  """Per-dimension stats over a stream of [n, D] arrays (rows are samples)."""
  acc = None
  for a in arrays:
    a = np.asarray(a)
    if acc is None:
      acc = StatsAccumulator(a.shape[-1], reservoir_rows)
    acc.add(a)
  if acc is None:
    raise ValueError("no arrays given: cannot compute statistics of an empty set")
  return acc.result()


def save_stats(path: str, stats: Mapping[str, Any]) -> None:
  with open(path, "w") as f:
    json.dump(stats, f, indent=1)


def load_stats(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      stats = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read normalisation statistics ({e})") from None
  for key in ("actions", "state"):
    if key not in stats:
      raise ValueError(f"{path}: normalisation statistics lack the '{key}' entry")
  return stats


def horizon_stats(chunks: Iterable[tuple[np.ndarray, np.ndarray]], horizon: int,
                  reservoir_rows: int = RESERVOIR_ROWS) -> dict[str, Any]:
  """Statistics of the windows a run trains on, over future rows 1..`horizon` only.

  chunks: (windows [n, M+1, 48] with row 0 the state, padding [n, M] bool, True = future row
  not real) from the training episodes (`pipeline.read_windows`); num_future [n] in place of
  padding means rows past it are padding.
  -> {"state", "actions", "delta": stats, "mean_delta": [H][48] (the mean displacement k frames
  ahead over the unpadded rows: the `mean_traj` baseline), "horizon": H}. The statistics of the
  horizon trained on: displacements grow with k, so stats pooled over a longer window would
  squeeze the targets of a shorter horizon.
  """
  acc = {k: StatsAccumulator(48, reservoir_rows, seed=i)
         for i, k in enumerate(("state", "actions", "delta"))}
  sum_delta, count = np.zeros((horizon, 48), np.float64), np.zeros((horizon, 1), np.float64)
  for windows, padding in chunks:
    windows, padding = np.asarray(windows, np.float32), np.asarray(padding)
    if windows.shape[1] < horizon + 1:
      raise ValueError(f"horizon {horizon} exceeds the {windows.shape[1] - 1} future rows stored")
    state, future = windows[:, 0], windows[:, 1:horizon + 1]  # [n, 48], [n, H, 48]
    if padding.ndim == 1:  # num_future [n]
      valid = np.arange(horizon)[None] < padding[:, None]  # [n, H]
    else:
      valid = ~padding[:, :horizon].astype(bool)
    delta = future - state[:, None]
    acc["state"].add(state)
    acc["actions"].add(future[valid])
    acc["delta"].add(delta[valid])
    sum_delta += np.where(valid[..., None], delta, 0.0).sum(0)
    count += valid.sum(0)[:, None]
  out = {k: a.result() for k, a in acc.items()}
  out["mean_delta"] = (sum_delta / np.maximum(count, 1.0)).tolist()
  out["horizon"] = int(horizon)
  return out


class Normalizer:
  """Reversible per-dimension affine map: x_norm = (x - offset) * scale.

  'minmax' maps the 1st..99th percentile range to [-1, 1] (X-IL style, no clipping so that it
  stays invertible); 'meanstd' standardises. Narrow dimensions get a guarded range/std.
  With action_repr='relative' the actions are first made relative to the state (and the
  `delta` statistics are used), so `normalize_actions` / `denormalize_actions` need the
  canonical state.
  """

  def __init__(self, stats: Mapping[str, Any], kind: str = "minmax",
               action_repr: str = "absolute"):
    if kind not in KINDS:
      raise ValueError(f"normaliser kind must be one of {KINDS}, got {kind!r}")
    if action_repr not in ACTION_REPRS:
      raise ValueError(f"action_repr must be one of {ACTION_REPRS}, got {action_repr!r}")
    key = "delta" if action_repr == "relative" else "actions"
    if key not in stats:
      raise ValueError(f"the normalisation statistics lack '{key}' (needed by action_repr="
                       f"{action_repr!r}): the dataset was built by an older builder; rebuild it")
    self.stats = dict(stats)
    self.kind = kind
    self.action_repr = action_repr
    self.relative = action_repr == "relative"
    self._state = self._affine(stats["state"], kind)
    self._actions = self._affine(stats[key], kind)

  def to_json(self) -> dict[str, Any]:
    """What a checkpoint stores: enough to rebuild this exact normaliser (`from_json`)."""
    return {"kind": self.kind, "action_repr": self.action_repr, "stats": self.stats}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "Normalizer":
    return cls(d["stats"], d["kind"], d["action_repr"])

  @staticmethod
  def _affine(s: Mapping[str, Any], kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "minmax":
      lo, hi = np.asarray(s["p01"], np.float64), np.asarray(s["p99"], np.float64)
      rng = np.maximum(hi - lo, MIN_RANGE)
      offset, scale = (lo + hi) / 2.0, 2.0 / rng
    else:
      offset = np.asarray(s["mean"], np.float64)
      scale = 1.0 / np.maximum(np.asarray(s["std"], np.float64), MIN_STD)
    return offset.astype(np.float32), scale.astype(np.float32)

  # x is [..., 48]; NumPy or jax arrays (broadcasting against NumPy constants works in jit).
  def normalize_state(self, x):
    offset, scale = self._state
    return (x - offset) * scale

  def _state_rows(self, state):
    if state is None:
      raise ValueError("action_repr='relative' needs the canonical state to (de)normalise actions")
    return state[..., None, :]  # [..., 48] -> [..., 1, 48]: one state per chunk

  # Actions are chunks [..., H, 48]; `state` [..., 48] (canonical metres) matches the leading dims
  # (or broadcasts to them) and is only read with action_repr='relative'.
  def normalize_actions(self, x, state=None):
    offset, scale = self._actions
    if self.relative:
      x = x - self._state_rows(state)
    return (x - offset) * scale

  def denormalize_actions(self, x, state=None):
    offset, scale = self._actions
    x = x / scale + offset
    if self.relative:
      x = x + self._state_rows(state)
    return x

  # The one normalise / de-normalise pair of training, evaluation and inference
  # (keys: data/batch.py). Canonical metres in, the policy's space out, and back.
  def normalize_obs(self, batch):
    """The observation keys of `batch`, the state normalised (no ground truth is passed)."""
    obs = batch_lib.select(batch, batch_lib.OBS_KEYS)
    obs["state"] = self.normalize_state(batch["state"])
    return obs

  def normalize_batch(self, batch):
    """The train step's keys of `batch`: observation and actions normalised, padding as is."""
    out = self.normalize_obs(batch)
    out["actions"] = self.normalize_actions(batch["actions"], state=batch["state"])
    if "padding" in batch:
      out["padding"] = batch["padding"]
    return out

  def denormalize_samples(self, samples, state):
    """Samples [K, B, H, 48] in the policy's space -> canonical metres; state [B, 48] metres."""
    return self.denormalize_actions(samples, state=state[None])
