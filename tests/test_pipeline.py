"""The Grain pipeline over a real (tiny) ArrayRecord build of synthetic episodes."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from egodex_jax.data import actions
from egodex_jax.data import egodex
from egodex_jax.data import pipeline
from egodex_jax.data import synthetic
from tfds_builder.egodex import egodex_dataset_builder as edb

S, M = 32, 90  # short episodes (< 40 frames) and M = 90: long horizons are mostly padding


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  raw = str(tmp_path_factory.mktemp("raw"))
  synthetic.generate(raw, 8, seed=5, width=64, height=48, min_frames=4, max_frames=36)
  out = str(tmp_path_factory.mktemp("data"))
  builder = edb.Builder(data_dir=out, config=edb.make_config(S, M), num_workers=2)
  builder.build_log = lambda *_: None
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=raw, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return {"raw": raw, "out": out, "meta": pipeline.load_metadata(out)}


def _ds(data, **kw):
  args = dict(batch_size=4, horizon=30, seed=0)
  args.update(kw)
  return pipeline.make_dataset(data["out"], "train", meta=data["meta"], **args)


def _ids(batch):
  return list(zip(batch["episode_id"].tolist(), batch["frame"].tolist()))


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_metadata(data):
  meta = data["meta"]
  assert meta.image_size == S and meta.max_horizon == M
  assert sorted(meta.splits) == ["test", "train"]
  assert len(meta.episodes["train"]) == 6 and len(meta.episodes["test"]) == 2
  assert set(meta.norm_stats) >= {"actions", "state"}
  assert all(meta.instructions[i] for i in range(len(meta.instructions)))


@pytest.mark.parametrize("split", ["train", "test"])
def test_fast_record_reader_equals_tfds_deserialisation(data, split):
  tfds_src = pipeline.data_source(data["meta"], split)
  ours = pipeline.RecordSource(data["meta"], split)
  assert len(ours) == len(tfds_src)
  got = ours.get_many(list(range(len(ours))))
  for i in range(len(ours)):
    a, b = tfds_src[i], got[i]
    assert set(a) == set(b)
    for k in a:
      if isinstance(a[k], np.ndarray):
        assert a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), k
      else:
        assert a[k] == b[k], k  # bytes and ints (mode -1 included)
  modes = {e["mode"] for e in data["meta"].episodes[split]}
  assert {r["mode"] for r in got} == modes  # incl. -1 (a negative varint) for unimodal tasks


def test_other_record_versions_are_refused_not_misread(data, tmp_path):
  old = tmp_path / "egodex" / f"s{S}_h{M}" / "1.0.0"
  shutil.copytree(data["meta"].data_dir, old)
  info = json.loads((old / "dataset_info.json").read_text())
  info["version"] = "1.0.0"  # float lists, before the raw-bytes layout
  (old / "dataset_info.json").write_text(json.dumps(info))
  with pytest.raises(ValueError, match=r"record version 1\.0\.0.*rebuild"):
    pipeline.load_metadata(str(tmp_path))
  # Beside a current build, the current one is used.
  shutil.copytree(data["meta"].data_dir, old.parent / pipeline.RECORD_VERSION)
  meta = pipeline.load_metadata(str(tmp_path))
  assert meta.data_dir == str(old.parent / pipeline.RECORD_VERSION)


def test_version_1_1_0_builds_are_read_with_padding_from_num_future(data, tmp_path):
  """1.1.0 records lack `padding`; it follows from num_future (no partial episodes then)."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  old = tmp_path / "egodex" / f"s{S}_h{M}" / "1.1.0"
  shutil.copytree(data["meta"].data_dir, old)
  info = json.loads((old / "dataset_info.json").read_text())
  info["version"] = "1.1.0"
  (old / "dataset_info.json").write_text(json.dumps(info))
  assert pipeline.load_metadata(str(tmp_path)).data_dir == str(old)
  source = pipeline.RecordSource(data["meta"], "train")
  raw = source._source  # pylint: disable=protected-access
  for i in range(0, len(source), 7):
    new = source[i]
    example = tf_example_pb2.Example.FromString(raw[i])
    del example.features.feature["padding"]
    rec = pipeline.parse_record(example.SerializeToString())
    np.testing.assert_array_equal(rec["padding"], new["padding"])
    assert rec["padding"].shape == (M + 1,) and rec["padding"].any()  # short episodes, M = 90


