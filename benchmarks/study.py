"""The synthetic study: the paper's comparisons at CPU scale, one budget for every run.

  python -m benchmarks.study --grid all   # or main | horizon | goal | data | size | prediction
  python -m benchmarks.study --grid main --dry_run # list the runs and what is done

Each run is `python -m egodex_jax.main --config=configs/egodex.py:study,<args>` in its own
workdir under --root (default workdirs/study/<run>); a run whose workdir holds study_run.json
is not redone, so the study resumes where it stopped. Every run trains the same number of steps
on the same synthetic set (configs/common.py, `study`); the grids vary one factor each:
  main     the six models (dec/encdec x bc/ddpm/fm), seeds 0 and 1
  horizon  Dec + BC at H = 30, 60, 90 (as the paper's ablation)
  goal     Dec + BC with and without the goal image
  data     Dec + BC on 10, 25, 50, 100 % of the training episodes
  size     Dec + BC at the tiny and demo model sizes
  prediction  Dec + FM / DDPM, the network predicting the clean chunk (default) or the noise
           side (velocity / epsilon, the paper's), seeds 0 and 1
At the end it writes docs/results.md (tables, per-finding verdicts, each run's wall time) and the
plots under docs/results/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = [(b, h) for b in ("dec", "encdec") for h in ("bc", "ddpm", "fm")]
KS = (1, 5, 10)
PAPER = [("Dec + BC", ("0.045", "0.045", "0.062", "0.062")),
         ("Dec + DDPM", ("0.053", "0.041", "0.071", "0.044")),
         ("Dec + FM", ("0.052", "0.040", "0.071", "0.043")),
         ("EncDec + BC", ("0.044", "0.044", "0.060", "0.060")),
         ("EncDec + DDPM", ("0.052", "0.039", "0.071", "0.043")),
         ("EncDec + FM", ("0.051", "0.038", "0.070", "0.041"))]  # docs/egodex_format.md


def _run(backbone="dec", head="bc", seed=0, h=60, goal=False, frac=1.0, size="demo", pred=""):
  """A run's identity: its config args (defaults are the study's) and a stable name."""
  args = dict(backbone=backbone, head=head, seed=seed, h=h, goal=goal, frac=frac, size=size)
  if pred:  # a diffusion head's non-default output (configs/common.py `pred`)
    args["pred"] = pred
  name = (f"{backbone}_{head}_s{seed}_h{h}{'_goal' if goal else ''}{f'_p{pred}' if pred else ''}"
          f"_f{frac:g}_{size}")
  return name, args


# The paper's parameterisations (velocity for FM, epsilon for DDPM) against the default, the
# network predicting the clean chunk (models/heads/flow.py).
NOISE_SIDE = {"fm": "velocity", "ddpm": "epsilon"}

GRIDS = {
    "main": [_run(b, h, seed=s) for b, h in MODELS for s in (0, 1)],
    "horizon": [_run(h=h) for h in (30, 60, 90)],
    "goal": [_run(goal=g) for g in (False, True)],
    "data": [_run(frac=f) for f in (0.1, 0.25, 0.5, 1.0)],
    "size": [_run(size=s) for s in ("tiny", "demo")],
    "prediction": [_run("dec", h, seed=s, pred=p) for h in NOISE_SIDE for p in ("", NOISE_SIDE[h])
                   for s in (0, 1)],
}


def config_arg(args: dict) -> str:
  parts = ["study"] + [f"{k}={v}" for k, v in args.items() if k != "goal" and v != ""]
  return ",".join(parts + (["goal"] if args["goal"] else []))


def run_one(name: str, args: dict, root: str, log) -> dict:
  """Trains and evaluates one run unless it is done; returns its record (results, wall time)."""
  wd = os.path.join(root, name)
  record_path = os.path.join(wd, "study_run.json")
  if os.path.exists(record_path):
    with open(record_path) as f:
      return json.load(f)
  os.makedirs(wd, exist_ok=True)
  cmd = [sys.executable, "-m", "egodex_jax.main", f"--config=configs/egodex.py:{config_arg(args)}",
         f"--workdir={wd}"]
  t0 = time.perf_counter()
  with open(os.path.join(wd, "study_log.txt"), "w") as out:
    proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
  wall = time.perf_counter() - t0
  results_path = os.path.join(wd, "eval_results.json")
  if proc.returncode != 0 or not os.path.exists(results_path):
    log(f"  {name}: FAILED (exit {proc.returncode}); see {wd}/study_log.txt")
    return {}
  with open(results_path) as f:
    results = json.load(f)
  record = dict(name=name, args=args, wall_s=wall, command=" ".join(cmd[2:]), results=results)
  with open(record_path, "w") as f:
    json.dump(record, f, indent=1)
  return record


# ----------------------------------------------------------------------------- the report

def _fig(record, row, key):
  v = record.get("results", {}).get(row, {}).get(key)
  return float("nan") if v is None else float(v)


def _mean_spread(records, row, key):
  """Mean and half-range over seeds (the spread two seeds can show)."""
  v = np.array([_fig(r, row, key) for r in records], float)
  return float(np.mean(v)), float((np.max(v) - np.min(v)) / 2) if len(v) > 1 else float("nan")


def _cols():
  return [f"avg@{k}" for k in KS] + [f"final@{k}" for k in KS]


def _pm(m, s):
  return f"{m:.4f}" if not np.isfinite(s) else f"{m:.4f} ± {s:.4f}"


def main_table(records) -> tuple[list[str], dict]:
  lines = ["| model | " + " | ".join(_cols()) + " | runs (wall) |", "|---" * 8 + "|"]
  summary = {}
  for b, h in MODELS:
    rs = [r for r in records if r["args"]["backbone"] == b and r["args"]["head"] == h]
    if not rs:
      continue
    cells = {c: _mean_spread(rs, "model", c) for c in _cols()}
    summary[(b, h)] = cells
    walls = ", ".join(f"{r['wall_s'] / 60:.1f} min" for r in rs)
    lines.append(f"| {b} + {h} | " + " | ".join(_pm(*cells[c]) for c in _cols())
                 + f" | {len(rs)} ({walls}) |")
  for row in ("static", "mean_traj", "oracle_single", "oracle_sampler"):
    if records and all(row in r.get("results", {}) for r in records):
      lines.append(f"| {row} | " + " | ".join(_pm(*_mean_spread(records, row, c))
                                             for c in _cols()) + " | |")
  return lines, summary


def _task_fig(record, task, section, key):
  v = record.get("results", {}).get("per_task", {}).get(task, {}).get(section, {})
  v = v.get(key) if isinstance(v, dict) else None
  return float("nan") if v is None else float(v)


def _spread_of(values):
  v = np.array(values, float)
  return float(np.mean(v)), float((v.max() - v.min()) / 2) if len(v) > 1 else float("nan")


def multimodal_table(records) -> list[str]:
  """What Best-of-K rewards: on the two-outcome tasks, the gap from static to the oracle closed,
  mode coverage and precision (evaluate/modes.py), and final@10 against BC's."""
  from egodex_jax.data.synthetic import MULTIMODAL_TASKS
  tasks = " + ".join(MULTIMODAL_TASKS)
  lines = [f"| model | gap final@1 (all) | gap final@10 (all) | gap final@10 ({tasks}) | "
           f"final@10 / BC's final@10 ({tasks}) | coverage@10 | precision |", "|---" * 7 + "|"]
  def mm_final(r, key="final@10"):
    return np.mean([_task_fig(r, t, "model", key) for t in MULTIMODAL_TASKS])
  for b, h in MODELS:
    rs = [r for r in records if r["args"]["backbone"] == b and r["args"]["head"] == h]
    bc = [r for r in records if r["args"]["backbone"] == b and r["args"]["head"] == "bc"]
    if not rs:
      continue
    gap = lambda r, k: r["results"].get("gap_closed", {}).get(k, float("nan"))
    mm_gap = lambda r: np.mean([_task_fig(r, t, "gap_closed", "final@10") for t in MULTIMODAL_TASKS])
    ratio = (_pm(*_spread_of([mm_final(r) / np.mean([mm_final(x) for x in bc]) for r in rs]))
             if bc else "")
    cov = lambda r, k: r["results"].get("mode_coverage", {}).get(k, float("nan"))
    lines.append(f"| {b} + {h} | {_pm(*_spread_of([gap(r, 'final@1') for r in rs]))} | "
                 f"{_pm(*_spread_of([gap(r, 'final@10') for r in rs]))} | "
                 f"{_pm(*_spread_of([mm_gap(r) for r in rs]))} | {ratio} | "
                 f"{_pm(*_spread_of([cov(r, 'coverage@10') for r in rs]))} | "
                 f"{_pm(*_spread_of([cov(r, 'precision') for r in rs]))} |")
  return lines


