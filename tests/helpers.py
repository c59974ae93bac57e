"""What several test files share (plain functions; fixtures are in conftest.py)."""

from __future__ import annotations

import importlib
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The demo config at the tiny model size, on the tiny dataset below: a run that compiles fast.
TINY_ARG = 'demo,size=tiny'
TINY_OVERRIDES = [
    '--config.demo.enabled=False', '--config.data.horizon=8',
    '--config.data.batch_size=8', '--config.train.log_every=1', '--config.train.save_every=4',
    '--config.train.eval_every=0', '--config.eval.final_num_batches=0',
    '--config.optim.warmup_steps=2', '--config.eval.batch_size=8']


def build_synthetic_dataset(root: str, num_episodes: int = 6, *, seed: int = 0,
                            width: int = 64, height: int = 48, min_frames: int = 30,
                            max_frames: int = 40, image_size: int = 16,
                            max_horizon: int = 8) -> str:
  """Synthetic raw episodes under root/raw, built into root/data (reused when already built)."""
  from egodex_jax.data import pipeline, synthetic
  from tfds_builder.egodex import __main__ as builder_cli
  data_dir, raw_dir = os.path.join(root, 'data'), os.path.join(root, 'raw')
  try:
    pipeline.load_metadata(data_dir)
    return data_dir
  except FileNotFoundError:
    pass
  synthetic.generate(raw_dir, num_episodes, seed=seed, width=width, height=height,
                     min_frames=min_frames, max_frames=max_frames, workers=1)
  assert builder_cli.main(['--raw_dir', raw_dir, '--data_dir', data_dir, '--image_size',
                           str(image_size), '--max_horizon', str(max_horizon),
                           '--num_workers', '1']) == 0
  return data_dir


def load_config(name: str = 'fm_encdec', arg: str = TINY_ARG):
  return importlib.import_module(f'configs.{name}').get_config(arg)


def tiny_config(data_dir: str, name: str = 'fm_encdec', **train_overrides):
  """The config the subprocess tests get from TINY_ARG + TINY_OVERRIDES, in process."""
  c = load_config(name)
  for flag in TINY_OVERRIDES:
    key, value = flag[len('--config.'):].split('=')
    section, field = key.split('.')
    old = c[section][field]
    c[section][field] = type(old)(value == 'True' if isinstance(old, bool) else value)
  c.data.data_dir = data_dir
  for k, v in train_overrides.items():
    c.train[k] = v
  return c