def test_missing_dataset_error_says_where_and_how(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    pipeline.load_metadata(str(tmp_path))
  assert str(tmp_path) in str(e.value) and "python -m tfds_builder.egodex" in str(e.value)


@pytest.mark.parametrize("goal", [False, True])
def test_batch_layout(data, goal):
  b = next(iter(_ds(data, goal=goal)))
  want = {"image": ((4, S, S, 3), np.uint8), "state": ((4, 48), np.float32),
          "actions": ((4, 30, 48), np.float32), "padding": ((4, 30), np.bool_),
          "instruction_id": ((4,), np.int32), "task_id": ((4,), np.int32),
          "mode": ((4,), np.int32), "mode_targets": ((4, 2, 3), np.float32),
          "episode_id": ((4,), np.int32), "frame": ((4,), np.int32)}
  if goal:
    want["goal_image"] = ((4, S, S, 3), np.uint8)
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == want


@pytest.mark.parametrize("horizon", [30, 90])
def test_actions_padding_and_goal_match_the_raw_episodes(data, horizon):
  meta = data["meta"]
  by_id = {e["episode_id"]: e for e in meta.episodes["train"]}
  episodes = {}
  src = pipeline.data_source(meta, "train")
  it = iter(_ds(data, horizon=horizon, goal=True, batch_size=8))
  checked_padding = 0
  for b in _take(it, 3):
    for i, (e, t) in enumerate(_ids(b)):
      info = by_id[e]
      if e not in episodes:
        episodes[e] = egodex.load_episode(os.path.join(data["raw"], info["path"]))
      chunk, padding = actions.action_chunk(episodes[e], t, horizon)
      np.testing.assert_allclose(b["actions"][i], chunk, atol=1e-5)
      np.testing.assert_array_equal(b["padding"][i], padding)
      np.testing.assert_allclose(b["state"][i], actions.hand_state(episodes[e], t), atol=1e-5)
      checked_padding += int(padding.any())
      goal_t = min(t + horizon, info["num_frames"] - 1)
      goal = src[info["first_index"] + goal_t]
      assert int(goal["frame"]) == goal_t and int(goal["episode_id"]) == e
      np.testing.assert_array_equal(b["goal_image"][i], pipeline.decode_jpeg(goal["image"]))
  assert checked_padding > 0  # episodes are shorter than the horizon: padding must show up


def test_same_seed_same_batches_other_seed_other_order(data):
  a = [_ids(b) for b in _take(iter(_ds(data, seed=3)), 3)]
  b = [_ids(b) for b in _take(iter(_ds(data, seed=3)), 3)]
  c = [_ids(b) for b in _take(iter(_ds(data, seed=4)), 3)]
  assert a == b and a != c


def test_epochs_cover_the_split_and_reshuffle(data):
  n = data["meta"].num_records("train")
  one = [i for b in _ds(data, batch_size=1, num_epochs=1) for i in _ids(b)]
  assert len(one) == len(set(one)) == n
  two = [i for b in _take(iter(_ds(data, batch_size=1, num_epochs=2)), 2 * n) for i in _ids(b)]
  assert two[:n] == one and sorted(two[n:]) == sorted(one) and two[n:] != one


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_batch_indices_are_one_stream_of_reshuffled_epochs(drop_remainder):
  idx = np.arange(100, 123)  # 23 samples, batches of 5: batches straddle epochs
  b = pipeline.BatchIndices(idx, 5, seed=7, num_epochs=3, drop_remainder=drop_remainder)
  assert len(b) == (69 // 5 if drop_remainder else math.ceil(69 / 5))
  stream = np.concatenate([b[i] for i in range(len(b))])
  epochs = [stream[k * 23:(k + 1) * 23] for k in range(3)]
  assert len(stream) == (65 if drop_remainder else 69)
  for e in epochs[:2]:
    assert sorted(e.tolist()) == idx.tolist()  # each epoch is a permutation of the samples
  assert not np.array_equal(epochs[0], epochs[1])
  again = pipeline.BatchIndices(idx, 5, seed=7, num_epochs=3, drop_remainder=drop_remainder)
  assert all(np.array_equal(again[i], b[i]) for i in reversed(range(len(b))))  # any order
  plain = pipeline.BatchIndices(idx, 5, shuffle=False, num_epochs=1, drop_remainder=False)
  assert np.concatenate([plain[i] for i in range(len(plain))]).tolist() == idx.tolist()
  with pytest.raises(IndexError):
    b[len(b)]


def test_state_save_restore_gives_the_same_next_batches(data):
  it = iter(_ds(data))
  _take(it, 2)
  state = it.get_state()
  after = [_ids(b) for b in _take(it, 3)]
  it2 = iter(_ds(data))
  it2.set_state(state)
  assert [_ids(b) for b in _take(it2, 3)] == after


def test_shards_are_disjoint_and_cover(data):
  n = data["meta"].num_records("train")
  parts = []
  for k in range(3):
    ds = _ds(data, shard_index=k, shard_count=3, shuffle=False, num_epochs=1,
             drop_remainder=False, batch_size=5)
    parts.append({i for b in ds for i in _ids(b)})
  assert sum(len(p) for p in parts) == n == len(set.union(*parts))


def test_data_fraction_keeps_a_nested_episode_subset(data):
  def episodes(frac):
    ds = _ds(data, data_fraction=frac, num_epochs=1, shuffle=False, drop_remainder=False)
    return {e for b in ds for e, _ in _ids(b)}
  half, most, full = episodes(0.5), episodes(0.75), episodes(1.0)
  assert len(half) == math.ceil(0.5 * 6) and len(most) == math.ceil(0.75 * 6) and len(full) == 6
  assert half < most < full
  frames = {e["episode_id"]: e["num_frames"] for e in data["meta"].episodes["train"]}
  ds = _ds(data, data_fraction=0.5, num_epochs=1, shuffle=False, drop_remainder=False)
  assert sum(len(b["frame"]) for b in ds) == sum(frames[e] for e in half)  # whole episodes


def test_stride_max_samples_and_smaller_images(data):
  ds = _ds(data, frame_stride=4, num_epochs=1, drop_remainder=False, image_size=16)
  batches = list(ds)
  assert all(f % 4 == 0 for b in batches for f in b["frame"])
  assert batches[0]["image"].shape[1:] == (16, 16, 3)
  got = sum(len(b["frame"]) for b in _ds(data, max_samples=10, num_epochs=1, batch_size=3,
                                         drop_remainder=False))
  assert got == 10


def test_bad_arguments(data):
  with pytest.raises(ValueError, match="horizon"):
    _ds(data, horizon=M + 1)
  with pytest.raises(ValueError, match="split"):
    pipeline.make_dataset(data["out"], "validation", batch_size=4, horizon=30)


def test_worker_process_path_matches_in_process(data):
  a = [_ids(b) for b in _take(iter(_ds(data)), 3)]
  it = iter(_ds(data, worker_count=1))
  got = _take(it, 3)
  it.close()  # Grain: stop the worker now rather than at garbage collection
  assert [_ids(b) for b in got] == a
  assert got[0]["image"].shape == (4, S, S, 3)


def _reference_batch(meta, src, idx, horizon, goal, size):
  """What a batch of record indices must hold, from TFDS's own deserialisation and OpenCV's
  decode (the loader before records.py's batched, in-place version), none of the pipeline's
  code: keeps the output identical across changes to how it is produced."""
  import cv2  # pylint: disable=g-import-not-at-top
  by_id = {e["episode_id"]: e for e in meta.episodes["train"]}

  def image(rec):
    img = cv2.imdecode(np.frombuffer(rec["image"], np.uint8), cv2.IMREAD_COLOR_RGB)
    return img if size == S else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)

  recs = [src[int(i)] for i in idx]
  out = {"image": np.stack([image(r) for r in recs]),
         "state": np.stack([r["window"][0] for r in recs]),
         "actions": np.stack([r["window"][1:horizon + 1] for r in recs]),
         "padding": np.stack([r["padding"][1:horizon + 1] for r in recs]),
         "mode_targets": np.stack([r["mode_targets"] for r in recs])}
  for k in ("instruction_id", "task_id", "mode", "episode_id", "frame"):
    out[k] = np.array([r[k] for r in recs], np.int32)
  if goal:
    goals = [int(i) - int(r["frame"]) + min(int(r["frame"]) + horizon,
                                             by_id[int(r["episode_id"])]["num_frames"] - 1)
             for i, r in zip(idx, recs)]
    out["goal_image"] = np.stack([image(src[g]) for g in goals])
  return out


@pytest.mark.parametrize("kw", [dict(goal=True), dict(horizon=90, image_size=16, goal=True),
                                dict(batch_size=7, shuffle=False)])
def test_batches_equal_an_independent_reference(data, kw):
  meta, src = data["meta"], pipeline.data_source(data["meta"], "train")
  args = dict(batch_size=4, horizon=30, seed=3, image_size=S, goal=False)
  args.update(kw)
  ds = _ds(data, **args)
  order = pipeline.BatchIndices(pipeline.sample_indices(meta, "train"), args["batch_size"],
                                seed=3, shuffle=args.get("shuffle", True))
  for i, got in enumerate(_take(iter(ds), 4)):
    want = _reference_batch(meta, src, order[i], args["horizon"], args["goal"],
                            args["image_size"])
    assert set(got) == set(want)
    for k in want:
      assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_worker_batches_are_identical_and_small_arrays_are_pickled(data):
  import grain  # pylint: disable=g-import-not-at-top
  from egodex_jax.data import records  # pylint: disable=g-import-not-at-top
  want = _take(iter(_ds(data, goal=True, horizon=90, batch_size=16)), 3)
  it = iter(_ds(data, goal=True, horizon=90, batch_size=16, worker_count=1))
  got = _take(it, 3)
  it.close()
  for a, b in zip(want, got):
    assert set(a) == set(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  shm = grain.multiprocessing.SharedMemoryArray
  assert got[0]["actions"].nbytes >= records.SHM_MIN_BYTES > got[0]["image"].nbytes
  assert isinstance(got[0]["actions"], shm)  # 16 x 90 x 48 float32: through shared memory
  # 16 x 32 x 32 x 3 images and the [B] ints: pickled, not a shared-memory segment each.
  assert not any(isinstance(got[0][k], shm) for k in ("image", "episode_id", "state"))


def test_worker_iterator_state_restores_the_same_next_batches(data):
  it = iter(_ds(data, worker_count=1))
  _take(it, 2)
  state = it.get_state()
  after = [_ids(b) for b in _take(it, 3)]
  it.close()
  it2 = iter(_ds(data, worker_count=1))
  it2.set_state(state)
  got = [_ids(b) for b in _take(it2, 3)]
  it2.close()
  assert got == after
