"""Parameter counts of every model preset x backbone x head (jax.eval_shape: nothing allocated).

  python benchmarks/param_counts.py [--horizon 60] [--goal] [--presets tiny,demo,paper,large]

Image size per preset: 32 px (tiny), 64 px (demo), 224 px (paper, large), as they are used.
Prints a Markdown table for the README.
"""

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from egodex_jax.models import backbones, heads
from egodex_jax.models import config as config_lib
from egodex_jax.models import policy as policy_lib

IMAGE_SIZE = {"tiny": 32, "demo": 64, "paper": 224, "large": 224}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--horizon", type=int, default=60)
  parser.add_argument("--goal", action="store_true", help="goal-conditioned variant")
  parser.add_argument("--presets", default=",".join(config_lib.PRESETS))
  args = parser.parse_args()
  presets = args.presets.split(",")
  unknown = [p for p in presets if p not in config_lib.PRESETS]
  if unknown:
    print(f"param_counts.py: unknown preset(s) {unknown}; known: {list(config_lib.PRESETS)}",
          file=sys.stderr)
    sys.exit(2)
  print(f"Parameters (H = {args.horizon}, goal = {args.goal}, one image token, learned language)\n")
  print("| preset | image | " + " | ".join(f"{b} + {h}" for b in backbones.BACKBONES.names()
                                          for h in heads.HEADS.names()) + " |")
  print("|---|---|" + "---|" * (len(backbones.BACKBONES.names()) * len(heads.HEADS.names())))
  for size in presets:
    cells = []
    for backbone in backbones.BACKBONES.names():
      for head in heads.HEADS.names():
        n = policy_lib.param_count(config_lib.model_config(size, backbone=backbone, head=head),
                                 horizon=args.horizon, image_size=IMAGE_SIZE[size], goal=args.goal)
        cells.append(f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K")
    print(f"| {size} | {IMAGE_SIZE[size]} px | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
