"""The build's console output: one tqdm bar on stderr while it runs, one summary line at the end.

The bar counts episodes (its rate is episodes/s, its ETA that of the current phase: `check`
probes every episode, `build` encodes the kept ones) and shows frames/s and the kept / partial /
skipped counts. On a terminal it refreshes twice a second; when stderr is not a terminal (CI, a
log file) it refreshes at most once a minute (`NON_TTY_INTERVAL_S`), so a log gets a heartbeat
instead of a line per episode. `TQDM_DISABLE=1` turns the bar off (tqdm reads its `TQDM_*`
environment variables; the summary is printed anyway).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import tqdm

TTY_INTERVAL_S = 0.5
NON_TTY_INTERVAL_S = 60.0


@dataclasses.dataclass
class Counts:
  found: int = 0  # episodes found under the raw dir
  kept: int = 0  # episodes written (partial ones included)
  partial: int = 0  # kept episodes with some frames dropped
  skipped: int = 0
  frames: int = 0  # pose frames of the kept episodes
  records: int = 0  # records written (frames with an image)
  dropped: int = 0  # frames of kept episodes that are not samples

  def summary(self, seconds: float) -> str:
    return (f"egodex: found {self.found}, kept {self.kept} ({self.partial} partial, "
            f"{self.dropped} frames dropped), skipped {self.skipped} episodes; "
            f"{self.frames} frames, {self.records} records; {seconds:.1f} s")


class Progress:
  """The bar and the counts of one build; `close()` ends the bar, `summary()` is the last line."""

  def __init__(self, found: int, *, file=None):
    self.counts = Counts(found=found)
    self.t0 = time.time()
    self._phase_t0 = self.t0
    self._phase_frames = 0  # frames checked (check phase) or records written (build phase)
    file = sys.stderr if file is None else file
    tty = bool(getattr(file, "isatty", lambda: False)())
    interval = TTY_INTERVAL_S if tty else NON_TTY_INTERVAL_S
    # maxinterval too: tqdm's monitor thread would otherwise force a refresh every 10 s.
    self._bar = tqdm.tqdm(total=found, desc="egodex check", unit="ep", file=file,
                          mininterval=interval, maxinterval=max(interval, 10.0),
                          dynamic_ncols=tty, smoothing=0.05)
    self._show()

  def phase(self, desc: str, total: int) -> None:
    """Starts a new phase on the same bar (its rate and ETA restart)."""
    self._phase_t0, self._phase_frames = time.time(), 0
    self._show()
    self._bar.set_description(desc, refresh=False)
    self._bar.reset(total=total)

  def skipped(self) -> None:
    self.counts.skipped += 1
    self._show()
    self._bar.update(1)

  def checked(self, frames: int) -> None:
    self._phase_frames += frames
    self._show()
    self._bar.update(1)

  def kept(self, info: dict[str, Any], *, advance: bool = True) -> None:
    """A written (or, on Beam, planned) episode: its probe info (num_frames = records)."""
    c = self.counts
    c.kept += 1
    c.partial += bool(info.get("partial"))
    c.frames += info.get("pose_frames", info["num_frames"])
    c.records += info["num_frames"]
    c.dropped += info.get("frames_dropped", 0)
    self._phase_frames += info["num_frames"]
    self._show()
    if advance:
      self._bar.update(1)

  def _show(self) -> None:
    c = self.counts
    dt = max(time.time() - self._phase_t0, 1e-9)
    self._bar.set_postfix_str(f"kept {c.kept}, partial {c.partial}, skipped {c.skipped}, "
                              f"{self._phase_frames / dt:.0f} frames/s", refresh=False)

  def close(self) -> None:
    self._bar.close()

  def summary(self) -> str:
    return self.counts.summary(time.time() - self.t0)
