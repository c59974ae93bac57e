"""Synthetic EgoDex episodes: the real on-disk format, with learnable and multimodal structure.

A seated person at a table, seen by a swaying head camera. Five tasks, each with its own
instructions; two of them have two equally likely outcomes (which mat / which bowl), chosen at
random per episode, so a sampler that covers both modes beats a regressor to the mean. Objects are
placed at random per episode and are visible only in the video, so the image carries what the
hand state lacks. The world frame gets a random offset and yaw per episode, as ARKit's does.

  python -m egodex_jax.data.synthetic --out DIR --episodes N --seed S [--width W --height H]

writes DIR/<task>/<i>.hdf5 + <i>.mp4. Episodes are deterministic in (seed, episode number).
Besides the real root attributes, each file has `mode` (int, -1 when unimodal) and `mode_targets`
(JSON [[x, y, z], ...]: world-frame right-wrist position at the placement under each mode) and
`synthetic_source` (JSON {seed, episode, min_frames, max_frames}), from which
`counterfactual_poses` re-simulates the episode under each of its modes.

The parts: `scene` (constants, rotations, tracks, the camera, the world frame), `hands` (hand and
body joints), `render` (the video), `tasks` (the five plans and `simulate`), `write` (hdf5, mp4,
`generate`), `__main__` (the CLI). This module re-exports what callers use.
"""

from __future__ import annotations

from egodex_jax.data.synthetic.scene import HEAD
from egodex_jax.data.synthetic.scene import LOOK_AT
from egodex_jax.data.synthetic.scene import TABLE_Y
from egodex_jax.data.synthetic.tasks import episode_rng
from egodex_jax.data.synthetic.tasks import episode_task
from egodex_jax.data.synthetic.tasks import MULTIMODAL_TASKS
from egodex_jax.data.synthetic.tasks import simulate
from egodex_jax.data.synthetic.tasks import TASKS
from egodex_jax.data.synthetic.write import counterfactual_poses
from egodex_jax.data.synthetic.write import generate
from egodex_jax.data.synthetic.write import write_episode
from egodex_jax.data.synthetic.write import write_hdf5

__all__ = ["HEAD", "LOOK_AT", "TABLE_Y", "MULTIMODAL_TASKS", "TASKS", "episode_rng",
           "episode_task", "simulate", "counterfactual_poses", "generate", "write_episode",
           "write_hdf5"]
