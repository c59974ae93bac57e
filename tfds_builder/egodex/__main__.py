"""TF-free build: python -m tfds_builder.egodex --raw_dir RAW --data_dir OUT [--image_size S]
[--max_horizon M] [--num_workers W]. Output: OUT/egodex/s<S>_h<M>/<VERSION>/ (1.2.0)."""

from __future__ import annotations

import os
import sys

from egodex_jax import cli


def _failed(message) -> int:
  """A build failure: one stderr line, exit status 1 (usage errors are 2)."""
  first = (str(message).splitlines() or [""])[0]
  sys.stderr.write(f"egodex build failed: {cli.one_line(first)}\n")
  return 1


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog="python -m tfds_builder.egodex",
                         description="Build the EgoDex ArrayRecord dataset from a raw hdf5+mp4 "
                         "tree.")
  p.add_argument("--raw_dir", required=True, help="raw tree (part1..5/test/extra, or any tree)")
  p.add_argument("--data_dir", required=True, help="TFDS data dir to write to")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--max_horizon", type=int, default=90)
  p.add_argument("--num_workers", type=int, default=None, help="processes (default: cores)")
  p.add_argument("--writer_buffer_mb", type=float, default=16.0,
                 help="MB of records TFDS holds in memory before spilling to disk")
  p.add_argument("--beam", action="store_true",
                 help="generate with Apache Beam (DirectRunner here; needs apache-beam)")
  args = p.parse_args(argv)
  if args.image_size < 8 or args.max_horizon < 1:
    p.error("--image_size must be >= 8 and --max_horizon >= 1")

  # Cheap checks first: TFDS takes seconds to import.
  from egodex_jax.data import egodex  # pylint: disable=g-import-not-at-top
  from tfds_builder.egodex import tfds_compat  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(args.raw_dir):
    return _failed(f"{args.raw_dir}: the raw EgoDex directory does not exist")
  if not egodex.find_episodes(args.raw_dir):
    return _failed(f"{args.raw_dir}: holds no EgoDex episodes (no .hdf5 files found)")
  try:
    tfds_compat.check_version()  # the builder applies tfds_compat around its generation
  except tfds_compat.UnsupportedTfdsError as e:
    return _failed(e)

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tfds_builder.egodex import egodex_dataset_builder as edb  # pylint: disable=g-import-not-at-top

  try:
    edb.discover_splits(args.raw_dir)  # fail fast, before TFDS creates anything
    builder = edb.Builder(data_dir=args.data_dir,
                          config=edb.builder_config(args.image_size, args.max_horizon),
                          num_workers=args.num_workers,
                          writer_buffer_bytes=int(args.writer_buffer_mb * 2**20))
    if builder.is_prepared():
      print(f"egodex: already built in {builder.data_dir}; delete it to rebuild")
      return 0
    beam_options = None
    if args.beam:
      try:
        from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
      except ImportError:
        raise ValueError("--beam needs apache-beam installed (pip install apache-beam)") from None
      beam_options = pipeline_options.PipelineOptions([
          "--runner=DirectRunner", f"--direct_num_workers={args.num_workers or os.cpu_count()}",
          "--direct_running_mode=multi_processing"])
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.abspath(args.raw_dir), beam_options=beam_options,
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  except (ValueError, OSError) as e:
    return _failed(str(e) or repr(e))
  except Exception as e:  # pylint: disable=broad-except
    return _failed(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
  print(f"egodex: dataset written to {builder.data_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
