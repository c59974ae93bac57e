"""EgoDex as TFDS ArrayRecord shards, one record per frame, built without TensorFlow.

Reads a raw tree (`<split>/<task>/<i>.hdf5` + `<i>.mp4`, or one tree without split folders) from
the manual dir. Each frame becomes one record: its JPEG (S x S, OpenCV), its action window
`[M+1, 48]` (row 0 = hand state, rows 1..M = the future in camera frame t), and the labels in
docs/interfaces.md. Records are written in (episode, frame) order, so within a split
`record index = episode's first index + t` (egodex_meta.json holds the first indices).

Work is spread over a process pool, one episode per task; a worker streams frames (decode, resize,
encode) into a temporary file, so neither the worker nor the writer ever holds an episode's
frames, and an episode that fails half way is dropped whole. Broken episodes are skipped with
their reason (skipped_episodes.json); egodex_meta.json and norm_stats.json are written beside
dataset_info.json.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import dataclasses
import glob
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from egodex_jax import geometry
from egodex_jax import skeleton
from egodex_jax.data import actions as actions_lib
from egodex_jax.data import egodex
from egodex_jax.data import normalize
from egodex_jax.data.pipeline import RECORD_VERSION  # the reader refuses other versions

DEFAULT_IMAGE_SIZE = 224
DEFAULT_MAX_HORIZON = 90
JPEG_QUALITY = 90
MAX_MODES = 2
CHUNK_FRAMES = 64  # frames per pickled chunk in a worker's spill file
META_FILE = "egodex_meta.json"
STATS_FILE = "norm_stats.json"
SKIPPED_FILE = "skipped_episodes.json"
# Raw split folders of the EgoDex release -> TFDS split.
SPLIT_FOLDERS = {"part1": "train", "part2": "train", "part3": "train", "part4": "train",
                 "part5": "train", "test": "test", "extra": "extra"}
TEST_FRACTION = 0.1  # single tree without split folders: episode-level hash split
MIN_TEST_EPISODES = 2

# TFDS keeps up to 1 GB of serialised examples in memory before spilling to 1000 sorted buckets;
# our integer keys are spread over the buckets in record order (see `_key_stride`), so a small
# buffer bounds the writer's memory. `Builder(writer_buffer_bytes=...)` changes it.
WRITER_BUFFER_BYTES = 16 << 20
tfds_shuffle.MAX_MEM_BUFFER_SIZE = WRITER_BUFFER_BYTES


class _LocalGfile:
  """The part of tf.io.gfile that TFDS's shuffler uses for its spill buckets, on local files.

  TFDS 4.9.10 calls tf.io.gfile there even in its TF-free mode, so without this a build larger
  than the buffer would fail without TensorFlow (and import it, +500 MB, where it is installed).
  """
  GFile = staticmethod(open)
  exists = staticmethod(os.path.exists)
  remove = staticmethod(os.remove)


class _ShufflerTf:
  class io:  # pylint: disable=invalid-name
    gfile = _LocalGfile

  class errors:  # pylint: disable=invalid-name
    ResourceExhaustedError = type("ResourceExhaustedError", (OSError,), {})


tfds_shuffle.tf = _ShufflerTf  # bucket files live in the (local) output dir's tmp folder
_BYTES_PER_RECORD = 40_000  # rough (224 px JPEG + [91, 48] window), to size the buckets


@dataclasses.dataclass
class EgodexConfig(tfds.core.BuilderConfig):
  image_size: int = DEFAULT_IMAGE_SIZE
  max_horizon: int = DEFAULT_MAX_HORIZON


def make_config(image_size: int = DEFAULT_IMAGE_SIZE,
                max_horizon: int = DEFAULT_MAX_HORIZON) -> EgodexConfig:
  return EgodexConfig(name=f"s{image_size}_h{max_horizon}", image_size=image_size,
                      max_horizon=max_horizon,
                      description=f"{image_size}x{image_size} JPEG frames, windows of "
                      f"{max_horizon} future frames.")


def builder_config(image_size: int = DEFAULT_IMAGE_SIZE, max_horizon: int = DEFAULT_MAX_HORIZON):
  """What to pass as `config=`: a registered config by name (TFDS refuses a custom config that
  shadows one), else a new EgodexConfig."""
  cfg = make_config(image_size, max_horizon)
  return cfg.name if cfg.name in {c.name for c in Builder.BUILDER_CONFIGS} else cfg


# --- finding episodes and splits ---------------------------------------------------------


def _rel_hash(root: str, path: str) -> str:
  return hashlib.sha1(os.path.relpath(path, root).encode()).hexdigest()


def discover_splits(raw_dir: str) -> dict[str, list[tuple[str, str]]]:
  """split -> sorted (hdf5, mp4) pairs. Raises ValueError when there is nothing to build."""
  raw_dir = os.fspath(raw_dir)
  if not os.path.isdir(raw_dir):
    raise ValueError(f"{raw_dir}: the raw EgoDex directory does not exist")
  folders = [d for d in sorted(os.listdir(raw_dir))
             if d in SPLIT_FOLDERS and os.path.isdir(os.path.join(raw_dir, d))]
  splits: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
  if folders:
    for d in folders:
      splits[SPLIT_FOLDERS[d]] += egodex.find_episodes(os.path.join(raw_dir, d))
  else:
    pairs = egodex.find_episodes(raw_dir)
    n_test = max(MIN_TEST_EPISODES, round(TEST_FRACTION * len(pairs))) if len(pairs) >= 4 else 0
    by_hash = sorted(pairs, key=lambda p: _rel_hash(raw_dir, p[0]))
    test = set(by_hash[:n_test])
    splits["train"] = [p for p in pairs if p not in test]
    splits["test"] = [p for p in pairs if p in test]
  splits = {k: sorted(v) for k, v in splits.items() if v}
  if not splits:
    raise ValueError(f"{raw_dir}: holds no EgoDex episodes (no .hdf5 files found)")
  return splits


# --- worker side: one episode -> records ---------------------------------------------------


def _mode(attrs: dict[str, Any]) -> tuple[int, np.ndarray]:
  """Synthetic episodes' mode and world-frame targets [MAX_MODES, 3]; real ones: -1, zeros."""
  targets = np.zeros((MAX_MODES, 3), np.float64)
  mode = attrs.get("mode", -1)
  try:
    mode = int(mode)
    raw = attrs.get("mode_targets", "[]")
    pts = np.asarray(json.loads(raw) if isinstance(raw, str) else raw, np.float64).reshape(-1, 3)
    targets[:min(len(pts), MAX_MODES)] = pts[:MAX_MODES]
  except (TypeError, ValueError):
    mode = -1
  return mode, targets


