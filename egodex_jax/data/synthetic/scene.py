"""The scene: its constants, rotations, minimum-jerk tracks, smooth noise, the head camera and
the per-episode world frame. Scene frame: y up, the seated person faces -z."""

from __future__ import annotations

import numpy as np

from egodex_jax import skeleton

TABLE_Y = 0.75  # table height in the scene frame (y up, the person faces -z)
HEAD = np.array([0.0, 1.12, 0.02])  # nominal camera position, ~0.55 m from the work area
LOOK_AT = np.array([0.0, TABLE_Y, -0.40])


def rot(axis: str, a):
  """[...] angles -> [..., 3, 3] rotations about a scene axis."""
  a = np.asarray(a, np.float64)
  c, s = np.cos(a), np.sin(a)
  o, z = np.ones_like(a), np.zeros_like(a)
  if axis == "x":
    m = [[o, z, z], [z, c, -s], [z, s, c]]
  elif axis == "y":
    m = [[c, z, s], [z, o, z], [-s, z, c]]
  else:
    m = [[c, -s, z], [s, c, z], [z, z, o]]
  return np.moveaxis(np.array(m), (0, 1), (-2, -1))


def _min_jerk(tau):
  tau = np.clip(tau, 0.0, 1.0)
  return tau**3 * (10 - 15 * tau + 6 * tau**2)


def track(keys: list[tuple[float, np.ndarray]], n: int) -> np.ndarray:
  """Minimum-jerk interpolation through keyframes (frame, value [D]) -> [n, D]; held outside."""
  keys = sorted(keys, key=lambda k: k[0])
  frames = np.arange(n, dtype=np.float64)
  out = np.tile(np.asarray(keys[0][1], np.float64), (n, 1))
  for (f0, v0), (f1, v1) in zip(keys[:-1], keys[1:]):
    v0, v1 = np.asarray(v0, np.float64), np.asarray(v1, np.float64)
    s = _min_jerk((frames - f0) / max(f1 - f0, 1e-6))[:, None]
    seg = frames >= f0
    out[seg] = (v0 + s * (v1 - v0))[seg]
  return out


def smooth_noise(rng, n: int, dims: int, amp: float, freqs=(0.15, 0.4)) -> np.ndarray:
  """[n, dims] sum of a few slow sinusoids (sway, tremor), amplitude ~amp."""
  t = np.arange(n) / skeleton.FPS
  out = np.zeros((n, dims))
  for _ in range(3):
    f = rng.uniform(*freqs, size=dims)
    ph = rng.uniform(0, 2 * np.pi, size=dims)
    out += np.sin(2 * np.pi * f * t[:, None] + ph) * rng.uniform(0.3, 1.0, size=dims)
  return amp * out / 2.0


def poses(R, p) -> np.ndarray:
  """[..., 3, 3], [..., 3] -> [..., 4, 4]."""
  T = np.zeros(np.broadcast_shapes(R.shape[:-2], p.shape[:-1]) + (4, 4))
  T[..., :3, :3] = R
  T[..., :3, 3] = p
  T[..., 3, 3] = 1.0
  return T


def frame_along(x_dir, y_ref) -> np.ndarray:
  """[..., 3] bone directions and reference 'up' -> [..., 3, 3] rotation with x along the bone."""
  x = x_dir / np.linalg.norm(x_dir, axis=-1, keepdims=True)
  y = y_ref - np.sum(y_ref * x, axis=-1, keepdims=True) * x
  alt = np.broadcast_to(np.array([0.0, 0.0, 1.0]), y.shape)
  bad = np.linalg.norm(y, axis=-1, keepdims=True) < 1e-6
  y = np.where(bad, alt - np.sum(alt * x, axis=-1, keepdims=True) * x, y)
  y = y / np.linalg.norm(y, axis=-1, keepdims=True)
  return np.stack([x, y, np.cross(x, y)], axis=-1)


def _lagged(x: np.ndarray, tau_frames: float) -> np.ndarray:
  """[N, D] first-order low-pass (a gaze that follows with a lag)."""
  out = np.empty_like(x)
  out[0] = x[0]
  k = 1.0 / max(tau_frames, 1.0)
  for t in range(1, len(x)):
    out[t] = out[t - 1] + k * (x[t] - out[t - 1])
  return out


def camera_track(rng, n, hands_centre: np.ndarray | None = None) -> np.ndarray:
  """[N, 4, 4] camera-to-scene, OpenCV axes, swaying a few cm and degrees; the gaze drifts
  toward the hands (hands_centre [N, 3]) with a lag, as a person's head does."""
  head = HEAD + rng.uniform([-0.04, -0.03, -0.03], [0.04, 0.03, 0.03])
  pos = head + smooth_noise(rng, n, 3, 0.025, (0.08, 0.35))
  look = LOOK_AT + rng.uniform([-0.05, 0, -0.05], [0.05, 0, 0.05]) + smooth_noise(
      rng, n, 3, 0.05, (0.05, 0.3))
  if hands_centre is not None:
    follow = (hands_centre - LOOK_AT) * np.array([0.3, 0.0, 0.3])
    look = look + _lagged(follow, 0.3 * skeleton.FPS)
  f = look - pos
  f /= np.linalg.norm(f, axis=-1, keepdims=True)
  right = np.cross(f, [0.0, 1.0, 0.0])
  right /= np.linalg.norm(right, axis=-1, keepdims=True)
  down = np.cross(f, right)
  R = np.stack([right, down, f], axis=-1)
  roll = smooth_noise(rng, n, 1, np.radians(3.0), (0.05, 0.3))[:, 0]
  R = R @ rot("z", roll)
  return poses(R, pos)


def world_transform(rng) -> np.ndarray:
  """The per-episode ARKit-like world frame [4, 4]: random yaw and offset, origin near the
  floor."""
  return poses(rot("y", rng.uniform(-np.pi, np.pi)),
               np.array([rng.uniform(-2, 2), rng.uniform(-0.1, 0.1), rng.uniform(-2, 2)]))
