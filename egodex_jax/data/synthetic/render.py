"""The renderer: scene objects and hand skeletons painted through the camera intrinsics K into
BGR frames with OpenCV (painter's algorithm, back faces culled, Lambert shading)."""

from __future__ import annotations

import dataclasses

import numpy as np

from egodex_jax import geometry
from egodex_jax import skeleton
from egodex_jax.data.synthetic import scene


@dataclasses.dataclass
class Object:
  """A rigid object on the table: what the tasks place and move and the renderer draws."""
  kind: str  # 'prism' (extruded polygon) | 'flat' (a mat) | 'sphere'
  color: tuple  # RGB 0..255
  size: tuple  # (half x, half z, height) when sides == 4, else (radius, height); sphere (radius,)
  track: np.ndarray  # [N, 4, 4] object-to-scene, origin at the bottom centre
  sides: int = 4
  open_top: bool = False


def _prism_vertices(obj: Object) -> tuple[np.ndarray, np.ndarray]:
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


class Renderer:
  """Projects the scene through K and paints it in BGR (painter's algorithm, back faces culled).

  All projection and shading is computed for every frame at once, in numpy, so that the
  per-frame loop only issues OpenCV drawing calls.
  """

  def __init__(self, width: int, height: int, K: np.ndarray, rng):
    import cv2  # pylint: disable=g-import-not-at-top
    self.cv2 = cv2
    self.w, self.h, self.K = width, height, K.astype(np.float64)
    self.wall = np.array(rng.uniform([140, 145, 150], [185, 195, 200]), np.uint8)  # BGR
    self.table_color = tuple(int(c) for c in rng.uniform([50, 85, 120], [95, 135, 175]))
    hx, z0, z1 = 0.75, -0.08, -1.1
    y = scene.TABLE_Y
    self.table = np.array([[-hx, y, z0], [hx, y, z0], [hx, y, z1], [-hx, y, z1]])  # [4, 3]

  def _uv16(self, pc):
    """[..., 3] camera points (z > 0) -> [..., 2] int32 pixels in 1/16 px (cv2 shift=4)."""
    z = np.maximum(pc[..., 2:3], 1e-3)
    uv = pc[..., :2] / z * self.K[[0, 1], [0, 1]] + self.K[:2, 2]
    return np.round(np.clip(uv, -4 * self.w, 4 * self.w) * 16).astype(np.int32)

  def _draw_poly(self, img, uv16, color):
    self.cv2.fillPoly(img, [uv16], color, self.cv2.LINE_AA, 4)

  def _prepare_object(self, obj: Object, T_cs, cam_pos):
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
