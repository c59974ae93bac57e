"""The 48-D action: hand-computed chunks from real HDF5 files, properties, and the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egodex_jax import geometry
from egodex_jax import skeleton
from egodex_jax.data import actions
from egodex_jax.data import egodex
from egodex_jax.data import synthetic

import broken_episodes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Rz90 = geometry.rotation_about([0, 0, 1], np.pi / 2)  # [[0,-1,0],[1,0,0],[0,0,1]]
Rx90 = geometry.rotation_about([1, 0, 0], np.pi / 2)  # [[1,0,0],[0,0,-1],[0,1,0]]


def _hand_episode(path, n=4):
  """A 4-frame episode built by hand: the camera moves and turns; joints at known places.

  Frame 0 camera: at (1, 2, 3), turned 90 degrees about world z (camera x = world +y,
  camera y = world -x, camera z = world z). Frame 1 camera: the world frame itself.
  """
  T = {name: np.tile(np.eye(4), (n, 1, 1)) for name in skeleton.JOINTS + (skeleton.CAMERA,)}
  T["camera"][0] = geometry.pose(Rz90, [1, 2, 3])
  # leftHand at frame 1: (1, 3, 3), identity rotation.
  T["leftHand"][1] = geometry.pose(None, [1, 3, 3])
  # leftThumbTip at frame 1: (1, 2, 4).
  T["leftThumbTip"][1] = geometry.pose(None, [1, 2, 4])
  # rightHand at frame 2: (1, 2, 5), rotated 90 degrees about world x.
  T["rightHand"][2] = geometry.pose(Rx90, [1, 2, 5])
  # rightLittleFingerTip at frame 3: (3, 2, 3).
  T["rightLittleFingerTip"][3] = geometry.pose(Rx90, [3, 2, 3])
  synthetic.write_hdf5(path, T, attrs={"task": "hand"})
  return T


@pytest.fixture(scope="module")
def hand_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("hand") / "0.hdf5")
  _hand_episode(path)
  return path


def test_chunk_hand_computed(hand_file):
  ep = egodex.load_episode(hand_file, check_video=False)
  a, pad = actions.action_chunk(ep, 0, 3)  # frames 1, 2, 3 in camera frame 0
  assert a.shape == (3, 48) and a.dtype == np.float32 and pad.tolist() == [False] * 3
  # Camera 0 to world: R = Rz90, so world-to-camera is Rz90^T: (x, y, z) -> (y, -x, z).
  # leftHand frame 1: world offset from the camera (0, 1, 0) -> camera (1, 0, 0).
  np.testing.assert_allclose(a[0, 0:3], [1, 0, 0], atol=1e-6)
  # Its rotation is Rz90^T @ I: columns (0, -1, 0) and (1, 0, 0).
  np.testing.assert_allclose(a[0, 3:9], [0, -1, 0, 1, 0, 0], atol=1e-6)
  # leftThumbTip frame 1: offset (0, 0, 1) -> (0, 0, 1); dims 9:12.
  np.testing.assert_allclose(a[0, 9:12], [0, 0, 1], atol=1e-6)
  # rightHand frame 2: offset (0, 0, 2) -> (0, 0, 2); rotation Rz90^T @ Rx90: columns
  # Rz90^T (1, 0, 0) = (0, -1, 0) and Rz90^T (0, 0, 1) = (0, 0, 1).
  np.testing.assert_allclose(a[1, 24:27], [0, 0, 2], atol=1e-6)
  np.testing.assert_allclose(a[1, 27:33], [0, -1, 0, 0, 0, 1], atol=1e-6)
  # rightLittleFingerTip frame 3 (last of the 15 right tip dims): offset (2, 0, 0) -> (0, -2, 0).
  np.testing.assert_allclose(a[2, 45:48], [0, -2, 0], atol=1e-6)
  # Joints left at the world origin (identity): offset (-1, -2, -3) -> (-2, 1, -3).
  np.testing.assert_allclose(a[0, 12:15], [-2, 1, -3], atol=1e-6)


def test_chunk_uses_camera_of_t_not_of_the_future(hand_file):
  ep = egodex.load_episode(hand_file, check_video=False)
  # From t = 1 the camera is the world frame: poses are world coordinates, even though frame 0's
  # camera was elsewhere.
  a, _ = actions.action_chunk(ep, 1, 1)
  np.testing.assert_allclose(a[0, 24:27], [1, 2, 5], atol=1e-6)
  np.testing.assert_allclose(a[0, 27:33], [1, 0, 0, 0, 0, 1], atol=1e-6)
  s = actions.hand_state(ep, 1)
  np.testing.assert_allclose(s[0:3], [1, 3, 3], atol=1e-6)
  np.testing.assert_allclose(s[3:9], [1, 0, 0, 0, 1, 0], atol=1e-6)


def test_padding_repeats_last_frame(hand_file):
  ep = egodex.load_episode(hand_file, check_video=False)
  a, pad = actions.action_chunk(ep, 1, 5)  # frames 2, 3 valid; 4, 5, 6 past the end (N = 4)
  assert pad.tolist() == [False, False, True, True, True]
  for k in (2, 3, 4):
    np.testing.assert_array_equal(a[k], a[1])
  a, pad = actions.action_chunk(ep, 3, 2)  # the last frame: everything is padding
  assert pad.all()
  np.testing.assert_allclose(a[0], actions.hand_state(ep, 3), atol=1e-6)


def test_out_of_range_and_bad_horizon(hand_file):
  ep = egodex.load_episode(hand_file, check_video=False)
  for t in (-1, 4, 100):
    with pytest.raises(ValueError, match="outside"):
      actions.action_chunk(ep, t, 2)
  with pytest.raises(ValueError):
    actions.hand_state(ep, 4)
  with pytest.raises(ValueError, match="horizon"):
    actions.action_chunk(ep, 0, 0)


def _random_episode(seed, n):
  rng = np.random.default_rng(seed)
  def rand_poses():
    q = rng.normal(size=(n, 4))
    R = np.stack([geometry.rotation_about(v[:3], v[3]) for v in q])
    return np.stack([geometry.pose(r, rng.normal(size=3)) for r in R]).astype(np.float32)
  T = {name: rand_poses() for name in skeleton.JOINTS + (skeleton.CAMERA,)}
  return egodex.Episode("mem.hdf5", "mem.mp4", T, skeleton.default_intrinsic(), None, "", "t", {})


def test_windows_match_chunks():
  ep = _random_episode(0, 23)
  w, nf = actions.action_windows(ep, 7)
  assert w.shape == (23, 8, 48) and w.dtype == np.float32
  assert nf.dtype == np.int32 and nf.tolist() == [min(7, 22 - t) for t in range(23)]
  for t in (0, 5, 16, 20, 22):
    a, pad = actions.action_chunk(ep, t, 7)
    np.testing.assert_allclose(w[t, 1:], a, atol=1e-6)
    np.testing.assert_allclose(w[t, 0], actions.hand_state(ep, t), atol=1e-6)
    assert int((~pad).sum()) == nf[t]


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-np.pi, np.pi), st.tuples(
    *[st.floats(-10, 10)] * 3), st.integers(0, 9))
def test_chunk_invariant_to_world_frame(seed, yaw, offset, t):
  """A rigid change of world frame (ARKit's per-episode origin) changes nothing."""
  ep = _random_episode(seed, 10)
  G = geometry.pose(geometry.rotation_about([0.2, 1, 0.1], yaw), offset)
  moved = egodex.Episode("mem.hdf5", "mem.mp4", {k: (G @ v).astype(np.float32)
                                                 for k, v in ep.transforms.items()},
                         ep.intrinsic, None, "", "t", {})
  a, pad = actions.action_chunk(ep, t, 6)
  b, pad_b = actions.action_chunk(moved, t, 6)
  np.testing.assert_array_equal(pad, pad_b)
  # float32 storage of poses up to ~17 m away: a few 1e-6 relative.
  np.testing.assert_allclose(a, b, atol=2e-4)
  # Distances between keypoints are world-frame invariants too.
  ka, kb = skeleton.keypoints(a), skeleton.keypoints(b)
  da = np.linalg.norm(ka[:, :, None] - ka[:, None], axis=-1)
  db = np.linalg.norm(kb[:, :, None] - kb[:, None], axis=-1)
  np.testing.assert_allclose(da, db, atol=4e-4)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 12), st.integers(1, 9))
