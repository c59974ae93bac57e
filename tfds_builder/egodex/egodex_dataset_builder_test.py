"""TFDS's own builder test on a synthetic tree (generated here; no committed dummy data)."""

import os
import shutil
import tempfile

import h5py
import tensorflow_datasets as tfds

from egodex_jax.data import synthetic
from tfds_builder.egodex import egodex_dataset_builder as edb

_CONFIG = edb.make_config(image_size=16, max_horizon=8)
_DROPPED = "rightIndexFingerTip"  # the joint the one broken episode lacks


def _write_missing_joint(root: str) -> None:
  """root/broken/901.hdf5 + .mp4: a readable video, but the hdf5 lacks a joint (build skips it)."""
  h, m = os.path.join(root, "broken", "901.hdf5"), os.path.join(root, "broken", "901.mp4")
  attrs = synthetic.write_episode(h, m, "lift_cup", 0, width=64, height=48, num_frames=6)
  with h5py.File(h, "r") as f:
    transforms = {k: f["transforms"][k][()] for k in f["transforms"] if k != _DROPPED}
    confidences = {k: f["confidences"][k][()] for k in f["confidences"]}
    intrinsic = f["camera/intrinsic"][()]
  synthetic.write_hdf5(h, transforms, confidences=confidences, intrinsic=intrinsic, attrs=attrs)


class EgodexTest(tfds.testing.DatasetBuilderTestCase):
  """Builds a single tree without split folders: the hash split must give train and test."""

  DATASET_CLASS = edb.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = [_CONFIG]
  SKIP_CHECKSUMS = True
  # Our build reads files and runs a process pool; TFDS's os/open ban targets download code.
  MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False

  @classmethod
  def setUpClass(cls):
    cls._tmp = tempfile.mkdtemp(prefix="egodex_dummy_")
    synthetic.generate(cls._tmp, 5, seed=7, width=48, height=32, min_frames=3, max_frames=14)
    _write_missing_joint(cls._tmp)
    cls.EXAMPLE_DIR = cls._tmp
    splits = edb.discover_splits(cls._tmp)
    cls.SPLITS = {}
    for split, pairs in splits.items():  # expected records: frames of the readable episodes
      total = 0
      for h, _ in pairs:
        with h5py.File(h, "r") as f:
          if f"transforms/{_DROPPED}" in f:
            total += f["transforms/camera"].shape[0]
      cls.SPLITS[split] = total
    super().setUpClass()

  @classmethod
  def tearDownClass(cls):
    super().tearDownClass()
    shutil.rmtree(cls._tmp, ignore_errors=True)

  def _assertAsDataset(self, builder):
    # TFDS 4.9.10 reads ArrayRecord only through as_data_source (as_dataset raises
    # NotImplementedError), so check the same things through it: counts and disjoint splits.
    seen = {}
    for split, expected in self.SPLITS.items():
      src = builder.as_data_source(split=split)
      self.assertLen(src, expected)
      seen[split] = {(bytes(r["image"]), r["window"].tobytes()) for r in src}
      self.assertLen(seen[split], expected)
    self.assertFalse(seen["train"] & seen["test"])

  def test_split_sizes(self):
    self.assertEqual(sorted(self.SPLITS), ["test", "train"])
    self.assertTrue(all(n > 0 for n in self.SPLITS.values()))


if __name__ == "__main__":
  tfds.testing.test_main()
