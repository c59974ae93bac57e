"""The TFDS-internals workarounds of the builder: version check, scoped patches, key spacing."""

import os

import pytest
from tensorflow_datasets.core import shuffle

from tfds_builder.egodex import tfds_compat


def test_the_installed_tfds_is_a_tested_one():
  tfds_compat.check_version()  # the pinned requirements must match TESTED_VERSIONS


def test_an_untested_version_is_refused_in_one_sentence_naming_it_and_the_file():
  with pytest.raises(tfds_compat.UnsupportedTfdsError) as e:
    tfds_compat.check_version("99.0.0")
  message = str(e.value)
  assert "99.0.0" in message and os.path.abspath(tfds_compat.__file__) in message
  assert "\n" not in message


def test_apply_refuses_an_untested_version_before_patching(monkeypatch):
  monkeypatch.setattr(tfds_compat, "installed_version", lambda: "4.0.0")
  before = shuffle.MAX_MEM_BUFFER_SIZE, shuffle.tf
  with pytest.raises(tfds_compat.UnsupportedTfdsError, match="4.0.0"):
    with tfds_compat.apply(1 << 20):
      pass
  assert (shuffle.MAX_MEM_BUFFER_SIZE, shuffle.tf) == before


def test_apply_patches_the_shuffler_only_inside_the_block(tmp_path):
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  before = shuffle.MAX_MEM_BUFFER_SIZE, shuffle.tf
  bars = tqdm_utils._active  # pylint: disable=protected-access
  with tfds_compat.apply(1234):
    # TFDS's own bars are off (the builder shows one bar of its own).
    assert isinstance(tqdm_utils.tqdm(total=1), tqdm_utils.EmptyTqdm)
    assert shuffle.MAX_MEM_BUFFER_SIZE == 1234
    path = str(tmp_path / "bucket.tmp")
    with shuffle.tf.io.gfile.GFile(path, "wb") as f:  # what a spill bucket does, TF-free
      f.write(b"x")
    assert shuffle.tf.io.gfile.exists(path)
    shuffle.tf.io.gfile.remove(path)
    assert issubclass(shuffle.tf.errors.ResourceExhaustedError, OSError)
  assert (shuffle.MAX_MEM_BUFFER_SIZE, shuffle.tf) == before
  assert tqdm_utils._active == bars  # pylint: disable=protected-access


def test_shuffler_spills_and_keeps_key_order_without_tensorflow(tmp_path):
  n, size = 200, 1000
  stride = tfds_compat.key_stride(n, size, writer_buffer_bytes=20_000)
  with tfds_compat.apply(20_000):
    s = shuffle.Shuffler(str(tmp_path), hash_salt="x", disable_shuffling=True)
    for i in range(n):
      s.add(i * stride, i.to_bytes(4, "little") * (size // 4))
    assert not s._in_memory  # pylint: disable=protected-access
    got = [int.from_bytes(data[:4], "little") for _, data in s]
  assert got == list(range(n))


def test_key_stride_spreads_records_over_the_buckets_they_need():
  n = 10_000
  for buffer in (1 << 20, 16 << 20, 1 << 40):
    stride = tfds_compat.key_stride(n, 40_000, buffer)
    buckets = {shuffle.get_bucket_number(i * stride, shuffle.BUCKETS_NUMBER) for i in range(n)}
    want = min(shuffle.BUCKETS_NUMBER, max(1, 4 * n * 40_000 // buffer))
    assert abs(len(buckets) - want) <= 1, (buffer, len(buckets), want)


def test_the_cli_refuses_an_untested_tfds_in_one_line(monkeypatch, tmp_path, capsys):
  from tfds_builder.egodex import __main__ as builder_cli  # pylint: disable=g-import-not-at-top
  (tmp_path / "raw" / "task").mkdir(parents=True)
  (tmp_path / "raw" / "task" / "0.hdf5").write_bytes(b"")  # the CLI's pre-check lists names only
  monkeypatch.setattr(tfds_compat, "installed_version", lambda: "5.0.0")
  rc = builder_cli.main(["--raw_dir", str(tmp_path / "raw"), "--data_dir", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert rc == 1 and err.count("\n") == 1 and "5.0.0" in err and "tfds_compat.py" in err
  assert not (tmp_path / "out").exists()
