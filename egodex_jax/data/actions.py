"""The 48-D EgoDex action (docs/egodex_format.md, section 3): chunks, hand state and stored windows.

For frame t every pose is expressed in the camera frame of t: `inv(T_camera[t]) @ T_joint[t+k]`.
Per frame, left hand then right: wrist position (3), wrist rotation 6-D (R[:, 0], R[:, 1]),
fingertip positions thumb, index, middle, ring, little (15). Computed in float64, returned float32.

Episodes loaded with `egodex.load_episode(..., partial=True)` may hold non-finite poses: a frame
whose own state is non-finite is not a sample (action_chunk / hand_state raise ValueError), and a
non-finite future row is padding like a row past the end, holding the last finite row before it
(`mask_windows`), so no NaN leaves this module through a chunk.

CLI (a contract): `python -m egodex_jax.data.actions EPISODE.hdf5 --frame T --horizon H` prints
`{"actions": [[48 floats] x H], "padding": [H bools]}`; bad input (a frame whose state is
non-finite included): one stderr line, exit code 2.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from egodex_jax import cli
from egodex_jax import skeleton

_ROWS_PER_BLOCK = 1024  # bounds the memory of action_windows on long episodes


# The 48 dims are 16 world-frame 3-vectors in action order: per hand the wrist position, the
# wrist rotation's columns 0 and 1, then the five fingertip positions. Points move with the
# camera's translation, directions only rotate.
_IS_POINT = np.array(([True, False, False] + [True] * 5) * 2)  # [16]


def _vectors(episode, frames=slice(None)) -> np.ndarray:
  """-> [F, 16, 3] float64 world-frame vectors in action order (all N frames by default)."""
  tr = episode.transforms
  cols = []
  for side in skeleton.SIDES:
    w = tr[skeleton.wrist(side)][frames]
    cols += [w[:, :3, 3], w[:, :3, 0], w[:, :3, 1]]
    cols += [tr[skeleton.fingertip(side, f)][frames, :3, 3] for f in skeleton.FINGERTIP_ORDER]
  return np.stack(cols, axis=1).astype(np.float64)


def _encode(cam_t: np.ndarray, vectors: np.ndarray) -> np.ndarray:
  """cam_t [T, 4, 4] camera-to-world at the anchors, vectors [T, F, 16, 3] world-frame
  -> [T, F, 48] float64 in each anchor's camera frame: R^T (v - c) for points, R^T v else."""
  R = cam_t[:, :3, :3].astype(np.float64)  # [T, 3, 3]
  c = cam_t[:, :3, 3].astype(np.float64)  # [T, 3]
  T, F = vectors.shape[:2]
  # Row vectors: (R^T v)^T = v^T R, one batched matmul per anchor block.
  out = (vectors.reshape(T, F * 16, 3) @ R).reshape(T, F, 16, 3)
  cR = np.einsum("tj,tji->ti", c, R)  # R^T c, [T, 3]
  out -= np.where(_IS_POINT[:, None], cR[:, None, None, :], 0.0)  # [T, 1, 16, 3]
  return out.reshape(T, F, skeleton.ACTION_DIM)


def _check_t(episode, t) -> int:
  n = episode.num_frames
  if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
    raise ValueError(f"frame index must be an integer, got {t!r}")
  if not 0 <= int(t) < n:
    raise ValueError(f"frame {t} is outside the episode's {n} frames [0, {n})")
  return int(t)


def _frames(episode, t: int, frames: np.ndarray) -> np.ndarray:
  """[F] frame indices (valid) -> [F, 48] float64 in camera frame t."""
  return _encode(episode.camera[t:t + 1], _vectors(episode, frames)[None])[0]


