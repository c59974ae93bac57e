"""Demo data: synthetic EgoDex episodes, built into the same ArrayRecord dataset real data gives.

`ensure_dataset(config)` runs from main.py when `config.demo.enabled` is set (the `:demo` config
arg) and `config.data.data_dir` holds no built dataset: it writes `config.demo.num_episodes`
synthetic episodes (hdf5 + mp4, `egodex_jax.data.synthetic`) to `config.demo.raw_dir`, then builds
them with the builder's own entry point (`python -m tfds_builder.egodex`), so the demo trains on
exactly the path real data takes. Later runs find the dataset and skip both steps. It sits above
training and the builder (imports both), so neither imports the other.
"""

from __future__ import annotations

import os
import time

import jax


class DemoError(RuntimeError):
  """The demo data could not be made; str(e) is one sentence."""


def _built(data_dir: str) -> bool:
  from egodex_jax.data import pipeline
  try:
    pipeline.load_metadata(data_dir)
    return True
  except (FileNotFoundError, ValueError):
    return False


def _has_episodes(raw_dir: str, n: int) -> bool:
  from egodex_jax.data import egodex
  return os.path.isdir(raw_dir) and len(egodex.find_episodes(raw_dir)) >= n


def make_dataset(config) -> str:
  """Generates (if needed) and builds the synthetic dataset; returns the data_dir."""
  from egodex_jax.data import synthetic
  from tfds_builder.egodex import __main__ as builder_cli
  d = config.demo
  data_dir, raw_dir = os.path.abspath(config.data.data_dir), os.path.abspath(d.raw_dir)
  t0 = time.perf_counter()
  if not _has_episodes(raw_dir, d.num_episodes):
    print(f'Demo: writing {d.num_episodes} synthetic EgoDex episodes ({d.raw_width}x'
          f'{d.raw_height} video) to {raw_dir} ...', flush=True)
    synthetic.generate(raw_dir, d.num_episodes, seed=d.seed, width=d.raw_width,
                       height=d.raw_height, min_frames=d.min_frames, max_frames=d.max_frames)
  t1 = time.perf_counter()
  print(f'Demo: building the ArrayRecord dataset ({d.image_size} px, {d.max_horizon} future '
        f'frames) in {data_dir} ...', flush=True)
  rc = builder_cli.main(['--raw_dir', raw_dir, '--data_dir', data_dir,
                         '--image_size', str(d.image_size), '--max_horizon', str(d.max_horizon)])
  if rc != 0 or not _built(data_dir):
    raise DemoError(f'Building the demo dataset in {data_dir} failed (see the message above); '
                    f'delete {data_dir} and {raw_dir} and run again.')
  print(f'Demo: data ready (episodes {t1 - t0:.0f} s, build {time.perf_counter() - t1:.0f} s).',
        flush=True)
  return data_dir


def ensure_dataset(config) -> str:
  """Makes the demo dataset once: process 0 builds, the other processes wait for it."""
  data_dir = os.path.abspath(config.data.data_dir)
  if not config.demo.enabled or _built(data_dir):
    return data_dir
  if jax.process_index() == 0:
    make_dataset(config)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('egodex_demo_dataset')
  return data_dir
