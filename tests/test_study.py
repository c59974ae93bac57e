"""The study runner's bookkeeping: config args, resumable records, the report and its verdicts."""

import json
import os

from benchmarks import study
from configs import common


def _record(root, name, args, final1, avg1):
  figs = {f"{m}@{k}": (final1 if m == "final" else avg1) for m in ("avg", "final")
          for k in study.KS}
  rec = dict(name=name, args=args, wall_s=60.0, command="egodex_jax.main ...",
             results={"model": figs, "static": {k: 0.1 for k in figs}})
  os.makedirs(os.path.join(root, name))
  with open(os.path.join(root, name, "study_run.json"), "w") as f:
    json.dump(rec, f)


def test_config_args_parse_and_names_are_unique():
  names = [n for runs in study.GRIDS.values() for n, _ in runs]
  # the default run is shared by the one-factor grids, the main grid's Dec FM/DDPM by `prediction`
  assert len(set(names)) == 23
  for _, args in study.GRIDS["main"] + study.GRIDS["goal"] + study.GRIDS["prediction"]:
    c = common.get_config(study.config_arg(args))
    assert c.seed == args["seed"] and c.data.goal == args["goal"] and c.data.horizon == args["h"]
    assert c.model.head == args["head"] and c.demo.enabled and c.demo.max_horizon == 90
    if args["head"] in study.NOISE_SIDE:  # the default output unless the run names another
      assert c.model[args["head"]].prediction == args.get("pred", "data")


def test_report_from_finished_runs_with_verdicts(tmp_path):
  root, out = str(tmp_path / "runs"), str(tmp_path / "docs" / "results.md")
  os.makedirs(os.path.dirname(out))
  for name, args in study.GRIDS["horizon"]:  # error grows with the horizon here
    _record(root, name, args, final1=0.05 + args["h"] / 1000, avg1=0.03 + args["h"] / 1000)
  assert study.main(["--grid", "all", "--report_only", "--root", root, "--out", out]) == 0
  text = open(out).read()
  assert "## horizon" in text and "Error grows with the horizon" in text and "(holds)" in text
  assert "not judged yet (1 of the 6 models" in text  # only the shared Dec + BC run
  assert text.count("| dec_bc_s0_h60_f1_demo |") == 1  # a shared run is listed once


def test_prediction_grid_report(tmp_path):
  root, out = str(tmp_path / "runs"), str(tmp_path / "docs" / "results.md")
  os.makedirs(os.path.dirname(out))
  for name, args in study.GRIDS["prediction"]:  # the clean-chunk output better for FM only
    data = not args.get("pred")
    fm_gain = 0.02 if (data and args["head"] == "fm") else 0.0
    _record(root, name, args, final1=0.08 - fm_gain + args["seed"] * 1e-3, avg1=0.06 - fm_gain)
  assert study.main(["--grid", "prediction", "--report_only", "--root", root, "--out", out]) == 0
  text = open(out).read()
  assert "## What the diffusion heads' network predicts" in text
  assert "| fm | data (default) |" in text and "| ddpm | epsilon |" in text
  assert "- fm, final@10: data 0.0605 vs velocity 0.0805 (better beyond the seed spread)" in text
  assert "- ddpm, final@10: data 0.0805 vs epsilon 0.0805 (not better)" in text
