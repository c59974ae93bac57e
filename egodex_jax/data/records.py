"""Reading EgoDex records and turning a batch of record indices into a batch (pipeline.py's map).

Costs, per sample, of a 224 px batch of 32 on the benchmark's frames (benchmarks/pipeline_bench.py,
docs/pipeline.md): the JPEG decode dominates; around it, reading the record (ArrayRecord's zstd,
~0.03 ms), parsing it (~0.01 ms) and copying the window rows into the batch. What this module
avoids: ArrayRecordDataSource.__getitems__ (a fresh thread pool per call plus the C++ parallel
read cost twice the CPU of plain reads in the calling thread: the pipeline already reads batches
in parallel) and a decode into a temporary image then a copy (simplejpeg writes into the batch
array).
"""

from __future__ import annotations

import functools
import glob
import os
from typing import Any

import numpy as np

from egodex_jax.data import confidence as confidence_lib
from egodex_jax.data.files import RECORD_VERSION
from egodex_jax.data.frames import decode_jpeg

DATASET_NAME = "egodex"

# --- records -------------------------------------------------------------------------------
# TFDS stores each record as a serialised tf.train.Example; since record version 1.1.0 the float
# tensors are raw float32 bytes (Tensor encoding='bytes'), so parsing is protobuf's C parser plus
# one np.frombuffer per tensor. TFDS's own `deserialize_example_np` reads the same records through
# a per-feature dispatch that costs about as much as a JPEG decode (benchmarks/pipeline_bench.py);
# the tests check both give the same values for every record.
_FLOATS = ("window", "confidence", "mode_targets")  # float32, raw bytes
_INTS = ("num_future", "episode_id", "frame", "task_id", "instruction_id", "mode")
# padding: bool, raw bytes; rows of `window` that are not real (row 0: the frame is no sample)


@functools.cache
def _example_class():
  # TFDS's vendored copy of tf.train.Example (no TensorFlow needed).
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  return tf_example_pb2.Example


def parse_record(buf: bytes) -> dict[str, Any]:
  """Serialised record -> {image: bytes, window: [M+1, 48], confidence: [12],
  mode_targets: [2, 3] float32, padding: [M+1] bool (read-only views), the int fields: int}."""
  feature = _example_class().FromString(buf).features.feature
  try:
    rec = {"image": feature["image"].bytes_list.value[0]}
    for k in _FLOATS:
      rec[k] = np.frombuffer(feature[k].bytes_list.value[0], np.float32)
    for k in _INTS:
      rec[k] = feature[k].int64_list.value[0]
  except (KeyError, IndexError) as e:
    raise ValueError(f"a record lacks the feature {e} of EgoDex record version "
                     f"{RECORD_VERSION}; rebuild the dataset") from None
  rec["window"] = rec["window"].reshape(-1, 48)
  rec["mode_targets"] = rec["mode_targets"].reshape(-1, 3)
  if "padding" in feature:
    rec["padding"] = np.frombuffer(feature["padding"].bytes_list.value[0], np.bool_)
  else:  # record version 1.1.0: padding is exactly the rows past num_future
    rec["padding"] = np.arange(len(rec["window"])) > rec["num_future"]
  return rec


class RecordSource:
  """Random access to a split's records as dicts shaped like the dataset's features."""

  def __init__(self, meta, split: str):
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    paths = sorted(glob.glob(os.path.join(meta.data_dir, f"{DATASET_NAME}-{split}.array_record-*")))
    if not paths:
      raise FileNotFoundError(f"{meta.data_dir}: no ArrayRecord shards for split '{split}'")
    self._source = array_record_data_source.ArrayRecordDataSource(paths)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return parse_record(self._source[index])

  def get_many(self, indices: list[int]) -> list[dict[str, Any]]:
    """Records in the order of `indices`, read one by one in this thread: `__getitems__`'s
    per-call thread pool costs more CPU than it saves on records of ~20 kB (module docstring)."""
    return [parse_record(self._source[i]) for i in indices]


# --- batches -------------------------------------------------------------------------------
_BATCH_INTS = ("instruction_id", "task_id", "mode", "episode_id", "frame")
# Arrays of at least this size are passed from a Grain worker process through shared memory
# (pipeline.make_dataset sets Grain's min_shm_size to it); smaller ones travel pickled with the
# element. Grain's default, 0, gives every array (each [B] int32 one too) its own shared-memory
# segment, whose creation and first touch cost more than pickling a few kB (docs/pipeline.md).
SHM_MIN_BYTES = 1 << 16


class SampleLoader:
  """Record indices -> a batch as in the table of docs/interfaces.md."""

  def __init__(self, source, num_frames_by_episode: np.ndarray, horizon: int, goal: bool,
               image_size: int, confidence: confidence_lib.FutureConfidence | None = None):
    self.source = source
    self.num_frames = num_frames_by_episode  # [E] int
    self.horizon = horizon
    self.goal = goal
    self.image_size = image_size
    self.confidence = confidence  # the `confidence` key [B, H, 12] when given

  def load_batch(self, indices) -> dict[str, np.ndarray]:
    """[B] record indices -> a batch; images are decoded straight into the batch arrays."""
    _one_opencv_thread()
    idx = [int(i) for i in np.asarray(indices).reshape(-1)]
    n, h, s = len(idx), self.horizon, self.image_size
    image = np.empty((n, s, s, 3), np.uint8)
    state = np.empty((n, 48), np.float32)
    actions = np.empty((n, h, 48), np.float32)
    padding = np.empty((n, h), np.bool_)
    mode_targets = np.empty((n, 2, 3), np.float32)
    ints = np.empty((len(_BATCH_INTS), n), np.int32)
    for b, i in enumerate(idx):  # read, decode and copy one record at a time: it stays in cache
      rec = self.source[i]
      decode_jpeg(rec["image"], s, image[b])
      window = rec["window"]  # [M+1, 48] view of the record's bytes: one copy into the batch
      state[b] = window[0]
      actions[b] = window[1:h + 1]
      padding[b] = rec["padding"][1:h + 1]  # past the end or a non-finite frame
      mode_targets[b] = rec["mode_targets"]
      ints[:, b] = [rec[k] for k in _BATCH_INTS]
    out = {"image": image, "state": state, "actions": actions, "mode_targets": mode_targets,
           "padding": padding}
    out.update(zip(_BATCH_INTS, ints))  # rows of one array: views, no copies
    if self.confidence is not None:
      out["confidence"] = self.confidence(idx, out["frame"], self.num_frames[out["episode_id"]], h)
    if self.goal:  # goal frame of record i (frame t): record i - t + min(t + H, N - 1)
      t = out["frame"].astype(np.int64)
      n_frames = self.num_frames[out["episode_id"]]
      goal_idx = np.asarray(idx) - t + np.minimum(t + h, n_frames - 1)
      out["goal_image"] = goal = np.empty((n, s, s, 3), np.uint8)
      for b, i in enumerate(goal_idx.tolist()):
        decode_jpeg(self.source[i]["image"], s, goal[b])
    return out


@functools.cache
def _one_opencv_thread() -> None:
  # Per process (and per Grain worker): OpenCV's own thread pool (resizing to a smaller
  # image_size) only adds wake-ups on 224 px images, while the pipeline's read threads / worker
  # processes already use the cores.
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
