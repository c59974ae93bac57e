"""Entry point: train or evaluate an EgoDex policy from a config file.

  python -m egodex_jax.main --config=configs/fm_encdec.py:demo --workdir=workdirs/demo
  python -m egodex_jax.main --config=configs/bc_dec.py:h=30 --workdir=DIR --config.data.batch_size=512
  python -m egodex_jax.main --config=configs/fm_encdec.py --workdir=DIR --mode=eval

Multi-host: pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I on every host
(or --distributed to let `jax.distributed.initialize()` read the cluster's environment). Each
process reads its own shard of the training data; the global batch is `data.batch_size`.

Workdir layout: see egodex_jax/train.py's docstring.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/<model>.py[:arg]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'Train (resuming if possible) or '
                          "evaluate the workdir's latest checkpoint.")
_COORD = flags.DEFINE_string('coordinator_address', None, 'Multi-host: HOST:PORT of process 0.')
_NUM_PROC = flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
_PROC_ID = flags.DEFINE_integer('process_id', None, 'Multi-host: this process.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() with the '
                                 "cluster's auto-detected settings.")


class UserError(Exception):
  """Bad input a user can fix: printed as one line, exit status 1, no traceback."""


@dataclasses.dataclass
class Data:
  """What the model and the loops need to know about the dataset on disk."""
  data_dir: str
  meta: Any
  instructions: list
  tasks: list
  norm_stats: dict
  normalizer: Any


def _get(meta, key, default=None):
  if isinstance(meta, dict):
    return meta.get(key, default)
  return getattr(meta, key, default)


def missing_dataset_message(data_dir: str) -> str:
  return (f'No EgoDex dataset at {data_dir} (looked for {data_dir}/egodex/<config>/<version>/'
          'dataset_info.json and egodex_meta.json). Either build it from the raw EgoDex files with '
          f'`python -m tfds_builder.egodex --raw_dir RAW --data_dir {data_dir}` (or point '
          '--config.data.data_dir at a built one), or run the demo on synthetic data: '
          '`python -m egodex_jax.main --config=configs/fm_encdec.py:demo --workdir=workdirs/demo`.')


def load_data(config) -> Data:
  from egodex_jax.data import normalize, pipeline
  data_dir = os.path.abspath(os.path.expanduser(config.data.data_dir))
  if config.data.synthetic:
    from egodex_jax import demo
    demo.ensure_dataset(config)
  try:
    meta = pipeline.load_metadata(data_dir)
  except FileNotFoundError:
    raise UserError(missing_dataset_message(data_dir)) from None
  if meta.norm_stats is None:
    raise UserError(f'{meta.data_dir}: norm_stats.json is missing (the build did not finish; '
                    'rebuild the dataset).')
  if config.data.horizon > meta.max_horizon:
    raise UserError(f'data.horizon={config.data.horizon} exceeds the {meta.max_horizon} future '
                    f'frames stored in {meta.data_dir}.')
  return Data(data_dir=meta.data_dir, meta=meta, instructions=list(meta.instructions),
              tasks=list(meta.tasks), norm_stats=meta.norm_stats,
              normalizer=normalize.Normalizer(meta.norm_stats, config.data.normalization))


def make_policy(config, data: Data):
  from egodex_jax.models import policies
  return policies.make_policy(config.model, horizon=config.data.horizon,
                              instructions=data.instructions, goal=config.data.goal)


def _dataset(config, data: Data, split: str, batch_size: int, *, shuffle: bool, seed: int,
             sharded: bool, **kw):
  import jax
  from egodex_jax.data import pipeline
  return pipeline.make_dataset(
      data.data_dir, split, batch_size=batch_size, horizon=config.data.horizon,
      goal=config.data.goal, seed=seed, shuffle=shuffle, meta=data.meta,
      shard_index=jax.process_index() if sharded else 0,
      shard_count=jax.process_count() if sharded else 1, **kw)


def make_train_iter(config, data: Data, local_batch_size: int):
  """This process's shard of the (shuffled, repeating) training split: a checkpointable iterator."""
  return iter(_dataset(config, data, 'train', local_batch_size, shuffle=True, seed=config.seed,
                       sharded=True, data_fraction=config.data.data_fraction,
                       worker_count=config.data.worker_count))


def example_batch(config, data: Data) -> dict:
  """A one-row batch of zeros with the pipeline's layout (parameter shapes need nothing more)."""
  from egodex_jax.models import policies
  return policies.dummy_batch(batch_size=1, horizon=config.data.horizon,
                              image_size=data.meta.image_size, goal=config.data.goal)


def run_evaluation(config, data: Data, policy, params, *, num_batches: int,
                   workdir: str | None = None) -> dict:
  """Best-of-K of `params` on the test split with the baselines (static, mean trajectory).

  num_batches < 0: the whole split; else num_batches batches' worth of samples spread evenly over
  it. Every process evaluates the same (unsharded) samples; only process 0 writes.
  """
  import jax
  from egodex_jax import evaluate
  bs = config.eval.batch_size
  test = _dataset(config, data, config.eval.split, bs, shuffle=False, seed=config.seed,
                  sharded=False, worker_count=0, num_epochs=1, drop_remainder=False,
                  max_samples=None if num_batches < 0 else num_batches * bs)
  train_it = _dataset(config, data, 'train', bs, shuffle=True, seed=config.seed + 1,
                      sharded=False, worker_count=0)
  mean_delta = evaluate.mean_trajectory(iter(train_it), max_batches=4)
  return evaluate.evaluate(
      policy, params, iter(test), data.normalizer, ks=tuple(config.eval.ks),
      rng=jax.random.PRNGKey(config.seed + 2), tasks=data.tasks, mean_trajectory=mean_delta,
      workdir=workdir if jax.process_index() == 0 else None)


def write_results(workdir: str, results: dict):
  from egodex_jax import evaluate
  return evaluate.write_results(workdir, results)


def print_results(results: dict):
  from egodex_jax import evaluate
  print(evaluate.results_markdown(results), flush=True)


def _init_distributed():
  import jax
  if _COORD.value or _DISTRIBUTED.value:
    if jax.config.jax_platforms in (None, '', 'cpu') or os.environ.get('JAX_PLATFORMS') == 'cpu':
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # before initialize
    if _COORD.value:
      jax.distributed.initialize(coordinator_address=_COORD.value,
                                 num_processes=_NUM_PROC.value, process_id=_PROC_ID.value)
    else:
      jax.distributed.initialize()


def run(config, workdir: str, mode: str) -> dict:
  from egodex_jax import train
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if mode == 'train':
    return train.train(config, workdir)
  data = load_data(config)
  policy, params, step = train.restore_for_eval(config, workdir, data)
  print(f'Evaluating the EMA parameters of step {step} from {workdir}.', flush=True)
  results = run_evaluation(config, data, policy, params,
                           num_batches=config.eval.final_num_batches, workdir=workdir)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config = _CONFIG.value
  if config is None:
    _fail('--config is required, e.g. --config=configs/fm_encdec.py:demo.')
  if not _WORKDIR.value:
    _fail('--workdir is required, e.g. --workdir=workdirs/demo.')
  from egodex_jax import demo, train
  try:
    _init_distributed()
    results = run(config, _WORKDIR.value, _MODE.value)
  except (UserError, train.TrainingError, demo.DemoError) as e:
    _fail(str(e))
  except FileNotFoundError as e:
    _fail(f'{e}')
  except ValueError as e:  # bad config values surface as ValueErrors with a one-line message
    _fail(f'Invalid input: {e}')
  if results:
    print_results(results)


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(1)


def cli():
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)


if __name__ == '__main__':
  cli()
