"""Every use of TensorFlow Datasets internals by the EgoDex builder, in one place.

TFDS has no public API for what the builder needs, so it relies on internals of the versions in
`TESTED_VERSIONS`; `check_version` refuses any other version rather than let a changed internal
break a build half way (to support one: re-read the internals named below in its sources, run
tfds_builder/egodex/egodex_dataset_builder_test.py, tests/test_builder.py and
tests/test_tfds_compat.py, and add it to `TESTED_VERSIONS`).

- `tensorflow_datasets.core.shuffle.MAX_MEM_BUFFER_SIZE`: the writer holds up to 1 GB of
  serialised records in memory before spilling them to `BUCKETS_NUMBER` sorted on-disk buckets.
  `apply` lowers it, so the writer's memory is bounded.
- `shuffle.tf`: the spill buckets call `tf.io.gfile` even in TFDS's TF-free mode, so without
  TensorFlow a build larger than the buffer fails (and where TF is installed it is imported,
  +500 MB). `apply` points them at plain local files (the output dir must then be local).
- `shuffle.BUCKETS_NUMBER`, `shuffle.HKEY_SIZE`: with `disable_shuffling` an integer key picks
  its bucket by range; `key_stride` spreads record indices over just enough buckets.
- `tensorflow_datasets.core.utils.tqdm_utils._active`: TFDS's own tqdm bars (per split, per
  shuffle) would interleave with the builder's one bar and, off a terminal, write every 0.1 s;
  `apply` turns them off (the public `tfds.display_progress_bar`) and restores the previous
  state, which only that internal flag holds.
- `DatasetBuilder._download_and_prepare`: the only step that runs inside the temporary data dir
  that TFDS renames on success; `PrepareHook` wraps it so the builder's side files appear
  together with the shards, never beside a half-written build.

Nothing here happens at import time: the builder enters `apply` around its own generation.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from typing import Any, Iterator

TESTED_VERSIONS = ("4.9.10",)


class UnsupportedTfdsError(RuntimeError):
  """The installed TFDS is not one whose internals this module was checked against."""


def installed_version() -> str:
  try:
    return importlib.metadata.version("tensorflow-datasets")
  except importlib.metadata.PackageNotFoundError:  # e.g. tfds-nightly
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top
    return tensorflow_datasets.__version__


def check_version(version: str | None = None) -> None:
  """Raises UnsupportedTfdsError unless `version` (default: the installed one) is tested."""
  version = version or installed_version()
  if version not in TESTED_VERSIONS:
    raise UnsupportedTfdsError(
        f"tensorflow-datasets {version} is installed, but the EgoDex builder's workarounds of "
        f"TFDS internals were written for {', '.join(TESTED_VERSIONS)}; install "
        f"tensorflow-datasets=={TESTED_VERSIONS[-1]} or check them against {version} and update "
        f"{os.path.abspath(__file__)}")


class _LocalGfile:
  """The part of tf.io.gfile that the shuffler's spill buckets use, on local files."""
  GFile = staticmethod(open)
  exists = staticmethod(os.path.exists)
  remove = staticmethod(os.remove)


class _ShufflerTf:
  class io:  # pylint: disable=invalid-name
    gfile = _LocalGfile

  class errors:  # pylint: disable=invalid-name
    ResourceExhaustedError = type("ResourceExhaustedError", (OSError,), {})


@contextlib.contextmanager
def apply(writer_buffer_bytes: int) -> Iterator[None]:
  """Within the block, TFDS's writer buffers `writer_buffer_bytes` and spills to local files, and
  TFDS shows no progress bars of its own; the previous values are restored on exit."""
  check_version()
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  bars = tqdm_utils._active  # pylint: disable=protected-access
  saved = shuffle.MAX_MEM_BUFFER_SIZE, shuffle.tf
  shuffle.MAX_MEM_BUFFER_SIZE, shuffle.tf = int(writer_buffer_bytes), _ShufflerTf
  tqdm_utils.display_progress_bar(False)
  try:
    yield
  finally:
    shuffle.MAX_MEM_BUFFER_SIZE, shuffle.tf = saved
    tqdm_utils.display_progress_bar(bars)


def key_stride(num_records: int, bytes_per_record: int, writer_buffer_bytes: int) -> int:
  """The step between the integer keys of consecutive records.

  Keys `index * stride` fill the buckets in record order, and a spilled bucket (read whole when
  the shards are written) holds about a quarter of the writer's buffer.
  """
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top
  buckets = min(shuffle.BUCKETS_NUMBER,
                max(1, 4 * num_records * bytes_per_record // max(1, writer_buffer_bytes)))
  return (2**shuffle.HKEY_SIZE * buckets // shuffle.BUCKETS_NUMBER) // (num_records + 1)


class PrepareHook:
  """Mixin, listed before tfds.core.GeneratorBasedBuilder: runs `self._generation(beam)`, a
  context manager, around TFDS's generation of all splits, inside the temporary data dir."""

  def _generation(self, beam: bool) -> contextlib.AbstractContextManager[Any]:
    raise NotImplementedError

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    beam = bool(download_config.beam_runner or download_config.beam_options)
    with self._generation(beam):
      super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
