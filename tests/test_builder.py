"""The TF-free build through our CLI (a real subprocess with TensorFlow blocked), read back."""

import glob
import io
import json
import os
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest

from egodex_jax import skeleton
from egodex_jax.data import actions
from egodex_jax.data import egodex
from egodex_jax.data import pipeline
from egodex_jax.data import synthetic
from tfds_builder.egodex import egodex_dataset_builder as edb
from tfds_builder.egodex import progress

import broken_episodes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE, MAX_HORIZON = 32, 12
# Runs the CLI with `import tensorflow` made impossible, and checks nothing imported it.
_NO_TF = """
import importlib.abc, importlib.util, runpy, sys
_find = importlib.util.find_spec
importlib.util.find_spec = lambda n, p=None: None if n.split('.')[0] == 'tensorflow' else _find(n, p)
class _Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] == 'tensorflow':
      raise ModuleNotFoundError('tensorflow is blocked in this test')
sys.meta_path.insert(0, _Block())
sys.argv = ['egodex'] + sys.argv[1:]
try:
  runpy.run_module('tfds_builder.egodex', run_name='__main__')
finally:
  assert 'tensorflow' not in sys.modules, 'the build imported TensorFlow'
"""


def _cli(*args):
  return subprocess.run([sys.executable, "-c", _NO_TF, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def _records(build_dir, split):
  """A split's serialised records, in order, straight from the ArrayRecord shards."""
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(build_dir, f"egodex-{split}.array_record-*")))
  src = array_record_data_source.ArrayRecordDataSource(paths)
  return [src[i] for i in range(len(src))]


