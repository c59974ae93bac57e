"""What every command-line tool of the project shares: one-line usage errors and failures.

The contract of the CLIs (`python -m egodex_jax.data.actions`, `python -m tfds_builder.egodex`,
`python -m egodex_jax.data.synthetic`, `python -m egodex_jax.visualize`,
`python -m egodex_jax.predict`): bad input is one sentence on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys

USAGE_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
  """argparse that reports a usage error as one stderr line, exit status 2."""

  def error(self, message):
    sys.stderr.write(f"{self.prog}: error: {message}\n")
    sys.exit(USAGE_ERROR)


def one_line(message) -> str:
  """Collapses whitespace so a message is one line."""
  return " ".join(str(message).split())


def fail(message, status: int = USAGE_ERROR):
  """Writes `message` as one stderr line and exits with `status`."""
  sys.stderr.write(one_line(message) + "\n")
  sys.exit(status)