def mask_windows(windows: np.ndarray, num_future: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Windows that may hold non-finite rows -> (windows, padding [T, R] bool), R = M+1 rows.

  windows [T, R, 48] as action_windows gives them; padding[:, 0] is True where the state (row 0)
  is non-finite (the frame is no sample: its window is returned as zeros), padding[:, k] for
  k >= 1 where row k lies past the end (k > num_future) or is non-finite. A non-finite row holds
  the last finite row before it, so the windows returned are finite everywhere.
  """
  windows = np.asarray(windows)
  finite = np.isfinite(windows).all(-1)  # [T, R]
  rows = np.arange(windows.shape[1])
  # Forward fill: each row takes the last finite row at or before it (row 0 when none is).
  src = np.maximum.accumulate(np.where(finite, rows[None], 0), axis=1)
  out = np.take_along_axis(windows, src[..., None], axis=1)
  padding = ~finite | (rows[None] > np.asarray(num_future)[:, None])
  padding[:, 0] = ~finite[:, 0]
  out = np.where(padding[:, :1, None], 0, out).astype(windows.dtype)
  padding |= padding[:, :1]  # no sample, no future
  return out, padding


def _window(episode, t: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
  """Frame t's masked window: ([H+1, 48] float32, padding [H+1] bool); ValueError when frame t's
  state is non-finite (not a sample)."""
  n = episode.num_frames
  frames = np.minimum(t + np.arange(horizon + 1), n - 1)
  window = _frames(episode, t, frames).astype(np.float32)[None]
  window, padding = mask_windows(window, np.array([min(horizon, n - 1 - t)]))
  if padding[0, 0]:
    raise ValueError(f"frame {t} has non-finite poses in its hand state (it is not a sample)")
  return window[0], padding[0]


def action_chunk(episode, t: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
  """Frames t+1..t+H in camera frame t -> (actions [H, 48] float32, padding [H] bool).

  Frames past the episode's end are padding (True) and repeat the last valid frame; so are
  non-finite frames (they hold the last finite one before them, see mask_windows).
  """
  t = _check_t(episode, t)
  if isinstance(horizon, bool) or int(horizon) != horizon or horizon < 1:
    raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
  window, padding = _window(episode, t, int(horizon))
  return window[1:], padding[1:]


def hand_state(episode, t: int) -> np.ndarray:
  """The 48 numbers of frame t in its own camera frame: [48] float32."""
  return _window(episode, _check_t(episode, t), 0)[0][0]


def action_windows(episode, max_horizon: int) -> tuple[np.ndarray, np.ndarray]:
  """Every frame's state and future, vectorised: (windows [N, M+1, 48] float32, num_future [N]).

  Row 0 of window t is hand_state(t); rows 1..M are frames t+1..t+M in camera frame t, past the
  end the last valid frame repeated. num_future[t] = min(M, N-1-t). Non-finite poses give
  non-finite rows here; `mask_windows` turns them into padding.
  """
  if isinstance(max_horizon, bool) or int(max_horizon) != max_horizon or max_horizon < 0:
    raise ValueError(f"max_horizon must be an integer >= 0, got {max_horizon!r}")
  m = int(max_horizon)
  cam = episode.camera
  vectors = _vectors(episode)  # [N, 16, 3]
  n = cam.shape[0]
  out = np.empty((n, m + 1, skeleton.ACTION_DIM), np.float32)
  for start in range(0, n, _ROWS_PER_BLOCK):
    t = np.arange(start, min(n, start + _ROWS_PER_BLOCK))
    idx = np.minimum(t[:, None] + np.arange(m + 1)[None], n - 1)  # [T, M+1]
    out[start:start + len(t)] = _encode(cam[t], vectors[idx])
  num_future = np.minimum(m, n - 1 - np.arange(n)).astype(np.int32)
  return out, num_future


# --- CLI ----------------------------------------------------------------------------


def main(argv=None) -> int:
  parser = cli.ArgumentParser(prog="python -m egodex_jax.data.actions",
                              description="Print the 48-D action chunk of one EgoDex frame as "
                              "JSON.")
  parser.add_argument("episode", help="path to the episode's .hdf5 (the mp4 is not needed)")
  parser.add_argument("--frame", type=int, required=True, help="frame index t")
  parser.add_argument("--horizon", type=int, required=True, help="number of future frames H")
  args = parser.parse_args(argv)
  from egodex_jax.data import egodex  # pylint: disable=g-import-not-at-top
  if args.horizon < 1:
    cli.fail(f"error: --horizon must be >= 1, got {args.horizon}")
  try:
    # Partial, as the dataset builder reads it: a non-finite future frame is padding, a frame
    # whose own state is non-finite is refused (action_chunk's ValueError).
    episode = egodex.load_episode(args.episode, check_video=False, partial=True)
    actions, padding = action_chunk(episode, args.frame, args.horizon)
  except egodex.EpisodeError as e:
    cli.fail(f"error: {e}")
  except ValueError as e:
    cli.fail(f"error: {args.episode}: {e}")
  except Exception as e:  # pylint: disable=broad-except
    cli.fail(f"error: {args.episode}: {type(e).__name__}: {e}")
  try:
    sys.stdout.write(json.dumps({"actions": actions.tolist(), "padding": padding.tolist()}) + "\n")
    sys.stdout.flush()
  except BrokenPipeError:  # e.g. piped into `head`: not an error of ours
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  return 0


if __name__ == "__main__":
  sys.exit(main())
