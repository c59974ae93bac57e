"""The CLI: python -m egodex_jax.data.synthetic --out DIR --episodes N [--seed S ...].

Writes OUT/<task>/<i>.hdf5 + .mp4; bad flags are one stderr line and exit status 2, a write that
fails (OSError, ValueError) one line and status 1.
"""

from __future__ import annotations

import sys

from egodex_jax import cli
from egodex_jax import skeleton
from egodex_jax.data.synthetic import write


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog="python -m egodex_jax.data.synthetic",
                         description="Write synthetic EgoDex episodes (hdf5 + mp4) in the real "
                                     "format.")
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
    pairs = write.generate(args.out, args.episodes, args.seed, width=args.width,
                           height=args.height, min_frames=args.min_frames,
                           max_frames=args.max_frames, workers=args.workers)
  except (OSError, ValueError) as e:
    sys.stderr.write(cli.one_line(f"error: {e}") + "\n")
    return 1
  print(f"wrote {len(pairs)} episodes to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
