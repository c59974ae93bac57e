"""Best-of-K evaluation (docs/metric.md): the metric, mode coverage, baselines, the evaluator,
result files and plots.

  metric.py     keypoint distances, per-sample minima, BestOfKAccumulator, best_of_k
  modes.py      mode_hits, ModeCoverageAccumulator (synthetic data with a known mode)
  baselines.py  static and mean-trajectory predictions
  evaluator.py  Evaluator (one jitted step, reused) and the one-off evaluate()
  report.py     eval_results.json/.md and the plots
  oracle.py     oracle rows on synthetic data (every episode's modes known), gap_closed
"""

from egodex_jax.evaluate.baselines import mean_trajectory
from egodex_jax.evaluate.evaluator import evaluate
from egodex_jax.evaluate.evaluator import Evaluator
from egodex_jax.evaluate.metric import best_of_k
from egodex_jax.evaluate.metric import BestOfKAccumulator
from egodex_jax.evaluate.metric import DEFAULT_KS
from egodex_jax.evaluate.metric import per_sample_min_distances
from egodex_jax.evaluate.modes import DEFAULT_MODE_MARGIN
from egodex_jax.evaluate.modes import DEFAULT_MODE_RADIUS
from egodex_jax.evaluate.modes import mode_hits
from egodex_jax.evaluate.modes import ModeCoverageAccumulator
from egodex_jax.evaluate.oracle import gap_closed
from egodex_jax.evaluate.oracle import oracle_results
from egodex_jax.evaluate.report import plot_examples
from egodex_jax.evaluate.report import plot_vs_k
from egodex_jax.evaluate.report import results_markdown
from egodex_jax.evaluate.report import scaled_intrinsic
from egodex_jax.evaluate.report import write_results