def _probe(pair: tuple[str, str]) -> dict[str, Any]:
  """Validates one episode (poses + that the video reaches frame N-1); never raises."""
  try:
    ep = egodex.load_episode(*pair, check_video=True)
    mode, _ = _mode(ep.attrs)
    return {"ok": True, "num_frames": ep.num_frames, "task": ep.task,
            "instruction": ep.instruction, "mode": mode}
  except Exception as e:  # pylint: disable=broad-except
    return {"ok": False, "reason": _reason(pair[0], e)}


def _reason(path: str, e: Exception) -> str:
  if isinstance(e, egodex.EpisodeError):
    return str(e)
  return f"{path}: {type(e).__name__}: {e}"


def _slice(ep: egodex.Episode, start: int, stop: int) -> egodex.Episode:
  return dataclasses.replace(ep, transforms={k: v[start:stop] for k, v in ep.transforms.items()})


def episode_records(pair: tuple[str, str], image_size: int, max_horizon: int
                    ) -> Iterator[dict[str, Any]]:
  """Streams one episode's per-frame records (without ids); raises EpisodeError on faults."""
  import cv2  # pylint: disable=g-import-not-at-top
  ep = egodex.load_episode(*pair, check_video=False)
  n = ep.num_frames
  mode, targets_world = _mode(ep.attrs)
  conf = np.ones((n, len(skeleton.KEYPOINT_JOINTS)), np.float32)
  if ep.confidences is not None:
    conf = np.stack([ep.confidences[j] for j in skeleton.KEYPOINT_JOINTS], 1).astype(np.float32)
  inv_cam = geometry.se3_inverse(ep.camera.astype(np.float64))  # [N, 4, 4] world-to-camera
  window = num_future = None
  with egodex.VideoReader(ep.video_path) as reader:
    frames = iter(reader)
    for t in range(n):
      if t % CHUNK_FRAMES == 0:  # windows of a block: slice M frames past it, not the episode
        stop = min(n, t + CHUNK_FRAMES + max_horizon)
        window, num_future = actions_lib.action_windows(_slice(ep, t, stop), max_horizon)
      frame = next(frames, None)
      if frame is None:
        raise egodex.EpisodeError(f"{pair[0]}: its video ends at frame {t}, before the "
                                  f"{n} pose rows")
      small = cv2.resize(frame, (image_size, image_size), interpolation=cv2.INTER_AREA)
      ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
      if not ok:
        raise egodex.EpisodeError(f"{pair[0]}: OpenCV could not JPEG-encode frame {t}")
      R, p = inv_cam[t, :3, :3], inv_cam[t, :3, 3]
      mode_targets = (targets_world @ R.T + p) if mode >= 0 else np.zeros((MAX_MODES, 3))
      i = t % CHUNK_FRAMES
      yield {"image": jpeg.tobytes(), "window": window[i], "num_future": np.int32(num_future[i]),
             "frame": np.int32(t), "confidence": conf[t], "mode": np.int32(mode),
             "mode_targets": mode_targets.astype(np.float32)}


