"""JPEG decoders on the dataset's stored frames: OpenCV vs simplejpeg vs PyTurboJPEG vs Pillow.

  python -m benchmarks.jpeg_decoders --data_dir /tmp/egodex_bench/data [--samples 512]
      [--turbojpeg_lib /path/libturbojpeg.so.0]

Every candidate decodes the same stored JPEG bytes to RGB; its pixels are compared with OpenCV's
(`cv2.imdecode(..., IMREAD_COLOR_RGB)`, what the builder's round trip `frames.model_image` and
the pipeline used): identical (np.array_equal on every frame) or the max abs difference and the
fraction of differing values. Timing alternates the decoders for `--rounds` rounds, one thread
each (as the pipeline runs them), and reports each one's best wall and lowest CPU time per frame
(other processes' load on a shared machine inflates both; CPU time less).

A decoder is only a candidate for the pipeline if its pixels are identical: training and
inference must see what `model_image` gives.
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np


def _decoders(turbojpeg_lib: str | None) -> dict:
  """name -> (decode(bytes, out [S, S, 3] uint8) -> array, or None with why not)."""
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
  out = {"opencv": lambda b, o: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR_RGB)}
  try:
    import simplejpeg  # pylint: disable=g-import-not-at-top
    out["simplejpeg"] = lambda b, o: simplejpeg.decode_jpeg(b, "RGB")
    out["simplejpeg (into buffer)"] = lambda b, o: simplejpeg.decode_jpeg(b, "RGB", buffer=o)
  except ImportError as e:
    out["simplejpeg"] = f"not importable ({e})"
  try:
    import turbojpeg  # pylint: disable=g-import-not-at-top
    tj = turbojpeg.TurboJPEG(turbojpeg_lib)
    out["PyTurboJPEG"] = lambda b, o: tj.decode(b, pixel_format=turbojpeg.TJPF_RGB)
  except (ImportError, OSError, RuntimeError) as e:
    out["PyTurboJPEG"] = f"not usable ({type(e).__name__}: {str(e).splitlines()[0]})"
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    out["Pillow"] = lambda b, o: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
  except ImportError as e:
    out["Pillow"] = f"not importable ({e})"
  return out


def compare(jpegs: list[bytes], decoders: dict) -> dict:
  """name -> (identical, max abs diff, fraction of differing values) against OpenCV."""
  ref = [decoders["opencv"](b, None) for b in jpegs]
  res = {}
  for name, fn in decoders.items():
    if isinstance(fn, str):
      continue
    buf = np.empty_like(ref[0])
    maxdiff, differ, total = 0, 0, 0
    for b, r in zip(jpegs, ref):
      got = np.asarray(fn(b, buf))
      assert got.shape == r.shape and got.dtype == np.uint8, (name, got.shape, got.dtype)
      d = np.abs(got.astype(np.int16) - r)
      maxdiff, differ, total = max(maxdiff, int(d.max())), differ + int((d > 0).sum()), total + d.size
    res[name] = (maxdiff == 0, maxdiff, differ / total)
  return res


def time_all(jpegs: list[bytes], decoders: dict, rounds: int) -> dict:
  """name -> (best frames/s, lowest CPU ms per frame), the decoders alternating each round."""
  buf = np.empty((*decoders["opencv"](jpegs[0], None).shape,), np.uint8)
  runs = {n: [] for n, fn in decoders.items() if not isinstance(fn, str)}
  for _ in range(rounds):
    for name in runs:
      fn = decoders[name]
      t0, c0 = time.perf_counter(), time.process_time()
      for b in jpegs:
        fn(b, buf)
      runs[name].append((len(jpegs) / (time.perf_counter() - t0),
                         1e3 * (time.process_time() - c0) / len(jpegs)))
  return {n: (max(r for r, _ in v), min(c for _, c in v)) for n, v in runs.items()}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data_dir", default="/tmp/egodex_bench/data")
  p.add_argument("--split", default="train")
  p.add_argument("--samples", type=int, default=512)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--textured", type=int, default=0,
                 help="also this many frames of random texture through frames.encode_frame")
  p.add_argument("--turbojpeg_lib", default=None, help="libturbojpeg.so (PyTurboJPEG's lib_path)")
  args = p.parse_args(argv)
  from egodex_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  meta = pipeline.load_metadata(args.data_dir)
  source = pipeline.RecordSource(meta, args.split)
  idx = np.random.default_rng(0).choice(len(source), min(args.samples, len(source)), replace=False)
  jpegs = [r["image"] for r in source.get_many(sorted(idx.tolist()))] if len(idx) else []
  if args.textured:  # busier frames than the synthetic scenes: what real video gives the codec
    from egodex_jax.data import frames  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(1)
    for _ in range(args.textured):
      noise = rng.integers(0, 256, (270, 480, 3), np.uint8)
      big = np.repeat(np.repeat(noise, 4, 0), 4, 1)  # 1080 x 1920, blocky texture + edges
      jpegs.append(frames.encode_frame(big, meta.image_size))
  decoders = _decoders(args.turbojpeg_lib)
  same = compare(jpegs, decoders)
  speed = time_all(jpegs, decoders, args.rounds)
  what = f"{len(jpegs) - args.textured} stored + {args.textured} textured"
  print(f"{what} {meta.image_size}px frames ({np.mean([len(b) for b in jpegs]) / 1e3:.1f}"
        f" kB mean); best of {args.rounds} alternating rounds, one thread")
  print(f"{'decoder':26s} {'frames/s':>9s} {'cpu ms':>7s} {'x cv2':>6s} {'x cv2':>6s} "
        f"{'identical':>9s} {'max|d|':>6s} {'differ':>8s}")
  print(f"{'':26s} {'':>9s} {'/frame':>7s} {'(wall)':>6s} {'(cpu)':>6s}")
  ref_rate, ref_cpu = speed["opencv"]
  for name, fn in decoders.items():
    if isinstance(fn, str):
      print(f"{name:26s} {fn}")
      continue
    (rate, cpu), (ident, maxd, frac) = speed[name], same[name]
    print(f"{name:26s} {rate:9.0f} {cpu:7.3f} {rate / ref_rate:6.2f} {ref_cpu / cpu:6.2f} "
          f"{str(ident):>9s} {maxd:6d} {frac:8.2e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
