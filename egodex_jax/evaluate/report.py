"""Result files (eval_results.json / .md) and plots (predicted paths on the frame; distance
vs K)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from egodex_jax import skeleton
from egodex_jax.evaluate import metric
from egodex_jax.evaluate import oracle as oracle_lib

_ROWS = ("model", "static", "mean_traj", "oracle_single", "oracle_sampler")
# The gap a model closes, per figure: K = 1 against the best single prediction, larger K
# against the ideal sampler (what Best-of-K rewards beyond one prediction).
GAP_FIGURES = (("final@1", "oracle_single"), ("final@10", "oracle_sampler"),
               ("avg@1", "oracle_single"), ("avg@10", "oracle_sampler"))


def add_reference(results: dict[str, Any], reference: dict[str, Any]) -> None:
  """Adds the oracle rows (overall and per task) and `gap_closed` {figure: fraction}."""
  for row in ("oracle_single", "oracle_sampler"):
    if row in reference:
      results[row] = reference[row]
  for task, figs in results.get("per_task", {}).items():
    ref = reference.get("per_task", {}).get(task, {})
    for row in ("oracle_single", "oracle_sampler"):
      if row in ref:
        figs[row] = ref[row]
  for where in [results] + list(results.get("per_task", {}).values()):
    where["gap_closed"] = {
        fig: _gap(*(where.get(row, {}).get(fig) for row in ("static", "model", oracle)))
        for fig, oracle in GAP_FIGURES if oracle in where}


def _gap(static, model, oracle) -> float:
  figs = (static, model, oracle)
  if any(v is None or not math.isfinite(v) for v in figs):
    return math.nan
  return oracle_lib.gap_closed(*figs)


# --- Result files --------------------------------------------------------------------------------

def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return None if not math.isfinite(float(x)) else float(x)  # strict JSON has no NaN
  return x


def _fmt(v) -> str:
  return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def results_markdown(results: dict[str, Any]) -> str:
  """Markdown tables (metres): model/static/mean_traj x avg/final @K, then per task (model)."""
  ks = results.get("ks", list(metric.DEFAULT_KS))
  cols = [f"avg@{k}" for k in ks] + [f"final@{k}" for k in ks]
  lines = [f"# Best-of-K ({results.get('num_samples', 0)} samples, metres)", "",
           "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name in _ROWS:
    if name in results:
      lines.append(f"| {name} | " + " | ".join(_fmt(results[name].get(c)) for c in cols) + " |")
  conf = results.get("confident")
  if conf:
    lines += ["", f"## Confident ground truth only ({conf.get('num_samples', 0)} samples; "
              f"keypoints tracked with confidence >= {conf.get('min_confidence')})", "",
              "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in _ROWS:
      if name in conf:
        lines.append(f"| {name} | " + " | ".join(_fmt(conf[name].get(c)) for c in cols) + " |")
  if results.get("per_task"):
    lines += ["", "## Per task (model)", "", "| task | n | " + " | ".join(cols) + " |",
              "|---" * (len(cols) + 2) + "|"]
    for task, figs in results["per_task"].items():
      label = f"{task} (held out)" if figs.get("held_out") else task
      lines.append(f"| {label} | {figs.get('num_samples', '')} | "
                   + " | ".join(_fmt(figs["model"].get(c)) for c in cols) + " |")
  if "held_out" in results and "in_distribution" in results:
    lines += ["", "## In-distribution vs held-out tasks (test split; held out: "
              + ", ".join(results["held_out"].get("tasks", [])) + ")", "",
              "| tasks | n | row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 3) + "|"]
    for group, title in (("in_distribution", "in-distribution"), ("held_out", "held out")):
      sec = results[group]
      rows = [(name, sec[name]) for name in _ROWS if name in sec]
      if "model" in sec.get("confident", {}):
        rows.append(("model, confident only", sec["confident"]["model"]))
      for name, figs in rows:
        n = sec["confident"].get("num_samples") if "confident" in name else sec.get("num_samples")
        lines.append(f"| {title} | {n} | {name} | "
                     + " | ".join(_fmt(figs.get(c)) for c in cols) + " |")
  if results.get("gap_closed"):
    gaps = [f for f, _ in GAP_FIGURES if f in results["gap_closed"]]
    lines += ["", "## Gap closed: (static - model) / (static - oracle)", "",
              "K = 1 against the oracle's best single prediction, K = 10 against its ideal "
              "sampler (evaluate/oracle.py).", "",
              "| task | " + " | ".join(f"{f} model / static / oracle" for f in gaps)
              + " | " + " | ".join(f"gap {f}" for f in gaps) + " |",
              "|---" * (2 * len(gaps) + 1) + "|"]
    rows = [("all", results)] + list(results.get("per_task", {}).items())
    for task, figs in rows:
      cells = [" / ".join(_fmt(figs.get(r, {}).get(f)) for r in ("model", "static", o))
               for f, o in GAP_FIGURES if f in gaps]
      lines.append(f"| {task} | " + " | ".join(cells) + " | "
                   + " | ".join(_fmt(figs.get("gap_closed", {}).get(f)) for f in gaps) + " |")
  mc = results.get("mode_coverage")
  if mc and mc.get("num_committed"):
    keys = [k for k in mc if k.startswith("coverage@")] + ["precision"]
    lines += ["", f"## Mode coverage ({mc['num_committed']} committed samples)", "",
              "| " + " | ".join(keys) + " |", "|---" * len(keys) + "|",
              "| " + " | ".join(_fmt(mc[k]) for k in keys) + " |"]
  return "\n".join(lines) + "\n"


def write_results(workdir: str, results: dict[str, Any]) -> tuple[str, str]:
  """Writes WORKDIR/eval_results.json (NaN as null) and WORKDIR/eval_results.md; returns paths."""
  os.makedirs(workdir, exist_ok=True)
  clean = _jsonable(results)
  json_path = os.path.join(workdir, "eval_results.json")
  md_path = os.path.join(workdir, "eval_results.md")
  with open(json_path, "w") as f:
    json.dump(clean, f, indent=2, allow_nan=False)
  with open(md_path, "w") as f:
    f.write(results_markdown(clean))
  return json_path, md_path


# --- Plots ---------------------------------------------------------------------------------------

def scaled_intrinsic(intrinsic, frame_size, image_size: int) -> np.ndarray:
  """K of the full W x H frame -> K of its S x S resize (no crop): x by S/W, y by S/H."""
  w, h = frame_size
  return np.diag([image_size / w, image_size / h, 1.0]) @ np.asarray(intrinsic, np.float64)


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_examples(path: str, examples: dict, *, intrinsic=None, frame_size=None) -> str:
  """Test frames of different tasks/episodes with the right wrist's ground-truth path (green),
  its K predicted paths (red) and where it is now (white), reprojected through the intrinsics
  scaled to the S x S image. The right wrist alone keeps the fork of the multimodal tasks
  readable at a glance.

  examples: image [n, S, S, 3], actions [n, H, 48], samples [K, n, H, 48] (canonical metres),
  optional state [n, 48] and titles [n].
  """
  from egodex_jax import geometry  # pylint: disable=g-import-not-at-top
  plt = _pyplot()
  frame_size = frame_size or (skeleton.IMAGE_WIDTH, skeleton.IMAGE_HEIGHT)
  intrinsic = skeleton.default_intrinsic(*frame_size) if intrinsic is None else intrinsic
  images, gt, samples = examples["image"], examples["actions"], examples["samples"]
  n, s = images.shape[0], images.shape[1]
  K = scaled_intrinsic(intrinsic, frame_size, s)
  wrist = slice(skeleton.hand_offset("right") + skeleton.WRIST_POS,
                skeleton.hand_offset("right") + skeleton.WRIST_POS + 3)
  uv_of = lambda x: geometry.project(np.asarray(x, np.float64)[..., wrist], K)  # [..., 2]
  cols = min(n, 3)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.6 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.set_axis_off()
  for b in range(n):
    ax = axes.ravel()[b]
    ax.imshow(images[b])
    for pred in samples[:, b]:                                  # [H, 48]
      uv = uv_of(pred)
      ax.plot(uv[:, 0], uv[:, 1], color="red", lw=0.9, alpha=0.6)
      ax.plot(uv[-1, 0], uv[-1, 1], "o", color="red", ms=2.5, alpha=0.8)
    uv = uv_of(gt[b])
    ax.plot(uv[:, 0], uv[:, 1], color="lime", lw=1.8)
    ax.plot(uv[-1, 0], uv[-1, 1], "o", color="lime", ms=4)
    if "state" in examples:
      now = uv_of(examples["state"][b])
      ax.plot(now[0], now[1], "o", color="white", ms=4, mec="black")
    ax.set_xlim(0, s)
    ax.set_ylim(s, 0)
    ax.set_title(examples.get("titles", [f"sample {i}" for i in range(n)])[b], fontsize=8)
  fig.suptitle(f"right wrist: ground truth (green), {samples.shape[0]} predictions (red), "
               "now (white)", fontsize=9)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def plot_vs_k(path: str, results: dict[str, Any]) -> str:
  """avg and final distance against K for the model and each baseline."""
  plt = _pyplot()
  ks = results.get("ks", list(metric.DEFAULT_KS))
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
  for ax, name in zip(axes, ("avg", "final")):
    for row in _ROWS:
      if row in results:
        ax.plot(ks, [results[row][f"{name}@{k}"] for k in ks], marker="o", label=row)
    ax.set_xlabel("K")
    ax.set_ylabel(f"{name} distance (m)")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path
