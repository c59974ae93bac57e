"""Input pipeline throughput: our Grain pipeline vs a naive raw loader vs JPEG decoding alone.

  python -m benchmarks.pipeline_bench --work_dir /tmp/egodex_bench [--episodes 6] [--samples 512]

Measured side by side in one run on the same synthetic dataset (raw at 1920x1080, so the naive
loader pays the real decoding cost):
  naive     per sample: open the raw HDF5 + MP4, seek to frame t, decode it at full resolution,
            resize to 224, compute the action chunk (what Apple's sample loader does);
  pipeline  make_dataset (ArrayRecord, JPEG decode, window slicing, batching), in-process and
            with Grain worker processes (reported per worker);
  decode    the same stored JPEG bytes decoded, nothing else: this machine's limit, with the
            fastest decoder that gives OpenCV's pixels (simplejpeg, which the pipeline uses;
            benchmarks/jpeg_decoders.py) and, for reference, cv2.imdecode (the decoder before).
Targets: pipeline >= 20x naive; pipeline >= 0.8 of decode-only (simplejpeg) in process and
>= 0.7 per Grain worker process. `--train` also measures the data wait of training steps
(benchmarks/train_wait.py).
Decode-only and the pipeline runs alternate for `--rounds` rounds and each loader reports its
best round, so that load from other processes on a shared machine distorts the ratios less; the
CPU columns (CPU time of the process(es) doing the loading, per sample) give the same ratio
without the wall clock, which is what to trust when the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def _build(raw_dir: str, data_dir: str, episodes: int, frames: tuple[int, int]) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from egodex_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from tfds_builder.egodex import egodex_dataset_builder as edb  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(raw_dir):
    print(f"writing {episodes} synthetic 1920x1080 episodes to {raw_dir} ...", flush=True)
    synthetic.generate(raw_dir, episodes, seed=12, width=1920, height=1080,
                       min_frames=frames[0], max_frames=frames[1])
  builder = edb.Builder(data_dir=data_dir, config=edb.builder_config())
  if not builder.is_prepared():
    print(f"building the ArrayRecord dataset in {data_dir} ...", flush=True)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=raw_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP))


def _pick(meta, split: str, n: int, seed: int) -> list[tuple[dict, int]]:
  rng = np.random.default_rng(seed)
  eps = meta.episodes[split]
  out = []
  for _ in range(n):
    e = eps[rng.integers(len(eps))]
    out.append((e, int(rng.integers(e["num_frames"]))))
  return out


def bench_naive(raw_dir: str, picks, horizon: int, size: int) -> float:
  import cv2  # pylint: disable=g-import-not-at-top
  from egodex_jax.data import actions, egodex  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  for e, t in picks:
    ep = egodex.load_episode(os.path.join(raw_dir, e["path"]), check_video=False)
    with egodex.VideoReader(ep.video_path) as reader:
      frame = reader.read([t])[0]
    cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    actions.action_chunk(ep, t, horizon)
    actions.hand_state(ep, t)
  return len(picks) / (time.perf_counter() - t0)


def _cpu_seconds(workers: int) -> float:
  """CPU time of the process doing the work: this one (all threads), or the Grain workers."""
  if not workers:
    return time.process_time()
  import psutil  # pylint: disable=g-import-not-at-top
  total = 0.0
  for child in psutil.Process().children(recursive=True):
    try:
      t = child.cpu_times()
      total += t.user + t.system
    except psutil.Error:
      pass
  return total


def bench_decode(jpegs: list[bytes], decoder: str) -> tuple[float, float]:
  """-> (samples/s, CPU ms per sample) of decoding alone: `simplejpeg` into one buffer (the
  pipeline's decode, the fastest with OpenCV's pixels: benchmarks/jpeg_decoders.py) or `opencv`
  (cv2.imdecode to RGB, the decoder before)."""
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
  if decoder == "simplejpeg":
    import simplejpeg  # pylint: disable=g-import-not-at-top
    buf = np.empty((*simplejpeg.decode_jpeg_header(jpegs[0])[:2], 3), np.uint8)
    fn = lambda b: simplejpeg.decode_jpeg(b, "RGB", buffer=buf)  # noqa: E731
  else:
    fn = lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR_RGB)  # noqa: E731
  t0, c0 = time.perf_counter(), time.process_time()
  for b in jpegs:  # nothing else
    fn(b)
  n = len(jpegs)
  return n / (time.perf_counter() - t0), 1e3 * (time.process_time() - c0) / n


def bench_pipeline(data_dir: str, meta, horizon: int, batch: int, samples: int, workers: int,
                   threads: int) -> tuple[float, float]:
  """-> (samples/s, CPU ms per sample of the process(es) that load: this one or the workers)."""
  from egodex_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  ds = pipeline.make_dataset(data_dir, "train", batch_size=batch, horizon=horizon, seed=1,
                             worker_count=workers, read_threads=threads, meta=meta)
  it = iter(ds)
  for _ in range(3):  # start-up (worker spawn, first reads) is not throughput
    next(it)
  n = max(1, samples // batch)
  t0, c0 = time.perf_counter(), _cpu_seconds(workers)
  for _ in range(n):
    next(it)
  rate, cpu = n * batch / (time.perf_counter() - t0), _cpu_seconds(workers) - c0
  if hasattr(it, "close"):
    it.close()
  return rate, 1e3 * cpu / (n * batch)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--work_dir", default="/tmp/egodex_bench")
  p.add_argument("--raw_dir", default=None, help="default: WORK_DIR/raw (generated if missing)")
  p.add_argument("--episodes", type=int, default=6)
  p.add_argument("--min_frames", type=int, default=120)
  p.add_argument("--max_frames", type=int, default=240)
  p.add_argument("--samples", type=int, default=512)
  p.add_argument("--naive_samples", type=int, default=48)
  p.add_argument("--horizon", type=int, default=60)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--workers", default="0,1,2", help="comma list of Grain worker counts")
  p.add_argument("--threads", type=int, default=1, help="read threads per process")
  p.add_argument("--rounds", type=int, default=3, help="alternating rounds; best one reported")
  p.add_argument("--train", action="store_true",
                 help="then the data wait of training steps (benchmarks/train_wait.py)")
  args = p.parse_args(argv)

  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags
  from egodex_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  raw_dir = args.raw_dir or os.path.join(args.work_dir, "raw")
  data_dir = os.path.join(args.work_dir, "data")
  _build(raw_dir, data_dir, args.episodes, (args.min_frames, args.max_frames))
  meta = pipeline.load_metadata(data_dir)
  src = pipeline.data_source(meta, "train")
  picks = _pick(meta, "train", args.samples, seed=0)
  jpegs = [src[e["first_index"] + t]["image"] for e, t in picks]

  rows = [("naive raw loader (1 process)", (bench_naive(raw_dir, picks[:args.naive_samples],
                                                         args.horizon, meta.image_size), None), 1)]
  # The first decode row is the limit the ratios are taken against: the fastest decoder.
  runs = {"JPEG decode only, simplejpeg (1 process)": (lambda: bench_decode(jpegs, "simplejpeg"), 1),
          "JPEG decode only, OpenCV (1 process)": (lambda: bench_decode(jpegs, "opencv"), 1)}
  for w in [int(x) for x in args.workers.split(",")]:
    name = f"pipeline, {w} worker process{'es' if w != 1 else ''}" if w else "pipeline, in-process"
    runs[name] = (lambda w=w: bench_pipeline(data_dir, meta, args.horizon, args.batch_size,
                                             args.samples, w, args.threads), max(1, w))
  rates = {name: [] for name in runs}
  for r in range(args.rounds):
    for name, (fn, _) in runs.items():
      rates[name].append(fn())
    print(f"round {r + 1}: " + ", ".join(f"{n.split(' (')[0]} {v[-1][0]:.0f}/s "
                                          f"{v[-1][1]:.3f} cpu-ms" for n, v in rates.items()),
          flush=True)
  # Best round by rate; CPU ms per sample: the lowest round (other processes' load inflates it).
  rows += [(name, (max(r for r, _ in rates[name]), min(c for _, c in rates[name])), procs)
           for name, (_, procs) in runs.items()]
  naive, decode_cpu, decode = rows[0][1][0], rows[1][1][1], rows[1][1][0]
  print(f"\n{os.cpu_count()} CPUs; {len(meta.episodes['train'])} train episodes; "
        f"H={args.horizon}, batch {args.batch_size}, {meta.image_size}px JPEG, "
        f"{args.threads} read thread(s) per process; best of {args.rounds} rounds")
  print(f"{'loader':40s} {'samples/s':>10s} {'per proc':>10s} {'x naive':>8s} {'/decode':>8s} "
        f"{'cpu ms':>8s} {'/decode':>8s}")
  print(f"{'':40s} {'':>10s} {'':>10s} {'':>8s} {'(wall)':>8s} {'/sample':>8s} {'(cpu)':>8s}")
  for name, (rate, cpu), procs in rows:
    per = rate / procs
    cpu_cols = f" {cpu:8.3f} {decode_cpu / cpu:8.2f}" if cpu else ""
    print(f"{name:40s} {rate:10.1f} {per:10.1f} {rate / naive:8.1f} {per / decode:8.2f}"
          + cpu_cols)
  if args.train:
    from benchmarks import train_wait  # pylint: disable=g-import-not-at-top
    return train_wait.main(["--work_dir", args.work_dir])
  return 0


if __name__ == "__main__":
  sys.exit(main())