def _json(build_dir, name):
  with open(os.path.join(build_dir, name)) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Raw tree with release split folders, broken and partial episodes mixed in, built by the
  CLI."""
  raw = str(tmp_path_factory.mktemp("raw"))
  kw = dict(width=64, height=48, min_frames=3, max_frames=30)
  synthetic.generate(os.path.join(raw, "part1"), 3, seed=1, **kw)
  synthetic.generate(os.path.join(raw, "part2"), 2, seed=2, **kw)
  synthetic.generate(os.path.join(raw, "test"), 2, seed=3, **kw)
  broken = [broken_episodes.write_broken_episode(os.path.join(raw, "part1"), k, num_frames=12)[0]
            for k in ("not_hdf5", "truncated_video", "missing_video", "mostly_nan")]
  # Partial: 3 frames with non-finite poses (train), a video 3 frames short of its poses (test).
  partial = {"nan_frames": broken_episodes.write_broken_episode(
                 os.path.join(raw, "part1"), "nan_frames", num_frames=24)[0],
             "short_video_tail": broken_episodes.write_broken_episode(
                 os.path.join(raw, "test"), "short_video_tail", num_frames=16)[0]}
  out = str(tmp_path_factory.mktemp("data"))
  proc = _cli("--raw_dir", raw, "--data_dir", out, "--image_size", str(IMAGE_SIZE),
              "--max_horizon", str(MAX_HORIZON), "--num_workers", "2",
              "--writer_buffer_mb", "0.25")  # small: TFDS spills to its on-disk buckets
  assert proc.returncode == 0, proc.stderr[-3000:]
  build_dir = os.path.join(out, "egodex", f"s{IMAGE_SIZE}_h{MAX_HORIZON}", str(edb.Builder.VERSION))
  with open(os.path.join(build_dir, edb.META_FILE)) as f:
    meta = json.load(f)
  return {"raw": raw, "out": out, "dir": build_dir, "meta": meta, "broken": broken,
          "partial": partial, "stdout": proc.stdout, "stderr": proc.stderr}


def _source(built, split):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder_from_directory(built["dir"]).as_data_source(split=split)


def test_kept_plus_skipped_is_found_and_reasons_are_recorded(built):
  report = _json(built["dir"], edb.SKIPPED_FILE)
  skipped = report["skipped"]
  assert sorted(s["path"] for s in skipped) == sorted(built["broken"])
  for s in skipped + report["partial"]:
    # One sentence naming the faulty file (the .hdf5 or its .mp4).
    assert s["reason"].startswith(s["path"][:-len("hdf5")]) and "\n" not in s["reason"]
  mostly = next(s for s in skipped if s["path"].endswith("911.hdf5"))
  assert "7 of its 12 frames are unusable, over half" in mostly["reason"]
  found = sum(f.endswith(".hdf5") for _, _, files in os.walk(built["raw"]) for f in files)
  meta = built["meta"]
  assert meta["found"] == found == 13
  assert meta["kept"] + meta["skipped"] == found and meta["skipped"] == len(built["broken"])
  assert meta["partial"] == 2


def _raw_faults(path):
  """From the raw HDF5 alone: (bad_state [N], bad_future [N]) bool, the frames whose hand state
  is non-finite (an action joint or the camera) and those that spoil a future row (an action
  joint: a future row is in the camera of the frame the window starts at)."""
  with h5py.File(path, "r") as f:
    bad = {j: ~np.isfinite(f[f"transforms/{j}"][()]).all(axis=(1, 2))
           for j in skeleton.ACTION_JOINTS + (skeleton.CAMERA,)}
  bad_future = np.any([bad[j] for j in skeleton.ACTION_JOINTS], axis=0)
  return bad_future | bad[skeleton.CAMERA], bad_future


def _video_frames(mp4):
  with egodex.VideoReader(mp4) as reader:
    return sum(1 for _ in reader)


def test_partial_episodes_keep_their_good_frames(built):
  partial = _json(built["dir"], edb.SKIPPED_FILE)["partial"]
  report = {os.path.basename(p["path"]): p for p in partial}
  assert sorted(report) == sorted(os.path.basename(p) for p in built["partial"].values())
  nan = report[os.path.basename(built["partial"]["nan_frames"])]
  assert nan["frames_dropped"] == 3 and "non-finite poses" in nan["reason"]
  short = report[os.path.basename(built["partial"]["short_video_tail"])]
  assert short["frames_dropped"] == 3 and "decodes 13 of the 16 frames" in short["reason"]
  checked = 0
  for split, info in built["meta"]["splits"].items():
    recs = pipeline.RecordSource(pipeline.load_metadata(built["dir"]), split)
    for e in info["episodes"]:
      path = os.path.join(built["raw"], e["path"])
      bad_state, bad_future = _raw_faults(path)
      n = len(bad_state)
      assert e["num_frames"] == min(n, _video_frames(path[:-len("hdf5")] + "mp4"))
      assert e["dropped"] == np.flatnonzero(bad_state[:e["num_frames"]]).tolist()
      for t in range(e["num_frames"]):
        rec = recs[e["first_index"] + t]
        assert int(rec["frame"]) == t
        for k in ("window", "confidence", "mode_targets"):
          assert np.isfinite(rec[k]).all(), (e["path"], t, k)  # never NaN in a record
        future = t + np.arange(1, MAX_HORIZON + 1)
        want = (future > n - 1) | bad_future[np.minimum(future, n - 1)]
        if bad_state[t]:  # a placeholder: no sample, no future
          assert rec["padding"].all() and not rec["window"].any()
        else:
          assert not rec["padding"][0]
          np.testing.assert_array_equal(rec["padding"][1:], want)
        assert int(rec["num_future"]) == min(MAX_HORIZON, n - 1 - t)
        checked += bad_future[t + 1:t + 1 + MAX_HORIZON].any()
  assert checked > 0  # some future really ran into non-finite frames


def test_split_folders_map_to_splits(built):
  eps = {s: v["episodes"] for s, v in built["meta"]["splits"].items()}
  assert sorted(eps) == ["test", "train"]
  assert all(e["path"].split(os.sep)[0] in ("part1", "part2") for e in eps["train"])
  assert all(e["path"].split(os.sep)[0] == "test" for e in eps["test"])
  assert len(eps["train"]) == 6 and len(eps["test"]) == 3  # partial episodes included


def test_the_pipeline_samples_good_frames_with_the_records_padding(built):
  meta = pipeline.load_metadata(built["out"])
  recs = pipeline.RecordSource(meta, "train")
  ds = pipeline.make_dataset(built["out"], "train", batch_size=5, horizon=MAX_HORIZON, goal=True,
                             shuffle=False, num_epochs=1, drop_remainder=False, meta=meta)
  got = []
  for b in ds:
    for e, t, pad in zip(b["episode_id"], b["frame"], b["padding"]):
      info = meta.episodes["train"][e]
      np.testing.assert_array_equal(pad, recs[info["first_index"] + t]["padding"][1:])
      got.append((int(e), int(t)))
  want = [(e["episode_id"], t) for e in meta.episodes["train"] for t in range(e["num_frames"])
          if t not in e["dropped"]]
  assert got == want and len(want) < meta.num_records("train")


def test_build_prints_a_summary_not_a_line_per_episode(built):
  meta = built["meta"]
  kept = [e for v in meta["splits"].values() for e in v["episodes"]]
  frames = sum(h5py.File(os.path.join(built["raw"], e["path"]), "r")["transforms/camera"].shape[0]
               for e in kept)
  records = sum(e["num_frames"] for e in kept)
  summary = (f"egodex: found 13, kept {len(kept)} (2 partial, 6 frames dropped), skipped 4 "
             f"episodes; {frames} frames, {records} records; ")
  ours = [line for line in built["stdout"].splitlines() if line.startswith("egodex:")]
  assert sum(line.startswith(summary) for line in ours) == 1, built["stdout"]
  assert len(ours) == 3  # episodes found, the summary, where the dataset is
  # No line names an episode (skip reasons are in skipped_episodes.json), and the one bar ended
  # on the build phase, all kept episodes done.
  assert ".hdf5" not in built["stdout"] + built["stderr"]
  assert "egodex build: 100%" in built["stderr"] and f"{len(kept)}/{len(kept)}" in built["stderr"]
  assert "Generating splits" not in built["stderr"]  # TFDS's own bars are off during the build


def test_progress_off_a_terminal_does_not_spam():
  out = io.StringIO()  # not a terminal, as CI's and a log file's stderr
  bar = progress.Progress(600, file=out)
  for i in range(300):
    bar.skipped() if i % 10 == 0 else bar.checked(40)
  bar.phase("egodex build", 270)
  for i in range(270):
    bar.kept({"num_frames": 38, "pose_frames": 40, "frames_dropped": 2, "partial": "why"}
             if i % 9 == 0 else {"num_frames": 40, "pose_frames": 40, "frames_dropped": 0,
                                 "partial": None})
  bar.close()
  text = out.getvalue()
  assert text.count("\r") <= 4 and text.count("\n") == 1, text  # not one refresh per episode
  assert "egodex build: 100%" in text and "270/270" in text
  assert "kept 270, partial 30, skipped 30" in text
  assert bar.summary().startswith("egodex: found 600, kept 270 (30 partial, 60 frames dropped), "
                                  "skipped 30 episodes; 10800 frames, 10740 records; ")


def test_records_are_in_episode_frame_order(built):
  for split, info in built["meta"]["splits"].items():
    src = _source(built, split)
    table = info["episodes"]
    n_frames = [min(h5py.File(path, "r")["transforms/camera"].shape[0],
                    _video_frames(path[:-len("hdf5")] + "mp4"))
                for path in (os.path.join(built["raw"], e["path"]) for e in table)]
    assert [e["num_frames"] for e in table] == n_frames
    assert len(src) == sum(n_frames)
    expected = [(e["episode_id"], t) for e in table for t in range(e["num_frames"])]
    got = [(int(r["episode_id"]), int(r["frame"])) for r in (src[i] for i in range(len(src)))]
    assert got == expected
    assert [e["first_index"] for e in table] == list(np.cumsum([0] + n_frames[:-1]))


def test_window_image_and_labels_match_the_raw_episode(built):
  meta = built["meta"]
  src = _source(built, "train")
  for e in meta["splits"]["train"]["episodes"][:3]:  # the partial nan_frames episode first
    ep = egodex.load_episode(os.path.join(built["raw"], e["path"]), partial=True)
    n = e["num_frames"]
    with egodex.VideoReader(ep.video_path) as reader:
      for t in sorted({t for t in (0, n // 2, n - 1, n // 3 - 2) if t >= 0} - set(e["dropped"])):
        rec = src[e["first_index"] + t]
        chunk, padding = actions.action_chunk(ep, t, MAX_HORIZON)  # the actions CLI's numbers
        np.testing.assert_allclose(rec["window"][1:], chunk, atol=1e-5)
        np.testing.assert_array_equal(rec["padding"][1:], padding)
        np.testing.assert_allclose(rec["window"][0], actions.hand_state(ep, t), atol=1e-5)
        assert int(rec["num_future"]) == min(MAX_HORIZON, ep.num_frames - 1 - t)
        assert meta["tasks"][rec["task_id"]] == ep.task
        assert meta["instructions"][rec["instruction_id"]] == ep.instruction
        img = cv2.imdecode(np.frombuffer(rec["image"], np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        want = cv2.resize(reader.read([t])[0], (IMAGE_SIZE, IMAGE_SIZE),
                          interpolation=cv2.INTER_AREA)
        assert np.abs(img[..., ::-1].astype(int) - want).mean() < 8.0  # JPEG loss only
        assert rec["confidence"].shape == (len(skeleton.KEYPOINT_JOINTS),)
        assert int(rec["mode"]) == int(ep.attrs.get("mode", -1))


def test_norm_stats_cover_train_without_padding(built):
  with open(os.path.join(built["dir"], edb.STATS_FILE)) as f:
    stats = json.load(f)
  train = built["meta"]["splits"]["train"]["episodes"]
  n_state = n_act = 0
  for e in train:  # samples only; their future rows that are real (test above: vs the raw file)
    _, bad_future = _raw_faults(os.path.join(built["raw"], e["path"]))
    for t in set(range(e["num_frames"])) - set(e["dropped"]):
      n_state += 1
      n_act += int((~bad_future[t + 1:t + 1 + MAX_HORIZON]).sum())
  assert any(e["dropped"] for e in train)
  assert stats["state"]["count"] == n_state and stats["actions"]["count"] == n_act
  assert stats["delta"]["count"] == n_act  # future rows minus row 0, for relative actions
  # Deltas are relative to the current frame: far narrower than the absolute positions.
  assert np.mean(stats["delta"]["std"]) < np.mean(stats["actions"]["std"])
  for k in ("actions", "state", "delta"):
    assert all(len(stats[k][q]) == 48 for q in ("mean", "std", "p01", "p99"))
    assert all(lo <= hi for lo, hi in zip(stats[k]["p01"], stats[k]["p99"]))


def test_cli_errors_are_one_line(tmp_path):
  proc = _cli("--raw_dir", str(tmp_path / "nope"), "--data_dir", str(tmp_path / "out"))
  assert proc.returncode != 0
  assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  proc = _cli("--raw_dir", str(tmp_path / "empty"), "--data_dir", str(tmp_path / "out"))
  assert proc.returncode != 0
  assert proc.stderr.strip().count("\n") == 0 and "no EgoDex episodes" in proc.stderr
  assert not (tmp_path / "out" / "egodex").exists()


def test_single_tree_split_is_deterministic_and_keeps_test_episodes(tmp_path):
  for i in range(23):
    d = tmp_path / f"task{i % 3}"
    d.mkdir(exist_ok=True)
    (d / f"{i}.hdf5").write_bytes(b"")  # discovery only lists names
  a = edb.discover_splits(str(tmp_path))
  b = edb.discover_splits(str(tmp_path))
  assert a == b
  assert len(a["test"]) == 2 and len(a["train"]) == 21
  assert not set(a["test"]) & set(a["train"])


def test_float_tensors_are_stored_as_raw_bytes(built):
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  feature = tf_example_pb2.Example.FromString(_records(built["dir"], "train")[0]).features.feature
  for k, shape in (("window", (MAX_HORIZON + 1, 48)), ("confidence", (12,)),
                   ("mode_targets", (2, 3))):
    assert feature[k].WhichOneof("kind") == "bytes_list", k
    assert len(feature[k].bytes_list.value[0]) == 4 * int(np.prod(shape)), k
  assert _json(built["dir"], "dataset_info.json")["version"] == pipeline.RECORD_VERSION


@pytest.mark.slow
def test_beam_build_equals_the_local_build(built, tmp_path):
  """Our CLI with --beam (Apache Beam's DirectRunner) on the same raw tree: the same records."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  proc = _cli("--raw_dir", built["raw"], "--data_dir", str(tmp_path), "--image_size",
              str(IMAGE_SIZE), "--max_horizon", str(MAX_HORIZON), "--num_workers", "1", "--beam")
  assert proc.returncode == 0, proc.stderr[-3000:]
  beam_dir = built["dir"].replace(built["out"], str(tmp_path))
  for name in (edb.META_FILE, edb.STATS_FILE, edb.SKIPPED_FILE):
    assert _json(beam_dir, name) == _json(built["dir"], name), name
  for split in built["meta"]["splits"]:
    local = _records(built["dir"], split)
    assert len(local) == built["meta"]["splits"][split]["num_records"] > 0
    beam = _records(beam_dir, split)
    assert len(beam) == len(local), split
    # Equal messages, not bytes: protobuf leaves the order of a map's entries (the features)
    # unspecified, and it differs between the two writers' processes.
    parse = tf_example_pb2.Example.FromString
    assert all(parse(a) == parse(b) for a, b in zip(beam, local)), split


