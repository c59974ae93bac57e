"""Reading and validating raw episodes: real HDF5 + MP4 files written by the synthetic writer."""

import os

import cv2
import h5py
import numpy as np
import pytest

from egodex_jax import skeleton
from egodex_jax.data import egodex
from egodex_jax.data import synthetic

import broken_episodes

W, H = 64, 48


@pytest.fixture(scope="module")
def episode_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("raw")
  h, m = str(root / "lift_cup" / "0.hdf5"), str(root / "lift_cup" / "0.mp4")
  synthetic.write_episode(h, m, "lift_cup", seed=3, width=W, height=H, num_frames=40)
  return h, m


def test_load_episode_fields(episode_files):
  h, m = episode_files
  ep = egodex.load_episode(h)
  assert ep.num_frames == 40 and ep.video_path == m
  assert set(ep.transforms) == set(skeleton.JOINTS) | {"camera"}
  assert all(T.shape == (40, 4, 4) and T.dtype == np.float32 for T in ep.transforms.values())
  assert ep.camera is ep.transforms["camera"]
  np.testing.assert_allclose(ep.intrinsic, skeleton.default_intrinsic(W, H))
  assert set(ep.confidences) == set(skeleton.JOINTS)
  assert ep.task == "lift_cup"
  assert ep.instruction == ep.attrs["llm_description"] != ""
  assert isinstance(ep.attrs["llm_verbs"], list) and isinstance(ep.attrs["llm_verbs"][0], str)
  assert isinstance(ep.attrs["mode"], int) and ep.attrs["mode"] == -1


def _copy_with(src, dst, edit):
  """Copies an HDF5 file and applies edit(f) to the copy."""
  with open(src, "rb") as a, open(dst, "wb") as b:
    b.write(a.read())
  with h5py.File(dst, "r+") as f:
    edit(f)
  return dst


def test_empty_or_malformed_intrinsic_falls_back(episode_files, tmp_path):
  h, _ = episode_files
  def empty(f):
    del f["camera/intrinsic"]
    f.create_dataset("camera/intrinsic", shape=(0, 3), dtype=np.float32)
  p = _copy_with(h, str(tmp_path / "e.hdf5"), empty)
  ep = egodex.load_episode(p, check_video=False)
  np.testing.assert_allclose(ep.intrinsic, skeleton.default_intrinsic())
  def nan(f):
    f["camera/intrinsic"][0, 0] = np.nan
  p = _copy_with(h, str(tmp_path / "n.hdf5"), nan)
  np.testing.assert_allclose(egodex.load_episode(p, check_video=False).intrinsic,
                             skeleton.default_intrinsic())


def test_missing_confidences_and_bytes_attrs(episode_files, tmp_path):
  h, _ = episode_files
  def edit(f):
    del f["confidences"]
    f.attrs["environment"] = np.bytes_(b"kitchen")
    f.attrs["task"] = "None"
  (tmp_path / "folder_task").mkdir()
  p = _copy_with(h, str(tmp_path / "folder_task" / "c.hdf5"), edit)
  ep = egodex.load_episode(p, check_video=False)
  assert ep.confidences is None
  assert ep.attrs["environment"] == "kitchen"
  assert ep.task == "folder_task"  # the literal "None" is absent: fall back to the folder


@pytest.mark.parametrize("attrs, expected", [
    (dict(llm_type="reversible", which_llm_description="1", llm_description="A",
          llm_description2="B"), "A"),
    (dict(llm_type="reversible", which_llm_description="2", llm_description="A",
          llm_description2="B"), "B"),
    (dict(llm_type="reversible", which_llm_description="2", llm_description="A",
          llm_description2="None"), "A"),
    (dict(llm_type="reset_free", which_llm_description="2", llm_description="A",
          llm_description2="B"), "A"),
    (dict(llm_description="None", llm_description2="None"), ""),
    (dict(), ""),
])
def test_instruction_rule(attrs, expected):
  assert egodex.instruction_from_attrs(attrs) == expected


