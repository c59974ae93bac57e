"""Worker side of the EgoDex build: one raw episode -> its per-frame records.

Runs in the builder's process pool (and on Beam workers), so everything here is a module-level
function that pickles by name; nothing needs TFDS.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pickle
import tempfile
from typing import Any, Iterator

import numpy as np

from egodex_jax import geometry
from egodex_jax import skeleton
from egodex_jax.data import actions as actions_lib
from egodex_jax.data import egodex
from egodex_jax.data import frames as frames_lib

MAX_MODES = 2  # rows of a record's mode_targets
CHUNK_FRAMES = 64  # frames per pickled chunk in a worker's spill file
# An episode with more unusable frames (no image, or a non-finite state) than this fraction is
# skipped whole; below it the episode keeps its good frames.
MAX_UNUSABLE_FRACTION = 0.5


def _mode(attrs: dict[str, Any]) -> tuple[int, np.ndarray]:
  """Synthetic episodes' mode and world-frame targets [MAX_MODES, 3]; real ones: -1, zeros."""
  targets = np.zeros((MAX_MODES, 3), np.float64)
  mode = attrs.get("mode", -1)
  try:
    mode = int(mode)
    raw = attrs.get("mode_targets", "[]")
    pts = np.asarray(json.loads(raw) if isinstance(raw, str) else raw, np.float64).reshape(-1, 3)
    targets[:min(len(pts), MAX_MODES)] = pts[:MAX_MODES]
  except (TypeError, ValueError):
    mode = -1
  return mode, targets


def probe(pair: tuple[str, str]) -> dict[str, Any]:
  """Validates one episode (poses, and how far the video decodes) and plans its records; never
  raises. A partial episode (some frames unusable, at most half) is planned with its good
  frames: records for the frames that have an image (`num_frames` of them), `dropped` the
  ones among them whose state is non-finite (placeholder records, not samples)."""
  try:
    ep = egodex.load_episode(*pair, check_video=True, partial=True)
    mode, _ = _mode(ep.attrs)
    plan = plan_frames(ep)
    return {"ok": True, "task": ep.task, "instruction": ep.instruction, "mode": mode, **plan}
  except Exception as e:  # pylint: disable=broad-except
    return {"ok": False, "reason": _reason(pair[0], e)}


def plan_frames(ep: egodex.Episode) -> dict[str, Any]:
  """-> {num_frames (records: frames with an image), pose_frames (N), dropped (frames < num_frames
  with a non-finite state), frames_dropped (all unusable frames), partial (None, or one sentence
  saying which frames and why)}; EpisodeError when over half the frames are unusable."""
  n = ep.num_frames
  images = n if ep.video_frames is None else ep.video_frames
  state_ok = np.isfinite(actions_lib.action_windows(ep, 0)[0][:, 0]).all(-1)  # [N]
  dropped = np.flatnonzero(~state_ok[:images]).tolist()
  unusable = n - images + len(dropped)
  why = []
  if dropped:
    why.append(f"{len(dropped)} frame(s) with non-finite poses in their hand state (first at "
               f"frame {dropped[0]})")
  if images < n:
    why.append(f"its video decodes {images} of the {n} frames (frames {images}..{n - 1} have "
               "no image)")
  why = "; ".join(why)
  if unusable > MAX_UNUSABLE_FRACTION * n:
    raise egodex.EpisodeError(f"{ep.hdf5_path}: {unusable} of its {n} frames are unusable, over "
                              f"half ({why})")
  return {"num_frames": images, "pose_frames": n, "dropped": dropped, "frames_dropped": unusable,
          "partial": f"{ep.hdf5_path}: {why}" if unusable else None}


def _reason(path: str, e: Exception) -> str:
  if isinstance(e, egodex.EpisodeError):
    return str(e)
  return f"{path}: {type(e).__name__}: {e}"


def _slice(ep: egodex.Episode, start: int, stop: int) -> egodex.Episode:
  return dataclasses.replace(ep, transforms={k: v[start:stop] for k, v in ep.transforms.items()})


