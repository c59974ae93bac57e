"""Run a trained policy along a raw EgoDex episode; draw and save its predictions.

  python -m egodex_jax.predict --workdir W EPISODE.hdf5 --out OUT.mp4 [--k 10] [--every 10]
      [--json OUT.json] [--step N] [--seed 0] [--batch_size 8] [--instruction TEXT] [--video MP4]

Every `--every`-th frame t (0, every, 2 every, ...) goes through `inference.load_policy(W)`
with its video frame (the builder's resize and JPEG), its hand state and the episode's
instruction (or --instruction). The output video has one frame per predicted frame, at the
original resolution and fps / every: the ground-truth future of the 12 keypoints (wrists and
fingertips, green), the K predicted futures (red) and where they are now (white), all in the
camera frame of t, reprojected through the episode's intrinsic. `--json` holds the predictions:
`{"frames": [t...], "predictions": [K x H x 48 per frame], ...}`, metres, camera frame of t.
Frames are predicted `--batch_size` at a time (the last batch padded: one compile); batch i is
sampled with seed + i. Bad input (missing workdir or checkpoint, unreadable episode): one line
on stderr, exit code 2.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from egodex_jax import cli
from egodex_jax import geometry
from egodex_jax import skeleton
from egodex_jax import visualize

GT_RGB, PRED_RGB, NOW_RGB = (0, 255, 0), (255, 40, 40), (255, 255, 255)


def keypoint_paths(state: np.ndarray, future: np.ndarray, intrinsic) -> np.ndarray:
  """state [48], future [..., T, 48] metres -> pixels [..., 12, T + 1, 2], starting at now."""
  future = np.asarray(future, np.float64)
  now = np.broadcast_to(np.asarray(state, np.float64), future.shape[:-2] + (1, 48))
  pts = skeleton.keypoints(np.concatenate([now, future], -2))  # [..., T+1, 12, 3]
  return np.swapaxes(geometry.project(pts, intrinsic), -2, -3)


def draw_frame(frame_rgb: np.ndarray, state, gt_future, samples, intrinsic) -> np.ndarray:
  """frame [h, w, 3], state [48], gt_future [T, 48] (T >= 0), samples [K, H, 48] -> a copy with
  the predicted paths, the true one over them and the current keypoints."""
  out = np.ascontiguousarray(frame_rgb.copy())
  th = visualize.line_thickness(out)
  for paths in keypoint_paths(state, samples, intrinsic):  # [12, H + 1, 2] per sample
    visualize.draw_paths(out, paths, PRED_RGB, th)
  gt = keypoint_paths(state, gt_future, intrinsic)  # [12, T + 1, 2]
  visualize.draw_paths(out, gt, GT_RGB, th + 1)
  visualize.draw_points(out, gt[:, 0], NOW_RGB, th + 1)
  return out


def _batches(ts: np.ndarray, size: int):
  for start in range(0, len(ts), size):
    yield start // size, ts[start:start + size]


def run(workdir: str, hdf5: str, out: str, *, k: int = 10, every: int = 10,
        json_path: str | None = None, step: int | None = None, seed: int = 0,
        batch_size: int = 8, instruction: str | None = None, video: str | None = None,
        log=print) -> dict:
  """Predicts, draws and saves; returns {"frames": [...], "predictions": [F, K, H, 48]}.
  Raises inference.UserError, EpisodeError or ValueError (one sentence) on bad input."""
  import cv2  # pylint: disable=g-import-not-at-top
  from egodex_jax import inference  # pylint: disable=g-import-not-at-top
  from egodex_jax.data import actions as actions_lib  # pylint: disable=g-import-not-at-top
  from egodex_jax.data import egodex  # pylint: disable=g-import-not-at-top

  for name, v in (("--k", k), ("--every", every), ("--batch_size", batch_size)):
    if v < 1:
      raise ValueError(f"{name} must be at least 1, got {v}")
  episode = egodex.load_episode(hdf5, video, check_video=True)
  policy = inference.load_policy(workdir, step)
  text = episode.instruction if instruction is None else instruction
  h = policy.horizon
  windows, num_future = actions_lib.action_windows(episode, h)  # [N, H+1, 48], [N]
  n = episode.num_frames
  ts = np.arange(0, n, every)
  batch_size = min(batch_size, len(ts))
  log(f"predict: {len(ts)} of {n} frames of {hdf5}, K = {k}, H = {h}, step {policy.step} of "
      f"{workdir}; instruction {text!r}")
  preds = np.zeros((len(ts), k, h, skeleton.ACTION_DIM), np.float32)
  with egodex.VideoReader(episode.video_path) as reader:
    fps = reader.fps if reader.fps and reader.fps > 0 else float(skeleton.FPS)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), max(1.0, fps / every),
                             (reader.width, reader.height))
    if not writer.isOpened():
      raise ValueError(f"{out}: cannot open an mp4v video writer there")
    try:
      for i, chunk in _batches(ts, batch_size):
        idx = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk))])
        frames = reader.read(idx)
        goals = reader.read(np.minimum(idx + h, n - 1)) if policy.goal else None
        got = policy.predict_batch(frames, windows[idx, 0], [text] * batch_size, k=k,
                                   goal_images=goals, seed=seed + i)[:len(chunk)]
        preds[i * batch_size:i * batch_size + len(chunk)] = got
        for b, t in enumerate(chunk):
          gt = windows[t, 1:1 + num_future[t]]
          drawn = draw_frame(frames[b], windows[t, 0], gt, got[b], episode.intrinsic)
          writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        log(f"predict: {min(len(ts), (i + 1) * batch_size)}/{len(ts)} frames")
    finally:
      writer.release()
  result = {"episode": os.path.abspath(hdf5), "workdir": os.path.abspath(workdir),
            "step": policy.step, "instruction": text, "k": k, "horizon": h, "every": every,
            "units": "metres, camera frame of each frame (skeleton.py's 48-D layout)",
            "frames": ts.tolist(), "predictions": preds}
  if json_path:
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
      json.dump(dict(result, predictions=preds.tolist()), f)
  log(f"wrote {len(ts)} frames to {out}" + (f" and the predictions to {json_path}"
                                            if json_path else ""))
  return result


def main(argv=None) -> int:
  parser = cli.ArgumentParser(prog="python -m egodex_jax.predict",
                              description=__doc__.splitlines()[0])
  parser.add_argument("episode", help="episode .hdf5 (its .mp4 beside it unless --video)")
  parser.add_argument("--workdir", required=True, help="a training workdir (its checkpoints/)")
  parser.add_argument("--out", required=True, help="output .mp4")
  parser.add_argument("--json", default=None, help="also write the predictions here")
  parser.add_argument("--k", type=int, default=10, help="samples per frame")
  parser.add_argument("--every", type=int, default=10, help="predict every N-th frame")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch_size", type=int, default=8, help="frames per policy call")
  parser.add_argument("--instruction", default=None, help="default: the episode's own")
  parser.add_argument("--video", default=None, help="the episode's .mp4 (default: beside it)")
  args = parser.parse_args(argv)
  from egodex_jax import inference  # pylint: disable=g-import-not-at-top
  try:
    run(args.workdir, args.episode, args.out, k=args.k, every=args.every, json_path=args.json,
        step=args.step, seed=args.seed, batch_size=args.batch_size,
        instruction=args.instruction, video=args.video,
        log=lambda line: print(line, flush=True))
  except (inference.UserError, ValueError, OSError) as e:  # EpisodeError is a ValueError
    cli.fail(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