@pytest.mark.parametrize("kind, words", [
    ("not_hdf5", "not an HDF5 file"),
    ("missing_joint", "rightIndexFingerTip"),
    ("nan_pose", "NaN"),
    ("truncated_video", "video"),
    ("empty", "no frames"),
    ("non_rigid", "not a rigid"),
    ("short_video", "fewer than"),
    ("missing_video", "missing"),
    ("mismatched_lengths", "mismatched lengths"),
])
def test_broken_episodes_raise_one_sentence(kind, words, tmp_path):
  h, m = broken_episodes.write_broken_episode(str(tmp_path), kind)
  with pytest.raises(egodex.EpisodeError) as e:
    egodex.load_episode(h, m)
  msg = str(e.value)
  assert "\n" not in msg and words in msg
  assert os.path.basename(h) in msg or os.path.basename(m) in msg


def test_missing_file(tmp_path):
  with pytest.raises(egodex.EpisodeError, match="not found"):
    egodex.load_episode(str(tmp_path / "nope.hdf5"))


def test_video_reader_random_access_matches_sequential(episode_files):
  _, m = episode_files
  with egodex.VideoReader(m) as r:
    assert (r.width, r.height) == (W, H) and r.fps == pytest.approx(30.0)
    frames = np.stack(list(r))
  assert frames.shape == (40, H, W, 3) and frames.dtype == np.uint8
  # Consecutive frames differ (the camera sways), so a wrong index would be caught.
  assert all(np.any(frames[i] != frames[i + 1]) for i in range(0, 39, 7))
  with egodex.VideoReader(m) as r:
    for idx in ([35, 2, 17], [0, 1, 2, 3], [39], [20, 20, 5], [38, 1, 30, 12]):
      np.testing.assert_array_equal(r.read(idx), frames[idx])
    with pytest.raises(egodex.EpisodeError, match="cannot decode frame 45"):
      r.read([45])
    np.testing.assert_array_equal(r.read([3]), frames[[3]])  # still usable after a failure


def test_video_reader_rgb_order(tmp_path):
  path = str(tmp_path / "red.mp4")
  w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (32, 32))
  assert w.isOpened()
  for _ in range(3):
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 2] = 220  # red in BGR
    w.write(img)
  w.release()
  with egodex.VideoReader(path) as r:
    f = r.read([1])[0]
  assert f[..., 0].mean() > 180 and f[..., 2].mean() < 40


def test_find_episodes(tmp_path):
  for task, i in (("b", 1), ("a", 0), ("b", 0)):
    (tmp_path / task).mkdir(exist_ok=True)
    (tmp_path / task / f"{i}.hdf5").write_bytes(b"")
  (tmp_path / "a" / "notes.txt").write_text("x")
  pairs = egodex.find_episodes(str(tmp_path))
  assert [os.path.relpath(h, tmp_path) for h, _ in pairs] == ["a/0.hdf5", "b/0.hdf5", "b/1.hdf5"]
  assert all(m == h[:-5] + ".mp4" for h, m in pairs)


@pytest.mark.parametrize("kind", broken_episodes.PARTIAL_KINDS)
def test_partial_loading_keeps_what_spoils_only_some_frames(kind, tmp_path):
  h, m = broken_episodes.write_broken_episode(str(tmp_path), kind, num_frames=24)
  with pytest.raises(egodex.EpisodeError):
    egodex.load_episode(h, m)  # strict, as every reader but the builder and the actions CLI
  ep = egodex.load_episode(h, m, partial=True)
  assert ep.num_frames == 24
  assert ep.video_frames == (24 - broken_episodes.FEW if kind == "short_video_tail" else 24)
  for name, frames in broken_episodes.nan_frames(kind, 24).items():
    finite = np.isfinite(ep.transforms[name]).all(axis=(1, 2))
    assert np.flatnonzero(~finite).tolist() == frames  # kept as they are, not repaired
  assert egodex.load_episode(h, m, partial=True, check_video=False).video_frames is None


@pytest.mark.parametrize("kind, words", [
    ("non_rigid", "not a rigid"), ("missing_video", "missing"), ("truncated_video", "video"),
    ("mismatched_lengths", "mismatched lengths"), ("empty", "no frames")])
def test_partial_loading_still_refuses_whole_episode_faults(kind, words, tmp_path):
  h, m = broken_episodes.write_broken_episode(str(tmp_path), kind)
  with pytest.raises(egodex.EpisodeError, match=words):
    egodex.load_episode(h, m, partial=True)


def test_decodable_frames_counts_what_decodes_in_order(episode_files):
  _, m = episode_files
  with egodex.VideoReader(m) as r:
    assert egodex.decodable_frames(r, 40) == 40 and egodex.decodable_frames(r, 25) == 25
    assert egodex.decodable_frames(r, 55) == 40  # the video has 40 frames