def one_factor_table(records, factor: str) -> list[str]:
  lines = [f"| {factor} | " + " | ".join(_cols()) + " | static final@1 | wall |",
           "|---" * 9 + "|"]
  for r in sorted(records, key=lambda r: str(r["args"][factor])):
    lines.append(f"| {r['args'][factor]} | " + " | ".join(f"{_fig(r, 'model', c):.4f}"
                                                          for c in _cols())
                 + f" | {_fig(r, 'static', 'final@1'):.4f} | {r['wall_s'] / 60:.1f} min |")
  return lines


def prediction_table(records) -> list[str]:
  lines = ["| head | network predicts | " + " | ".join(_cols()) + " | runs |", "|---" * 9 + "|"]
  for h, noise in NOISE_SIDE.items():
    for pred in ("", noise):
      rs = [r for r in records if r["args"]["head"] == h and r["args"].get("pred", "") == pred]
      if rs:
        lines.append(f"| {h} | {pred or 'data (default)'} | " + " | ".join(
            _pm(*_mean_spread(rs, "model", c)) for c in _cols()) + f" | {len(rs)} |")
  return lines


def prediction_verdicts(records) -> list[str]:
  out = []
  for h, noise in NOISE_SIDE.items():
    cells = {}
    for pred in ("", noise):
      rs = [r for r in records if r["args"]["head"] == h and r["args"].get("pred", "") == pred]
      if len(rs) >= 2:
        cells[pred] = {c: _mean_spread(rs, "model", c) for c in ("avg@1", "final@10")}
    if len(cells) == 2:
      for c in ("avg@1", "final@10"):
        sure, raw = _better(cells[""][c], cells[noise][c])
        out.append(f"- {h}, {c}: data {cells[''][c][0]:.4f} vs {noise} {cells[noise][c][0]:.4f}"
                   f" ({'better' if raw else 'not better'}"
                   f"{' beyond the seed spread' if sure else ', inside the seed spread' if raw else ''}).")
  return out


