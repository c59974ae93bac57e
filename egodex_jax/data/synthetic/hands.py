"""The hands and the body: finger geometry, the 25 joints of a hand from its curl, wrist poses
for grasping and resting, wrist tracks from keyframes, and arms + spine under the head."""

from __future__ import annotations

import numpy as np

from egodex_jax import skeleton
from egodex_jax.data.synthetic import scene

# Wrist frame: x toward the fingers, y out of the back of the hand, z = x cross y. The thumb sits
# at +z for the left hand and -z for the right one (palm down, fingers forward).
_FINGER_GEOM = {  # knuckle lateral offset (m), splay (rad), phalanx lengths (m)
    "Index": (0.024, 0.10, (0.040, 0.024, 0.019)),
    "Middle": (0.006, 0.02, (0.045, 0.027, 0.020)),
    "Ring": (-0.012, -0.06, (0.041, 0.026, 0.019)),
    "Little": (-0.028, -0.14, (0.032, 0.020, 0.018)),
}
_KNUCKLE_X = {"Index": 0.080, "Middle": 0.082, "Ring": 0.078, "Little": 0.070}
_FLEX = np.radians([62.0, 88.0, 60.0])  # full-curl flexion at MCP, PIP, DIP
_THUMB_LENGTHS = (0.040, 0.032, 0.028)
_R0 = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # palm down, fingers -z


def hand_local(side: str, curl: np.ndarray) -> dict[str, np.ndarray]:
  """curl [N] in [0, 1] -> joint -> [N, 4, 4] poses in the wrist frame."""
  rot, poses = scene.rot, scene.poses
  s = 1.0 if side == "left" else -1.0
  n = curl.shape[0]
  out = {skeleton.wrist(side): np.broadcast_to(np.eye(4), (n, 4, 4)).copy()}
  for finger, (lat, splay, lengths) in _FINGER_GEOM.items():
    meta = np.array([0.012, 0.0, 0.45 * s * lat])
    knuckle = np.array([_KNUCKLE_X[finger], 0.0, s * lat])
    name = lambda part: f"{side}{finger}Finger{part}"  # pylint: disable=cell-var-from-loop
    R_meta = scene.frame_along(knuckle - meta, np.array([0.0, 1.0, 0.0]))
    out[name("Metacarpal")] = poses(np.broadcast_to(R_meta, (n, 3, 3)),
                                    np.broadcast_to(meta, (n, 3)))
    p = np.broadcast_to(knuckle, (n, 3)).copy()
    phi = np.zeros(n)
    parts = ("Knuckle", "IntermediateBase", "IntermediateTip", "Tip")
    R = None
    for k, part in enumerate(parts):
      if k < 3:
        phi = phi + curl * _FLEX[k]
        R = rot("z", -phi) @ rot("y", -s * splay * (1 - 0.5 * curl))
      out[name(part)] = poses(R, p)
      if k < 3:
        p = p + lengths[k] * R[..., :, 0]
  # Thumb: abducted toward +s*z, flexing toward the palm as the hand closes.
  base = np.array([0.022, -0.014, s * 0.020])
  R_base = rot("z", -np.radians(15) - curl * np.radians(30)) @ rot(
      "y", -s * (np.radians(55) - curl * np.radians(25)))
  p = np.broadcast_to(base, (n, 3)).copy()
  R = R_base
  for k, part in enumerate(skeleton.THUMB_PARTS):
    out[f"{side}Thumb{part}"] = poses(R, p)
    if k < 3:
      p = p + _THUMB_LENGTHS[k] * R[..., :, 0]
      R = R @ rot("z", -curl * np.radians((20.0, 30.0, 25.0)[k]))
  return out


def wrist_rotation(yaw, pitch, roll) -> np.ndarray:
  """[N] angles -> [N, 3, 3]: yaw about up, fingers pitched down, rolled about the fingers."""
  return scene.rot("y", yaw) @ scene.rot("x", -pitch) @ scene.rot("z", roll) @ _R0


