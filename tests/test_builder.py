"""The TF-free build through our CLI (a real subprocess with TensorFlow blocked), read back."""

import glob
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
  """Raw tree with release split folders and broken episodes mixed in, built by the CLI."""
  raw = str(tmp_path_factory.mktemp("raw"))
  kw = dict(width=64, height=48, min_frames=3, max_frames=30)
  synthetic.generate(os.path.join(raw, "part1"), 3, seed=1, **kw)
  synthetic.generate(os.path.join(raw, "part2"), 2, seed=2, **kw)
  synthetic.generate(os.path.join(raw, "test"), 2, seed=3, **kw)
  broken = [broken_episodes.write_broken_episode(os.path.join(raw, "part1"), k, num_frames=12)[0]
            for k in ("not_hdf5", "nan_pose", "truncated_video", "missing_video")]
  broken.append(broken_episodes.write_broken_episode(os.path.join(raw, "test"), "short_video",
                                                     num_frames=16)[0])
  out = str(tmp_path_factory.mktemp("data"))
  proc = _cli("--raw_dir", raw, "--data_dir", out, "--image_size", str(IMAGE_SIZE),
              "--max_horizon", str(MAX_HORIZON), "--num_workers", "2",
              "--writer_buffer_mb", "0.25")  # small: TFDS spills to its on-disk buckets
  assert proc.returncode == 0, proc.stderr[-3000:]
  build_dir = os.path.join(out, "egodex", f"s{IMAGE_SIZE}_h{MAX_HORIZON}", str(edb.Builder.VERSION))
  with open(os.path.join(build_dir, edb.META_FILE)) as f:
    meta = json.load(f)
  return {"raw": raw, "out": out, "dir": build_dir, "meta": meta, "broken": broken,
          "stdout": proc.stdout}


def _source(built, split):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder_from_directory(built["dir"]).as_data_source(split=split)


def test_kept_plus_skipped_is_found_and_reasons_are_recorded(built):
  with open(os.path.join(built["dir"], edb.SKIPPED_FILE)) as f:
    skipped = json.load(f)
  assert sorted(s["path"] for s in skipped) == sorted(built["broken"])
  for s in skipped:
    # One sentence naming the faulty file (the .hdf5 or its .mp4).
    assert s["reason"].startswith(s["path"][:-len("hdf5")]) and "\n" not in s["reason"]
  found = sum(f.endswith(".hdf5") for _, _, files in os.walk(built["raw"]) for f in files)
  meta = built["meta"]
  assert meta["found"] == found == 12
  assert meta["kept"] + meta["skipped"] == found and meta["skipped"] == len(built["broken"])
  assert f"kept {meta['kept']}, skipped {meta['skipped']}" in built["stdout"]


def test_split_folders_map_to_splits(built):
  eps = {s: v["episodes"] for s, v in built["meta"]["splits"].items()}
  assert sorted(eps) == ["test", "train"]
  assert all(e["path"].split(os.sep)[0] in ("part1", "part2") for e in eps["train"])
  assert all(e["path"].split(os.sep)[0] == "test" for e in eps["test"])
  assert len(eps["train"]) == 5 and len(eps["test"]) == 2


def test_records_are_in_episode_frame_order(built):
  for split, info in built["meta"]["splits"].items():
    src = _source(built, split)
    table = info["episodes"]
    n_frames = [h5py.File(os.path.join(built["raw"], e["path"]), "r")["transforms/camera"].shape[0]
                for e in table]
    assert [e["num_frames"] for e in table] == n_frames
    assert len(src) == sum(n_frames)
    expected = [(e["episode_id"], t) for e in table for t in range(e["num_frames"])]
    got = [(int(r["episode_id"]), int(r["frame"])) for r in (src[i] for i in range(len(src)))]
    assert got == expected
    assert [e["first_index"] for e in table] == list(np.cumsum([0] + n_frames[:-1]))


def test_window_image_and_labels_match_the_raw_episode(built):
  meta = built["meta"]
  src = _source(built, "train")
  for e in meta["splits"]["train"]["episodes"][:2]:
    ep = egodex.load_episode(os.path.join(built["raw"], e["path"]))
    n = ep.num_frames
    with egodex.VideoReader(ep.video_path) as reader:
      for t in sorted({0, n // 2, n - 1}):
        rec = src[e["first_index"] + t]
        chunk, padding = actions.action_chunk(ep, t, MAX_HORIZON)
        np.testing.assert_allclose(rec["window"][1:], chunk, atol=1e-5)
        np.testing.assert_allclose(rec["window"][0], actions.hand_state(ep, t), atol=1e-5)
        assert int(rec["num_future"]) == int((~padding).sum()) == min(MAX_HORIZON, n - 1 - t)
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
  n_state = sum(e["num_frames"] for e in train)
  n_act = sum(min(MAX_HORIZON, e["num_frames"] - 1 - t) for e in train
              for t in range(e["num_frames"]))
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
    ep = egodex.load_episode(os.path.join(built["raw"], by_id[e]["path"]))
    chunk, padding = actions.action_chunk(ep, int(t), horizon)
    np.testing.assert_allclose(batch["actions"][i], chunk, atol=1e-5)
    np.testing.assert_array_equal(batch["padding"][i], padding)