def _better(a, b):
  """a < b beyond both spreads: (mean, spread) pairs."""
  (ma, sa), (mb, sb) = a, b
  spread = (0 if not np.isfinite(sa) else sa) + (0 if not np.isfinite(sb) else sb)
  return ma < mb - spread, ma < mb


def verdicts(summary, by_grid) -> list[str]:
  out = []
  for b in ("dec", "encdec"):  # the head ranking within one backbone, once its three are in
    if all((b, h) in summary for h in ("bc", "ddpm", "fm")):
      for k, best in ((1, ("bc",)), (10, ("ddpm", "fm"))):
        col = f"final@{k}"
        rank = sorted((summary[(b, h)][col][0], h) for h in ("bc", "ddpm", "fm"))
        out.append(f"- {b}: {'BC best at K=1' if k == 1 else 'DDPM/FM best at K=10'}: "
                   + ", ".join(f"{h} {v:.4f}" for v, h in rank) + f" ({col}): "
                   + ("holds" if rank[0][1] in best else "does not hold") + ".")
  if len(summary) < len(MODELS):
    out.append(f"- EncDec >= Dec and the ranking over all six: not judged yet "
               f"({len(summary)} of the {len(MODELS)} models have finished runs).")
  else:
    for h in ("bc", "ddpm", "fm"):
      if ("dec", h) in summary and ("encdec", h) in summary:
        sure, raw = _better(summary[("encdec", h)]["final@1"], summary[("dec", h)]["final@1"])
        out.append(f"- EncDec >= Dec ({h}, final@1): "
                   f"{'holds' if raw else 'does not hold'}"
                   f"{'' if sure or not raw else ' (inside the seed spread)'}: "
                   f"{summary[('encdec', h)]['final@1'][0]:.4f} vs "
                   f"{summary[('dec', h)]['final@1'][0]:.4f}.")
    for k, best in ((1, "bc"), (10, "fm")):
      col = f"final@{k}"
      rank = sorted((v[col][0], key) for key, v in summary.items())
      out.append(f"- {'BC best at K=1' if k == 1 else 'DDPM/FM best at K=10'}: best {col} is "
                 f"{rank[0][1][0]} + {rank[0][1][1]} ({rank[0][0]:.4f}); "
                 + ("holds" if (rank[0][1][1] == best or (k == 10 and rank[0][1][1] == 'ddpm'))
                    else "does not hold") + ".")
  g = {r["args"]["goal"]: r for r in by_grid.get("goal", [])}
  if len(g) == 2:
    a, b = _fig(g[True], "model", "final@1"), _fig(g[False], "model", "final@1")
    out.append(f"- The goal image cuts final error most: final@1 {b:.4f} -> {a:.4f} "
               f"({'holds' if a < b else 'does not hold'}).")
  hz = sorted(by_grid.get("horizon", []), key=lambda r: r["args"]["h"])
  if len(hz) == 3:
    v = [_fig(r, "model", "avg@1") for r in hz]
    out.append(f"- Error grows with the horizon: avg@1 at H = 30/60/90: "
               f"{'/'.join(f'{x:.4f}' for x in v)} "
               f"({'holds' if v[0] < v[1] < v[2] else 'does not hold'}).")
  dt = sorted(by_grid.get("data", []), key=lambda r: r["args"]["frac"])
  if len(dt) >= 3:
    x = np.log([r["args"]["frac"] for r in dt])
    y = np.array([_fig(r, "model", "avg@1") for r in dt])
    slope, icpt = np.polyfit(x, y, 1)
    r2 = 1 - np.sum((y - (slope * x + icpt)) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-12)
    out.append(f"- Error falls log-linearly with data: slope {slope:.4f} m per e-fold, R^2 "
               f"{r2:.2f} ({'holds' if slope < 0 and r2 > 0.7 else 'does not hold'}).")
  sz = {r["args"]["size"]: r for r in by_grid.get("size", [])}
  if len(sz) == 2:
    a, b = _fig(sz["demo"], "model", "avg@1"), _fig(sz["tiny"], "model", "avg@1")
    out.append(f"- A bigger model gives no gain at this data size: avg@1 tiny {b:.4f}, demo "
               f"{a:.4f} ({'holds' if a >= b - 0.002 else 'does not hold: the bigger one is better'}).")
    if a < b - 0.002:
      out.append("  The paper compares 200M with 500M parameters on 829 h, both large for the data; "
                 "here 'tiny' is far below the demo size and underfits in the same 600 steps, so "
                 "this grid measures capacity, not over-parameterisation.")
  return out