def _encode_episode(job: tuple[tuple[str, str], int, int, str]) -> dict[str, Any]:
  """Worker task: spills the episode's records to a pickle file in chunks; never raises."""
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)  # one process per core already
  pair, image_size, max_horizon, spill_dir = job
  fd, path = tempfile.mkstemp(suffix=".pkl", dir=spill_dir)
  count = 0
  try:
    with os.fdopen(fd, "wb") as f:
      chunk = []
      for rec in episode_records(pair, image_size, max_horizon):
        chunk.append(rec)
        if len(chunk) == CHUNK_FRAMES:
          pickle.dump(chunk, f, protocol=pickle.HIGHEST_PROTOCOL)
          count += len(chunk)
          chunk = []
      if chunk:
        pickle.dump(chunk, f, protocol=pickle.HIGHEST_PROTOCOL)
        count += len(chunk)
    return {"ok": True, "spill": path, "num_records": count}
  except Exception as e:  # pylint: disable=broad-except
    if os.path.exists(path):
      os.remove(path)
    return {"ok": False, "reason": _reason(pair[0], e)}


def _read_spill(path: str) -> Iterator[dict[str, Any]]:
  try:
    with open(path, "rb") as f:
      while True:
        try:
          chunk = pickle.load(f)
        except EOFError:
          return
        yield from chunk
  finally:
    os.remove(path)


def _beam_episode(job: dict[str, Any], image_size: int, max_horizon: int):
  """Beam: one planned episode -> (key, record); keys are record indices (disable_shuffling
  sorts by them). An episode that passed the probe but fails here fails the job, since a hole
  would shift every later record index."""
  ids = {"episode_id": np.int32(job["episode_id"]), "task_id": np.int32(job["task_id"]),
         "instruction_id": np.int32(job["instruction_id"])}
  for t, rec in enumerate(episode_records(tuple(job["pair"]), image_size, max_horizon)):
    rec.update(ids)
    yield job["first_index"] + t, rec


def _ordered_map(pool, fn, jobs, ahead: int) -> Iterator[Any]:
  """pool.map in order with at most `ahead` tasks in flight (bounded memory and disk)."""
  pending = collections.deque()
  jobs = iter(jobs)
  for job in jobs:
    pending.append(pool.submit(fn, job))
    if len(pending) >= ahead:
      break
  while pending:
    result = pending.popleft().result()
    nxt = next(jobs, None)
    if nxt is not None:
      pending.append(pool.submit(fn, nxt))
    yield result


