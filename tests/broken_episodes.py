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
                "non_rigid", "short_video", "missing_video", "mismatched_lengths")


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
  n_video = num_frames // 2 if kind == "short_video" else num_frames
  synthetic.write_episode(h, m, "lift_cup", seed, width=width, height=height, num_frames=n_video)
  if kind == "short_video":  # rewrite the poses longer than the video
    synthetic.write_episode(h, None, "lift_cup", seed, width=width, height=height,
                            num_frames=num_frames)
  with h5py.File(h, "r+") as f:
    if kind == "missing_joint":
      del f["transforms/rightIndexFingerTip"]
    elif kind == "nan_pose":
      T = f["transforms/leftHand"][()]
      T[num_frames // 2, 0, 3] = np.nan
      f["transforms/leftHand"][...] = T
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