def test_rotation_dims_decode_to_the_wrist_rotation(seed, n, horizon):
  ep = _random_episode(seed, n)
  t = n // 2
  a, pad = actions.action_chunk(ep, t, horizon)
  assert pad.tolist() == [t + 1 + k > n - 1 for k in range(horizon)]
  for k in range(horizon):
    f = min(t + 1 + k, n - 1)
    for side in skeleton.SIDES:
      o = skeleton.hand_offset(side)
      R = geometry.rotation_from_6d(a[k, o + 3:o + 9].astype(np.float64))
      P = geometry.in_frame(ep.camera[t].astype(np.float64),
                            ep.transforms[skeleton.wrist(side)][f].astype(np.float64))
      np.testing.assert_allclose(R, P[:3, :3], atol=1e-5)


def test_mask_windows_pads_non_finite_rows_with_the_last_finite_one():
  w = np.tile(np.arange(4.0, dtype=np.float32)[None, :, None], (3, 1, 48))  # row r holds r
  w[0, 2, 5] = np.nan  # one future row spoilt
  w[1, 0, 0] = np.inf  # the state: no sample
  w[2, 1:3] = np.nan  # two in a row
  out, pad = actions.mask_windows(w, np.array([3, 3, 2]))
  assert np.isfinite(out).all() and out.dtype == np.float32
  assert pad.tolist() == [[False, False, True, False], [True] * 4, [False, True, True, True]]
  np.testing.assert_array_equal(out[0, :, 0], [0, 1, 1, 3])  # row 2 holds row 1
  assert not out[1].any()
  np.testing.assert_array_equal(out[2, :, 0], [0, 0, 0, 3])  # row 3: past the end, kept as is


