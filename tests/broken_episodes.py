"""Deliberately broken episodes for tests of readers and builders (a test helper, not library).

Test files in tests/ import it as `import broken_episodes`: pytest's rootdir-based "prepend"
import mode puts tests/ (no __init__.py) on sys.path for them.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from egodex_jax import skeleton
from egodex_jax.data import synthetic

BROKEN_KINDS = ("not_hdf5", "missing_joint", "nan_pose", "truncated_video", "empty",
                "non_rigid", "short_video", "missing_video", "mismatched_lengths",
                # partial: a builder keeps their good frames (PARTIAL_KINDS)
                "nan_frames", "short_video_tail",
                # over half the frames unusable: skipped whole even by a partial-keeping builder
                "mostly_nan")
PARTIAL_KINDS = ("nan_pose", "nan_frames", "short_video_tail")
FEW = 3  # frames short_video_tail's video lacks


def nan_frames(kind: str, num_frames: int) -> dict[str, list[int]]:
  """Which frames a non-finite kind spoils, by the transform: {name: [frames]}."""
  n = num_frames
  return {"nan_pose": {"leftHand": [n // 2]},
          # two hand frames (they spoil earlier frames' futures) and one camera frame (it spoils
          # only its own frame's state: a future row is in the camera of the frame it starts at)
          "nan_frames": {"leftHand": [n // 3, n // 3 + 1], "camera": [2 * n // 3]},
          "mostly_nan": {"rightHand": list(range(n // 2 + 1))}}.get(kind, {})


def write_broken_episode(out_dir: str, kind: str, *, task: str = "broken",
                         index: int | None = None, seed: int = 0, width: int = 64, height: int = 48,
                         num_frames: int = 24) -> tuple[str, str]:
  """Writes one episode with a known fault under out_dir/task/ -> (hdf5, mp4)."""
  if kind not in BROKEN_KINDS:
    raise ValueError(f"unknown broken episode kind {kind!r}; one of {BROKEN_KINDS}")
  if index is None:
    index = 900 + BROKEN_KINDS.index(kind)
  h = os.path.join(out_dir, task, f"{index}.hdf5")
  m = os.path.join(out_dir, task, f"{index}.mp4")
  os.makedirs(os.path.dirname(h), exist_ok=True)
  if kind == "not_hdf5":
    with open(h, "w") as f:
      f.write("this is not an HDF5 file\n")
    synthetic.write_episode(h + ".ok", m, "lift_cup", seed, width=width, height=height,
                            num_frames=num_frames)
    os.remove(h + ".ok")
    return h, m
  if num_frames < 4:
    raise ValueError(f"broken episodes need num_frames >= 4, got {num_frames}")
  n_video = {"short_video": num_frames // 2, "short_video_tail": num_frames - FEW}.get(
      kind, num_frames)
  synthetic.write_episode(h, m, "lift_cup", seed, width=width, height=height, num_frames=n_video)
  if n_video != num_frames:  # rewrite the poses longer than the video
    synthetic.write_episode(h, None, "lift_cup", seed, width=width, height=height,
                            num_frames=num_frames)
  with h5py.File(h, "r+") as f:
    for name, frames in nan_frames(kind, num_frames).items():
      T = f[f"transforms/{name}"][()]
      T[frames, 0, 3] = np.inf if name == "camera" else np.nan
      f[f"transforms/{name}"][...] = T
    if kind == "missing_joint":
      del f["transforms/rightIndexFingerTip"]
    elif kind == "non_rigid":
      T = f["transforms/rightHand"][()]
      T[num_frames // 2, :3, :3] *= 1.5
      f["transforms/rightHand"][...] = T
    elif kind == "empty":
      for name in skeleton.JOINTS + (skeleton.CAMERA,):
        del f[f"transforms/{name}"]
        f.create_dataset(f"transforms/{name}", shape=(0, 4, 4), dtype=np.float32)
      del f["confidences"]
    elif kind == "mismatched_lengths":
      T = f["transforms/leftThumbTip"][()]
      del f["transforms/leftThumbTip"]
      f.create_dataset("transforms/leftThumbTip", data=T[:-1])
  if kind == "truncated_video":
    size = os.path.getsize(m)
    with open(m, "r+b") as f:
      f.truncate(size // 3)
  elif kind == "missing_video":
    os.remove(m)
  return h, m
