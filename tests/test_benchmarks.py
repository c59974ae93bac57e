"""benchmarks/train_step.py at the tiny size: every field it reports, and its comparison table."""

import math

from benchmarks import train_step


def test_train_step_benchmark_reports_every_figure(capsys):
  r = train_step.run_one('tiny', steps=2, parts=True)
  assert r['config'] == 'tiny' and r['batch'] == 8 and r['params_m'] > 0
  for key in ('compile_s', 'ms', 'ms_min', 'ms_max', 'gflop', 'achieved_gflops', 'rss_mb'):
    assert r[key] > 0 and math.isfinite(r[key]), key
  assert r['ms_min'] <= r['ms'] <= r['ms_max']
  assert all(p > 0 for p in r['peak_gflops']) and 0 < r['frac_of_peak'] < 1.5
  assert math.isfinite(r['loss'])
  assert set(r['parts']) == {'image_fwd_bwd', 'loss_fwd_bwd', 'optimizer_ema'}
  assert all(v > 0 for v in r['parts'].values())

  other = dict(r, ms=2 * r['ms'])
  train_step._table([('tiny', [r, r], [other, other])], 'B')
  row = capsys.readouterr().out.strip().splitlines()[-1]
  assert row.startswith('| tiny |') and row.endswith('2.00, 2.00; **2.00** |')
