"""EgoDex skeleton constants: the single source of truth.

Joint names as stored under `transforms/<joint>` in every EgoDex HDF5 file, the 48-D
action layout of the benchmark and the 12 scored keypoints. Everything else in the
codebase indexes actions through the names defined here.
"""

from __future__ import annotations

import numpy as np

SIDES = ("left", "right")
FINGERS = ("Index", "Middle", "Ring", "Little")
FINGER_PARTS = ("Metacarpal", "Knuckle", "IntermediateBase", "IntermediateTip", "Tip")
THUMB_PARTS = ("Knuckle", "IntermediateBase", "IntermediateTip", "Tip")  # no metacarpal
FINGERTIP_ORDER = ("Thumb", "Index", "Middle", "Ring", "Little")  # order in the 48-D action


def wrist(side: str) -> str:
  return f"{side}Hand"


def fingertip(side: str, finger: str) -> str:
  if finger == "Thumb":
    return f"{side}ThumbTip"
  return f"{side}{finger}FingerTip"


def hand_joints(side: str) -> tuple[str, ...]:
  """The 25 joints of one hand: wrist, thumb (4), four fingers (5 each)."""
  names = [wrist(side)]
  names += [f"{side}Thumb{p}" for p in THUMB_PARTS]
  for f in FINGERS:
    names += [f"{side}{f}Finger{p}" for p in FINGER_PARTS]
  return tuple(names)


ARM_JOINTS = tuple(f"{s}{p}" for s in SIDES for p in ("Shoulder", "Arm", "Forearm"))
BODY_JOINTS = ("hip",) + tuple(f"spine{i}" for i in range(1, 8)) + tuple(
    f"neck{i}" for i in range(1, 5))
HAND_JOINTS = hand_joints("left") + hand_joints("right")  # 50
JOINTS = HAND_JOINTS + ARM_JOINTS + BODY_JOINTS  # 68, all under transforms/ and confidences/
CAMERA = "camera"  # transforms/camera: camera-to-world
assert len(HAND_JOINTS) == 50 and len(JOINTS) == 68 and len(set(JOINTS)) == 68

# Bones for drawing a hand: (parent, child) joint names, per side.
def hand_bones(side: str) -> tuple[tuple[str, str], ...]:
  bones = []
  chain = [wrist(side)] + [f"{side}Thumb{p}" for p in THUMB_PARTS]
  bones += list(zip(chain[:-1], chain[1:]))
  for f in FINGERS:
    chain = [wrist(side)] + [f"{side}{f}Finger{p}" for p in FINGER_PARTS]
    bones += list(zip(chain[:-1], chain[1:]))
  return tuple(bones)


# --- Camera intrinsics ------------------------------------------------------------
# The same K in every real file (1920x1080); some part1 files store an empty (0, 3) one.
FOCAL_PX = 736.6339
IMAGE_WIDTH, IMAGE_HEIGHT = 1920, 1080
FPS = 30


def default_intrinsic(width: int = IMAGE_WIDTH, height: int = IMAGE_HEIGHT) -> np.ndarray:
  """The constant EgoDex K, scaled to another resolution (the synthetic writer uses it)."""
  s = width / IMAGE_WIDTH
  return np.array([[FOCAL_PX * s, 0.0, width / 2.0],
                   [0.0, FOCAL_PX * s, height / 2.0],
                   [0.0, 0.0, 1.0]], np.float32)


# --- The 48-D action --------------------------------------------------------------
# Per hand (left first): wrist position (3), wrist rotation 6-D = R[:, 0] then R[:, 1] (6),
# fingertip positions thumb, index, middle, ring, little (15). 24 per hand, 48 in all.
ACTION_DIM = 48
HAND_DIM = 24
WRIST_POS = 0          # offsets within one hand's 24
WRIST_ROT6 = 3
TIPS = 9


def hand_offset(side: str) -> int:
  return SIDES.index(side) * HAND_DIM


ACTION_JOINTS = tuple(j for s in SIDES for j in (wrist(s),) + tuple(
    fingertip(s, f) for f in FINGERTIP_ORDER))  # 12 joints whose positions are in the action

# 48 human-readable names, e.g. "leftHand.x", "leftHand.r0x", "leftThumbTip.z".
ACTION_NAMES = tuple(
    name for s in SIDES for name in (
        [f"{wrist(s)}.{a}" for a in "xyz"]
        + [f"{wrist(s)}.r{c}{a}" for c in "01" for a in "xyz"]
        + [f"{fingertip(s, f)}.{a}" for f in FINGERTIP_ORDER for a in "xyz"]))
assert len(ACTION_NAMES) == ACTION_DIM

# The 12 scored keypoints (2 wrists + 10 fingertips), as indices of their x coordinate.
# KEYPOINT_DIMS [12, 3] gathers [..., 48] -> [..., 12, 3].
KEYPOINT_JOINTS = ACTION_JOINTS
KEYPOINT_DIMS = np.array(
    [[hand_offset(s) + WRIST_POS + a for a in range(3)] for s in SIDES[:1]]
    + [[hand_offset("left") + TIPS + 3 * i + a for a in range(3)] for i in range(5)]
    + [[hand_offset("right") + WRIST_POS + a for a in range(3)]]
    + [[hand_offset("right") + TIPS + 3 * i + a for a in range(3)] for i in range(5)],
    np.int32)
POSITION_DIMS = KEYPOINT_DIMS.reshape(-1)  # 36 position dims: 0:3, 9:24, 24:27, 33:48
ROTATION_DIMS = np.array([hand_offset(s) + WRIST_ROT6 + i for s in SIDES for i in range(6)],
                         np.int32)
assert sorted(POSITION_DIMS.tolist() + ROTATION_DIMS.tolist()) == list(range(ACTION_DIM))
assert [ACTION_NAMES[i].split(".")[0] for i in KEYPOINT_DIMS[:, 0]] == list(KEYPOINT_JOINTS)
# The keypoint (row of KEYPOINT_JOINTS) each of the 48 dims belongs to, a wrist's rotation to its
# wrist: per-keypoint values [..., 12] -> per-dim [..., 48] by `values[..., DIM_KEYPOINT]`.
DIM_KEYPOINT = np.array([KEYPOINT_JOINTS.index(name.split(".")[0]) for name in ACTION_NAMES],
                        np.int32)


def keypoints(actions):
  """[..., 48] -> [..., 12, 3] positions of the scored keypoints (numpy or jax arrays)."""
  return actions[..., KEYPOINT_DIMS]