def grasp_wrist(center, yaw, pitch, roll, reach=0.075, below=0.035):
  """Wrist position [N, 3] that puts `center` between the curled fingers and the palm."""
  R = wrist_rotation(np.array(yaw), np.array(pitch), np.array(roll))
  return np.asarray(center) - reach * R[..., :, 0] + below * R[..., :, 1]


def rest_vec(side: str, rng) -> np.ndarray:
  """A resting keyframe [7]: wrist position, yaw, pitch, roll, curl."""
  s = 1.0 if side == "left" else -1.0
  return np.array([-s * rng.uniform(0.17, 0.22), scene.TABLE_Y + rng.uniform(0.04, 0.07),
                   -rng.uniform(0.16, 0.22), -s * rng.uniform(0.15, 0.35),
                   rng.uniform(0.1, 0.25), -s * rng.uniform(0.0, 0.3), rng.uniform(0.25, 0.4)])


def hand_tracks(keys, n, rng):
  """Keyframes -> wrist [N, 4, 4] (scene) and curl [N], with a little tremor."""
  v = scene.track(keys, n)
  v[:, :3] += scene.smooth_noise(rng, n, 3, 0.003, (0.5, 2.0))
  v[:, 3:6] += scene.smooth_noise(rng, n, 3, 0.02, (0.3, 1.5))
  R = wrist_rotation(v[:, 3], v[:, 4], v[:, 5])
  return scene.poses(R, v[:, :3]), np.clip(v[:, 6], 0.0, 1.0)


def body(cam_scene: np.ndarray, wrists: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arms (2-link IK to the wrists) and a seated spine under the head -> joint -> [N, 4, 4]."""
  poses, frame_along = scene.poses, scene.frame_along
  n = cam_scene.shape[0]
  head = cam_scene[:, :3, 3]
  up = np.array([0.0, 1.0, 0.0])
  neck_top = head + np.array([0.0, -0.10, 0.07])
  hip = np.array([0.0, 0.52, 0.16]) + 0.3 * (head - scene.HEAD) * [1, 0, 1]
  out = {}
  spine = hip + np.linspace(0, 1, 9)[1:, None, None] * (neck_top - 0.13 * up - hip)  # [8, N, 3]
  chain = [hip] + list(spine[:7]) + [neck_top - 0.13 * up + k * 0.035 * up for k in range(4)]
  names = ("hip",) + tuple(f"spine{i}" for i in range(1, 8)) + tuple(
      f"neck{i}" for i in range(1, 5))
  fwd = np.broadcast_to(np.array([0.0, 0.0, -1.0]), (n, 3))
  for k, name in enumerate(names):
    nxt = chain[k + 1] if k + 1 < len(chain) else neck_top + 0.05 * up
    out[name] = poses(frame_along(nxt - chain[k], fwd), chain[k])
  base = spine[6]  # shoulders hang off spine7
  for side, s in (("left", -1.0), ("right", 1.0)):
    clav = base + np.array([s * 0.03, 0.0, -0.02])
    shoulder = base + np.array([s * 0.19, -0.02, 0.0])
    w = wrists[side][:, :3, 3]
    d_vec = w - shoulder
    d = np.clip(np.linalg.norm(d_vec, axis=-1, keepdims=True), 0.08, 0.28 + 0.26 - 1e-3)
    u = d_vec / np.linalg.norm(d_vec, axis=-1, keepdims=True)
    a = (0.28**2 - 0.26**2 + d**2) / (2 * d)
    hgt = np.sqrt(np.maximum(0.28**2 - a**2, 0.0))
    pole = np.array([s * 0.7, -1.0, 0.3])
    pole = pole - np.sum(pole * u, axis=-1, keepdims=True) * u
    pole /= np.linalg.norm(pole, axis=-1, keepdims=True)
    elbow = shoulder + a * u + hgt * pole
    out[f"{side}Shoulder"] = poses(frame_along(shoulder - clav, up), clav)
    out[f"{side}Arm"] = poses(frame_along(elbow - shoulder, up), shoulder)
    out[f"{side}Forearm"] = poses(frame_along(w - elbow, up), elbow)
  return out
