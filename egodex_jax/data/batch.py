"""The batch contract: which keys a batch holds, which of them go where. One place.

Every batch is a dict of arrays in canonical units (metres, camera frame of frame t), as
`docs/interfaces.md` ("Batches") lists them. Training, evaluation and inference take the keys
they need from the tuples below and normalise through `Normalizer.normalize_obs` /
`normalize_batch` (data/normalize.py), never by their own lists.
"""

from __future__ import annotations

import jax
import numpy as np

from egodex_jax import skeleton

# What a policy conditions on: frame t, the goal frame (goal-conditioned runs only), the hand
# state and the instruction.
OBS_KEYS = ("image", "goal_image", "state", "instruction_id")
# What it is trained to predict: the chunk [B, H, 48] and its padding [B, H].
TARGET_KEYS = ("actions", "padding")
# The tracking confidence of the chunk's keypoints [B, H, 12] (KEYPOINT_JOINTS order, frames
# t+1..t+H), in batches made with `make_dataset(..., confidence=True)` only: the loss mask of
# `data.min_confidence` (`loss_padding`) and the evaluator's confident-only figures.
CONFIDENCE_KEY = "confidence"
# The train step's inputs.
TRAIN_KEYS = OBS_KEYS + TARGET_KEYS + (CONFIDENCE_KEY,)
# The evaluator's inputs: also the task (per-task figures) and the known mode (coverage).
EVAL_KEYS = TRAIN_KEYS + ("task_id", "mode", "mode_targets")


def select(batch: dict, keys) -> dict:
  """The entries of `batch` named in `keys` (absent optional keys, e.g. goal_image, skipped)."""
  return {k: batch[k] for k in keys if k in batch}


def loss_padding(batch: dict, min_confidence: float):
  """What the loss leaves out: [B, H, 48] bool, True = padded frame or a dim whose keypoint's
  confidence is below `min_confidence` (a wrist's rotation follows the wrist). NumPy or jit."""
  if CONFIDENCE_KEY not in batch:
    raise KeyError(f"min_confidence={min_confidence} needs the '{CONFIDENCE_KEY}' key: make the "
                   "batches with make_dataset(..., confidence=True).")
  low = batch[CONFIDENCE_KEY] < min_confidence                   # [B, H, 12]
  return batch["padding"][..., None] | low[..., skeleton.DIM_KEYPOINT]


def dummy_batch(*, batch_size: int, horizon: int, image_size: int, goal: bool = False,
                abstract: bool = False) -> dict:
  """A training batch of zeros with the pipeline's layout, or ShapeDtypeStructs (`abstract`)."""
  d = skeleton.ACTION_DIM
  shapes = dict(image=((batch_size, image_size, image_size, 3), np.uint8),
                state=((batch_size, d), np.float32),
                instruction_id=((batch_size,), np.int32),
                actions=((batch_size, horizon, d), np.float32),
                padding=((batch_size, horizon), np.bool_))
  if goal:
    shapes["goal_image"] = shapes["image"]
  if abstract:
    return {k: jax.ShapeDtypeStruct(s, dt) for k, (s, dt) in shapes.items()}
  return {k: np.zeros(s, dt) for k, (s, dt) in shapes.items()}