@pytest.mark.slow
def test_tfds_build_cli_makes_a_dataset_the_pipeline_reads(built, tmp_path):
  """The standard `tfds build` (TFDS's CLI, default config s224_h90) as a real subprocess."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  tfds_cli = os.path.join(os.path.dirname(sys.executable), "tfds")
  proc = subprocess.run([tfds_cli, "build", os.path.join("tfds_builder", "egodex"),
                         f"--manual_dir={built['raw']}", f"--data_dir={tmp_path}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  meta = pipeline.load_metadata(str(tmp_path))
  assert (meta.image_size, meta.max_horizon) == (edb.DEFAULT_IMAGE_SIZE, edb.DEFAULT_MAX_HORIZON)
  assert meta.data_dir.endswith(os.path.join("s224_h90", pipeline.RECORD_VERSION))
  for split, info in built["meta"]["splits"].items():  # same episodes, same record indices
    assert meta.episodes[split] == info["episodes"]
  horizon = 20
  ds = pipeline.make_dataset(str(tmp_path), "train", batch_size=4, horizon=horizon, goal=True,
                             shuffle=False, num_epochs=1, meta=meta)
  batch = next(iter(ds))
  assert batch["image"].shape == batch["goal_image"].shape == (4, 224, 224, 3)
  by_id = {e["episode_id"]: e for e in meta.episodes["train"]}
  for i, (e, t) in enumerate(zip(batch["episode_id"], batch["frame"])):
    ep = egodex.load_episode(os.path.join(built["raw"], by_id[e]["path"]), partial=True)
    chunk, padding = actions.action_chunk(ep, int(t), horizon)
    np.testing.assert_allclose(batch["actions"][i], chunk, atol=1e-5)
    np.testing.assert_array_equal(batch["padding"][i], padding)
