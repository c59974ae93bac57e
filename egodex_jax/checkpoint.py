"""Orbax checkpoints of a training run: state, data iterator, config and normalisation statistics.

One step directory holds five items:
  state/       TrainState (step, params, opt_state, ema_params, rng), sharded arrays (OCDBT)
  data/        the data iterator's state, one JSON file per process (process_<i>-of-<n>.json)
  config/      the run's ConfigDict as JSON
  normalizer/  the normaliser the model was trained with (statistics, kind, action
               representation) and the dataset signature it must match
  policy/      what the policy is built from besides the config (`train.policy_spec`: the
               instruction table, the learned vocabulary's texts, the image size), so that
               inference needs no dataset (absent in checkpoints of older versions)
Saved every `save_every` steps, at the end and on SIGTERM; the newest `keep` are kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class IteratorHandler(ocp.CheckpointHandler):
  """Saves any iterator with get_state()/set_state() (a Grain DatasetIterator or our pipeline's).

  Grain's own handler assumes its iterator classes (bytes state, start_prefetch); this one only needs
  the two methods and a JSON-serialisable (or bytes) state. Each process writes its own file: every
  host reads its own shard of the data.
  """

  def _file(self, directory: epath.Path) -> epath.Path:
    i, n = jax.process_index(), jax.process_count()
    return epath.Path(directory) / f'process_{i}-of-{n}.json'

  def save(self, directory: epath.Path, args: 'IteratorSave'):
    state = args.item.get_state()
    if isinstance(state, bytes):
      text = json.dumps({'__bytes__': state.decode()})
    else:
      text = json.dumps(state)
    self._file(directory).write_text(text)

  def restore(self, directory: epath.Path, args: 'IteratorRestore'):
    path = self._file(directory)
    if not path.exists():
      raise ValueError(f'{path}: no data-iterator state for this process (was the run saved with '
                       'a different number of processes?).')
    state = json.loads(path.read_text())
    if isinstance(state, dict) and set(state) == {'__bytes__'}:
      state = state['__bytes__'].encode()
    args.item.set_state(state)
    return args.item

  def metadata(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(IteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(IteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
  item: Any


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def make_manager(workdir: str, *, save_every: int, keep: int,
                 async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=max(1, save_every), max_to_keep=keep, create=True,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, *, data_iter=None,
         config_json: str | None = None, normalizer: dict | None = None,
         policy: dict | None = None, force: bool = False) -> bool:
  """Saves at `step` if the manager's interval says so (or `force`); returns whether it saved."""
  items = {'state': ocp.args.StandardSave(state)}
  if data_iter is not None:
    items['data'] = IteratorSave(data_iter)
  if config_json is not None:
    items['config'] = ocp.args.JsonSave(json.loads(config_json))
  if normalizer is not None:
    items['normalizer'] = ocp.args.JsonSave(normalizer)
  if policy is not None:
    items['policy'] = ocp.args.JsonSave(policy)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state, *, data_iter=None,
            step: int | None = None):
  """Restores the state (into the shardings of `abstract_state`) and the iterator, in place.

  `abstract_state`: a pytree of jax.ShapeDtypeStruct with `.sharding` set. Returns (state, step).
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'{manager.directory}: no checkpoint to restore.')
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items['data'] = IteratorRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored['state'], step


def restore_json(manager: ocp.CheckpointManager, name: str, step: int | None = None):
  """A saved JSON item (config, normalizer, policy: a dict) of `step` (the latest by default),
  None if absent."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  path = epath.Path(manager.directory) / str(step) / name
  if not path.exists():
    return None
  restored = manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))
  return restored[name]