def episode_records(pair: tuple[str, str], image_size: int, max_horizon: int,
                    num_records: int | None = None) -> Iterator[dict[str, Any]]:
  """Streams one episode's per-frame records (without ids) for frames 0..num_records-1 (default
  N, as `probe` planned them); raises EpisodeError on faults. Rows that are not real (past the
  end, non-finite) are marked in `padding` [M+1] and hold finite values; a frame whose state is
  non-finite gets a placeholder record (zero window, padding all True, not a sample)."""
  ep = egodex.load_episode(*pair, check_video=False, partial=True)
  n = ep.num_frames
  num_records = n if num_records is None else num_records
  mode, targets_world = _mode(ep.attrs)
  conf = np.ones((n, len(skeleton.KEYPOINT_JOINTS)), np.float32)
  if ep.confidences is not None:
    conf = np.stack([ep.confidences[j] for j in skeleton.KEYPOINT_JOINTS], 1).astype(np.float32)
  inv_cam = geometry.se3_inverse(ep.camera.astype(np.float64))  # [N, 4, 4] world-to-camera
  window = num_future = padding = None
  with egodex.VideoReader(ep.video_path) as reader:
    frames = iter(reader)
    for t in range(num_records):
      if t % CHUNK_FRAMES == 0:  # windows of a block: slice M frames past it, not the episode
        stop = min(n, t + CHUNK_FRAMES + max_horizon)
        window, num_future = actions_lib.action_windows(_slice(ep, t, stop), max_horizon)
        window, padding = actions_lib.mask_windows(window, num_future)
      frame = next(frames, None)
      if frame is None:
        raise egodex.EpisodeError(f"{pair[0]}: its video ends at frame {t}, before the "
                                  f"{num_records} frames planned")
      try:
        jpeg = frames_lib.encode_frame(frame, image_size)
      except ValueError:
        raise egodex.EpisodeError(f"{pair[0]}: OpenCV could not JPEG-encode frame {t}") from None
      i = t % CHUNK_FRAMES
      mode_targets = np.zeros((MAX_MODES, 3))
      if mode >= 0 and not padding[i, 0]:  # a sample's camera is finite
        R, p = inv_cam[t, :3, :3], inv_cam[t, :3, 3]
        mode_targets = targets_world @ R.T + p
      yield {"image": jpeg, "window": window[i], "num_future": np.int32(num_future[i]),
             "padding": padding[i], "frame": np.int32(t), "confidence": conf[t],
             "mode": np.int32(mode), "mode_targets": mode_targets.astype(np.float32)}


def encode_episode(job: tuple[tuple[str, str], int, int, str, int]) -> dict[str, Any]:
  """Worker task: spills the episode's planned records to a pickle file in chunks; never
  raises."""
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)  # one process per core already
  pair, image_size, max_horizon, spill_dir, num_records = job
  fd, path = tempfile.mkstemp(suffix=".pkl", dir=spill_dir)
  count = 0
  try:
    with os.fdopen(fd, "wb") as f:
      chunk = []
      for rec in episode_records(pair, image_size, max_horizon, num_records):
        chunk.append(rec)
        if len(chunk) == CHUNK_FRAMES:
          pickle.dump(chunk, f, protocol=pickle.HIGHEST_PROTOCOL)
          count += len(chunk)
          chunk = []
      if chunk:
        pickle.dump(chunk, f, protocol=pickle.HIGHEST_PROTOCOL)
        count += len(chunk)
    return {"ok": True, "spill": path, "num_records": count}
  except Exception as e:  # pylint: disable=broad-except
    if os.path.exists(path):
      os.remove(path)
    return {"ok": False, "reason": _reason(pair[0], e)}


def read_spill(path: str) -> Iterator[dict[str, Any]]:
  try:
    with open(path, "rb") as f:
      while True:
        try:
          chunk = pickle.load(f)
        except EOFError:
          return
        yield from chunk
  finally:
    os.remove(path)


def beam_episode(job: dict[str, Any], image_size: int, max_horizon: int):
  """Beam: one planned episode -> (key, record); keys are record indices (disable_shuffling
  sorts by them). An episode that passed the probe but fails here fails the job, since a hole
  would shift every later record index."""
  ids = {"episode_id": np.int32(job["episode_id"]), "task_id": np.int32(job["task_id"]),
         "instruction_id": np.int32(job["instruction_id"])}
  for t, rec in enumerate(episode_records(tuple(job["pair"]), image_size, max_horizon,
                                          job["num_records"])):
    rec.update(ids)
    yield job["first_index"] + t, rec


def ordered_map(pool, fn, jobs, ahead: int) -> Iterator[Any]:
  """pool.map in order with at most `ahead` tasks in flight (bounded memory and disk)."""
  pending = collections.deque()
  jobs = iter(jobs)
  for job in jobs:
    pending.append(pool.submit(fn, job))
    if len(pending) >= ahead:
      break
  while pending:
    result = pending.popleft().result()
    nxt = next(jobs, None)
    if nxt is not None:
      pending.append(pool.submit(fn, nxt))
    yield result
