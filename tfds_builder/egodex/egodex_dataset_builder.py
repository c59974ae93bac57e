"""EgoDex as TFDS ArrayRecord shards, one record per frame, built without TensorFlow.

Reads a raw tree (`<split>/<task>/<i>.hdf5` + `<i>.mp4`, or one tree without split folders) from
the manual dir. Each frame becomes one record: its JPEG (S x S, OpenCV), its action window
`[M+1, 48]` (row 0 = hand state, rows 1..M = the future in camera frame t), and the labels in
docs/interfaces.md. Records are written in (episode, frame) order, so within a split
`record index = episode's first index + t` (egodex_meta.json holds the first indices).

Work is spread over a process pool, one episode per task; a worker streams frames (decode, resize,
encode) into a temporary file, so neither the worker nor the writer ever holds an episode's
frames, and an episode that fails half way is dropped whole. Broken episodes are skipped with
their reason; a partial one (a few non-finite pose frames, a video a few frames short) keeps its
good frames (records.plan_frames); both are listed in skipped_episodes.json. egodex_meta.json
and norm_stats.json are written beside dataset_info.json. Progress: one tqdm bar and a summary
line (progress.py).
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import contextlib
import dataclasses
import glob
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from egodex_jax import skeleton
from egodex_jax.data import egodex
from egodex_jax.data import normalize
from egodex_jax.data.files import CONFIDENCE_FILE, META_FILE, RECORD_VERSION, SKIPPED_FILE
from egodex_jax.data.files import STATS_FILE
from tfds_builder.egodex import progress as progress_lib
from tfds_builder.egodex import records
from tfds_builder.egodex import tfds_compat

DEFAULT_IMAGE_SIZE = 224
DEFAULT_MAX_HORIZON = 90
# Raw split folders of the EgoDex release -> TFDS split.
SPLIT_FOLDERS = {"part1": "train", "part2": "train", "part3": "train", "part4": "train",
                 "part5": "train", "test": "test", "extra": "extra"}
TEST_FRACTION = 0.1  # single tree without split folders: episode-level hash split
MIN_TEST_EPISODES = 2

# TFDS keeps up to 1 GB of serialised examples in memory before spilling to sorted buckets; a
# small buffer bounds the writer's memory (tfds_compat.apply, around every build).
WRITER_BUFFER_BYTES = 16 << 20
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


# --- the builder ---------------------------------------------------------------------------


@dataclasses.dataclass
class _BuildState:
  """What one download_and_prepare learns and accumulates; a fresh one per build."""
  beam: bool = False
  raw_dir: str = ""
  found: int = 0  # episodes found under raw_dir
  skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
  partial: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # kept, frames dropped
  progress: progress_lib.Progress | None = None
  # split -> [(pair, probe info)], the episodes that passed the probe, in record order
  plans: dict[str, list[tuple[tuple[str, str], dict[str, Any]]]] = dataclasses.field(
      default_factory=dict)
  task_ids: dict[str, int] = dataclasses.field(default_factory=dict)  # vocabulary -> id
  instruction_ids: dict[str, int] = dataclasses.field(default_factory=dict)
  key_stride: int = 1
  episodes: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)  # tables
  stats_split: str = "train"
  stats: dict[str, normalize.StatsAccumulator] = dataclasses.field(
      default_factory=lambda: {k: normalize.StatsAccumulator(skeleton.ACTION_DIM)
                               for k in ("actions", "state", "delta")})
  pool: futures.ProcessPoolExecutor | None = None
  spill_dir: str | None = None

  def close(self) -> None:
    if self.progress is not None:
      self.progress.close()
    if self.pool is not None:
      self.pool.shutdown(cancel_futures=True)
      self.pool = None
    if self.spill_dir:
      import shutil  # pylint: disable=g-import-not-at-top
      shutil.rmtree(self.spill_dir, ignore_errors=True)
      self.spill_dir = None


class Builder(tfds_compat.PrepareHook, tfds.core.GeneratorBasedBuilder):
  """EgoDex: one record per frame (JPEG + action window), ArrayRecord, TF-free."""

  VERSION = tfds.core.Version(RECORD_VERSION)
  RELEASE_NOTES = {
      "1.0.0": "One record per frame: JPEG, [M+1, 48] action window, labels.",
      "1.1.0": "Float tensors (window, confidence, mode_targets) stored as raw float32 "
               "bytes (Tensor encoding='bytes') instead of float lists: same features "
               "and values, read with one np.frombuffer. 1.0.0 builds must be rebuilt.",
      "1.2.0": "Partial episodes keep their good frames: a `padding` [M+1] bool feature "
               "marks the window rows that are not real (past the end or non-finite; row 0: "
               "the frame is no sample), and the episode table lists `dropped` frames. "
               "1.1.0 builds stay readable (their padding follows from num_future).",
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
    self._num_workers = num_workers or max(1, min(8, os.cpu_count() or 1))
    self._writer_buffer_bytes = int(writer_buffer_bytes or WRITER_BUFFER_BYTES)
    self._state = _BuildState()
    self.build_log = print  # the first and last lines (the bar itself goes to stderr)

  def _info(self) -> tfds.core.DatasetInfo:
    m = self.builder_config.max_horizon
    t = tfds.features.Tensor
    raw = tfds.features.Encoding.BYTES  # float tensors as raw bytes: one np.frombuffer to read
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": t(shape=(), dtype=np.object_),  # JPEG bytes, S x S RGB
            "window": t(shape=(m + 1, skeleton.ACTION_DIM), dtype=np.float32, encoding=raw),
            "num_future": t(shape=(), dtype=np.int32),
            "padding": t(shape=(m + 1,), dtype=np.bool_, encoding=raw),
            "episode_id": t(shape=(), dtype=np.int32),
            "frame": t(shape=(), dtype=np.int32),
            "task_id": t(shape=(), dtype=np.int32),
            "instruction_id": t(shape=(), dtype=np.int32),
            "confidence": t(shape=(len(skeleton.KEYPOINT_JOINTS),), dtype=np.float32,
                            encoding=raw),
            "mode": t(shape=(), dtype=np.int32),
            "mode_targets": t(shape=(records.MAX_MODES, 3), dtype=np.float32, encoding=raw),
        }),
        supervised_keys=None,
        homepage="https://github.com/apple/ml-egodex",
        disable_shuffling=True,  # record index = episode's first index + t
    )

  @contextlib.contextmanager
  def _generation(self, beam: bool):
    """Around TFDS's generation, in its temporary data dir (tfds_compat.PrepareHook): the side
    files are written there only when every split was, so they appear with the shards."""
    self._state = _BuildState(beam=beam)
    with tfds_compat.apply(self._writer_buffer_bytes):
      try:
        yield
      finally:
        self._state.close()
    if beam:  # records were made on Beam workers: statistics from a pass over the shards
      self._stats_from_shards(os.fspath(self.data_dir))
    self._write_side_files(os.fspath(self.data_dir))

  # -- planning: validate every episode first (in the pool), then generate split by split --

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    s = self._state
    s.raw_dir = os.fspath(dl_manager.manual_dir)
    splits = discover_splits(s.raw_dir)
    s.found = sum(len(v) for v in splits.values())
    # fork is fast, but unsafe once JAX's threads exist in this process (e.g. under pytest);
    # forkserver children re-import the worker functions by name, so it is kept to imports as
    # `tfds_builder.egodex` (`tfds build` imports the folder as a top-level `egodex` package).
    safe = "jax" in sys.modules and __name__.startswith("tfds_builder.")
    ctx = multiprocessing.get_context("forkserver" if safe else "fork")
    s.pool = futures.ProcessPoolExecutor(self._num_workers, mp_context=ctx)
    s.spill_dir = tempfile.mkdtemp(prefix="egodex_build_")
    self.build_log(f"egodex: {s.found} episodes found under {s.raw_dir} "
                   f"({', '.join(f'{k}: {len(v)}' for k, v in splits.items())}); "
                   f"{self._num_workers} workers")
    s.progress = progress_lib.Progress(s.found)
    total_frames = 0
    for split, pairs in splits.items():
      kept = []
      for pair, info in zip(pairs, s.pool.map(records.probe, pairs, chunksize=4)):
        if info["ok"]:
          kept.append((pair, info))
          total_frames += info["num_frames"]
          s.progress.checked(info["pose_frames"])
        else:
          self._skip(pair, info["reason"])
      if kept:
        s.plans[split] = kept
    if not s.plans:
      raise ValueError(f"{s.raw_dir}: none of the {s.found} episodes is usable "
                       f"(first problem: {s.skipped[0]['reason']})")
    # Vocabularies over every split, so ids mean the same thing everywhere.
    infos = [i for plan in s.plans.values() for _, i in plan]
    s.task_ids = {t: k for k, t in enumerate(sorted({i["task"] for i in infos}))}
    s.instruction_ids = {t: k for k, t in enumerate(sorted({i["instruction"] for i in infos}))}
    s.key_stride = tfds_compat.key_stride(total_frames, _BYTES_PER_RECORD,
                                          self._writer_buffer_bytes)
    s.episodes = {split: [] for split in s.plans}
    # Statistics come from train; a tree with no train episodes falls back to its first split.
    s.stats_split = "train" if "train" in s.plans else next(iter(s.plans))
    planned = sum(len(v) for v in s.plans.values())
    if s.beam:  # Beam's workers encode: the table is fixed by the plan; the bar ends here
      s.progress.close()
      self.build_log(f"egodex: encoding {planned} episodes ({total_frames} records) with Apache "
                     "Beam")
    else:
      s.progress.phase("egodex build", planned)
    return {split: self._generate_examples(split) for split in s.plans}

  def _skip(self, pair: tuple[str, str], reason: str) -> None:
    self._state.skipped.append({"path": pair[0], "reason": reason})
    self._state.progress.skipped()

  def _add_episode(self, split: str, pair: tuple[str, str], info: dict[str, Any],
                   first_index: int) -> dict[str, int]:
    """Appends an episode to its split's table (the one place it is built); returns the ids
    its records carry."""
    s = self._state
    table = s.episodes[split]
    table.append({"episode_id": len(table), "path": os.path.relpath(pair[0], s.raw_dir),
                  "first_index": first_index, "num_frames": info["num_frames"],
                  "task": info["task"], "instruction": info["instruction"], "mode": info["mode"],
                  "dropped": info["dropped"]})
    if info["partial"]:
      s.partial.append({"path": pair[0], "frames_dropped": info["frames_dropped"],
                        "reason": info["partial"]})
    s.progress.kept(info, advance=not s.beam)
    return {"episode_id": len(table) - 1, "task_id": s.task_ids[info["task"]],
            "instruction_id": s.instruction_ids[info["instruction"]]}

  def _generate_examples(self, split: str):
    if self._state.beam:
      return self._beam_examples(split)
    return self._local_examples(split)

  def _beam_examples(self, split: str):
    """The Apache Beam path (for the full release): the episode table is fixed by the probe."""
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    cfg = self.builder_config
    jobs, index = [], 0
    for pair, info in self._state.plans[split]:
      jobs.append({"pair": list(pair), "first_index": index, "num_records": info["num_frames"],
                   **self._add_episode(split, pair, info, index)})
      index += info["num_frames"]
    return (beam.Create(jobs) | f"Reshuffle_{split}" >> beam.Reshuffle()
            | f"Encode_{split}" >> beam.FlatMap(records.beam_episode, cfg.image_size, cfg.max_horizon))

  def _local_examples(self, split: str):
    """Yields (key, record) in (episode, frame) order; integer keys keep that order on disk.
    Every record's confidence also goes, in that order, to CONFIDENCE_FILE (a Beam build has
    none: the reader then reads the records' own)."""
    s, cfg = self._state, self.builder_config
    jobs = ((pair, cfg.image_size, cfg.max_horizon, s.spill_dir, info["num_frames"])
            for pair, info in s.plans[split])
    plan = iter(s.plans[split])
    conf_path = os.path.join(os.fspath(self.data_dir), CONFIDENCE_FILE.format(split=split))
    with open(conf_path, "wb") as conf_file:
      yield from self._local_records(split, jobs, plan, conf_file)

  def _local_records(self, split, jobs, plan, conf_file):
    s = self._state
    index = 0
    for result in records.ordered_map(s.pool, records.encode_episode, jobs, 2 * self._num_workers):
      pair, info = next(plan)
      if not result["ok"]:
        self._skip(pair, result["reason"])
        continue
      ids = {k: np.int32(v) for k, v in self._add_episode(split, pair, info, index).items()}
      for rec in records.read_spill(result["spill"]):
        if split == s.stats_split:
          self._add_stats(rec)
        rec.update(ids)
        conf_file.write(np.asarray(rec["confidence"], "<f4").tobytes())
        yield index * s.key_stride, rec
        index += 1

  def _add_stats(self, rec: dict) -> None:
    """Row 0 is the state, the rows that are not padding the future actions; `delta` feeds the
    state-relative action representation (normalize.Normalizer(action_repr='relative')). A
    placeholder record (padding[0]: no sample) adds nothing; no padded row is ever seen."""
    window, padding, stats = rec["window"], np.asarray(rec["padding"], bool), self._state.stats
    if padding[0]:
      return
    future = window[1:][~padding[1:]]
    stats["state"].add(window[0])
    stats["actions"].add(future)
    stats["delta"].add(future - window[:1])

  def _stats_from_shards(self, out_dir: str) -> None:
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    paths = sorted(glob.glob(os.path.join(out_dir, f"{self.name}-{self._state.stats_split}."
                                                   "array_record-*")))
    source = array_record_data_source.ArrayRecordDataSource(paths)
    features = self.info.features
    for i in range(len(source)):
      rec = features.deserialize_example_np(source[i], decoders=None)
      self._add_stats(rec)

  def _write_side_files(self, out_dir: str) -> None:
    s, cfg = self._state, self.builder_config
    kept = sum(len(v) for v in s.episodes.values())
    meta = {"tasks": list(s.task_ids), "instructions": list(s.instruction_ids),
            "max_horizon": cfg.max_horizon, "image_size": cfg.image_size,
            "splits": {k: {"num_records": sum(e["num_frames"] for e in eps), "episodes": eps}
                       for k, eps in s.episodes.items()},
            "found": s.found, "kept": kept, "partial": len(s.partial),
            "skipped": len(s.skipped)}
    with open(os.path.join(out_dir, META_FILE), "w") as f:
      json.dump(meta, f, indent=1)
    with open(os.path.join(out_dir, SKIPPED_FILE), "w") as f:
      json.dump({"skipped": s.skipped, "partial": s.partial}, f, indent=1)
    if s.stats["state"].count:
      stats = {k: v.result() for k, v in s.stats.items()}
      stats["split"] = s.stats_split
      normalize.save_stats(os.path.join(out_dir, STATS_FILE), stats)
    self.build_log(f"{s.progress.summary()}; details in {SKIPPED_FILE}")
    if kept + len(s.skipped) != s.found:  # e.g. tfds build --max_examples_per_split
      self.build_log(f"egodex: WARNING {s.found - kept - len(s.skipped)} episodes were "
                     "not reached (generation stopped early); the episode table is partial")
