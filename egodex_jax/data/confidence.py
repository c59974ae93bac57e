"""Tracking confidences of a chunk's frames: the `confidence` batch key [B, H, 12].

A record stores the confidences of its own frame t only (`confidence [12]`, KEYPOINT_JOINTS
order). Frame t+k of the same episode is record i+k (records are in (episode, frame) order), but
reading H records per sample would read H JPEGs too. So a split's confidences are one table
[num_records, 12]: the builder writes it beside the shards (files.CONFIDENCE_FILE, raw float32,
memory-mapped here); a build without it (older than the file, or made with Beam) gets it from one
pass over the records of the episodes used, kept in memory.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from egodex_jax import skeleton
from egodex_jax.data.files import CONFIDENCE_FILE

_NUM = len(skeleton.KEYPOINT_JOINTS)


def table_path(data_dir: str, split: str) -> str:
  return os.path.join(data_dir, CONFIDENCE_FILE.format(split=split))


def _spans(meta, split: str) -> list[tuple[int, int]]:
  return [(int(e["first_index"]), int(e["num_frames"])) for e in meta.episodes[split]]


def _from_file(path: str, needed: int) -> np.ndarray | None:
  """The builder's table as a read-only memmap; None when absent or too short for the split."""
  if not os.path.isfile(path):
    return None
  size = os.path.getsize(path)
  rows, rest = divmod(size, 4 * _NUM)
  if rest or rows < needed:
    return None
  return np.memmap(path, dtype="<f4", mode="r", shape=(rows, _NUM))


_READ: dict = {}  # (data_dir, split, spans) -> table: the last few read from records, per process


def _from_records(meta, split: str, spans, chunk: int = 1024) -> np.ndarray:
  """One pass over the records of `spans` (no image decoded); rows of other episodes stay 1.
  Kept, so that periodic evaluations of the same split do not read it again."""
  key = (meta.data_dir, split, tuple(spans))
  if key not in _READ:
    if len(_READ) >= 2:
      _READ.pop(next(iter(_READ)))
    _READ[key] = _read_records(meta, split, spans, chunk)
  return _READ[key]


def _read_records(meta, split: str, spans, chunk: int) -> np.ndarray:
  from egodex_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  source = pipeline.RecordSource(meta, split)
  idx = np.concatenate([np.arange(f, f + n) for f, n in spans] or [np.zeros(0, np.int64)])
  print(f"egodex: {table_path(meta.data_dir, split)} is missing (a build from before it, or a "
        f"Beam build); reading the confidences of {len(idx)} records once.", file=sys.stderr,
        flush=True)
  table = np.ones((len(source), _NUM), np.float32)
  for start in range(0, len(idx), chunk):
    part = [int(i) for i in idx[start:start + chunk]]
    table[part] = np.stack([r["confidence"] for r in source.get_many(part)])
  return table


class FutureConfidence:
  """(record indices, frames, episode lengths) -> the confidences of frames t+1..t+H [n, H, 12].

  Picklable for Grain's worker processes: the table is opened (or read) lazily in each process,
  never pickled.
  """

  def __init__(self, meta, split: str):
    self.meta, self.split = meta, split
    self._table = None

  def __getstate__(self):
    return {"meta": self.meta, "split": self.split, "_table": None}

  def table(self) -> np.ndarray:
    if self._table is None:
      spans = _spans(self.meta, self.split)
      needed = max((f + n for f, n in spans), default=0)
      table = _from_file(table_path(self.meta.data_dir, self.split), needed)
      self._table = table if table is not None else _from_records(self.meta, self.split, spans)
    return self._table

  def __call__(self, indices, frame, num_frames, horizon: int) -> np.ndarray:
    """indices, frame, num_frames [n] -> [n, H, 12] float32; past the episode end, its last
    frame's (those frames are padding anyway)."""
    indices = np.asarray(indices, np.int64)
    last = indices - np.asarray(frame, np.int64) + np.asarray(num_frames, np.int64) - 1
    rows = np.minimum(indices[:, None] + 1 + np.arange(horizon), last[:, None])
    return np.asarray(self.table()[rows], np.float32)
