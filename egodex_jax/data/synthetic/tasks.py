"""The five tasks (keyframed plans: objects, hand keyframes, grasps, modes, instructions) and
`simulate`, which turns a plan into scene-frame poses and confidences for every joint."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from egodex_jax import geometry
from egodex_jax import skeleton
from egodex_jax.data.synthetic import hands
from egodex_jax.data.synthetic import render
from egodex_jax.data.synthetic import scene


@dataclasses.dataclass
class _Plan:
  objects: list
  hands: dict  # side -> keyframes
  attached: list  # (object index, side, grasp frame, release frame)
  mode: int
  mode_targets: list  # scene-frame right wrist positions at placement, per mode
  attrs: dict


def _table_pos(x, z, lift=0.0):
  return np.array([x, scene.TABLE_Y + lift, z])


def _static(n, p, yaw=0.0):
  """An object pose that does not move: [n, 4, 4]."""
  T = scene.poses(scene.rot("y", yaw), np.asarray(p, np.float64))
  return np.broadcast_to(T, (n, 4, 4)).copy()


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
  g = hands.grasp_wrist(obj_c, [yaw], [pitch], [roll])[0]
  g_place = hands.grasp_wrist(target_c, [yaw], [pitch], [roll])[0]
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
  rest = hands.rest_vec(side, rng)
  wiggle = rest + np.r_[rng.normal(0, 0.02, 3), rng.normal(0, 0.05, 3), rng.normal(0, 0.05)]
  return [(0, rest), (n * rng.uniform(0.3, 0.7), wiggle), (n - 1, rest)]


def _draw_mode(rng, forced) -> int:
  """The outcome of a two-mode task: always drawn, so that forcing one (a counterfactual of the
  same episode) leaves every later draw of the episode where it was."""
  drawn = int(rng.integers(2))
  return drawn if forced is None else int(forced)


def _task_block_on_mat(rng, n, mode=None):
  mats = [_table_pos(-0.20 + rng.uniform(-0.03, 0.03), -0.44 + rng.uniform(-0.04, 0.04)),
          _table_pos(0.20 + rng.uniform(-0.03, 0.03), -0.44 + rng.uniform(-0.04, 0.04))]
  block = _table_pos(rng.uniform(-0.10, 0.12), rng.uniform(-0.34, -0.24))
  mode = _draw_mode(rng, mode)
  h = 0.07  # big enough to see in a 64-pixel image
  yaw, pitch, roll = rng.uniform(-0.15, 0.25), rng.uniform(0.55, 0.75), rng.uniform(-0.1, 0.1)
  rest = hands.rest_vec("right", rng)
  centre = lambda p: p + np.array([0, h / 2, 0])
  keys, grasp, release, _ = _pick_place_keys("right", rng, n, rest, centre(block),
                                             centre(mats[mode] + [0, 0.003, 0]), yaw, pitch, roll)
  targets = [hands.grasp_wrist(centre(m + [0, 0.003, 0]), [yaw], [pitch], [roll])[0]
             for m in mats]
  objects = [
      render.Object("flat", (40, 70, 200), (0.09, 0.09, 0.003), _static(n, mats[0])),
      render.Object("flat", (40, 160, 60), (0.09, 0.09, 0.003), _static(n, mats[1])),
      render.Object("prism", (210, 30, 30), (0.035, 0.035, h),
                    _static(n, block, rng.uniform(-0.5, 0.5))),
  ]
  attrs = dict(llm_type="reset_free", object="red block, blue mat, green mat",
               llm_verbs=["put", "place"], llm_objects=["red block", "mat"],
               phrasings=("Put the red block on one of the two mats.",
                          "Place the red cube onto either the blue or the green mat.",
                          "Move the red block onto a mat."))
  return _Plan(objects, {"right": keys, "left": _rest_keys("left", rng, n)},
               [(2, "right", grasp, release)], mode, targets, attrs)


def _task_ball_in_bowl(rng, n, mode=None):
  # A near-left and a far-right bowl, the ball between them: both targets lie well away from
  # the right hand's rest pose, so either outcome is a real movement.
  bowls = [_table_pos(-0.21 + rng.uniform(-0.03, 0.03), -0.38 + rng.uniform(-0.03, 0.03)),
           _table_pos(0.12 + rng.uniform(-0.03, 0.03), -0.58 + rng.uniform(-0.03, 0.03))]
  ball = _table_pos(rng.uniform(-0.07, 0.07), rng.uniform(-0.42, -0.30))
  mode = _draw_mode(rng, mode)
  r = 0.035
  yaw, pitch, roll = rng.uniform(0.0, 0.35), rng.uniform(0.6, 0.8), rng.uniform(-0.1, 0.1)
  rest = hands.rest_vec("right", rng)
  drop = lambda b: b + np.array([0, 0.04, 0])
  keys, grasp, release, _ = _pick_place_keys("right", rng, n, rest, ball + [0, r, 0],
                                             drop(bowls[mode]), yaw, pitch, roll, lift=0.12,
                                             grip=0.5)
  targets = [hands.grasp_wrist(drop(b), [yaw], [pitch], [roll])[0] for b in bowls]
  objects = [
      render.Object("prism", (235, 235, 230), (0.075, 0.05), _static(n, bowls[0]), sides=10,
                    open_top=True),
      render.Object("prism", (60, 60, 70), (0.075, 0.05), _static(n, bowls[1]), sides=10,
                    open_top=True),
      render.Object("sphere", (240, 210, 30), (r,), _static(n, ball)),
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
  rest = hands.rest_vec("left", rng)
  c = cup + [0, 0.05, 0]
  keys, grasp, release, _ = _pick_place_keys("left", rng, n, rest, c, c, yaw, pitch, roll,
                                             lift=0.15, grip=0.5, retreat_up=0.05)
  objects = [render.Object("prism", (30, 150, 170), (0.042, h), _static(n, cup), sides=10,
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
  Rb = scene.rot("y", yaw_box)
  keys, up = {}, np.array([0.0, 1.0, 0.0])
  for side, s in (("left", -1.0), ("right", 1.0)):
    contact = box + Rb @ np.array([s * (hx + 0.01), 0.6 * h, 0.0])
    # Palms face the box: fingers forward, rolled 80 degrees inward.
    ang = np.array([yaw_box - s * 0.2, 0.35, -s * 1.35])
    g = hands.grasp_wrist(contact, [ang[0]], [ang[1]], [ang[2]], reach=0.06, below=0.03)[0]
    rest = hands.rest_vec(side, rng)
    keys[side] = [(f[0], rest), (f[1], np.r_[g + Rb @ [s * 0.05, 0.02, 0], ang, 0.05]),
                  (f[2], np.r_[g, ang, 0.35]),
                  (f[3], np.r_[g + shift + 0.12 * up, ang, 0.35]),
                  (f[4], np.r_[g + shift, ang, 0.35]), (f[5], np.r_[g + shift, ang, 0.05]),
                  (f[6], np.r_[g + shift + Rb @ [s * 0.08, 0.05, 0], ang * [1, 0.8, 0.5], 0.3])]
  objects = [render.Object("prism", (170, 120, 200), (hx, hz, h), _static(n, box, yaw_box))]
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
  rest = hands.rest_vec("right", rng)
  knob = np.array([0.0, 0.03, 0.0])
  keys, grasp, release, _ = _pick_place_keys("right", rng, n, rest, start + knob, end + knob,
                                             yaw, pitch, roll, lift=0.08, grip=0.6)
  objects = [
      render.Object("prism", (90, 90, 100), (0.09, 0.08), _static(n, pot), sides=12),
      render.Object("prism", (150, 150, 165), (0.095, 0.012), _static(n, start), sides=12),
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
# An occlusion burst's corruption of the recorded hand (`_tracking_error`), metres.
BURST_OFFSET = 0.04
BURST_JITTER = 0.01


def episode_task(episode: int, tasks=tuple(TASKS)) -> tuple[str, int]:
  """Episode number -> (task, index within the task): tasks round-robin."""
  return tasks[episode % len(tasks)], episode // len(tasks)


def episode_rng(seed: int, episode: int) -> np.random.Generator:
  """The generator of one episode: independent of the others and of how many are written."""
  return np.random.default_rng(np.random.SeedSequence([int(seed), int(episode)]))


def simulate(task: str, rng: np.random.Generator, num_frames: int, mode: int | None = None
             ) -> dict:
  """Scene-level simulation of one episode (no files): poses, objects, confidences, attrs.

  `mode` forces the outcome of a MULTIMODAL_TASKS task (0 or 1) after it was drawn as usual, so
  the same rng gives the same episode under its own mode and its counterfactual under the other
  (same scene, same noise). A unimodal task accepts only None or -1 (its one outcome).
  """
  n = int(num_frames)
  if task in MULTIMODAL_TASKS:
    if mode not in (None, 0, 1):
      raise ValueError(f"{task} has modes 0 and 1, got mode={mode!r}")
    plan = TASKS[task](rng, n, mode)
  else:
    if mode not in (None, -1):
      raise ValueError(f"{task} has one outcome (mode -1), got mode={mode!r}")
    plan = TASKS[task](rng, n)
  wrists, curls = {}, {}
  for side in skeleton.SIDES:
    wrists[side], curls[side] = hands.hand_tracks(plan.hands[side], n, rng)
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
      settled[:3, :3] = scene.rot("y", yaw)
      obj.track[r + 1:] = settled
  joints = {}  # joint -> [N, 4, 4] scene frame
  for side in skeleton.SIDES:
    local = hands.hand_local(side, curls[side])
    for name, T in local.items():
      joints[name] = wrists[side] @ T
  # The gaze follows the hand that moves most (both for bimanual tasks).
  travel = {s: np.ptp(wrists[s][:, :3, 3], axis=0).sum() for s in skeleton.SIDES}
  w = np.array([travel["left"], travel["right"]]) + 1e-6
  centre = (w[0] * wrists["left"][:, :3, 3] + w[1] * wrists["right"][:, :3, 3]) / w.sum()
  cam = scene.camera_track(rng, n, centre)
  joints.update(hands.body(cam, wrists))
  joints[skeleton.CAMERA] = cam

  # Confidences high, with occasional occlusion bursts: low confidence and a corrupted pose.
  conf = {j: np.clip(0.93 + 0.05 * scene.smooth_noise(rng, n, 1, 1.0, (0.2, 1.0))[:, 0], 0, 1)
          for j in skeleton.JOINTS}
  if rng.uniform() < 0.5 and n > 20:
    side = skeleton.SIDES[int(rng.integers(2))]
    length = int(rng.integers(4, min(16, n // 4) + 1))
    start = int(rng.integers(0, n - length))
    sl = slice(start, start + length)
    error = _tracking_error(rng.standard_normal((length, 3)))  # [L, 3]
    for j in skeleton.hand_joints(side):
      conf[j][sl] = rng.uniform(0.05, 0.4, size=length)
      joints[j][sl, :3, 3] += error
  return dict(plan=plan, scene=joints, confidences=conf)


def _tracking_error(z: np.ndarray) -> np.ndarray:
  """What a burst does to the recorded hand, from its draws z [L, 3] (standard normal): the
  whole hand shifted BURST_OFFSET metres one way for the burst (a tracker locked onto the wrong
  place) plus BURST_JITTER of frame-to-frame jitter -> [L, 3] metres. Rigid, so bones keep their
  lengths; the same draws as the earlier 6 mm jitter, so every later draw is unchanged."""
  direction = z.sum(0) / max(float(np.linalg.norm(z.sum(0))), 1e-9)
  return BURST_OFFSET * direction + BURST_JITTER * z

