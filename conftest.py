"""Test set-up that must happen before JAX starts: 8 forced CPU devices, parsed absl flags."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# jax 0.10's default partitionable threefry takes ~20 s of XLA:CPU compile per random shape;
# the classic one compiles in ~1 s. Values differ, but every test compares like with like.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")

from absl import flags  # noqa: E402

# Grain worker processes and absl-based code read flags; pytest does not parse them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