@pytest.fixture(scope="module")
def nan_file(tmp_path_factory):
  """24 frames: leftHand non-finite at 8 and 9, the camera at 16 (broken_episodes)."""
  h, _ = broken_episodes.write_broken_episode(str(tmp_path_factory.mktemp("nan")), "nan_frames",
                                              num_frames=24)
  assert broken_episodes.nan_frames("nan_frames", 24) == {"leftHand": [8, 9], "camera": [16]}
  return h


def test_chunk_pads_exactly_the_non_finite_future(nan_file):
  ep = egodex.load_episode(nan_file, check_video=False, partial=True)
  a, pad = actions.action_chunk(ep, 5, 6)  # frames 6..11
  assert pad.tolist() == [False, False, True, True, False, False] and np.isfinite(a).all()
  np.testing.assert_array_equal(a[2], a[1])  # frames 8, 9 hold frame 7
  np.testing.assert_array_equal(a[3], a[1])
  for k, f in ((0, 6), (4, 10), (5, 11)):  # the real rows: leftHand in camera frame 5
    want = geometry.in_frame(ep.camera[5].astype(np.float64),
                             ep.transforms["leftHand"][f].astype(np.float64))[:3, 3]
    np.testing.assert_allclose(a[k, 0:3], want, atol=1e-5)
  # The camera at 16 spoils frame 16's own state only: a future is in the camera of its start.
  assert actions.action_chunk(ep, 14, 4)[1].tolist() == [False] * 4
  for t in (8, 9, 16):
    with pytest.raises(ValueError, match=f"frame {t} has non-finite poses"):
      actions.action_chunk(ep, t, 3)
    with pytest.raises(ValueError, match="non-finite"):
      actions.hand_state(ep, t)


# --- the CLI, as a real subprocess ----------------------------------------------------


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "egodex_jax.data.actions", *args], cwd=REPO,
                        capture_output=True, text=True, env=env, timeout=120)


def test_cli_prints_the_chunk(hand_file):
  r = _cli(hand_file, "--frame", "0", "--horizon", "5")
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  ep = egodex.load_episode(hand_file, check_video=False)
  a, pad = actions.action_chunk(ep, 0, 5)
  assert out["padding"] == pad.tolist() == [False, False, False, True, True]
  np.testing.assert_allclose(np.array(out["actions"]), a, atol=1e-7)
  assert len(out["actions"]) == 5 and all(len(row) == 48 for row in out["actions"])


def _no_nan(constant):
  raise ValueError(f"{constant} in the JSON")


def test_cli_flags_non_finite_frames_as_the_builder_does(nan_file):
  r = _cli(nan_file, "--frame", "5", "--horizon", "6")
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout, parse_constant=_no_nan)  # strict JSON: no NaN / Infinity
  assert out["padding"] == [False, False, True, True, False, False]
  ep = egodex.load_episode(nan_file, check_video=False, partial=True)
  np.testing.assert_allclose(np.array(out["actions"]), actions.action_chunk(ep, 5, 6)[0],
                             atol=1e-7)
  for t in ("9", "16"):  # a frame whose own state is non-finite is no sample: bad input
    r = _cli(nan_file, "--frame", t, "--horizon", "2")
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and f"frame {t} has non-finite" in r.stderr
    assert nan_file in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("case", ["missing", "not_hdf5", "frame_high", "frame_negative",
                                  "horizon_zero", "no_args", "bad_int"])
def test_cli_bad_input_one_line_exit_2(case, hand_file, tmp_path):
  bogus = tmp_path / "x.hdf5"
  bogus.write_text("not hdf5")
  args = {
      "missing": [str(tmp_path / "nope.hdf5"), "--frame", "0", "--horizon", "2"],
      "not_hdf5": [str(bogus), "--frame", "0", "--horizon", "2"],
      "frame_high": [hand_file, "--frame", "4", "--horizon", "2"],
      "frame_negative": [hand_file, "--frame", "-1", "--horizon", "2"],
      "horizon_zero": [hand_file, "--frame", "0", "--horizon", "0"],
      "no_args": [],
      "bad_int": [hand_file, "--frame", "one", "--horizon", "2"],
  }[case]
  r = _cli(*args)
  assert r.returncode == 2
  assert r.stdout == ""
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert "Traceback" not in r.stderr
