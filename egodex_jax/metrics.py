"""What a researcher sees of a run: a progress line, metrics.jsonl, TensorBoard events, a loss PNG.

Only process 0 writes (every process computes the same replicated scalars).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def _fmt_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


class MetricWriter:
  """Appends one JSON object per logged step to `workdir/metrics.jsonl` (+ TensorBoard, + stdout).

  Resuming keeps the file: records of steps after the resumed step (written before a crash but never
  checkpointed) are dropped, so the file reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, *, total_steps: int, batch_size: int, start_step: int = 0,
               enabled: bool = True, tensorboard: bool = True, stream=None,
               filename: str = 'metrics.jsonl', progress: bool = True):
    self.workdir, self.total_steps, self.batch_size = workdir, total_steps, batch_size
    self.enabled = enabled
    self.stream = stream or sys.stdout
    self.path = os.path.join(workdir, filename)
    self.progress = progress
    self._tb = None
    self._last = (start_step, time.perf_counter())
    self._t0_step = start_step
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    _truncate_after(self.path, start_step)
    if tensorboard:
      from tensorboardX import SummaryWriter  # no TensorFlow needed
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'), purge_step=start_step + 1)

  def reset_timer(self, step: int):
    """Call after compilation so that steps/s measures training, not XLA."""
    self._last = (step, time.perf_counter())

  def write(self, step: int, scalars: dict, *, prefix: str = '', progress: bool = True):
    """Records `scalars` at `step`; for training scalars also prints the progress line."""
    now = time.perf_counter()
    last_step, last_t = self._last
    record = {'step': int(step)}
    dt = max(now - last_t, 1e-9)
    if not prefix:
      steps_per_s = (step - last_step) / dt if step > last_step else 0.0
      record.update(steps_per_s=steps_per_s, samples_per_s=steps_per_s * self.batch_size)
      self._last = (step, now)
    record.update({prefix + k: _scalar(v) for k, v in scalars.items()})
    if not self.enabled:
      return record
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for k, v in record.items():
        if k != 'step' and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)
    if progress and self.progress and not prefix:
      sps = record['steps_per_s']
      eta = (self.total_steps - step) / sps if sps > 0 else float('nan')
      line = (f'step {step:>6d}/{self.total_steps}  loss {record.get("loss", float("nan")):.4f}  '
              f'{sps:6.2f} steps/s  {record["samples_per_s"]:8.1f} samples/s  '
              f'ETA {_fmt_duration(eta) if np.isfinite(eta) else "?"}')
      if 'data_wait_s' in record:  # an input-bound run shows here
        line += f'  data wait {100 * min(record["data_wait_s"] / dt, 1.0):3.0f}%'
      print(line, file=self.stream, flush=True)
    return record

  def close(self):
    if self._tb is not None:
      self._tb.close()


def _scalar(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


def _truncate_after(path: str, step: int):
  if not os.path.exists(path):
    return
  with open(path) as f:
    keep = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
  with open(path, 'w') as f:
    f.writelines(keep)


def read_metrics(workdir: str) -> list[dict]:
  return read_metrics_file(os.path.join(workdir, 'metrics.jsonl'))


def read_metrics_file(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_loss_curve(workdir: str) -> str | None:
  """Writes workdir/loss.png (training loss, and eval metrics if any); returns its path."""
  records = [r for r in read_metrics(workdir) if 'loss' in r]
  if not records:
    return None
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([r['step'] for r in records], [r['loss'] for r in records], label='train loss')
  ax.set_xlabel('step')
  ax.set_ylabel('loss')
  ax.set_yscale('log' if min(r['loss'] for r in records) > 0 else 'linear')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = os.path.join(workdir, 'loss.png')
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
