"""Compile time of the jitted train step, scanned vs unrolled layers (model.scan_layers; run by hand).

  python benchmarks/compile_time.py [--sizes demo,xil,paper] [--repeats 2] [--batch 2]
                                    [--image_size 64] [--backbone encdec] [--head fm] [--image]

Each measurement is `train.jit_train_step(...).lower(...).compile()` of the real train step (loss,
gradients, AdamW, EMA) on a 1-device mesh with abstract inputs (nothing allocated or run), in a
fresh subprocess (no cache shared), scanned and unrolled alternating, `--repeats` times; the best
of each is reported with the ratio unrolled / scanned. Sizes: `demo` (the demo preset), `xil`
(X-IL's size: width 256, 4 heads, 4 encoder + 6 decoder layers, with the paper's ResNet-18) and
`paper` (the ~200M preset). Compile time grows with the number and size of distinct ops (parameter
shapes), not with the image or batch size, so a small batch (2) and 64 px images stand for the
real run. The ResNet image encoder is never scanned (its blocks differ); `--image` also times its
forward + backward alone, to show how much of the step it accounts for at each size.
XLA:CPU with the classic threefry, as the CPU runs use (main.py). Prints one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")  # as main.py / conftest.py on CPU

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {  # preset, overrides
    "demo": ("demo", {}),
    "xil": ("paper", dict(emb_dim=256, num_heads=4, enc_layers=4, dec_layers=6, num_layers=10)),
    "paper": ("paper", {}),
}


def _one(size: str, scan: bool, args) -> dict:
  """One measurement in this process: {params, lower_s, compile_s, total_s}."""
  import jax
  import numpy as np
  sys.path.insert(0, REPO)
  from benchmarks import step_setup
  from egodex_jax import sharding

  preset, over = SIZES[size]
  setup = step_setup.build(preset, image_size=args.image_size, head=args.head,
                           backbone=args.backbone, horizon=args.horizon, batch_size=args.batch,
                           model=dict(over, scan_layers=scan))
  policy = setup.policy
  mesh = sharding.make_mesh(1, jax.devices()[:1])
  abstract, shardings = setup.abstract_state(mesh)
  batch = setup.abstract_batch(args.batch, mesh)
  step = setup.jit_step(mesh, shardings)
  t0 = time.perf_counter()
  lowered = step.lower(abstract, batch)
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  out = dict(params=int(sum(x.size for x in jax.tree.leaves(abstract.params))),
             lower_s=t1 - t0, compile_s=t2 - t1, total_s=t2 - t0)
  if args.image:  # the (never scanned) image encoder alone: forward + backward
    import jax.numpy as jnp
    from egodex_jax.models import network
    cfg = policy.net.cfg
    enc = network._encoder(cfg, "image", cfg.emb_dim, jnp.dtype(cfg.dtype))
    images = jax.ShapeDtypeStruct((args.batch, args.image_size, args.image_size, 3), np.uint8)
    variables = jax.eval_shape(lambda x: enc.init(jax.random.PRNGKey(0), x, train=True), images)
    loss = lambda v, x: jnp.sum(enc.apply(v, x, train=True))  # GroupNorm: no mutable state
    t0 = time.perf_counter()
    jax.jit(jax.grad(loss)).lower(variables, images).compile()
    out["image_encoder_s"] = time.perf_counter() - t0
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="demo,xil,paper")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--horizon", type=int, default=30)
  parser.add_argument("--backbone", default="encdec")
  parser.add_argument("--head", default="fm")
  parser.add_argument("--image", action="store_true", help="also time the image encoder alone")
  parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # 'size,scan': in-process
  args = parser.parse_args()
  if args.one:
    size, scan = args.one.split(",")
    print(json.dumps(_one(size, scan == "1", args)))
    return
  flags = [f"--{k}={getattr(args, k)}" for k in ("batch", "image_size", "horizon", "backbone",
                                                  "head")] + (["--image"] if args.image else [])
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for size in args.sizes.split(","):
    runs = {False: [], True: []}
    for _ in range(args.repeats):
      for scan in (False, True):  # alternating, so drifting machine load hits both alike
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one",
                               f"{size},{int(scan)}", *flags], env=env, capture_output=True,
                              text=True, check=False)
        if proc.returncode:
          sys.exit(f"compile_time.py: {size} scan={scan} failed:\n{proc.stderr[-3000:]}")
        runs[scan].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = {scan: min(r, key=lambda x: x["total_s"]) for scan, r in runs.items()}
    res = dict(size=size, backbone=args.backbone, head=args.head, params=best[True]["params"],
               unrolled_s=round(best[False]["total_s"], 2), scanned_s=round(best[True]["total_s"], 2),
               ratio=round(best[False]["total_s"] / best[True]["total_s"], 2),
               unrolled_all_s=[round(r["total_s"], 2) for r in runs[False]],
               scanned_all_s=[round(r["total_s"], 2) for r in runs[True]],
               lower_s=dict(unrolled=round(best[False]["lower_s"], 2),
                            scanned=round(best[True]["lower_s"], 2)))
    if args.image:
      res["image_encoder_s"] = round(min(r["image_encoder_s"] for r in runs[True] + runs[False]), 2)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
  main()
