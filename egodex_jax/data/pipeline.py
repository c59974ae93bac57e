"""Grain input pipeline over the EgoDex ArrayRecord dataset (built by tfds_builder/egodex).

Random access by frame: the sampled unit is a record index of a split. Everything random-access
(reading the record, JPEG decoding, slicing the stored window to the horizon, the goal frame's
record) happens in a `MapDataset.map` before `to_iter_dataset`, so Grain can prefetch with
threads or worker processes and checkpoint the iterator (`get_state` / `set_state`).

Records of a split are stored in (episode, frame) order, so the goal frame of record i (frame t
of an episode with N records) is record `i - t + min(t + H, N - 1)`. A partial episode keeps
placeholder records for its `dropped` frames (their images are real), so this holds for it too;
they are never sampled.
Batches hold canonical values (metres, camera frame t); see docs/interfaces.md for the layout.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
from typing import Any

import numpy as np

from egodex_jax.data import confidence as confidence_lib
from egodex_jax.data import normalize
from egodex_jax.data import records
from egodex_jax.data.files import META_FILE, READABLE_VERSIONS, RECORD_VERSION, STATS_FILE
from egodex_jax.data.frames import decode_jpeg  # noqa: F401  (pipeline.decode_jpeg, as before)
# Record reading and batch loading live in data/records.py; these names stay importable here.
from egodex_jax.data.records import (  # noqa: F401
    DATASET_NAME, RecordSource, SampleLoader, parse_record)
_BUILD_HINT = "build it with: python -m tfds_builder.egodex --raw_dir RAW --data_dir DATA_DIR"


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  data_dir: str  # the build directory (holds dataset_info.json)
  tasks: list[str]
  instructions: list[str]
  episodes: dict[str, list[dict[str, Any]]]  # split -> [{episode_id, first_index, num_frames, ...}]
  norm_stats: dict[str, Any] | None
  image_size: int
  max_horizon: int

  @property
  def splits(self) -> list[str]:
    return list(self.episodes)

  def num_records(self, split: str) -> int:
    return sum(e["num_frames"] for e in self.episodes[split])


def find_build_dir(data_dir: str) -> str:
  """The directory holding dataset_info.json: data_dir itself, or data_dir/egodex/<cfg>/<ver>."""
  data_dir = os.fspath(data_dir)
  if os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
    return data_dir
  found = sorted(glob.glob(os.path.join(data_dir, DATASET_NAME, "*", "*", "dataset_info.json")))
  found += sorted(glob.glob(os.path.join(data_dir, "*", "dataset_info.json")))  # .../egodex given
  found = [os.path.dirname(f) for f in found]
  current = ([d for d in found if os.path.basename(d) == RECORD_VERSION]
             or [d for d in found if os.path.basename(d) in READABLE_VERSIONS])
  found = current or found  # an older build beside a current one is ignored; alone, refused
  if not found:
    raise FileNotFoundError(
        f"{data_dir}: no EgoDex dataset there (expected {data_dir}/{DATASET_NAME}/<config>/"
        f"<version>/dataset_info.json); {_BUILD_HINT}")
  default = [d for d in found if os.path.basename(os.path.dirname(d)) == "s224_h90"]
  if len(found) > 1 and not default:
    raise ValueError(f"{data_dir}: holds several EgoDex builds ({', '.join(found)}); pass the "
                     "one to use as data_dir")
  return (default or found)[-1]  # highest version of the default config


def load_metadata(data_dir: str) -> DatasetMeta:
  build_dir = find_build_dir(data_dir)
  meta_path = os.path.join(build_dir, META_FILE)
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise FileNotFoundError(f"{meta_path}: cannot read the EgoDex metadata ({e}); the build is "
                            f"incomplete or not from tfds_builder/egodex; {_BUILD_HINT}") from None
  try:
    with open(os.path.join(build_dir, "dataset_info.json")) as f:
      version = json.load(f).get("version")
  except (OSError, ValueError):
    version = None
  if version not in READABLE_VERSIONS:
    raise ValueError(f"{build_dir}: the EgoDex dataset there has record version {version}, this "
                     f"reader reads {' or '.join(READABLE_VERSIONS)} (float tensors as raw "
                     f"bytes); rebuild it with: python -m tfds_builder.egodex --raw_dir RAW "
                     f"--data_dir DATA_DIR")
  stats_path = os.path.join(build_dir, STATS_FILE)
  stats = normalize.load_stats(stats_path) if os.path.isfile(stats_path) else None
  return DatasetMeta(
      data_dir=build_dir, tasks=list(meta["tasks"]), instructions=list(meta["instructions"]),
      episodes={s: v["episodes"] for s, v in meta["splits"].items()}, norm_stats=stats,
      image_size=int(meta["image_size"]), max_horizon=int(meta["max_horizon"]))


def _stable_rank(path: str) -> str:
  return hashlib.sha1(path.encode()).hexdigest()


def select_episodes(episodes: list[dict[str, Any]], data_fraction: float) -> list[dict[str, Any]]:
  """A deterministic subset of episodes (by a hash of their path); smaller fractions nest."""
  if not 0.0 < data_fraction <= 1.0:
    raise ValueError(f"data_fraction must be in (0, 1], got {data_fraction}")
  if data_fraction == 1.0:
    return list(episodes)
  keep = max(1, math.ceil(data_fraction * len(episodes)))
  chosen = sorted(episodes, key=lambda e: _stable_rank(e["path"]))[:keep]
  return sorted(chosen, key=lambda e: e["episode_id"])


def _episode_samples(e: dict[str, Any], frame_stride: int) -> np.ndarray:
  """An episode's record indices that are samples: [n] int64. A partial episode's `dropped`
  frames hold placeholder records (no hand state), never samples."""
  idx = np.arange(e["first_index"], e["first_index"] + e["num_frames"], frame_stride)
  if e.get("dropped"):
    idx = idx[~np.isin(idx - e["first_index"], e["dropped"])]
  return idx


def sample_indices(meta: DatasetMeta, split: str, *, data_fraction: float = 1.0,
                   frame_stride: int = 1, max_samples: int | None = None,
                   shard_index: int = 0, shard_count: int = 1) -> np.ndarray:
  """Record indices this process samples from: [n] int64, sorted."""
  if split not in meta.episodes:
    raise ValueError(f"{meta.data_dir}: no split '{split}' (it has {meta.splits})")
  if frame_stride < 1:
    raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
  parts = [_episode_samples(e, frame_stride)
           for e in select_episodes(meta.episodes[split], data_fraction)]
  idx = np.concatenate(parts) if parts else np.zeros((0,), np.int64)
  if max_samples is not None and max_samples < len(idx):
    idx = idx[np.unique(np.linspace(0, len(idx) - 1, max_samples).round().astype(np.int64))]
  return idx[shard_index::shard_count]


def read_windows(meta: DatasetMeta, split: str, *, data_fraction: float = 1.0,
                 max_records: int | None = 200_000, chunk: int = 1024):
  """Yields (windows [n, M+1, 48], padding [n, M] bool: True = future row not real) of the
  split's chosen samples, no images decoded: at most `max_records` records spread evenly over
  them (statistics need no more)."""
  idx = sample_indices(meta, split, data_fraction=data_fraction, max_samples=max_records)
  source = RecordSource(meta, split)
  for start in range(0, len(idx), chunk):
    recs = source.get_many([int(i) for i in idx[start:start + chunk]])
    yield (np.stack([r["window"] for r in recs]), np.stack([r["padding"][1:] for r in recs]))


class BatchIndices:
  """Batch i -> its record indices [<= B] int64: the samples repeated `num_epochs` times (None:
  forever), each epoch in a new order, cut into batches as one stream (a batch may straddle two
  epochs, as Grain's shuffle -> repeat -> batch would).

  Grain's own `shuffle` costs a sizeable fraction of a JPEG decode per sample (its index_shuffle
  plus per-element bookkeeping), so an epoch's order is one NumPy permutation instead,
  seeded by (seed, epoch) and cached; a pure function of i, hence checkpointable and identical
  in every worker process.
  """

  def __init__(self, idx: np.ndarray, batch_size: int, *, seed: int = 0, shuffle: bool = True,
               num_epochs: int | None = None, drop_remainder: bool = True):
    self.idx = np.asarray(idx, np.int64)
    self.batch_size = batch_size
    self.seed, self.shuffle = seed, shuffle
    n = len(self.idx)
    # Forever = a length no run reaches (Grain's MapDataset needs one).
    total = n * num_epochs if num_epochs is not None else n * (2**62 // max(n, 1))
    self._total = total
    self._len = total // batch_size if drop_remainder else -(-total // batch_size)
    self._orders: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return self._len

  def _order(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return self.idx
    if epoch not in self._orders:
      if len(self._orders) >= 2:  # a batch spans at most two epochs
        self._orders.pop(min(self._orders))
      perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.idx))
      self._orders[epoch] = self.idx[perm]
    return self._orders[epoch]

  def __getitem__(self, i: int) -> np.ndarray:
    if not 0 <= i < self._len:
      raise IndexError(f"batch {i} out of range [0, {self._len})")
    n = len(self.idx)
    start, stop = i * self.batch_size, min((i + 1) * self.batch_size, self._total)
    parts = []
    while start < stop:
      epoch, pos = divmod(start, n)
      take = min(stop - start, n - pos)
      parts.append(self._order(epoch)[pos:pos + take])
      start += take
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def data_source(meta: DatasetMeta, split: str):
  """TFDS's random-access ArrayRecord source of a split (no TensorFlow)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder_from_directory(meta.data_dir).as_data_source(split=split)