def plot_data(records, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rs = sorted(records, key=lambda r: r["args"]["frac"])
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for col in ("avg@1", "final@1"):
    ax.plot([r["args"]["frac"] * 100 for r in rs], [_fig(r, "model", col) for r in rs], "o-",
            label=f"Dec + BC {col}")
  ax.set_xscale("log")
  ax.set_xlabel("training episodes (%)")
  ax.set_ylabel("metres")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(by_grid, out_md, plot_dir):
  lines = ["# The synthetic study", "",
           "Regenerate: `python -m benchmarks.study --grid all` (resumable; per grid: `--grid "
           "main|horizon|goal|data|size|prediction`). Every run: `configs/egodex.py:study,...` (200 synthetic "
           "episodes of 120-180 frames, 64 px, the demo's model and 600 steps, batch 32; final "
           "evaluation on 256 test frames, K = 1, 5, 10). Figures in metres; ± is half the range "
           "over the seeds (2 seeds: a difference smaller than the sum of two spreads is inside the "
           "noise).", ""]
  records = list({r["name"]: r for rs in by_grid.values() for r in rs}.values())
  if by_grid.get("main"):
    table, summary = main_table(by_grid["main"])
    lines += ["## The six models (seeds 0 and 1)", ""] + table + [""]
    lines += ["## What Best-of-K rewards: the two-outcome tasks (seeds 0 and 1)", "",
              "Gap closed = (static - model) / (static - oracle): K = 1 against the oracle's best "
              "single prediction, K = 10 against its ideal sampler (evaluate/oracle.py); mode "
              "coverage and precision as in docs/metric.md.", ""]
    lines += multimodal_table(by_grid["main"]) + [""]
  else:
    summary = {}
  for grid, factor in (("horizon", "h"), ("goal", "goal"), ("data", "frac"), ("size", "size")):
    if len(by_grid.get(grid, [])) > 1:  # one row is only the shared default run
      lines += [f"## {grid} (Dec + BC, seed 0)", ""] + one_factor_table(by_grid[grid], factor) + [""]
  if by_grid.get("prediction"):
    lines += ["## What the diffusion heads' network predicts (Dec, seeds 0 and 1)", "",
              "The paper's (and X-IL's) parameterisations regress the noise-side target (FM: the "
              "velocity, DDPM: epsilon); the default here regresses the clean chunk "
              "(models/heads/flow.py says why).", ""]
    lines += prediction_table(by_grid["prediction"]) + [""]
    lines += prediction_verdicts(by_grid["prediction"]) + [""]
  if len(by_grid.get("data", [])) > 1:
    os.makedirs(plot_dir, exist_ok=True)
    plot_data(by_grid["data"], os.path.join(plot_dir, "data_scaling.png"))
    lines += ["![data scaling](results/data_scaling.png)", ""]
  lines += ["## The paper's findings, here", ""] + verdicts(summary, by_grid) + [""]
  missing = [g for g in GRIDS if len(by_grid.get(g, [])) < len(GRIDS[g])]
  if missing:
    lines += [f"Not finished yet: {', '.join(missing)} (their verdict lines are missing or "
              f"partial); rerun the command to complete the study.", ""]
  lines += ["## The paper's numbers (H = 60, real EgoDex, ~200M parameters, 50K steps x 2048)", "",
            "| model | avg@1 | avg@10 | final@1 | final@10 |", "|---|---|---|---|---|"]
  lines += [f"| {m} | {' | '.join(v)} |" for m, v in PAPER]
  lines += ["", "Absolute values differ by design: the synthetic scene has five tasks with "
            "scripted, smooth hand motion and 64 px frames, and each run here trains a 1.6M "
            "model for 600 steps of 32 on 200 episodes; only the orderings are comparable. "
            "Wall times were taken on a shared 2-core CPU (other jobs ran beside the study; the "
            "first run also generated and built the dataset).", ""]
  lines += ["## Runs", "", "| run | wall | command |", "|---|---|---|"]
  lines += [f"| {r['name']} | {r['wall_s'] / 60:.1f} min | `{r['command']}` |" for r in records]
  with open(out_md, "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
  from egodex_jax import cli
  p = cli.ArgumentParser(prog="python -m benchmarks.study", description=__doc__.split("\n")[0])
  p.add_argument("--grid", default="all", choices=["all"] + list(GRIDS))
  p.add_argument("--root", default=os.path.join(REPO, "workdirs", "study"))
  p.add_argument("--out", default=os.path.join(REPO, "docs", "results.md"))
  p.add_argument("--only", default="",
                 help="comma-separated run names: run only these, in this order (e.g. to split a "
                      "study over two runners that share --root)")
  p.add_argument("--dry_run", action="store_true", help="list the runs; run nothing")
  p.add_argument("--report_only", action="store_true",
                 help="write the report from the finished runs; run nothing")
  a = p.parse_args(argv)
  grids = list(GRIDS) if a.grid == "all" else [a.grid]
  unique = {}
  for g in grids:
    for name, args in GRIDS[g]:
      unique.setdefault(name, args)
  if a.only:
    wanted = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in unique]
    if unknown:
      cli.fail(f"--only: {', '.join(unknown)} not in grid(s) {', '.join(grids)}.")
    unique = {n: unique[n] for n in wanted}
  log = lambda s: print(s, flush=True)
  log(f"study: {len(unique)} runs in {', '.join(grids)} under {a.root}")
  records, t0 = {}, time.perf_counter()
  for i, (name, args) in enumerate(unique.items()):
    done = os.path.exists(os.path.join(a.root, name, "study_run.json"))
    if a.report_only:
      if done:
        records[name] = run_one(name, args, a.root, log)
      continue
    if a.dry_run:
      log(f"  [{i + 1}/{len(unique)}] {name}: {'done' if done else 'to run'}")
      continue
    log(f"[{i + 1}/{len(unique)}] {name} ({'done, reused' if done else 'running'}) ...")
    rec = run_one(name, args, a.root, log)
    if rec:
      records[name] = rec
      _write(records, a.out)  # after every run: an interrupted study keeps its report
      log(f"[{i + 1}/{len(unique)}] {name}: final@1 {_fig(rec, 'model', 'final@1'):.4f}, "
          f"final@10 {_fig(rec, 'model', 'final@10'):.4f}, {rec['wall_s'] / 60:.1f} min "
          f"(study {(time.perf_counter() - t0) / 60:.0f} min so far)")
  if a.dry_run:
    return 0
  _write(records, a.out)
  log(f"wrote {a.out} ({len(records)} finished runs)")
  return 0


def _write(records: dict, out: str) -> None:
  by_grid = {g: [records[n] for n, _ in GRIDS[g] if n in records] for g in GRIDS}
  write_report(by_grid, out, os.path.join(os.path.dirname(out), "results"))


if __name__ == "__main__":
  sys.exit(main())
