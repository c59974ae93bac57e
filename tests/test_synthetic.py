"""The synthetic writer: the real format, determinism, multimodality, plausible motion."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from egodex_jax import geometry
from egodex_jax import skeleton
from egodex_jax.data import actions
from egodex_jax.data import egodex
from egodex_jax.data import synthetic

W, H = 64, 48
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("syn"))
  pairs = synthetic.generate(root, 5, seed=7, width=W, height=H, min_frames=30, max_frames=50,
                             workers=1)
  return root, pairs


def test_one_episode_per_task_in_the_real_layout(generated):
  root, pairs = generated
  assert len(pairs) == 5
  assert sorted(egodex.find_episodes(root)) == sorted(pairs)
  assert {os.path.basename(os.path.dirname(h)) for h, _ in pairs} == set(synthetic.TASKS)
  assert all(os.path.basename(h) == "0.hdf5" and os.path.isfile(m) for h, m in pairs)


def test_format(generated):
  _, pairs = generated
  for h, m in pairs:
    with h5py.File(h, "r") as f:
      assert set(f["transforms"]) == set(skeleton.JOINTS) | {"camera"}
      n = f["transforms/camera"].shape[0]
      assert 30 <= n <= 50
      for name in f["transforms"]:
        assert f["transforms"][name].shape == (n, 4, 4)
        assert f["transforms"][name].dtype == np.float32
      assert set(f["confidences"]) == set(skeleton.JOINTS)
      assert all(f["confidences"][j].shape == (n,) and f["confidences"][j].dtype == np.float32
                 for j in f["confidences"])
      np.testing.assert_allclose(f["camera/intrinsic"][()], skeleton.default_intrinsic(W, H))
      assert f["camera/intrinsic"].dtype == np.float32
      for key in ("task", "environment", "object", "session_name", "llm_type",
                  "llm_description", "llm_description2", "which_llm_description", "llm_verbs",
                  "llm_objects", "mode", "mode_targets"):
        assert key in f.attrs, key
    ep = egodex.load_episode(h, m)  # validates rigidity, lengths, the video
    assert ep.instruction
    with egodex.VideoReader(m) as r:
      assert (r.width, r.height) == (W, H)
      assert r.read([n - 1]).shape == (1, H, W, 3)
    mode, targets = ep.attrs["mode"], json.loads(ep.attrs["mode_targets"])
    if ep.task in synthetic.MULTIMODAL_TASKS:
      assert mode in (0, 1) and np.array(targets).shape == (2, 3)
      assert ep.attrs["llm_description2"] == "None"
    else:
      assert mode == -1 and targets == []
    if ep.attrs["llm_type"] == "reversible":
      assert ep.instruction == (ep.attrs["llm_description"] if ep.attrs[
          "which_llm_description"] == "1" else ep.attrs["llm_description2"])


def test_intrinsics_scale_with_resolution():
  K = skeleton.default_intrinsic(320, 180)
  np.testing.assert_allclose(K[0, 0] / skeleton.FOCAL_PX, 320 / 1920)
  np.testing.assert_allclose(K[:2, 2], [160, 90])


def test_deterministic(tmp_path):
  a = synthetic.generate(str(tmp_path / "a"), 2, seed=11, width=W, height=H, min_frames=20,
                         max_frames=30, workers=1)
  b = synthetic.generate(str(tmp_path / "b"), 2, seed=11, width=W, height=H, min_frames=20,
                         max_frames=30, workers=2)
  c = synthetic.generate(str(tmp_path / "c"), 1, seed=12, width=W, height=H, min_frames=20,
                         max_frames=30, workers=1)
  for (ha, ma), (hb, mb) in zip(a, b):
    ea, eb = egodex.load_episode(ha, ma), egodex.load_episode(hb, mb)
    for k in ea.transforms:
      np.testing.assert_array_equal(ea.transforms[k], eb.transforms[k])
    for k in ea.confidences:
      np.testing.assert_array_equal(ea.confidences[k], eb.confidences[k])
    assert ea.attrs == eb.attrs
    with open(ha, "rb") as fa, open(hb, "rb") as fb:
      assert fa.read() == fb.read()
    with egodex.VideoReader(ma) as ra, egodex.VideoReader(mb) as rb:
      np.testing.assert_array_equal(ra.read([0, 5]), rb.read([0, 5]))
  ec = egodex.load_episode(*c[0])
  assert not np.array_equal(ec.camera, egodex.load_episode(*a[0]).camera)


def _sim(task, seed, n=40):
  return synthetic.simulate(task, synthetic.episode_rng(seed, 0), n)


@pytest.mark.parametrize("task", synthetic.MULTIMODAL_TASKS)
def test_multimodal_tasks_split_about_evenly(task):
  modes = [synthetic.TASKS[task](synthetic.episode_rng(s, 0), 20).mode
           for s in range(200)]
  assert set(modes) == {0, 1}
  assert 65 <= sum(modes) <= 135  # Binomial(200, 0.5): fails with probability ~1e-6


@pytest.mark.parametrize("task", synthetic.MULTIMODAL_TASKS)
def test_right_wrist_reaches_the_chosen_target(task, tmp_path):
  for seed in range(3):
    h = str(tmp_path / f"{seed}.hdf5")
    attrs = synthetic.write_episode(h, None, task, seed, num_frames=120)
    ep = egodex.load_episode(h, check_video=False)
    targets = np.array(json.loads(attrs["mode_targets"]))
    wrist = ep.transforms["rightHand"][:, :3, 3]
    d = np.linalg.norm(wrist[:, None] - targets[None], axis=-1)  # [N, 2]
    chosen, other = attrs["mode"], 1 - attrs["mode"]
    assert d[:, chosen].min() < 0.03
    assert d[:, other].min() > 0.08  # the modes are far apart: averaging them is wrong
    assert np.linalg.norm(targets[0] - targets[1]) > 0.15


def test_world_frame_differs_and_camera_moves():
  cams = []
  for seed in range(3):
    sim = _sim("lift_cup", seed, 90)
    cams.append(sim["scene"]["camera"])
  cam = cams[0]
  travel = np.linalg.norm(cam[:, :3, 3] - cam[0, :3, 3], axis=-1).max()
  assert 0.01 < travel < 0.2
  angle = max(np.arccos(np.clip((np.trace(cam[0, :3, :3].T @ cam[t, :3, :3]) - 1) / 2, -1, 1))
              for t in range(90))
  assert np.radians(0.5) < angle < np.radians(20)
  # OpenCV axes: the camera looks down at the table (z forward has a negative y component)
  # from 0.4-0.7 m.
  assert (cam[:, 1, 2] < -0.3).all()
  dist = np.linalg.norm(cam[:, :3, 3] - synthetic.LOOK_AT, axis=-1)
  assert ((dist > 0.4) & (dist < 0.75)).all()


def test_world_frames_differ_per_episode(generated):
  _, pairs = generated
  origins = [egodex.load_episode(h, check_video=False).camera[0, :3, 3] for h, _ in pairs]
  assert min(np.linalg.norm(a - b) for i, a in enumerate(origins) for b in origins[i + 1:]) > 0.05


@pytest.mark.parametrize("task", list(synthetic.TASKS))
def test_hands_are_plausible(task):
  sim = _sim(task, 1, 120)
  scene = sim["scene"]
  for T in scene.values():
    assert geometry.is_rigid(T, atol=1e-6).all()
  for side in skeleton.SIDES:
    w = scene[skeleton.wrist(side)][:, :3, 3]
    tips = np.stack([scene[skeleton.fingertip(side, f)][:, :3, 3]
                     for f in skeleton.FINGERTIP_ORDER], 1)
    d = np.linalg.norm(tips - w[:, None], axis=-1)
    assert (d > 0.06).all() and (d < 0.2).all()
    # Bones keep their length (tracking jitter shifts the whole hand, so it keeps them too).
    for a, b in skeleton.hand_bones(side):
      length = np.linalg.norm(scene[a][:, :3, 3] - scene[b][:, :3, 3], axis=-1)
      assert length.max() - length.min() < 1e-9
    # Fingers curl when grasping: the middle tip gets closer to the wrist at some point.
    mid = d[:, 2]
    if task != "lift_box_bimanual" and side == ("left" if task == "lift_cup" else "right"):
      assert mid.max() - mid.min() > 0.02
  # In view: both wrists project inside the image most of the time.
  K = skeleton.default_intrinsic(320, 240)
  cam_inv = geometry.se3_inverse(scene["camera"])
  for side in skeleton.SIDES:
    p = np.einsum("nij,nj->ni", cam_inv[:, :3, :3], scene[skeleton.wrist(side)][:, :3, 3]) + \
        cam_inv[:, :3, 3]
    uv = geometry.project(p, K)
    inside = (uv[:, 0] > 0) & (uv[:, 0] < 320) & (uv[:, 1] > 0) & (uv[:, 1] < 240)
    assert inside.mean() > 0.9


def test_low_confidence_frames_occur():
  lows = []
  for seed in range(8):
    conf = _sim("put_block_on_mat", seed, 60)["confidences"]
    c = np.stack([conf[j] for j in skeleton.JOINTS])
    assert ((c >= 0) & (c <= 1)).all()
    lows.append((c < 0.5).any())
  assert 0 < sum(lows) < 8


def test_object_positions_vary_per_episode():
  """Where the hand goes to grasp is visible only in the image, and differs per episode."""
  grasp = []
  for seed in range(4):
    sim = _sim("put_block_on_mat", seed, 120)
    grasp.append(sim["plan"].objects[2].track[0, :3, 3])
  spread = np.ptp(np.array(grasp), axis=0)
  assert spread[0] > 0.02 or spread[2] > 0.02


def test_actions_of_synthetic_episode_are_sane(generated):
  _, pairs = generated
  ep = egodex.load_episode(*pairs[0])
  w, nf = actions.action_windows(ep, 10)
  kp = skeleton.keypoints(w)  # [N, 11, 12, 3] camera frame
  assert np.isfinite(w).all()
  assert (kp[..., 2] > 0.1).mean() > 0.95  # in front of the camera
  assert (np.linalg.norm(kp, axis=-1) < 1.2).all()


def test_cli_writes_episodes(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  r = subprocess.run([sys.executable, "-m", "egodex_jax.data.synthetic", "--out", str(tmp_path),
                      "--episodes", "2", "--seed", "1", "--width", "32", "--height", "24",
                      "--min_frames", "10", "--max_frames", "12", "--workers", "1"],
                     cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
  assert r.returncode == 0, r.stderr
  assert len(egodex.find_episodes(str(tmp_path))) == 2
  r = subprocess.run([sys.executable, "-m", "egodex_jax.data.synthetic", "--out", str(tmp_path),
                      "--episodes", "1", "--min_frames", "9", "--max_frames", "3"],
                     cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_package_exports_the_public_api():
  assert all(hasattr(synthetic, name) for name in synthetic.__all__)
  # Broken episodes are a test fixture (tests/broken_episodes.py), not part of the library.
  assert not hasattr(synthetic, "write_broken_episode")
