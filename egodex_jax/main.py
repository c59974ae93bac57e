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

import os
import sys

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


def print_results(results: dict):
  from egodex_jax import evaluate
  print(evaluate.results_markdown(results), flush=True)


def _init_distributed():
  import jax
  if _COORD.value or _DISTRIBUTED.value:
    # CPU collectives across processes need gloo, set before initialize (harmless on GPU/TPU).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    if _COORD.value:
      jax.distributed.initialize(coordinator_address=_COORD.value,
                                 num_processes=_NUM_PROC.value, process_id=_PROC_ID.value)
    else:
      jax.distributed.initialize()


def _fast_cpu_rng():
  import jax
  # XLA:CPU takes many seconds to compile the partitionable threefry for each new random shape (the
  # default since jax 0.5), which dominates a CPU run's start-up; the classic threefry compiles
  # in well under a second. Accelerators keep the partitionable one (it shards without gathers).
  if jax.default_backend() == 'cpu':
    jax.config.update('jax_threefry_partitionable', False)


def run(config, workdir: str, mode: str) -> dict:
  from egodex_jax import demo, train
  workdir = os.path.abspath(os.path.expanduser(workdir))
  demo.ensure_dataset(config)  # the demo's synthetic data, made once; nothing otherwise
  if mode == 'train':
    return train.train(config, workdir)
  return train.evaluate_checkpoint(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  quiet_library_logs()
  config = _CONFIG.value
  if config is None:
    _fail('--config is required, e.g. --config=configs/fm_encdec.py:demo.')
  if not _WORKDIR.value:
    _fail('--workdir is required, e.g. --workdir=workdirs/demo.')
  from egodex_jax import demo, train
  try:
    _init_distributed()
    _fast_cpu_rng()
    results = run(config, _WORKDIR.value, _MODE.value)
  except (train.UserError, train.TrainingError, demo.DemoError) as e:
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


def _one_line(e: BaseException) -> str:
  from egodex_jax import cli
  text = cli.one_line(e)
  return text if len(text) < 400 else text[:400] + '...'


def _parse_flags(argv):
  """absl parsing, with config-file and override errors as one line instead of a traceback."""
  try:
    rest = flags.FLAGS(argv)
    if _CONFIG.value is not None:
      _ = _CONFIG.value.data  # a config that failed to load raises on first use: fail here
  except flags.Error as e:
    # config_flags embeds the config's own traceback; its last line is the actual error.
    lines = [line for line in str(e).splitlines() if line.strip()]
    _fail(f'bad flag: {lines[0] if len(lines) == 1 else lines[0][:120] + " ... " + lines[-1]}')
  except (AttributeError, KeyError) as e:
    _fail(f'bad config override: unknown field {_one_line(e)}.')
  except Exception as e:  # pylint: disable=broad-except
    cause = e.__cause__ or e
    _fail(f'cannot load --config ({flags.FLAGS["config"].serialize()}): {_one_line(cause)}')
  return rest


def quiet_library_logs():
  """Our progress lines, warnings and errors only, unless --verbosity is given (0: the libraries'
  INFO logs). absl's own default is INFO, which lets orbax and jax print hundreds of lines."""
  from absl import logging
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity('warning')


def cli():
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  cli()
