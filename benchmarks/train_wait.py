"""Is training input-bound? Data wait per step vs step time, from the training log itself.

  python -m benchmarks.train_wait --work_dir /tmp/egodex_bench [--steps 60] [--workers 0]

Trains the demo recipe (configs/fm_encdec.py:demo: demo-size flow-matching encoder-decoder,
batch 32) for `--steps` steps in two settings and reads `data_wait_s` (time the loop spent in
`next(train_iter)` + the host-to-device put, summed over a log interval) and `steps_per_s` from
metrics.jsonl (egodex_jax/train.py), the same figures the progress line prints as "data wait N%":
  demo     the demo's own data (synthetic, 64 px); `--demo_episodes` of them, built once;
  224 px   the same model on 224 px frames (the pipeline benchmark's build, WORK_DIR/data):
           a small model and large images, the case where the input is most likely to limit.
The first interval (compilation) is dropped; the table gives the median over the rest.
`benchmarks.pipeline_bench --train` runs this after the throughput table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np


def _config(data_dir: str, steps: int, workers: int, demo_raw: str | None, episodes: int):
  from configs import fm_encdec  # pylint: disable=g-import-not-at-top
  c = fm_encdec.get_config("demo")
  c.data.data_dir = data_dir
  c.data.worker_count = workers
  c.demo.enabled = demo_raw is not None
  if demo_raw:
    c.demo.raw_dir, c.demo.num_episodes = demo_raw, episodes
  c.train.num_steps = steps
  c.train.log_every = 10
  c.train.save_every = 10 * steps  # the final save only: checkpoints are not the question here
  c.train.async_checkpoint = False
  c.eval.final_num_batches = 0
  return c


def run_case(config, workdir: str) -> dict:
  """Trains in a fresh `workdir`; -> {step_ms, wait_ms (per step), fraction} medians."""
  from egodex_jax import demo, metrics, train  # pylint: disable=g-import-not-at-top
  shutil.rmtree(workdir, ignore_errors=True)
  demo.ensure_dataset(config)
  train.train(config, workdir)
  recs = [r for r in metrics.read_metrics(workdir) if "data_wait_s" in r]
  rows = []
  for prev, r in zip(recs[:-1], recs[1:]):  # per interval; the first (compile) has no `prev`
    steps = r["step"] - prev["step"]
    step_s = 1.0 / r["steps_per_s"]
    rows.append((1e3 * step_s, 1e3 * r["data_wait_s"] / steps, r["data_wait_s"] / (steps * step_s)))
  step_ms, wait_ms, frac = np.median(np.array(rows), axis=0)
  return dict(step_ms=step_ms, wait_ms=wait_ms, fraction=frac, intervals=len(rows))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--work_dir", default="/tmp/egodex_bench")
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--workers", type=int, default=0, help="data.worker_count (Grain processes)")
  p.add_argument("--demo_episodes", type=int, default=40,
                 help="synthetic 160x120 episodes of the 64 px case (timing needs few)")
  p.add_argument("--cases", default="demo,224")
  args = p.parse_args(argv)
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags
  from egodex_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  main_lib._fast_cpu_rng()  # pylint: disable=protected-access  (as `python -m egodex_jax.main`)
  cases = {
      "demo": (os.path.join(args.work_dir, f"demo_e{args.demo_episodes}"),
               os.path.join(args.work_dir, f"demo_e{args.demo_episodes}", "raw")),
      "224": (os.path.join(args.work_dir, "data"), None)}
  results = {}
  for name in args.cases.split(","):
    data_dir, raw = cases[name]
    config = _config(data_dir, args.steps, args.workers, raw, args.demo_episodes)
    results[name] = run_case(config, os.path.join(args.work_dir, "train_wait", name))
  print(f"\nfm_encdec:demo model, batch 32, {args.steps} steps, {args.workers} Grain worker(s), "
        f"{os.cpu_count()} CPUs; medians over log intervals of 10 steps (compilation dropped)")
  print(f"{'case':10s} {'step ms':>8s} {'wait ms/step':>12s} {'wait fraction':>13s}")
  for name, r in results.items():
    label = "64 px" if name == "demo" else "224 px"
    print(f"{label:10s} {r['step_ms']:8.1f} {r['wait_ms']:12.2f} {r['fraction']:13.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
