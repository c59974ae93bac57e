"""SE(3), 6-D rotations and projection: hand-derived values and properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egodex_jax import geometry

_angles = st.floats(-np.pi, np.pi, allow_nan=False)
_axes = st.tuples(*[st.floats(-1, 1, allow_nan=False)] * 3).filter(
    lambda a: np.linalg.norm(a) > 0.1)
_vec = st.tuples(*[st.floats(-5, 5, allow_nan=False)] * 3)


def test_rotation_about_z_quarter_turn():
  R = geometry.rotation_about([0, 0, 1], np.pi / 2)
  np.testing.assert_allclose(R @ [1, 0, 0], [0, 1, 0], atol=1e-12)
  np.testing.assert_allclose(R @ [0, 1, 0], [-1, 0, 0], atol=1e-12)


def test_in_frame_hand_computed():
  # Camera at (1, 2, 3) turned 90 degrees about world z: its x axis is world +y, so a point 1 m
  # along world +y from it has camera coordinates (1, 0, 0).
  cam = geometry.pose(geometry.rotation_about([0, 0, 1], np.pi / 2), [1, 2, 3])
  joint = geometry.pose(None, [1, 3, 3])
  P = geometry.in_frame(cam, joint)
  np.testing.assert_allclose(P[:3, 3], [1, 0, 0], atol=1e-12)
  np.testing.assert_allclose(P[:3, :3], cam[:3, :3].T, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(_axes, _angles, _vec)
def test_se3_inverse_is_inverse(axis, angle, p):
  T = geometry.pose(geometry.rotation_about(axis, angle), p)
  np.testing.assert_allclose(geometry.se3_inverse(T) @ T, np.eye(4), atol=1e-9)
  assert geometry.is_rigid(T)


@settings(max_examples=40, deadline=None)
@given(_axes, _angles)
def test_6d_round_trip(axis, angle):
  R = geometry.rotation_about(axis, angle)
  np.testing.assert_allclose(geometry.rotation_from_6d(geometry.rotation_to_6d(R)), R, atol=1e-9)


def test_6d_decode_orthonormalises():
  r6 = np.array([2.0, 0.1, 0.0, 0.5, 1.0, 0.3])
  R = geometry.rotation_from_6d(r6)
  np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
  assert np.linalg.det(R) == pytest.approx(1.0)
  np.testing.assert_allclose(R[:, 0], r6[:3] / np.linalg.norm(r6[:3]))


def test_is_rigid_rejects_scale_and_reflection():
  T = np.stack([np.eye(4)] * 3)
  T[1, :3, :3] *= 1.5
  T[2, 0, 0] = -1.0
  assert geometry.is_rigid(T).tolist() == [True, False, False]


def test_project_pixels_and_behind_camera():
  K = np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
  uv = geometry.project(np.array([[0.1, -0.2, 2.0], [0.0, 0.0, -1.0]]), K)
  np.testing.assert_allclose(uv[0], [55.0, 30.0])
  assert np.isnan(uv[1]).all()
