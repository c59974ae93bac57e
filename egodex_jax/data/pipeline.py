"""Grain input pipeline over the EgoDex ArrayRecord dataset (built by tfds_builder/egodex).

Random access by frame: the sampled unit is a record index of a split. Everything random-access
(reading the record, JPEG decoding, slicing the stored window to the horizon, the goal frame's
record) happens in a `MapDataset.map` before `to_iter_dataset`, so Grain can prefetch with
threads or worker processes and checkpoint the iterator (`get_state` / `set_state`).

Records of a split are stored in (episode, frame) order, so the goal frame of record i (frame t
of an N-frame episode) is record `i - t + min(t + H, N - 1)`.
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

from egodex_jax.data import normalize

DATASET_NAME = "egodex"
META_FILE = "egodex_meta.json"
STATS_FILE = "norm_stats.json"
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
  parts = [np.arange(e["first_index"], e["first_index"] + e["num_frames"], frame_stride)
           for e in select_episodes(meta.episodes[split], data_fraction)]
  idx = np.concatenate(parts) if parts else np.zeros((0,), np.int64)
  if max_samples is not None and max_samples < len(idx):
    idx = idx[np.unique(np.linspace(0, len(idx) - 1, max_samples).round().astype(np.int64))]
  return idx[shard_index::shard_count]


def decode_jpeg(data: bytes, size: int | None = None, out: np.ndarray | None = None
                ) -> np.ndarray:
  """JPEG bytes -> [S, S, 3] uint8 RGB (resized when `size` differs), written into `out` if
  given (saves a copy when filling a batch)."""
  import cv2  # pylint: disable=g-import-not-at-top
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if img is None:
    raise ValueError("a stored frame is not a decodable JPEG")
  if size is not None and img.shape[0] != size:
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
  if out is None:
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
  cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out)
  return out


# --- records -------------------------------------------------------------------------------
# TFDS stores each record as a serialised tf.train.Example. Its NumPy deserialiser turns the
# 4,368-float window into a Python list first, which costs as much as decoding the JPEG; this
# reader walks the protobuf wire format and views the packed floats in place instead.


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if b < 0x80:
      return result, pos
    shift += 7


def _feature(buf: bytes, pos: int, end: int):
  """tf.train.Feature at buf[pos:end] -> bytes (bytes_list) or a float32 / int64 array."""
  if pos == end:
    return np.zeros((0,), np.float32)
  tag, pos = _varint(buf, pos)
  kind = tag >> 3  # 1 bytes_list, 2 float_list, 3 int64_list
  n, pos = _varint(buf, pos)
  stop, values = pos + n, []
  while pos < stop:
    tag, pos = _varint(buf, pos)
    wire = tag & 7
    if wire == 2:  # bytes, or a packed run of floats / varints
      n, pos = _varint(buf, pos)
      if kind == 1:
        values.append(buf[pos:pos + n])
      elif kind == 2:
        values.append(np.frombuffer(buf, "<f4", n // 4, pos))
      else:
        p, run_end = pos, pos + n
        while p < run_end:
          v, p = _varint(buf, p)
          values.append(v - (1 << 64) if v >= 1 << 63 else v)
      pos += n
    elif wire == 5:  # unpacked float
      values.append(np.frombuffer(buf, "<f4", 1, pos))
      pos += 4
    else:  # unpacked varint
      v, pos = _varint(buf, pos)
      values.append(v - (1 << 64) if v >= 1 << 63 else v)
  if kind == 1:
    return values[0] if len(values) == 1 else values
  if kind == 2:
    return np.concatenate(values) if len(values) != 1 else values[0]
  return np.asarray(values, np.int64)


def parse_example(buf: bytes) -> dict[str, Any]:
  """Serialised tf.train.Example -> {name: bytes | float32 [n] | int64 [n]} (flat values)."""
  out = {}
  tag, pos = _varint(buf, 0)  # Example.features
  n, pos = _varint(buf, pos)
  end = pos + n
  while pos < end:  # Features.feature: map entries (key = 1, value = 2)
    tag, pos = _varint(buf, pos)
    n, pos = _varint(buf, pos)
    entry_end, key, value = pos + n, None, (pos, pos)
    while pos < entry_end:
      tag, pos = _varint(buf, pos)
      n, pos = _varint(buf, pos)
      if tag >> 3 == 1:
        key = buf[pos:pos + n].decode()
      else:
        value = (pos, pos + n)
      pos += n
    out[key] = _feature(buf, *value)
  return out


class RecordSource:
  """Random access to a split's records as dicts shaped like the dataset's features."""

  def __init__(self, meta: DatasetMeta, split: str):
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    paths = sorted(glob.glob(os.path.join(meta.data_dir, f"{DATASET_NAME}-{split}.array_record-*")))
    if not paths:
      raise FileNotFoundError(f"{meta.data_dir}: no ArrayRecord shards for split '{split}'")
    self._source = array_record_data_source.ArrayRecordDataSource(paths)
    self._window_shape = (meta.max_horizon + 1, -1)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._shape(parse_example(self._source[index]))

  def get_many(self, indices: list[int]) -> list[dict[str, Any]]:
    """One batched read (ArrayRecord reads them in parallel)."""
    return [self._shape(parse_example(b)) for b in self._source.__getitems__(indices)]

  def _shape(self, rec: dict[str, Any]) -> dict[str, Any]:
    for k, v in rec.items():
      if isinstance(v, np.ndarray) and v.dtype == np.int64 and v.shape == (1,):
        rec[k] = int(v[0])
    rec["window"] = rec["window"].reshape(self._window_shape)
    rec["mode_targets"] = rec["mode_targets"].reshape(-1, 3)
    return rec


class SampleLoader:
  """Record indices -> a batch as in the table of docs/interfaces.md."""

  def __init__(self, source, num_frames_by_episode: np.ndarray, horizon: int, goal: bool,
               image_size: int):
    self.source = source
    self.num_frames = num_frames_by_episode  # [E] int
    self.horizon = horizon
    self.goal = goal
    self.image_size = image_size

  def load_batch(self, indices) -> dict[str, np.ndarray]:
    """[B] record indices -> a batch; images are decoded straight into the batch arrays."""
    idx = [int(i) for i in np.asarray(indices).reshape(-1)]
    recs = self.source.get_many(idx)
    n, h = len(idx), self.horizon
    s = self.image_size
    out = {"image": np.empty((n, s, s, 3), np.uint8),
           "state": np.empty((n, 48), np.float32),
           "actions": np.empty((n, h, 48), np.float32),
           "padding": np.empty((n, h), bool)}
    ints = {k: np.empty((n,), np.int32) for k in
            ("instruction_id", "task_id", "mode", "episode_id", "frame")}
    out.update(ints)
    out["mode_targets"] = np.empty((n, 2, 3), np.float32)
    goal_idx = []
    for b, (i, rec) in enumerate(zip(idx, recs)):
      decode_jpeg(rec["image"], self.image_size, out["image"][b])
      window = rec["window"]
      out["state"][b] = window[0]
      out["actions"][b] = window[1:h + 1]
      out["padding"][b] = np.arange(h) >= rec["num_future"]
      for k in ints:
        ints[k][b] = rec[k]
      out["mode_targets"][b] = rec["mode_targets"]
      t, episode = rec["frame"], rec["episode_id"]
      goal_idx.append(i - t + min(t + h, int(self.num_frames[episode]) - 1))
    if self.goal:
      out["goal_image"] = np.empty((n, s, s, 3), np.uint8)
      for b, rec in enumerate(self.source.get_many(goal_idx)):
        decode_jpeg(rec["image"], self.image_size, out["goal_image"][b])
    return out


def data_source(meta: DatasetMeta, split: str):
  """TFDS's random-access ArrayRecord source of a split (no TensorFlow)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder_from_directory(meta.data_dir).as_data_source(split=split)


def make_dataset(data_dir: str, split: str, *, batch_size: int, horizon: int, goal: bool = False,
                 seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 data_fraction: float = 1.0, worker_count: int = 0, shard_index: int = 0,
                 shard_count: int = 1, drop_remainder: bool = True, frame_stride: int = 1,
                 max_samples: int | None = None, image_size: int | None = None,
                 read_threads: int = 4, meta: DatasetMeta | None = None):
  """A checkpointable Grain IterDataset of batches; `iter()` it, `get_state()`/`set_state()`.

  Each process passes its own shard_index / shard_count (disjoint parts of the split). With
  num_epochs=None it repeats forever, reshuffled each epoch. Samples are read by
  `read_threads` threads per process (per worker when worker_count > 0) with a prefetch buffer of
  two batches, so memory stays at a few batches whatever the batch size.
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
                        image_size or meta.image_size)

  ds = grain.MapDataset.source(idx)
  if shuffle:
    ds = ds.seed(seed).shuffle()  # a new permutation every epoch
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  # Batches of indices are loaded as one map call (Grain's per-element cost is paid per batch);
  # read threads (and worker processes) work on different batches.
  ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(loader.load_batch)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=max(2, read_threads)))
  if worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it
