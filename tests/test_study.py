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
  assert len(set(names)) == 19  # the default run is shared by the one-factor grids
  for _, args in study.GRIDS["main"] + study.GRIDS["goal"]:
    c = common.get_config(study.config_arg(args))
    assert c.seed == args["seed"] and c.data.goal == args["goal"] and c.data.horizon == args["h"]
    assert c.model.head == args["head"] and c.demo.enabled and c.demo.max_horizon == 90


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
