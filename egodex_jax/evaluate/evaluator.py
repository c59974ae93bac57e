"""Best-of-K over a test split: sample, de-normalise, score the model and the baselines.

`Evaluator(policy, normalizer, ks=...)` holds its one jitted step, so training builds it once and
reuses it for every periodic evaluation (one compilation); `evaluate(...)` is the one-off form.
Batches are canonical (metres, camera frame t; docs/interfaces.md's batch table); the evaluator
sends `data/batch.py`'s EVAL_KEYS to the device and the policy sees only
`normalizer.normalize_obs(batch)`: never the ground truth.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from egodex_jax.data import batch as batch_lib
from egodex_jax.evaluate import baselines
from egodex_jax.evaluate import metric
from egodex_jax.evaluate import modes
from egodex_jax.evaluate import report

_SCORED = ("model", "static", "mean_traj")
_CONFIDENT = "confident/"  # prefix of the step's outputs scored on confident keypoints only


def _pad_rows(x, size: int, is_padding: bool):
  """[b, ...] -> [size, ...] by repeating row 0; padded rows are marked padded (never scored)."""
  x = np.asarray(x)
  if x.shape[0] >= size:
    return x
  fill = np.ones_like(x[:1]) if is_padding else x[:1]
  return np.concatenate([x, np.repeat(fill, size - x.shape[0], axis=0)])


def _device_batch(batch: dict, size: int) -> dict:
  """EVAL_KEYS of `batch`, rows padded to `size` so that a short last batch does not recompile."""
  return {k: jnp.asarray(_pad_rows(v, size, k == "padding"))
          for k, v in batch_lib.select(batch, batch_lib.EVAL_KEYS).items()}


class _ExamplePicker:
  """Up to n plotted examples, one per episode, from different tasks first (consecutive frames
  of one episode say little), each an unpadded item with its K samples."""

  def __init__(self, n: int, tasks: Sequence[str] | None):
    self.n, self.tasks = n, tasks
    self.items: list[dict] = []    # one per task, in the order met
    self.reserve: list[dict] = []  # further episodes of tasks already shown
    self._tasks, self._episodes = set(), set()

  def offer(self, batch: dict, samples) -> None:
    if len(self.items) >= self.n:
      return
    size = len(batch["actions"])
    task = np.asarray(batch.get("task_id", np.zeros(size, np.int32)))
    episode = np.asarray(batch.get("episode_id", np.arange(size)))
    frame = np.asarray(batch.get("frame", np.full(size, -1)))
    padded = np.asarray(batch["padding"]).any(-1)
    host = None
    for b in range(size):
      t, e = int(task[b]), int(episode[b])
      new_task = t not in self._tasks
      if padded[b] or e in self._episodes or (not new_task and len(self.reserve) >= self.n):
        continue
      host = np.asarray(jax.device_get(samples)) if host is None else host
      label = self.tasks[t] if self.tasks is not None and 0 <= t < len(self.tasks) else str(t)
      item = dict(image=np.asarray(batch["image"][b]), actions=np.asarray(batch["actions"][b]),
                  state=np.asarray(batch["state"][b]), samples=host[:, b],
                  title=f"{label}\nepisode {e}, frame {int(frame[b])}")
      (self.items if new_task else self.reserve).append(item)
      self._tasks.add(t)
      self._episodes.add(e)

  def examples(self) -> dict | None:
    chosen = (self.items + self.reserve)[:self.n]
    if not chosen:
      return None
    stack = lambda k: np.stack([it[k] for it in chosen])
    return dict(image=stack("image"), actions=stack("actions"), state=stack("state"),
                samples=np.stack([it["samples"] for it in chosen], axis=1),
                titles=[it["title"] for it in chosen])


def _label(t: int, tasks: Sequence[str] | None) -> str:
  return tasks[t] if tasks is not None and 0 <= t < len(tasks) else str(t)


def _rows(figs: dict[str, dict]) -> dict[str, Any]:
  """{name: figures with "num_samples"} -> {name: figures, "num_samples": n (of the first)}."""
  out: dict[str, Any] = {name: {k: v for k, v in f.items() if k != "num_samples"}
                         for name, f in figs.items()}
  out["num_samples"] = next(iter(figs.values()))["num_samples"]
  return out


def _per_task(accs: dict, confident: dict, tasks: Sequence[str] | None) -> dict[str, Any]:
  """-> {task label: {name: figures, "num_samples": n[, "confident": {name: figures,
  "num_samples": n}]}} for the tasks with a scored sample."""
  by_name = {name: acc.per_task() for name, acc in accs.items()}
  conf_by_name = {name: acc.per_task() for name, acc in confident.items()}
  out: dict[str, Any] = {}
  for t in by_name["model"]:
    out[_label(t, tasks)] = _rows({name: by_task[t] for name, by_task in by_name.items()})
    if t in conf_by_name.get("model", {}):
      out[_label(t, tasks)]["confident"] = _rows(
          {name: by_task[t] for name, by_task in conf_by_name.items()})
  return out


def _pooled(accs: dict, task_ids) -> dict[str, Any]:
  return _rows({name: acc.pooled(task_ids) for name, acc in accs.items()})


def _groups(results: dict, accs: dict, confident: dict, tasks: Sequence[str] | None,
            held_out: Sequence[str]) -> None:
  """Adds "in_distribution" and "held_out": each {"tasks", the rows pooled over its tasks'
  samples, "num_samples", ["confident"], "per_task"}; marks every per_task row "held_out"."""
  if tasks is None:
    raise ValueError("held_out tasks need the task names (tasks=...) to find their ids.")
  held = {i for i, t in enumerate(tasks) if t in set(held_out)}
  for name, ids in (("in_distribution", sorted(set(range(len(tasks))) - held)),
                    ("held_out", sorted(held))):
    labels = [tasks[i] for i in ids]
    section = {"tasks": labels, **_pooled(accs, ids)}
    if confident:
      section["confident"] = {"min_confidence": results["confident"]["min_confidence"],
                              **_pooled(confident, ids)}
    section["per_task"] = {t: results["per_task"][t] for t in labels if t in results["per_task"]}
    results[name] = section
  for label, row in results["per_task"].items():
    row["held_out"] = label in set(held_out)


class Evaluator:
  """Scores a policy's samples on test batches; one jitted step per instance.

  A deterministic policy (`policy.is_deterministic`, BC) is sampled once and its one sample
  counts for every K; a stochastic one gives max(ks) samples, of which the first K count for K.
  """

  def __init__(self, policy, normalizer, *, ks: Sequence[int] = metric.DEFAULT_KS,
               margin: float = modes.DEFAULT_MODE_MARGIN,
               radius: float = modes.DEFAULT_MODE_RADIUS, min_confidence: float = 0.0):
    self.policy = policy
    self.normalizer = normalizer
    self.ks = metric.check_ks(ks)
    self.margin = float(margin)
    self.radius = float(radius)
    # > 0: also the figures over the keypoints tracked at least this confidently (batches with
    # the `confidence` key only).
    self.min_confidence = float(min_confidence)
    self.num_samples = 1 if policy.is_deterministic else max(self.ks)
    self.step = jax.jit(self._step)

  def _step(self, params, batch, rng, mean_delta):
    """batch (EVAL_KEYS, [B, ...] canonical), mean_delta [H, 48] or None -> per-sample minima
    {"model", "static", ["mean_traj"]} (and the same prefixed _CONFIDENT, on the confident
    keypoints), ["modes"] (`modes.mode_hits`) and the canonical "samples" [max(ks), B, H, 48]."""
    ks = self.ks
    gt, padding, state = batch["actions"], batch["padding"], batch["state"]
    samples = self.policy.sample(params, self.normalizer.normalize_obs(batch), rng,
                                 self.num_samples)
    samples = self.normalizer.denormalize_samples(samples, state).astype(jnp.float32)
    samples = jnp.broadcast_to(samples, (max(ks),) + samples.shape[1:])  # [max(ks), B, H, 48]
    preds = {"model": samples, "static": baselines.static_prediction(state, gt.shape[1])}
    if mean_delta is not None:
      preds["mean_traj"] = baselines.mean_traj_prediction(state, mean_delta)
    confident = None
    if self.min_confidence > 0 and batch_lib.CONFIDENCE_KEY in batch:
      confident = batch[batch_lib.CONFIDENCE_KEY] >= self.min_confidence  # [B, H, 12]
    out = {"samples": samples}
    for name, pred in preds.items():
      out[name] = metric.minima(gt, padding, pred, ks)
      if confident is not None:
        out[_CONFIDENT + name] = metric.minima(gt, padding, pred, ks, confident)
    if "mode" in batch and "mode_targets" in batch:
      out["modes"] = modes.mode_hits(state, batch["mode"], batch["mode_targets"], gt, padding,
                                     samples, ks=ks, margin=self.margin, radius=self.radius)
    return out

  def __call__(self, params, batches: Iterable[dict], *, rng, tasks: Sequence[str] | None = None,
               mean_trajectory=None, max_batches: int | None = None, workdir: str | None = None,
               reference: dict | None = None, held_out: Sequence[str] = (),
               num_plot_examples: int = 6, intrinsic=None, frame_size=None) -> dict[str, Any]:
    """Best-of-K of `params` over `batches` (batch i sampled with fold_in(rng, i)).

    Beside the model, on the same samples: `static` (the current hand state held for H frames)
    and `mean_traj` (the state plus `mean_trajectory` [H, 48], see `baselines.mean_trajectory`;
    omitted when None). Mode coverage (`modes.mode_hits`) over the samples with a known mode.
    With `workdir`, writes eval_results.json/.md and the plots in WORKDIR/vis/
    (`intrinsic`/`frame_size`: K and (W, H) of the full frames the S x S batch images were
    resized from, without crop; EgoDex's constant K at 1920x1080 by default). `reference`:
    `oracle.oracle_results` of the same samples (synthetic data), added as rows with the
    fraction of the static-to-oracle gap the model closes (`report.add_reference`).
    With `min_confidence` > 0 and batches holding `confidence`: "confident" {"min_confidence",
    "num_samples", "model", "static", "mean_traj"}, the same figures over the confidently
    tracked ground-truth keypoints only (and per task). `held_out` (task names, from `tasks`):
    "in_distribution" and "held_out" sections, each the rows pooled over its tasks' samples with
    its "tasks" and "per_task" rows.

    Returns {"model": figures, "static": ..., "mean_traj": ..., "per_task": {task: {"model": ...,
    "static": ..., "mean_traj": ..., "num_samples": n}}, "mode_coverage": {...},
    "num_samples": n, "num_batches": b, "ks": [...]}. Figures are NaN when no sample was unpadded.
    """
    mean_delta = None if mean_trajectory is None else jnp.asarray(mean_trajectory, jnp.float32)
    names = [n for n in _SCORED if n != "mean_traj" or mean_delta is not None]
    accs = {name: metric.BestOfKAccumulator(self.ks) for name in names}
    confident = {}  # name -> accumulator of the confident-only minima, when the batches allow
    mode_acc = modes.ModeCoverageAccumulator(self.ks)
    picker = _ExamplePicker(num_plot_examples, tasks)
    num_batches = 0
    full_size = 0  # a smaller last batch is padded to the first one's size
    for i, batch in enumerate(batches):
      if max_batches is not None and i >= max_batches:
        break
      size = len(batch["actions"])
      full_size = full_size or size
      task_id = np.asarray(batch["task_id"]) if "task_id" in batch else None
      out = self.step(params, _device_batch(batch, full_size), jax.random.fold_in(rng, i),
                      mean_delta)
      samples = out.pop("samples")  # fetched only for the plotted examples
      out = jax.device_get(out)
      for name, acc in accs.items():
        acc.update(*(x[:size] for x in out[name]), task_id=task_id)
        if _CONFIDENT + name in out:
          confident.setdefault(name, metric.BestOfKAccumulator(self.ks)).update(
              *(x[:size] for x in out[_CONFIDENT + name]), task_id=task_id)
      if "modes" in out:
        mode_acc.update(*(x[:size] for x in out["modes"]))
      picker.offer(batch, samples)
      num_batches += 1

    results: dict[str, Any] = {name: acc.result() for name, acc in accs.items()}
    if confident:
      results["confident"] = {"min_confidence": self.min_confidence,
                              "num_samples": confident["model"].count,
                              **{name: acc.result() for name, acc in confident.items()}}
    results["per_task"] = _per_task(accs, confident, tasks)
    if held_out:
      _groups(results, accs, confident, tasks, held_out)
    results["mode_coverage"] = mode_acc.result()
    results["num_samples"] = accs["model"].count
    results["num_batches"] = num_batches
    results["ks"] = list(self.ks)
    if reference:
      report.add_reference(results, reference)
    if workdir is not None:
      report.write_results(workdir, results)
      examples = picker.examples()
      if examples is not None:
        report.plot_examples(os.path.join(workdir, "vis", "examples.png"), examples,
                             intrinsic=intrinsic, frame_size=frame_size)
      report.plot_vs_k(os.path.join(workdir, "vis", "best_of_k.png"), results)
    return results


def evaluate(policy, params, batches: Iterable[dict], normalizer, *,
             ks: Sequence[int] = metric.DEFAULT_KS, margin: float = modes.DEFAULT_MODE_MARGIN,
             radius: float = modes.DEFAULT_MODE_RADIUS, min_confidence: float = 0.0,
             **kwargs) -> dict[str, Any]:
  """One-off evaluation: `Evaluator(policy, normalizer, ...)(params, batches, **kwargs)`.

  Compiles a fresh step on every call: a caller that evaluates repeatedly (training) keeps one
  `Evaluator` instead.
  """
  evaluator = Evaluator(policy, normalizer, ks=ks, margin=margin, radius=radius,
                        min_confidence=min_confidence)
  return evaluator(params, batches, **kwargs)
