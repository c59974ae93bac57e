"""Synthetic EgoDex episodes: the real on-disk format, with learnable and multimodal structure.

A seated person at a table, seen by a swaying head camera. Five tasks, each with its own
instructions; two of them have two equally likely outcomes (which mat / which bowl), chosen at
random per episode, so a sampler that covers both modes beats a regressor to the mean. Objects are
placed at random per episode and are visible only in the video, so the image carries what the
hand state lacks. The world frame gets a random offset and yaw per episode, as ARKit's does.

  python -m egodex_jax.data.synthetic --out DIR --episodes N --seed S [--width W --height H]

writes DIR/<task>/<i>.hdf5 + <i>.mp4. Episodes are deterministic in (seed, episode number).
Besides the real root attributes, each file has `mode` (int, -1 when unimodal) and `mode_targets`
(JSON [[x, y, z], ...]: world-frame right-wrist position at the placement under each mode).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
from typing import Callable

import numpy as np

from egodex_jax import geometry
from egodex_jax import skeleton

MAX_MODES = 2
TABLE_Y = 0.75  # table height in the scene frame (y up, the person faces -z)
HEAD = np.array([0.0, 1.12, 0.02])  # nominal camera position, ~0.55 m from the work area
LOOK_AT = np.array([0.0, TABLE_Y, -0.40])


# --- small math ---------------------------------------------------------------------


def _rot(axis: str, a):
  """[...] angles -> [..., 3, 3] rotations about a scene axis."""
  a = np.asarray(a, np.float64)
  c, s = np.cos(a), np.sin(a)
  o, z = np.ones_like(a), np.zeros_like(a)
  if axis == "x":
    m = [[o, z, z], [z, c, -s], [z, s, c]]
  elif axis == "y":
    m = [[c, z, s], [z, o, z], [-s, z, c]]
  else:
    m = [[c, -s, z], [s, c, z], [z, z, o]]
  return np.moveaxis(np.array(m), (0, 1), (-2, -1))


def _min_jerk(tau):
  tau = np.clip(tau, 0.0, 1.0)
  return tau**3 * (10 - 15 * tau + 6 * tau**2)


def _track(keys: list[tuple[float, np.ndarray]], n: int) -> np.ndarray:
  """Minimum-jerk interpolation through keyframes (frame, value [D]) -> [n, D]; held outside."""
  keys = sorted(keys, key=lambda k: k[0])
  frames = np.arange(n, dtype=np.float64)
  out = np.tile(np.asarray(keys[0][1], np.float64), (n, 1))
  for (f0, v0), (f1, v1) in zip(keys[:-1], keys[1:]):
    v0, v1 = np.asarray(v0, np.float64), np.asarray(v1, np.float64)
    s = _min_jerk((frames - f0) / max(f1 - f0, 1e-6))[:, None]
    seg = frames >= f0
    out[seg] = (v0 + s * (v1 - v0))[seg]
  return out


def _smooth_noise(rng, n: int, dims: int, amp: float, freqs=(0.15, 0.4)) -> np.ndarray:
  """[n, dims] sum of a few slow sinusoids (sway, tremor), amplitude ~amp."""
  t = np.arange(n) / skeleton.FPS
  out = np.zeros((n, dims))
  for _ in range(3):
    f = rng.uniform(*freqs, size=dims)
    ph = rng.uniform(0, 2 * np.pi, size=dims)
    out += np.sin(2 * np.pi * f * t[:, None] + ph) * rng.uniform(0.3, 1.0, size=dims)
  return amp * out / 2.0


def _poses(R, p) -> np.ndarray:
  """[..., 3, 3], [..., 3] -> [..., 4, 4]."""
  T = np.zeros(np.broadcast_shapes(R.shape[:-2], p.shape[:-1]) + (4, 4))
  T[..., :3, :3] = R
  T[..., :3, 3] = p
  T[..., 3, 3] = 1.0
  return T


def _frame_along(x_dir, y_ref) -> np.ndarray:
  """[..., 3] bone directions and reference 'up' -> [..., 3, 3] rotation with x along the bone."""
  x = x_dir / np.linalg.norm(x_dir, axis=-1, keepdims=True)
  y = y_ref - np.sum(y_ref * x, axis=-1, keepdims=True) * x
  alt = np.broadcast_to(np.array([0.0, 0.0, 1.0]), y.shape)
  bad = np.linalg.norm(y, axis=-1, keepdims=True) < 1e-6
  y = np.where(bad, alt - np.sum(alt * x, axis=-1, keepdims=True) * x, y)
  y = y / np.linalg.norm(y, axis=-1, keepdims=True)
  return np.stack([x, y, np.cross(x, y)], axis=-1)


# --- the hand -----------------------------------------------------------------------
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


def _hand_local(side: str, curl: np.ndarray) -> dict[str, np.ndarray]:
  """curl [N] in [0, 1] -> joint -> [N, 4, 4] poses in the wrist frame."""
  s = 1.0 if side == "left" else -1.0
  n = curl.shape[0]
  out = {skeleton.wrist(side): np.broadcast_to(np.eye(4), (n, 4, 4)).copy()}
  for finger, (lat, splay, lengths) in _FINGER_GEOM.items():
    meta = np.array([0.012, 0.0, 0.45 * s * lat])
    knuckle = np.array([_KNUCKLE_X[finger], 0.0, s * lat])
    name = lambda part: f"{side}{finger}Finger{part}"  # pylint: disable=cell-var-from-loop
    R_meta = _frame_along(knuckle - meta, np.array([0.0, 1.0, 0.0]))
    out[name("Metacarpal")] = _poses(np.broadcast_to(R_meta, (n, 3, 3)),
                                     np.broadcast_to(meta, (n, 3)))
    p = np.broadcast_to(knuckle, (n, 3)).copy()
    phi = np.zeros(n)
    parts = ("Knuckle", "IntermediateBase", "IntermediateTip", "Tip")
    R = None
    for k, part in enumerate(parts):
      if k < 3:
        phi = phi + curl * _FLEX[k]
        R = _rot("z", -phi) @ _rot("y", -s * splay * (1 - 0.5 * curl))
      out[name(part)] = _poses(R, p)
      if k < 3:
        p = p + lengths[k] * R[..., :, 0]
  # Thumb: abducted toward +s*z, flexing toward the palm as the hand closes.
  base = np.array([0.022, -0.014, s * 0.020])
  R_base = _rot("z", -np.radians(15) - curl * np.radians(30)) @ _rot(
      "y", -s * (np.radians(55) - curl * np.radians(25)))
  p = np.broadcast_to(base, (n, 3)).copy()
  R = R_base
  for k, part in enumerate(skeleton.THUMB_PARTS):
    out[f"{side}Thumb{part}"] = _poses(R, p)
    if k < 3:
      p = p + _THUMB_LENGTHS[k] * R[..., :, 0]
      R = R @ _rot("z", -curl * np.radians((20.0, 30.0, 25.0)[k]))
  return out


_R0 = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # palm down, fingers -z


def _wrist_rotation(yaw, pitch, roll) -> np.ndarray:
  """[N] angles -> [N, 3, 3]: yaw about up, fingers pitched down, rolled about the fingers."""
  return _rot("y", yaw) @ _rot("x", -pitch) @ _rot("z", roll) @ _R0


def _grasp_wrist(center, yaw, pitch, roll, reach=0.075, below=0.035):
  """Wrist position that puts `center` between the curled fingers and the palm."""
  R = _wrist_rotation(np.array(yaw), np.array(pitch), np.array(roll))
  return np.asarray(center) - reach * R[..., :, 0] + below * R[..., :, 1]


def _rest_vec(side: str, rng) -> np.ndarray:
  s = 1.0 if side == "left" else -1.0
  return np.array([-s * rng.uniform(0.17, 0.22), TABLE_Y + rng.uniform(0.04, 0.07),
                   -rng.uniform(0.16, 0.22), -s * rng.uniform(0.15, 0.35),
                   rng.uniform(0.1, 0.25), -s * rng.uniform(0.0, 0.3), rng.uniform(0.25, 0.4)])


def _hand_tracks(keys, n, rng):
  """Keyframes -> wrist [N, 4, 4] (scene) and curl [N], with a little tremor."""
  v = _track(keys, n)
  v[:, :3] += _smooth_noise(rng, n, 3, 0.003, (0.5, 2.0))
  v[:, 3:6] += _smooth_noise(rng, n, 3, 0.02, (0.3, 1.5))
  R = _wrist_rotation(v[:, 3], v[:, 4], v[:, 5])
  return _poses(R, v[:, :3]), np.clip(v[:, 6], 0.0, 1.0)


# --- objects and rendering ----------------------------------------------------------


@dataclasses.dataclass
class _Object:
  kind: str  # 'prism' (extruded polygon) | 'flat' (a mat) | 'sphere'
  color: tuple  # RGB 0..255
  size: tuple  # (half x, half z, height) when sides == 4, else (radius, height); sphere (radius,)
  track: np.ndarray  # [N, 4, 4] object-to-scene, origin at the bottom centre
  sides: int = 4
  open_top: bool = False


def _prism_vertices(obj: _Object) -> tuple[np.ndarray, np.ndarray]:
  """-> bottom [S, 3], top [S, 3] in the object frame (y up)."""
  if obj.sides == 4:
    hx, hz, h = obj.size
    base = np.array([[-hx, 0, -hz], [hx, 0, -hz], [hx, 0, hz], [-hx, 0, hz]])
  else:
    r, h = obj.size
    a = np.linspace(0, 2 * np.pi, obj.sides, endpoint=False)
    base = np.stack([r * np.cos(a), np.zeros_like(a), -r * np.sin(a)], -1)
  top = base + np.array([0.0, h, 0.0])
  return base, top


def _clip_near(poly: np.ndarray, near: float = 0.03) -> np.ndarray:
  """Sutherland-Hodgman against z = near: camera-frame polygon [P, 3] -> [Q, 3]."""
  out = []
  for i in range(len(poly)):
    a, b = poly[i], poly[(i + 1) % len(poly)]
    ina, inb = a[2] >= near, b[2] >= near
    if ina:
      out.append(a)
    if ina != inb:
      t = (near - a[2]) / (b[2] - a[2])
      out.append(a + t * (b - a))
  return np.array(out) if out else np.zeros((0, 3))


_LIGHT = np.array([0.3, 1.0, 0.4]) / np.linalg.norm([0.3, 1.0, 0.4])


class _Renderer:
  """Projects the scene through K and paints it in BGR (painter's algorithm, back faces culled).

  All projection and shading is computed for every frame at once; the per-frame loop only
  issues OpenCV drawing calls, which keeps a 150-frame episode at a few milliseconds per frame.
  """

  def __init__(self, width: int, height: int, K: np.ndarray, rng):
    import cv2  # pylint: disable=g-import-not-at-top
    self.cv2 = cv2
    self.w, self.h, self.K = width, height, K.astype(np.float64)
    self.wall = np.array(rng.uniform([140, 145, 150], [185, 195, 200]), np.uint8)  # BGR
    self.table_color = tuple(int(c) for c in rng.uniform([50, 85, 120], [95, 135, 175]))
    hx, z0, z1 = 0.75, -0.08, -1.1
    self.table = np.array([[-hx, TABLE_Y, z0], [hx, TABLE_Y, z0], [hx, TABLE_Y, z1],
                           [-hx, TABLE_Y, z1]])

  def _uv16(self, pc):
    """[..., 3] camera points (z > 0) -> [..., 2] int32 pixels in 1/16 px (cv2 shift=4)."""
    z = np.maximum(pc[..., 2:3], 1e-3)
    uv = pc[..., :2] / z * self.K[[0, 1], [0, 1]] + self.K[:2, 2]
    return np.round(np.clip(uv, -4 * self.w, 4 * self.w) * 16).astype(np.int32)

  def _draw_poly(self, img, uv16, color):
    self.cv2.fillPoly(img, [uv16], color, self.cv2.LINE_AA, 4)

  def _prepare_object(self, obj: _Object, T_cs, cam_pos):
    """-> depth [N] and a per-frame list of (uv16 [V, 2], BGR colour) polygons / circles."""
    n = obj.track.shape[0]
    R, p = obj.track[:, :3, :3], obj.track[:, :3, 3]
    to_cam = lambda x: np.einsum("nij,n...j->n...i", T_cs[:, :3, :3], x) + T_cs[:, None, :3, 3]
    bgr = tuple(int(c) for c in obj.color[::-1])
    depth = np.linalg.norm(p - cam_pos, axis=-1)
    draws = [[] for _ in range(n)]
    if obj.kind == "sphere":
      r = obj.size[0]
      c = to_cam((p + np.array([0, r, 0]))[:, None])[:, 0]  # [N, 3]
      uv = self._uv16(c)
      rad = np.maximum(16, np.round(16 * self.K[0, 0] * r / np.maximum(c[:, 2], 1e-3)))
      hl = tuple(int(min(255, v * 1.3 + 30)) for v in bgr)
      for t in range(n):
        if c[t, 2] > 0.03:
          draws[t].append(("circle", uv[t], int(rad[t]), bgr))
          draws[t].append(("circle", (uv[t] - 0.35 * rad[t]).astype(np.int32),
                           max(16, int(rad[t]) // 3), hl))
      return depth, draws
    bottom, top = _prism_vertices(obj)
    if obj.kind == "flat":
      faces = top[None]  # [1, V, 3]
      normals = np.array([[0.0, 1.0, 0.0]])
    else:
      s = len(bottom)
      sides = np.stack([np.stack([bottom[i], bottom[(i + 1) % s], top[(i + 1) % s], top[i]])
                        for i in range(s)])  # [S, 4, 3]
      mid = sides.mean(1)
      normals = mid * np.array([1.0, 0.0, 1.0])
      normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
      faces = list(sides) + [top]
      normals = np.concatenate([normals, [[0.0, 1.0, 0.0]]])
    for k, face in enumerate(faces):
      fw = np.einsum("nij,vj->nvi", R, face) + p[:, None]  # [N, V, 3] scene
      nw = R @ normals[k]  # [N, 3]
      visible = np.sum(nw * (cam_pos - fw.mean(1)), -1) > 0
      fc = to_cam(fw)
      visible &= (fc[..., 2] > 0.03).all(-1)
      uv = self._uv16(fc)
      light = 0.55 + 0.45 * np.maximum(0.0, nw @ _LIGHT)
      is_top = k == len(faces) - 1
      for t in np.nonzero(visible)[0]:
        if obj.open_top and is_top and obj.kind != "flat":
          color = tuple(int(c * 0.45) for c in bgr)
        elif obj.kind == "flat":
          color = bgr
        else:
          color = tuple(int(min(255, c * light[t])) for c in bgr)
        draws[t].append(("poly", uv[t], 0, color))
    return depth, draws

  def _prepare_hand(self, side, joints, T_cs):
    """joints: name -> [N, 3] scene points -> per-frame line lists."""
    names = skeleton.hand_joints(side)
    index = {j: i for i, j in enumerate(names)}
    pts = np.stack([joints[j] for j in names], 1)  # [N, 25, 3]
    pc = np.einsum("nij,nkj->nki", T_cs[:, :3, :3], pts) + T_cs[:, None, :3, 3]
    uv = self._uv16(pc)
    bones = np.array([(index[a], index[b]) for a, b in skeleton.hand_bones(side)])
    zmean = (pc[:, bones[:, 0], 2] + pc[:, bones[:, 1], 2]) / 2  # [N, 24]
    ok = (pc[:, bones[:, 0], 2] > 0.05) & (pc[:, bones[:, 1], 2] > 0.05)
    thick = np.maximum(1, np.round(self.K[0, 0] * 0.014 / np.maximum(zmean, 1e-3))).astype(int)
    palm = (pc[:, 0] + pc[:, index[f"{side}MiddleFingerKnuckle"]]) / 2
    palm_uv = self._uv16(palm)
    palm_r = np.maximum(1, np.round(self.K[0, 0] * 0.03 / np.maximum(palm[:, 2], 1e-3)))
    skin = (150, 180, 225) if side == "left" else (135, 165, 215)
    chains = [[0, 1, 2, 3, 4]] + [[0] + list(range(5 + 5 * f, 10 + 5 * f)) for f in range(4)]
    assert all(names[c[-1]].endswith("Tip") for c in chains)
    return dict(uv=uv, chains=chains, ok=ok, thick=thick, palm_uv=palm_uv, palm_r=palm_r,
                palm_ok=palm[:, 2] > 0.05, skin=skin)

  def render(self, camera_scene: np.ndarray, objects: list, hand_joints: dict):
    """Yields [h, w, 3] uint8 BGR frames. camera_scene [N, 4, 4]; hand_joints: side -> joint ->
    [N, 3] scene points."""
    cv2 = self.cv2
    T_cs = geometry.se3_inverse(camera_scene)
    cam_pos = camera_scene[:, :3, 3]
    n = camera_scene.shape[0]
    tc = np.einsum("nij,vj->nvi", T_cs[:, :3, :3], self.table) + T_cs[:, None, :3, 3]
    prepared = [self._prepare_object(o, T_cs, cam_pos) + (o.kind == "flat",) for o in objects]
    hands = [self._prepare_hand(s, hand_joints[s], T_cs) for s in skeleton.SIDES]
    background = np.empty((self.h, self.w, 3), np.uint8)
    background[:] = self.wall
    background[: self.h // 6] = (self.wall * 0.85).astype(np.uint8)
    for t in range(n):
      img = background.copy()
      table = _clip_near(tc[t])
      if len(table) >= 3:
        self._draw_poly(img, self._uv16(table), self.table_color)
      order = sorted(range(len(prepared)), key=lambda i: (not prepared[i][2], -prepared[i][0][t]))
      for i in order:
        for kind, uv, rad, color in prepared[i][1][t]:
          if kind == "poly":
            self._draw_poly(img, uv, color)
          else:
            cv2.circle(img, (int(uv[0]), int(uv[1])), rad, color, -1, cv2.LINE_AA, 4)
      for hd in hands:
        if hd["ok"][t].all():  # five chains from the wrist, one call
          chains = [hd["uv"][t][c] for c in hd["chains"]]
          cv2.polylines(img, chains, False, hd["skin"], int(hd["thick"][t].max()), cv2.LINE_AA, 4)
        if hd["palm_ok"][t]:
          pu = hd["palm_uv"][t]
          cv2.circle(img, (int(pu[0]), int(pu[1])), int(hd["palm_r"][t]) * 16, hd["skin"], -1,
                     cv2.LINE_AA, 4)
      yield img


# --- tasks --------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
  objects: list
  hands: dict  # side -> keyframes
  attached: list  # (object index, side, grasp frame, release frame)
  mode: int
  mode_targets: list  # scene-frame right wrist positions at placement, per mode
  attrs: dict


def _table_pos(x, z, lift=0.0):
  return np.array([x, TABLE_Y + lift, z])


def _static(n, p, yaw=0.0):
  return np.broadcast_to(_poses(_rot("y", yaw), np.asarray(p, np.float64)), (n, 4, 4)).copy()


def _timeline(rng, n, fractions):
  """Cumulative keyframe frames from jittered phase fractions that fill ~90% of the episode."""
  f = np.array(fractions) * rng.uniform(0.85, 1.15, size=len(fractions))
  start = rng.uniform(0.02, 0.08) * n
  f = f / f.sum() * (n * rng.uniform(0.85, 0.92) - start)
  return start + np.concatenate([[0.0], np.cumsum(f)])


def _pick_place_keys(side, rng, n, rest, obj_c, target_c, yaw, pitch, roll, lift=0.10,
                     grip=0.55, retreat_up=0.08):
  """Reach -> grasp -> carry -> place -> release -> lift away. Returns keys, grasp, release,
  and the wrist position at placement."""
  f = _timeline(rng, n, [0.24, 0.06, 0.05, 0.22, 0.07, 0.06, 0.12])
  g = _grasp_wrist(obj_c, [yaw], [pitch], [roll])[0]
  g_place = _grasp_wrist(target_c, [yaw], [pitch], [roll])[0]
  up = np.array([0.0, 1.0, 0.0])
  ang = [yaw, pitch, roll]
  keys = [
      (f[0], rest),
      (f[1], np.r_[g + 0.02 * up, ang, 0.05]),  # open hand above the object
      (f[2], np.r_[g, ang, 0.08]),
      (f[3], np.r_[g, ang, grip]),  # closed
      (f[4], np.r_[g_place + lift * up, ang, grip]),
      (f[5], np.r_[g_place, ang, grip]),
      (f[6], np.r_[g_place, ang, 0.1]),  # released
      (f[7], np.r_[g_place + retreat_up * up, ang[0], ang[1] * 0.7, ang[2], 0.3]),
  ]
  return keys, f[3], f[5], g_place


def _rest_keys(side, rng, n):
  rest = _rest_vec(side, rng)
  wiggle = rest + np.r_[rng.normal(0, 0.02, 3), rng.normal(0, 0.05, 3), rng.normal(0, 0.05)]
  return [(0, rest), (n * rng.uniform(0.3, 0.7), wiggle), (n - 1, rest)]


def _task_block_on_mat(rng, n):
  mats = [_table_pos(-0.20 + rng.uniform(-0.03, 0.03), -0.44 + rng.uniform(-0.04, 0.04)),
          _table_pos(0.20 + rng.uniform(-0.03, 0.03), -0.44 + rng.uniform(-0.04, 0.04))]
  block = _table_pos(rng.uniform(-0.10, 0.12), rng.uniform(-0.34, -0.24))
  mode = int(rng.integers(2))
  h = 0.07  # big enough to see in a 64-pixel image
  yaw, pitch, roll = rng.uniform(-0.15, 0.25), rng.uniform(0.55, 0.75), rng.uniform(-0.1, 0.1)
  rest = _rest_vec("right", rng)
  centre = lambda p: p + np.array([0, h / 2, 0])
  keys, grasp, release, _ = _pick_place_keys("right", rng, n, rest, centre(block),
                                             centre(mats[mode] + [0, 0.003, 0]), yaw, pitch, roll)
  targets = [_grasp_wrist(centre(m + [0, 0.003, 0]), [yaw], [pitch], [roll])[0] for m in mats]
  objects = [
      _Object("flat", (40, 70, 200), (0.09, 0.09, 0.003), _static(n, mats[0])),
      _Object("flat", (40, 160, 60), (0.09, 0.09, 0.003), _static(n, mats[1])),
      _Object("prism", (210, 30, 30), (0.035, 0.035, h), _static(n, block, rng.uniform(-0.5, 0.5))),
  ]
  attrs = dict(llm_type="reset_free", object="red block, blue mat, green mat",
               llm_verbs=["put", "place"], llm_objects=["red block", "mat"],
               phrasings=("Put the red block on one of the two mats.",
                          "Place the red cube onto either the blue or the green mat.",
                          "Move the red block onto a mat."))
  return _Plan(objects, {"right": keys, "left": _rest_keys("left", rng, n)},
               [(2, "right", grasp, release)], mode, targets, attrs)


def _task_ball_in_bowl(rng, n):
  # A near-left and a far-right bowl, the ball between them: both targets lie well away from
  # the right hand's rest pose, so either outcome is a real movement.
  bowls = [_table_pos(-0.21 + rng.uniform(-0.03, 0.03), -0.38 + rng.uniform(-0.03, 0.03)),
           _table_pos(0.12 + rng.uniform(-0.03, 0.03), -0.58 + rng.uniform(-0.03, 0.03))]
  ball = _table_pos(rng.uniform(-0.07, 0.07), rng.uniform(-0.42, -0.30))
  mode = int(rng.integers(2))
  r = 0.035
  yaw, pitch, roll = rng.uniform(0.0, 0.35), rng.uniform(0.6, 0.8), rng.uniform(-0.1, 0.1)
  rest = _rest_vec("right", rng)
  drop = lambda b: b + np.array([0, 0.04, 0])
  keys, grasp, release, _ = _pick_place_keys("right", rng, n, rest, ball + [0, r, 0],
                                             drop(bowls[mode]), yaw, pitch, roll, lift=0.12,
                                             grip=0.5)
  targets = [_grasp_wrist(drop(b), [yaw], [pitch], [roll])[0] for b in bowls]
  objects = [
      _Object("prism", (235, 235, 230), (0.075, 0.05), _static(n, bowls[0]), sides=10,
              open_top=True),
      _Object("prism", (60, 60, 70), (0.075, 0.05), _static(n, bowls[1]), sides=10,
              open_top=True),
      _Object("sphere", (240, 210, 30), (r,), _static(n, ball)),
  ]
  attrs = dict(llm_type="reset_free", object="yellow ball, white bowl, black bowl",
               llm_verbs=["drop", "put"], llm_objects=["yellow ball", "bowl"],
               phrasings=("Drop the yellow ball into one of the bowls.",
                          "Put the yellow ball in the white bowl or the black bowl.",
                          "Place the ball into a bowl."))
  return _Plan(objects, {"right": keys, "left": _rest_keys("left", rng, n)},
               [(2, "right", grasp, release)], mode, targets, attrs)


def _task_lift_cup(rng, n):
  cup = _table_pos(rng.uniform(-0.26, -0.02), rng.uniform(-0.50, -0.30))
  h = 0.10
  yaw, pitch, roll = rng.uniform(-0.5, -0.2), rng.uniform(0.3, 0.5), rng.uniform(0.6, 0.9)
  rest = _rest_vec("left", rng)
  c = cup + [0, 0.05, 0]
  keys, grasp, release, _ = _pick_place_keys("left", rng, n, rest, c, c, yaw, pitch, roll,
                                             lift=0.15, grip=0.5, retreat_up=0.05)
  objects = [_Object("prism", (30, 150, 170), (0.042, h), _static(n, cup), sides=10,
                     open_top=True)]
  attrs = dict(llm_type="reset_free", object="cup", llm_verbs=["lift"], llm_objects=["cup"],
               phrasings=("Lift the cup with your left hand and put it back down.",
                          "Pick up the teal cup with the left hand, then set it down again."))
  return _Plan(objects, {"left": keys, "right": _rest_keys("right", rng, n)},
               [(0, "left", grasp, release)], -1, [], attrs)


def _task_box_bimanual(rng, n):
  box = _table_pos(rng.uniform(-0.08, 0.08), rng.uniform(-0.52, -0.40))
  yaw_box = rng.uniform(-0.25, 0.25)
  hx, hz, h = 0.12, 0.07, 0.11
  shift = np.array([rng.uniform(-0.05, 0.05), 0.0, rng.uniform(0.08, 0.14)])
  f = _timeline(rng, n, [0.25, 0.06, 0.22, 0.07, 0.06, 0.14])
  Rb = _rot("y", yaw_box)
  keys, up = {}, np.array([0.0, 1.0, 0.0])
  for side, s in (("left", -1.0), ("right", 1.0)):
    contact = box + Rb @ np.array([s * (hx + 0.01), 0.6 * h, 0.0])
    # Palms face the box: fingers forward, rolled 80 degrees inward.
    ang = np.array([yaw_box - s * 0.2, 0.35, -s * 1.35])
    g = _grasp_wrist(contact, [ang[0]], [ang[1]], [ang[2]], reach=0.06, below=0.03)[0]
    rest = _rest_vec(side, rng)
    keys[side] = [(f[0], rest), (f[1], np.r_[g + Rb @ [s * 0.05, 0.02, 0], ang, 0.05]),
                  (f[2], np.r_[g, ang, 0.35]),
                  (f[3], np.r_[g + shift + 0.12 * up, ang, 0.35]),
                  (f[4], np.r_[g + shift, ang, 0.35]), (f[5], np.r_[g + shift, ang, 0.05]),
                  (f[6], np.r_[g + shift + Rb @ [s * 0.08, 0.05, 0], ang * [1, 0.8, 0.5], 0.3])]
  objects = [_Object("prism", (170, 120, 200), (hx, hz, h), _static(n, box, yaw_box))]
  attrs = dict(llm_type="reset", object="box", llm_verbs=["pick up", "set down"],
               llm_objects=["box"],
               phrasings=("Pick up the box with both hands and set it down closer to you.",
                          "Lift the purple box with two hands and bring it toward you."))
  return _Plan(objects, keys, [(0, "right", f[2], f[4])], -1, [], attrs)


def _task_lid(rng, n):
  pot = _table_pos(rng.uniform(-0.05, 0.15), rng.uniform(-0.50, -0.36))
  side_x = rng.choice([-1.0, 1.0])
  aside = pot + np.array([side_x * rng.uniform(0.17, 0.22), 0.0, rng.uniform(0.03, 0.08)])
  on_pot = pot + np.array([0.0, 0.08, 0.0])
  which = "1" if rng.integers(2) == 0 else "2"  # '1': put the lid on, '2': take it off
  start, end = (aside, on_pot) if which == "1" else (on_pot, aside)
  yaw, pitch, roll = rng.uniform(-0.1, 0.3), rng.uniform(0.7, 0.9), rng.uniform(-0.1, 0.1)
  rest = _rest_vec("right", rng)
  knob = np.array([0.0, 0.03, 0.0])
  keys, grasp, release, _ = _pick_place_keys("right", rng, n, rest, start + knob, end + knob,
                                             yaw, pitch, roll, lift=0.08, grip=0.6)
  objects = [
      _Object("prism", (90, 90, 100), (0.09, 0.08), _static(n, pot), sides=12),
      _Object("prism", (150, 150, 165), (0.095, 0.012), _static(n, start), sides=12),
  ]
  attrs = dict(llm_type="reversible", object="pot, lid", llm_verbs=["put on", "take off"],
               llm_objects=["lid", "pot"], which_llm_description=which,
               llm_description="Put the lid on the pot.",
               llm_description2="Take the lid off the pot.")
  return _Plan(objects, {"right": keys, "left": _rest_keys("left", rng, n)},
               [(1, "right", grasp, release)], -1, [], attrs)


TASKS: dict[str, Callable] = {
    "put_block_on_mat": _task_block_on_mat,
    "put_ball_in_bowl": _task_ball_in_bowl,
    "lift_cup": _task_lift_cup,
    "lift_box_bimanual": _task_box_bimanual,
    "add_remove_lid": _task_lid,
}
MULTIMODAL_TASKS = ("put_block_on_mat", "put_ball_in_bowl")


# --- the body, arms and camera ------------------------------------------------------


def _lagged(x: np.ndarray, tau_frames: float) -> np.ndarray:
  """[N, D] first-order low-pass (a gaze that follows with a lag)."""
  out = np.empty_like(x)
  out[0] = x[0]
  k = 1.0 / max(tau_frames, 1.0)
  for t in range(1, len(x)):
    out[t] = out[t - 1] + k * (x[t] - out[t - 1])
  return out


def _camera_track(rng, n, hands_centre: np.ndarray | None = None) -> np.ndarray:
  """[N, 4, 4] camera-to-scene, OpenCV axes, swaying a few cm and degrees; the gaze drifts
  toward the hands (hands_centre [N, 3]) with a lag, as a person's head does."""
  head = HEAD + rng.uniform([-0.04, -0.03, -0.03], [0.04, 0.03, 0.03])
  pos = head + _smooth_noise(rng, n, 3, 0.025, (0.08, 0.35))
  look = LOOK_AT + rng.uniform([-0.05, 0, -0.05], [0.05, 0, 0.05]) + _smooth_noise(
      rng, n, 3, 0.05, (0.05, 0.3))
  if hands_centre is not None:
    follow = (hands_centre - LOOK_AT) * np.array([0.3, 0.0, 0.3])
    look = look + _lagged(follow, 0.3 * skeleton.FPS)
  f = look - pos
  f /= np.linalg.norm(f, axis=-1, keepdims=True)
  right = np.cross(f, [0.0, 1.0, 0.0])
  right /= np.linalg.norm(right, axis=-1, keepdims=True)
  down = np.cross(f, right)
  R = np.stack([right, down, f], axis=-1)
  roll = _smooth_noise(rng, n, 1, np.radians(3.0), (0.05, 0.3))[:, 0]
  R = R @ _rot("z", roll)
  return _poses(R, pos)


def _body(cam_scene: np.ndarray, wrists: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arms (2-link IK to the wrists) and a seated spine under the head -> joint -> [N, 4, 4]."""
  n = cam_scene.shape[0]
  head = cam_scene[:, :3, 3]
  up = np.array([0.0, 1.0, 0.0])
  neck_top = head + np.array([0.0, -0.10, 0.07])
  hip = np.array([0.0, 0.52, 0.16]) + 0.3 * (head - HEAD) * [1, 0, 1]
  out = {}
  spine = hip + np.linspace(0, 1, 9)[1:, None, None] * (neck_top - 0.13 * up - hip)  # [8, N, 3]
  chain = [hip] + list(spine[:7]) + [neck_top - 0.13 * up + k * 0.035 * up for k in range(4)]
  names = ("hip",) + tuple(f"spine{i}" for i in range(1, 8)) + tuple(
      f"neck{i}" for i in range(1, 5))
  fwd = np.broadcast_to(np.array([0.0, 0.0, -1.0]), (n, 3))
  for k, name in enumerate(names):
    nxt = chain[k + 1] if k + 1 < len(chain) else neck_top + 0.05 * up
    out[name] = _poses(_frame_along(nxt - chain[k], fwd), chain[k])
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
    out[f"{side}Shoulder"] = _poses(_frame_along(shoulder - clav, up), clav)
    out[f"{side}Arm"] = _poses(_frame_along(elbow - shoulder, up), shoulder)
    out[f"{side}Forearm"] = _poses(_frame_along(w - elbow, up), elbow)
  return out


# --- one episode --------------------------------------------------------------------


def episode_rng(seed: int, episode: int) -> np.random.Generator:
  """The generator of one episode: independent of the others and of how many are written."""
  return np.random.default_rng(np.random.SeedSequence([int(seed), int(episode)]))


def simulate(task: str, rng: np.random.Generator, num_frames: int) -> dict:
  """Scene-level simulation of one episode (no files): poses, objects, confidences, attrs."""
  n = int(num_frames)
  plan = TASKS[task](rng, n)
  wrists, curls = {}, {}
  for side in skeleton.SIDES:
    wrists[side], curls[side] = _hand_tracks(plan.hands[side], n, rng)
  # Grasped objects ride rigidly with the hand between grasp and release.
  for obj_i, side, g, r in plan.attached:
    obj = plan.objects[obj_i]
    g, r = int(round(g)), int(round(r))
    g = min(max(g, 0), n - 1)
    rel = geometry.se3_inverse(wrists[side][g]) @ obj.track[g]
    moving = wrists[side][g:r + 1] @ rel
    obj.track[g:r + 1] = moving
    if r + 1 < n:
      settled = obj.track[min(r, n - 1)].copy()
      yaw = np.arctan2(settled[0, 2], settled[2, 2])  # put it down upright
      settled[:3, :3] = _rot("y", yaw)
      obj.track[r + 1:] = settled
  scene = {}
  for side in skeleton.SIDES:
    local = _hand_local(side, curls[side])
    for name, T in local.items():
      scene[name] = wrists[side] @ T
  # The gaze follows the hand that moves most (both for bimanual tasks).
  travel = {s: np.ptp(wrists[s][:, :3, 3], axis=0).sum() for s in skeleton.SIDES}
  w = np.array([travel["left"], travel["right"]]) + 1e-6
  centre = (w[0] * wrists["left"][:, :3, 3] + w[1] * wrists["right"][:, :3, 3]) / w.sum()
  cam = _camera_track(rng, n, centre)
  scene.update(_body(cam, wrists))
  scene[skeleton.CAMERA] = cam

  # Confidences high, with occasional occlusion bursts: low confidence and tracking jitter.
  conf = {j: np.clip(0.93 + 0.05 * _smooth_noise(rng, n, 1, 1.0, (0.2, 1.0))[:, 0], 0, 1)
          for j in skeleton.JOINTS}
  if rng.uniform() < 0.5 and n > 20:
    side = skeleton.SIDES[int(rng.integers(2))]
    length = int(rng.integers(4, min(16, n // 4) + 1))
    start = int(rng.integers(0, n - length))
    sl = slice(start, start + length)
    jitter = rng.normal(0, 0.006, size=(length, 3))
    for j in skeleton.hand_joints(side):
      conf[j][sl] = rng.uniform(0.05, 0.4, size=length)
      scene[j][sl, :3, 3] += jitter
  return dict(plan=plan, scene=scene, confidences=conf)


def _world_transform(rng) -> np.ndarray:
  """The per-episode ARKit-like world frame: random yaw and offset, origin near the floor."""
  return _poses(_rot("y", rng.uniform(-np.pi, np.pi)),
                np.array([rng.uniform(-2, 2), rng.uniform(-0.1, 0.1), rng.uniform(-2, 2)]))


def _attrs(task, plan, rng, index, world) -> dict:
  a = dict(plan.attrs)
  phrasings = a.pop("phrasings", None)
  if phrasings is not None:
    a["llm_description"] = phrasings[int(rng.integers(len(phrasings)))]
    a["llm_description2"] = "None"
    a["which_llm_description"] = "1"
  targets = [(world[:3, :3] @ p + world[:3, 3]).tolist() for p in plan.mode_targets]
  a.update(task=task, environment="synthetic_tabletop", session_name=f"synthetic_{index:05d}",
           mode=int(plan.mode), mode_targets=json.dumps(targets))
  return a


def write_hdf5(path: str, transforms: dict, *, confidences: dict | None = None,
               intrinsic: np.ndarray | None = None, attrs: dict | None = None) -> None:
  """Writes poses in the EgoDex layout: transforms/<name> [N, 4, 4] float32, confidences/<joint>
  [N] float32, camera/intrinsic, root attributes (lists as string arrays). Deterministic bytes."""
  import h5py  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with h5py.File(tmp, "w") as f:
    if intrinsic is not None:
      f.create_dataset("camera/intrinsic", data=np.asarray(intrinsic, np.float32),
                       track_times=False)
    for name, T in transforms.items():
      f.create_dataset(f"transforms/{name}", data=np.asarray(T, np.float32), track_times=False)
    for name, c in (confidences or {}).items():
      f.create_dataset(f"confidences/{name}", data=np.asarray(c, np.float32), track_times=False)
    for k, v in (attrs or {}).items():
      if isinstance(v, (list, tuple)):
        f.attrs[k] = np.array(v, dtype=h5py.string_dtype())
      else:
        f.attrs[k] = v
  os.replace(tmp, path)


def write_episode(hdf5_path: str, mp4_path: str | None, task: str, seed: int, episode: int = 0,
                  *, width: int = 320, height: int = 240, num_frames: int | None = None,
                  min_frames: int = 90, max_frames: int = 240) -> dict:
  """Writes one episode (the video only when mp4_path is given) -> its root attributes."""
  rng = episode_rng(seed, episode)
  n = int(num_frames) if num_frames else int(rng.integers(min_frames, max_frames + 1))
  sim = simulate(task, rng, n)
  world = _world_transform(rng)
  attrs = _attrs(task, sim["plan"], rng, episode, world)
  K = skeleton.default_intrinsic(width, height)

  transforms = {name: world @ sim["scene"][name] for name in skeleton.JOINTS + (skeleton.CAMERA,)}
  write_hdf5(hdf5_path, transforms, confidences=sim["confidences"], intrinsic=K, attrs=attrs)
  if mp4_path is not None:
    _write_video(mp4_path, sim, width, height, K, rng)
  return attrs


def _write_video(mp4_path, sim, width, height, K, rng) -> None:
  import cv2  # pylint: disable=g-import-not-at-top
  scene, plan = sim["scene"], sim["plan"]
  renderer = _Renderer(width, height, K, rng)
  tmp = mp4_path + ".tmp.mp4"
  writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(skeleton.FPS),
                           (width, height))
  if not writer.isOpened():
    raise OSError(f"{mp4_path}: OpenCV cannot open an mp4v video writer")
  try:
    joints = {s: {j: scene[j][:, :3, 3] for j in skeleton.hand_joints(s)} for s in skeleton.SIDES}
    for bgr in renderer.render(scene[skeleton.CAMERA], plan.objects, joints):
      writer.write(bgr)
  finally:
    writer.release()
  os.replace(tmp, mp4_path)


def episode_task(episode: int, tasks=tuple(TASKS)) -> tuple[str, int]:
  """Episode number -> (task, index within the task): tasks round-robin."""
  return tasks[episode % len(tasks)], episode // len(tasks)


def _write_job(args):
  out_dir, episode, seed, width, height, min_frames, max_frames, video = args
  task, i = episode_task(episode)
  h = os.path.join(out_dir, task, f"{i}.hdf5")
  m = os.path.join(out_dir, task, f"{i}.mp4")
  write_episode(h, m if video else None, task, seed, episode, width=width, height=height,
                min_frames=min_frames, max_frames=max_frames)
  return h, m


def generate(out_dir: str, num_episodes: int, seed: int = 0, *, width: int = 320,
             height: int = 240, min_frames: int = 90, max_frames: int = 240,
             workers: int | None = None, video: bool = True) -> list[tuple[str, str]]:
  """Writes `num_episodes` episodes (tasks round-robin) -> [(hdf5, mp4)] in episode order."""
  if min_frames < 1 or max_frames < min_frames:
    raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
  jobs = [(out_dir, e, seed, width, height, min_frames, max_frames, video)
          for e in range(num_episodes)]
  if workers is None:
    workers = min(len(jobs), os.cpu_count() or 1)
  if workers <= 1 or len(jobs) <= 1:
    return [_write_job(j) for j in jobs]
  try:
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
      return list(pool.map(_write_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
  except concurrent.futures.BrokenExecutor:
    # A worker could not start (e.g. spawn cannot re-import an unguarded __main__): writes are
    # idempotent, so do them here instead.
    return [_write_job(j) for j in jobs]


def _pool_context():
  """fork when it is safe (fast, no re-import of __main__); spawn once JAX runs its threads,
  which a fork does not survive, unless __main__ cannot be re-imported by a spawned worker."""
  main_file = getattr(sys.modules.get("__main__"), "__file__", None)
  spawnable = main_file is None or os.path.isfile(main_file)
  if "jax" in sys.modules and spawnable:
    return multiprocessing.get_context("spawn")
  return multiprocessing.get_context("fork")


# --- deliberately broken episodes (for tests of readers and builders) ---------------

BROKEN_KINDS = ("not_hdf5", "missing_joint", "nan_pose", "truncated_video", "empty",
                "non_rigid", "short_video", "missing_video", "mismatched_lengths")


def write_broken_episode(out_dir: str, kind: str, *, task: str = "broken", index: int | None = None,
                         seed: int = 0, width: int = 64, height: int = 48,
                         num_frames: int = 24) -> tuple[str, str]:
  """Writes one episode with a known fault under out_dir/task/ -> (hdf5, mp4)."""
  import h5py  # pylint: disable=g-import-not-at-top
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
    write_episode(h + ".ok", m, "lift_cup", seed, width=width, height=height,
                  num_frames=num_frames)
    os.remove(h + ".ok")
    return h, m
  if num_frames < 4:
    raise ValueError(f"broken episodes need num_frames >= 4, got {num_frames}")
  n_video = num_frames // 2 if kind == "short_video" else num_frames
  write_episode(h, m, "lift_cup", seed, width=width, height=height, num_frames=n_video)
  if kind == "short_video":  # rewrite the poses longer than the video
    write_episode(h, None, "lift_cup", seed, width=width, height=height, num_frames=num_frames)
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


# --- CLI ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    sys.stderr.write(f"{self.prog}: error: {message}\n")
    sys.exit(2)


def main(argv=None) -> int:
  p = _Parser(prog="python -m egodex_jax.data.synthetic",
              description="Write synthetic EgoDex episodes (hdf5 + mp4) in the real format.")
  p.add_argument("--out", required=True, help="output folder: OUT/<task>/<i>.hdf5 + .mp4")
  p.add_argument("--episodes", type=int, required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--width", type=int, default=skeleton.IMAGE_WIDTH)
  p.add_argument("--height", type=int, default=skeleton.IMAGE_HEIGHT)
  p.add_argument("--min_frames", type=int, default=90)
  p.add_argument("--max_frames", type=int, default=240)
  p.add_argument("--workers", type=int, default=None)
  args = p.parse_args(argv)
  if args.episodes < 0 or args.width < 8 or args.height < 8 or args.width % 2 or args.height % 2:
    p.error("need --episodes >= 0 and even --width/--height >= 8")
  if args.min_frames < 1 or args.max_frames < args.min_frames:
    p.error("need 1 <= --min_frames <= --max_frames")
  try:
    pairs = generate(args.out, args.episodes, args.seed, width=args.width, height=args.height,
                     min_frames=args.min_frames, max_frames=args.max_frames, workers=args.workers)
  except (OSError, ValueError) as e:
    sys.stderr.write(" ".join(f"error: {e}".split()) + "\n")
    return 1
  print(f"wrote {len(pairs)} episodes to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
