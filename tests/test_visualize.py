"""The skeleton overlay CLI on a synthetic episode (real HDF5 + MP4)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from egodex_jax import visualize
from egodex_jax.data import egodex
from egodex_jax.data import synthetic

import broken_episodes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W, H, N = 96, 72, 12


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
  d = tmp_path_factory.mktemp("viz")
  h5, mp4 = str(d / "0.hdf5"), str(d / "0.mp4")
  synthetic.write_episode(h5, mp4, "put_block_on_mat", seed=0, episode=0, width=W, height=H,
                          num_frames=N)
  return h5, mp4


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "egodex_jax.visualize", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def _frames(path):
  with egodex.VideoReader(path) as reader:
    return np.stack(list(reader))


def test_overlay_video_has_the_frames_and_draws_near_the_joints(episode, tmp_path):
  h5, mp4 = episode
  out = str(tmp_path / "overlay.mp4")
  proc = _cli(h5, "--out", out, "--max_frames", "8")
  assert proc.returncode == 0, proc.stderr
  drawn, raw = _frames(out), _frames(mp4)
  assert drawn.shape == (8, H, W, 3)

  ep = egodex.load_episode(h5)
  joints, _, _ = visualize.hand_drawing_plan()
  near, far = [], []
  yy, xx = np.mgrid[:H, :W]
  for i in range(8):
    uv = visualize.project_hands(ep, i, joints)
    inside = np.isfinite(uv).all(-1) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (
        uv[:, 1] < H)
    assert inside.sum() >= 10  # the synthetic hands are in view
    dist = np.min(np.hypot(xx[..., None] - uv[inside, 0], yy[..., None] - uv[inside, 1]), -1)
    diff = np.abs(drawn[i].astype(int) - raw[i].astype(int)).sum(-1)
    near.append(diff[dist <= 1.0].mean())
    far.append(diff[dist > 12].mean())
  assert np.mean(near) > 40 and np.mean(near) > 4 * np.mean(far), (near, far)


def test_whole_episode_by_default(episode, tmp_path):
  out = str(tmp_path / "all.mp4")
  assert visualize.render_episode(episode[0], out) == N
  assert _frames(out).shape[0] == N


def test_bad_input_exits_2_with_one_line(tmp_path):
  proc = _cli(str(tmp_path / "missing.hdf5"), "--out", str(tmp_path / "o.mp4"))
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1 and "missing.hdf5" in proc.stderr
  h5, _ = broken_episodes.write_broken_episode(str(tmp_path), "missing_joint")
  proc = _cli(h5, "--out", str(tmp_path / "o.mp4"))
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert not os.path.exists(tmp_path / "o.mp4")