def make_dataset(data_dir: str, split: str, *, batch_size: int, horizon: int, goal: bool = False,
                 seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 data_fraction: float = 1.0, worker_count: int = 0, shard_index: int = 0,
                 shard_count: int = 1, drop_remainder: bool = True, frame_stride: int = 1,
                 max_samples: int | None = None, image_size: int | None = None,
                 read_threads: int = 4, meta: DatasetMeta | None = None,
                 confidence: bool = False):
  """A checkpointable Grain IterDataset of batches; `iter()` it, `get_state()`/`set_state()`.

  Each process passes its own shard_index / shard_count (disjoint parts of the split). With
  num_epochs=None it repeats forever, reshuffled each epoch. Samples are read by
  `read_threads` threads per process (per worker when worker_count > 0) with a prefetch buffer of
  two batches, so memory stays at a few batches whatever the batch size. `confidence`: batches
  also hold the chunk's tracking confidences (`confidence` [B, H, 12], data/confidence.py).
  """
  import grain  # pylint: disable=g-import-not-at-top
  meta = meta or load_metadata(data_dir)
  if not 1 <= horizon <= meta.max_horizon:
    raise ValueError(f"horizon must be in [1, {meta.max_horizon}] (the dataset's max horizon), "
                     f"got {horizon}")
  if image_size is not None and image_size > meta.image_size:
    raise ValueError(f"image_size {image_size} exceeds the stored {meta.image_size}")
  idx = sample_indices(meta, split, data_fraction=data_fraction, frame_stride=frame_stride,
                       max_samples=max_samples, shard_index=shard_index,
                       shard_count=shard_count)
  if len(idx) == 0 or (drop_remainder and len(idx) < batch_size):
    raise ValueError(f"{meta.data_dir}: split '{split}' gives {len(idx)} samples to this shard, "
                     f"fewer than one batch of {batch_size}")
  num_frames = np.zeros(max(e["episode_id"] for e in meta.episodes[split]) + 1, np.int64)
  for e in meta.episodes[split]:
    num_frames[e["episode_id"]] = e["num_frames"]
  loader = SampleLoader(RecordSource(meta, split), num_frames, horizon, goal,
                        image_size or meta.image_size,
                        confidence_lib.FutureConfidence(meta, split) if confidence else None)

  # Element i of the Grain dataset is batch i (its record indices, then the loaded batch), so
  # Grain's per-element cost is paid per batch; read threads and workers take different batches.
  batches = BatchIndices(idx, batch_size, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                         drop_remainder=drop_remainder)
  ds = grain.MapDataset.range(len(batches)).map(batches.__getitem__).map(loader.load_batch)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=max(2, read_threads)))
  if worker_count > 0:
    # Arrays under SHM_MIN_BYTES travel pickled, not in a shared-memory segment each.
    it = grain.experimental.WithOptionsIterDataset(
        it, grain.experimental.DatasetOptions(min_shm_size=records.SHM_MIN_BYTES))
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it
