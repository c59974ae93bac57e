"""SE(3) and rotation helpers, in NumPy (data layer) with array-API-neutral math.

Conventions: poses are 4x4 homogeneous matrices, `T_a_b` maps points from frame b to frame a.
EgoDex stores joint-to-world and camera-to-world; the benchmark expresses joints in the camera
frame of the current frame: `inv(T_world_cam[t]) @ T_world_joint[t + k]`.
Camera axes follow OpenCV (x right, y down, z forward).
"""

from __future__ import annotations

import numpy as np


def se3_inverse(T: np.ndarray) -> np.ndarray:
  """[..., 4, 4] rigid transforms -> their inverses (R^T, -R^T p), exact for rigid T."""
  R = T[..., :3, :3]
  p = T[..., :3, 3]
  Rt = np.swapaxes(R, -1, -2)
  out = np.zeros_like(T)
  out[..., :3, :3] = Rt
  out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, p)
  out[..., 3, 3] = 1.0
  return out


def in_frame(T_world_frame: np.ndarray, T_world_x: np.ndarray) -> np.ndarray:
  """Express poses T_world_x [..., 4, 4] in `frame`: inv(T_world_frame) @ T_world_x."""
  return se3_inverse(T_world_frame) @ T_world_x


def rotation_to_6d(R: np.ndarray) -> np.ndarray:
  """[..., 3, 3] -> [..., 6]: first column, then second column."""
  return np.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


def rotation_from_6d(r6, xp=np):
  """[..., 6] -> [..., 3, 3] by Gram-Schmidt (works with numpy or jax.numpy via `xp`)."""
  a, b = r6[..., :3], r6[..., 3:6]
  c0 = a / xp.linalg.norm(a, axis=-1, keepdims=True)
  b = b - xp.sum(c0 * b, axis=-1, keepdims=True) * c0
  c1 = b / xp.linalg.norm(b, axis=-1, keepdims=True)
  c2 = xp.cross(c0, c1)
  return xp.stack([c0, c1, c2], axis=-1)


def is_rigid(T: np.ndarray, atol: float = 1e-3) -> np.ndarray:
  """[..., 4, 4] -> [...] bool: orthonormal rotation with det +1 and last row (0, 0, 0, 1)."""
  R = T[..., :3, :3].astype(np.float64)
  eye = np.eye(3)
  ortho = np.abs(np.swapaxes(R, -1, -2) @ R - eye).max(axis=(-1, -2)) < atol
  det = np.abs(np.linalg.det(R) - 1.0) < atol
  last = np.abs(T[..., 3, :] - np.array([0, 0, 0, 1.0])).max(axis=-1) < atol
  return ortho & det & last


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
  """Pinhole projection: [..., 3] camera-frame points -> [..., 2] pixels (u, v).

  Points behind the camera (z <= 0) give NaN so a caller can skip drawing them.
  """
  z = points_cam[..., 2:3]
  uvw = points_cam @ np.asarray(K, points_cam.dtype).T
  with np.errstate(divide="ignore", invalid="ignore"):
    uv = uvw[..., :2] / uvw[..., 2:3]
  return np.where(z > 1e-6, uv, np.nan)


def rotation_about(axis, angle: float) -> np.ndarray:
  """Rodrigues: the 3x3 rotation by `angle` radians about `axis`."""
  axis = np.asarray(axis, np.float64)
  axis = axis / np.linalg.norm(axis)
  x, y, z = axis
  K = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
  return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * (K @ K)


def pose(R=None, p=None) -> np.ndarray:
  """A 4x4 pose from a rotation and a translation (identity by default)."""
  T = np.eye(4)
  if R is not None:
    T[:3, :3] = R
  if p is not None:
    T[:3, 3] = p
  return T
