"""Baselines scored beside the model on the same samples: `static` and `mean_traj`.

Both are deterministic (one prediction [1, B, H, 48] that counts for every K), so a model that
does not beat them at K = 1 has learnt no more than "the hand stays" or "the average motion".
"""

from __future__ import annotations

from typing import Iterable

import jax.numpy as jnp
import numpy as np


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
