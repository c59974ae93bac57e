"""What stops a run cleanly: pre-emption signals and non-finite losses (used by train.py)."""

from __future__ import annotations

import signal

import jax
import numpy as np

from egodex_jax import checkpoint as ckpt_lib


class TrainingError(RuntimeError):
  """A run that must stop (non-finite loss, ...); str(e) is one sentence for the user."""


def to_host(tree):
  """Replicated global arrays -> NumPy (float() fails on arrays spanning other processes)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)



class Preemption:
  """SIGTERM (and SIGINT) set a flag; the loop saves at the next step and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    print(f'Received signal {signum}: saving a checkpoint and stopping.', flush=True)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)

  def should_stop(self) -> bool:
    """Every process must agree, or the collective save would hang."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.array(self.requested, np.int32))
    return bool(np.any(flags))


class FiniteGuard:
  """Checks each step's loss one step late (so the host keeps dispatching) and at sync points."""

  def __init__(self, manager, workdir: str):
    self._manager, self._workdir = manager, workdir
    self._pending, self._host = None, None  # (step, device metrics), their checked host copy

  def push(self, step: int, metrics) -> None:
    self.sync()  # the previous step's
    self._pending, self._host = (step, metrics), None

  def sync(self) -> dict | None:
    """The latest step's metrics on the host; TrainingError if its loss is not finite."""
    if self._pending is None or self._host is not None:
      return self._host
    step, m = self._pending
    host = to_host(m)
    loss = float(host['loss'])
    if not np.isfinite(loss):
      last = self._manager.latest_step()
      raise TrainingError(
          f'Non-finite loss ({loss}) at step {step}; stopping. The last good checkpoint is '
          + (f'step {last} in {ckpt_lib.checkpoint_dir(self._workdir)}.' if last is not None
             else 'none (no checkpoint was written yet).'))
    self._host = host
    return host
