"""Held-out tasks, the paper's out-of-distribution study: tasks a run never trains on.

`config.data.holdout_tasks` names them by fragments of their task names: a string with
fragments separated by ',' or '+' (or a list of them), matched against the dataset's task names
ignoring case, spaces, underscores and hyphens ('Stamp Paper' matches 'stamp_paper'), or a
preset name from PRESETS ('paper': the paper's six OOD tasks). Every fragment must match at least
one task. The held-out tasks' episodes leave the train split (`without_tasks`); so the
statistics, the mean_traj baseline, the learned vocabulary and the batches never see them, and
the evaluator reports the test split's held-out and in-distribution tasks side by side.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

# The six tasks the paper holds out for its OOD study, as it names them.
PRESETS = {
    "paper": ("Jigsaw Puzzle", "Tetra Board", "Knit Scarf", "Play Reversi", "Blowdry Hair",
              "Stamp Paper"),
}
TRAIN_SPLIT = "train"


def _key(name: str) -> str:
  return "".join(ch for ch in str(name).lower() if ch.isalnum())


def fragments(spec) -> list[str]:
  """'paper' | 'a,b' | 'a+b' | ['a', 'b'] -> the fragments, presets expanded."""
  if isinstance(spec, str):
    spec = spec.replace("+", ",").split(",")
  out = []
  for frag in spec or ():
    frag = str(frag).strip()
    if frag:
      out += list(PRESETS.get(frag.lower(), (frag,)))
  return out


def resolve(spec, tasks: Sequence[str]) -> list[str]:
  """The tasks `spec` holds out, in vocabulary order; ValueError (one sentence) when a fragment
  matches none of `tasks`."""
  held = set()
  for frag in fragments(spec):
    hits = [t for t in tasks if _key(frag) and _key(frag) in _key(t)]
    if not hits:
      shown = ", ".join(list(tasks)[:12]) + (", ..." if len(tasks) > 12 else "")
      raise ValueError(f"data.holdout_tasks: {frag!r} matches none of the dataset's "
                       f"{len(tasks)} tasks ({shown})")
    held.update(hits)
  return [t for t in tasks if t in held]


def without_tasks(meta, held_out: Sequence[str], split: str = TRAIN_SPLIT):
  """`meta` with the episodes of `held_out` removed from `split` (record indices unchanged)."""
  if not held_out or split not in meta.episodes:
    return meta
  drop = set(held_out)
  episodes = dict(meta.episodes)
  episodes[split] = [e for e in meta.episodes[split] if e["task"] not in drop]
  return dataclasses.replace(meta, episodes=episodes)