# --- the builder ---------------------------------------------------------------------------


class Builder(tfds.core.GeneratorBasedBuilder):
  """EgoDex: one record per frame (JPEG + action window), ArrayRecord, TF-free."""

  VERSION = tfds.core.Version(RECORD_VERSION)
  RELEASE_NOTES = {
      "1.0.0": "One record per frame: JPEG, [M+1, 48] action window, labels.",
      "1.1.0": "Float tensors (window, confidence, mode_targets) stored as raw float32 "
               "bytes (Tensor encoding='bytes') instead of float lists: same features "
               "and values, read with one np.frombuffer. 1.0.0 builds must be rebuilt.",
  }
  BUILDER_CONFIGS = [make_config()]
  DEFAULT_BUILDER_CONFIG_NAME = BUILDER_CONFIGS[0].name
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download and unzip EgoDex (https://github.com/apple/ml-egodex) so that the manual dir holds
  part1..part5/, test/ and/or extra/ (each <task>/<i>.hdf5 + <i>.mp4), or point it at any tree
  of such episodes (a synthetic one from egodex_jax.data.synthetic works too).
  """

  def __init__(self, *, num_workers: int | None = None, writer_buffer_bytes: int | None = None,
               **kwargs):
    if kwargs.get("file_format") is None:
      kwargs["file_format"] = "array_record"
    super().__init__(**kwargs)
    if writer_buffer_bytes is not None:  # TFDS reads it as a module global
      tfds_shuffle.MAX_MEM_BUFFER_SIZE = int(writer_buffer_bytes)
    self._num_workers = num_workers or max(1, min(8, os.cpu_count() or 1))
    self.build_log = print  # progress lines; the CLI keeps print

  def _info(self) -> tfds.core.DatasetInfo:
    m = self.builder_config.max_horizon
    t = tfds.features.Tensor
    raw = tfds.features.Encoding.BYTES  # float tensors as raw bytes: one np.frombuffer to read
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": t(shape=(), dtype=np.object_),  # JPEG bytes, S x S RGB
            "window": t(shape=(m + 1, skeleton.ACTION_DIM), dtype=np.float32, encoding=raw),
            "num_future": t(shape=(), dtype=np.int32),
            "episode_id": t(shape=(), dtype=np.int32),
            "frame": t(shape=(), dtype=np.int32),
            "task_id": t(shape=(), dtype=np.int32),
            "instruction_id": t(shape=(), dtype=np.int32),
            "confidence": t(shape=(len(skeleton.KEYPOINT_JOINTS),), dtype=np.float32,
                            encoding=raw),
            "mode": t(shape=(), dtype=np.int32),
            "mode_targets": t(shape=(MAX_MODES, 3), dtype=np.float32, encoding=raw),
        }),
        supervised_keys=None,
        homepage="https://github.com/apple/ml-egodex",
        disable_shuffling=True,  # record index = episode's first index + t
    )

  # -- planning: validate every episode first (in the pool), then generate split by split --

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    raw_dir = os.fspath(dl_manager.manual_dir)
    splits = discover_splits(raw_dir)
    self._raw_dir = raw_dir
    self._skipped: list[dict[str, str]] = []
    self._found = sum(len(v) for v in splits.values())
    self._done = 0
    self._t0 = time.time()
    self._frames_done = 0
    # fork is fast, but unsafe once JAX's threads exist in this process (e.g. under pytest);
    # forkserver children must re-import this module by name, which `tfds build` (it imports
    # the folder as a top-level `egodex` package) does not allow.
    safe = "jax" in sys.modules and __name__.startswith("tfds_builder.")
    ctx = multiprocessing.get_context("forkserver" if safe else "fork")
    self._pool = futures.ProcessPoolExecutor(self._num_workers, mp_context=ctx)
    self._spill_dir = tempfile.mkdtemp(prefix="egodex_build_")
    self.build_log(f"egodex: {self._found} episodes found under {raw_dir} "
                   f"({', '.join(f'{k}: {len(v)}' for k, v in splits.items())}); "
                   f"{self._num_workers} workers")
    self._plans: dict[str, list[tuple[tuple[str, str], dict[str, Any]]]] = {}
    total_frames = 0
    for split, pairs in splits.items():
      kept = []
      for pair, info in zip(pairs, self._pool.map(_probe, pairs, chunksize=4)):
        if info["ok"]:
          kept.append((pair, info))
          total_frames += info["num_frames"]
        else:
          self._skip(pair, info["reason"])
      if kept:
        self._plans[split] = kept
    if not self._plans:
      self._pool.shutdown()
      raise ValueError(f"{raw_dir}: none of the {self._found} episodes is usable "
                       f"(first problem: {self._skipped[0]['reason']})")
    # Vocabularies over every split, so ids mean the same thing everywhere.
    infos = [i for plan in self._plans.values() for _, i in plan]
    self._tasks = sorted({i["task"] for i in infos})
    self._instructions = sorted({i["instruction"] for i in infos})
    # Spread keys so that a spilled bucket (read whole when the shards are written) holds about
    # a quarter of the memory buffer.
    buckets = min(tfds_shuffle.BUCKETS_NUMBER, max(
        1, 4 * total_frames * _BYTES_PER_RECORD // max(1, tfds_shuffle.MAX_MEM_BUFFER_SIZE)))
    self._key_stride = (2**tfds_shuffle.HKEY_SIZE * buckets // tfds_shuffle.BUCKETS_NUMBER
                        ) // (total_frames + 1)
    self._episodes: dict[str, list[dict[str, Any]]] = {}
    # Statistics come from train; a tree with no train episodes falls back to its first split.
    self._stats_split = "train" if "train" in self._plans else next(iter(self._plans))
    self._stats = {k: normalize.StatsAccumulator(skeleton.ACTION_DIM)
                   for k in ("actions", "state", "delta")}
    return {split: self._generate_examples(split) for split in self._plans}

  def _skip(self, pair: tuple[str, str], reason: str) -> None:
    self._skipped.append({"path": pair[0], "reason": reason})
    self._done += 1
    self.build_log(f"egodex: skipped {reason}")

  def _generate_examples(self, split: str):
    if self._beam:
      return self._beam_examples(split)
    return self._local_examples(split)

  def _beam_examples(self, split: str):
    """The Apache Beam path (for the full release): the episode table is fixed by the probe."""
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    cfg = self.builder_config
    task_id = {t: i for i, t in enumerate(self._tasks)}
    instruction_id = {s: i for i, s in enumerate(self._instructions)}
    table, jobs, index = self._episodes.setdefault(split, []), [], 0
    for pair, info in self._plans[split]:
      e = {"episode_id": len(table), "path": os.path.relpath(pair[0], self._raw_dir),
           "first_index": index, "num_frames": info["num_frames"], "task": info["task"],
           "instruction": info["instruction"], "mode": info["mode"]}
      table.append(e)
      jobs.append({"pair": list(pair), "episode_id": e["episode_id"], "first_index": index,
                   "task_id": task_id[info["task"]],
                   "instruction_id": instruction_id[info["instruction"]]})
      index += info["num_frames"]
    return (beam.Create(jobs) | f"Reshuffle_{split}" >> beam.Reshuffle()
            | f"Encode_{split}" >> beam.FlatMap(_beam_episode, cfg.image_size, cfg.max_horizon))

  def _local_examples(self, split: str):
    """Yields (key, record) in (episode, frame) order; integer keys keep that order on disk."""
    cfg = self.builder_config
    task_id = {t: i for i, t in enumerate(self._tasks)}
    instruction_id = {s: i for i, s in enumerate(self._instructions)}
    table = self._episodes.setdefault(split, [])
    index = 0
    jobs = ((pair, cfg.image_size, cfg.max_horizon, self._spill_dir)
            for pair, _ in self._plans[split])
    plan = iter(self._plans[split])
    for result in _ordered_map(self._pool, _encode_episode, jobs, 2 * self._num_workers):
      pair, info = next(plan)
      if not result["ok"]:
        self._skip(pair, result["reason"])
        continue
      episode_id = len(table)
      table.append({"episode_id": episode_id, "path": os.path.relpath(pair[0], self._raw_dir),
                    "first_index": index, "num_frames": info["num_frames"], "task": info["task"],
                    "instruction": info["instruction"], "mode": info["mode"]})
      ids = {"episode_id": np.int32(episode_id), "task_id": np.int32(task_id[info["task"]]),
             "instruction_id": np.int32(instruction_id[info["instruction"]])}
      for rec in _read_spill(result["spill"]):
        if split == self._stats_split:
          self._add_stats(rec)
        rec.update(ids)
        yield index * self._key_stride, rec
        index += 1
      self._done += 1
      self._frames_done += info["num_frames"]
      dt = max(time.time() - self._t0, 1e-9)
      self.build_log(f"egodex: {self._done}/{self._found} episodes, {self._frames_done} frames, "
                     f"{self._frames_done / dt:.1f} frames/s")

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    self._beam = bool(download_config.beam_runner or download_config.beam_options)
    try:
      super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    finally:
      if getattr(self, "_pool", None) is not None:
        self._pool.shutdown(cancel_futures=True)
        self._pool = None
      if getattr(self, "_spill_dir", None):
        import shutil  # pylint: disable=g-import-not-at-top
        shutil.rmtree(self._spill_dir, ignore_errors=True)
    if self._beam:  # records were made on Beam workers: statistics from a pass over the shards
      self._stats_from_shards(os.fspath(self.data_dir))
    self._write_side_files(os.fspath(self.data_dir))

  def _add_stats(self, rec: dict) -> None:
    """Row 0 is the state, rows 1..num_future the (unpadded) future actions; `delta` feeds the
    state-relative action representation (normalize.Normalizer(action_repr='relative'))."""
    window = rec["window"]
    future = window[1:1 + int(rec["num_future"])]
    self._stats["state"].add(window[0])
    self._stats["actions"].add(future)
    self._stats["delta"].add(future - window[:1])

  def _stats_from_shards(self, out_dir: str) -> None:
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    paths = sorted(glob.glob(os.path.join(out_dir, f"{self.name}-{self._stats_split}."
                                                   "array_record-*")))
    source = array_record_data_source.ArrayRecordDataSource(paths)
    features = self.info.features
    for i in range(len(source)):
      rec = features.deserialize_example_np(source[i], decoders=None)
      self._add_stats(rec)

  def _write_side_files(self, out_dir: str) -> None:
    cfg = self.builder_config
    kept = sum(len(v) for v in self._episodes.values())
    meta = {"tasks": self._tasks, "instructions": self._instructions,
            "max_horizon": cfg.max_horizon, "image_size": cfg.image_size,
            "splits": {s: {"num_records": sum(e["num_frames"] for e in eps), "episodes": eps}
                       for s, eps in self._episodes.items()},
            "found": self._found, "kept": kept, "skipped": len(self._skipped)}
    with open(os.path.join(out_dir, META_FILE), "w") as f:
      json.dump(meta, f, indent=1)
    with open(os.path.join(out_dir, SKIPPED_FILE), "w") as f:
      json.dump(self._skipped, f, indent=1)
    if self._stats["state"].count:
      stats = {k: v.result() for k, v in self._stats.items()}
      stats["split"] = self._stats_split
      normalize.save_stats(os.path.join(out_dir, STATS_FILE), stats)
    self.build_log(f"egodex: kept {kept}, skipped {len(self._skipped)}, found {self._found} "
                   f"episodes ({time.time() - self._t0:.1f} s); details in {SKIPPED_FILE}")
    if kept + len(self._skipped) != self._found:  # e.g. tfds build --max_examples_per_split
      self.build_log(f"egodex: WARNING {self._found - kept - len(self._skipped)} episodes were "
                     "not reached (generation stopped early); the episode table is partial")
