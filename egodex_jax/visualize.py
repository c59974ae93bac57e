"""Draw an episode's ground-truth hand skeletons onto its video.

  python -m egodex_jax.visualize EPISODE.hdf5 --out OUT.mp4 [--max_frames N] [--video EPISODE.mp4]

Each frame's joints are expressed in that frame's camera (`geometry.in_frame`), projected with the
episode's intrinsic (`geometry.project`) and drawn bone by bone (`skeleton.hand_bones`), one colour
per finger (thumb red, index orange, middle yellow, ring green, little blue, as Apple's sample
visualiser colours them by finger); left-hand joints are white dots, right-hand ones black. The
video is read and written one frame at a time (mp4v), never held in memory. The reprojection of
real EgoDex data is visibly off in places (docs/egodex_format.md, section 2): overlays are approximate.
Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from egodex_jax import cli
from egodex_jax import geometry
from egodex_jax import skeleton

# RGB per finger; a bone takes the colour of the finger its child joint belongs to.
FINGER_COLOURS = {"Thumb": (230, 40, 40), "Index": (255, 150, 0), "Middle": (240, 230, 30),
                  "Ring": (40, 200, 60), "Little": (40, 120, 255)}
JOINT_COLOURS = {"left": (255, 255, 255), "right": (0, 0, 0)}


def _finger_of(joint: str) -> str:
  for finger in FINGER_COLOURS:
    if finger in joint:
      return finger
  raise ValueError(f"joint {joint} belongs to no finger")


def hand_drawing_plan():
  """-> joints (50 names), bones [(i, j, rgb)] as indices into joints, joint colours [50]."""
  joints = list(skeleton.HAND_JOINTS)
  index = {name: i for i, name in enumerate(joints)}
  bones = [(index[a], index[b], FINGER_COLOURS[_finger_of(b)])
           for side in skeleton.SIDES for a, b in skeleton.hand_bones(side)]
  colours = [JOINT_COLOURS[side] for side in skeleton.SIDES for _ in skeleton.hand_joints(side)]
  return joints, bones, colours


def project_hands(episode, frame: int, joints) -> np.ndarray:
  """Pixels [J, 2] (NaN behind the camera) of `joints` at `frame`, in that frame's camera."""
  T_world_joint = np.stack([episode.transforms[j][frame] for j in joints]).astype(np.float64)
  T_world_cam = episode.transforms[skeleton.CAMERA][frame].astype(np.float64)
  points = geometry.in_frame(T_world_cam, T_world_joint)[:, :3, 3]
  return geometry.project(points, episode.intrinsic)


def line_thickness(frame: np.ndarray) -> int:
  """Pixels per line for a frame [h, w, ...]: 1 up to 480 px, then growing with the frame."""
  return max(1, round(min(frame.shape[:2]) / 240))


def pixels(uv: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """uv [..., 2] float -> (finite [...] bool, int pixels [..., 2]) for OpenCV."""
  limit = 4 * max(frame.shape[:2])  # OpenCV wants ints; far-off points only need to clip correctly
  ok = np.isfinite(uv).all(axis=-1)
  return ok, np.clip(np.nan_to_num(uv), -limit, limit).round().astype(int)


def draw_paths(out: np.ndarray, uv: np.ndarray, rgb, thickness: int) -> None:
  """Draws paths uv [P, T, 2] (pixels, NaN = not visible) onto `out` [h, w, 3] in place; a
  segment with an invisible end is skipped."""
  import cv2  # pylint: disable=g-import-not-at-top
  ok, pts = pixels(np.asarray(uv, np.float64), out)
  for p in range(pts.shape[0]):
    for k in range(pts.shape[1] - 1):
      if ok[p, k] and ok[p, k + 1]:
        cv2.line(out, tuple(pts[p, k]), tuple(pts[p, k + 1]), rgb, thickness, cv2.LINE_AA)


def draw_points(out: np.ndarray, uv: np.ndarray, rgb, radius: int) -> None:
  """Draws filled dots at uv [P, 2] (pixels, NaN = not visible) onto `out` in place."""
  import cv2  # pylint: disable=g-import-not-at-top
  ok, pts = pixels(np.asarray(uv, np.float64), out)
  for i in np.flatnonzero(ok):
    cv2.circle(out, tuple(pts[i]), radius, rgb, -1, cv2.LINE_AA)


def draw_hands(frame_rgb: np.ndarray, uv: np.ndarray, bones, colours) -> np.ndarray:
  """Draws bones and joints onto a copy of an RGB frame [h, w, 3] uint8."""
  import cv2  # pylint: disable=g-import-not-at-top
  out = np.ascontiguousarray(frame_rgb.copy())
  thickness = line_thickness(out)
  ok, pts = pixels(uv, out)
  for i, j, rgb in bones:
    if ok[i] and ok[j]:
      cv2.line(out, tuple(pts[i]), tuple(pts[j]), rgb, thickness, cv2.LINE_AA)
  for i, rgb in enumerate(colours):
    if ok[i]:
      cv2.circle(out, tuple(pts[i]), thickness + 1, rgb, -1, cv2.LINE_AA)
  return out


def render_episode(hdf5_path: str, out_path: str, *, video_path: str | None = None,
                   max_frames: int | None = None) -> int:
  """Writes the overlay video; returns the number of frames written. Raises EpisodeError or
  ValueError (one sentence) on bad input."""
  import cv2  # pylint: disable=g-import-not-at-top
  from egodex_jax.data import egodex  # pylint: disable=g-import-not-at-top

  if max_frames is not None and max_frames < 1:
    raise ValueError(f"--max_frames must be at least 1, got {max_frames}")
  episode = egodex.load_episode(hdf5_path, video_path, check_video=True)
  n = episode.num_frames if max_frames is None else min(max_frames, episode.num_frames)
  joints, bones, colours = hand_drawing_plan()
  with egodex.VideoReader(episode.video_path) as reader:
    fps = reader.fps if reader.fps and reader.fps > 0 else float(skeleton.FPS)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                             (reader.width, reader.height))
    if not writer.isOpened():
      raise ValueError(f"{out_path}: cannot open an mp4v video writer there")
    written = 0
    try:
      for i, frame in enumerate(reader):
        if i >= n:
          break
        drawn = draw_hands(frame, project_hands(episode, i, joints), bones, colours)
        writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        written += 1
    finally:
      writer.release()
  if written < n:
    raise ValueError(f"{episode.video_path}: the video ended after {written} of {n} frames")
  return written


def main(argv=None) -> int:
  parser = cli.ArgumentParser(prog="python -m egodex_jax.visualize",
                              description=__doc__.splitlines()[0])
  parser.add_argument("hdf5", help="episode .hdf5 (its .mp4 beside it unless --video)")
  parser.add_argument("--out", required=True, help="output .mp4")
  parser.add_argument("--video", default=None, help="the episode's .mp4 (default: beside it)")
  parser.add_argument("--max_frames", type=int, default=None)
  args = parser.parse_args(argv)
  try:
    n = render_episode(args.hdf5, args.out, video_path=args.video, max_frames=args.max_frames)
  except (ValueError, OSError) as e:  # EpisodeError is a ValueError
    cli.fail(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
  print(f"wrote {n} frames to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
