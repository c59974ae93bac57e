"""Training, read top to bottom: data, normaliser, model, the loop (the optimiser, the state and
the pure step: step.py; pre-emption and the non-finite-loss check: guards.py).

Workdir layout (`--workdir=DIR`):
  DIR/config.json             the resolved config of the latest start (also inside each checkpoint)
  DIR/metrics.jsonl           one JSON object per logged step: step, loss, lr, grad_norm,
                              steps_per_s, samples_per_s, data_wait_s (+ the policy's metrics);
                              evaluation rows carry `eval/...` keys (Best-of-K figures, metres)
  DIR/tensorboard/            TensorBoard event files of the same scalars (tensorboardX, no TF)
  DIR/loss.png                the training-loss curve, drawn at the end of a run
  DIR/checkpoints/<step>/     orbax: state/ (step, params, opt_state, ema_params, rng), data/ (the
                              Grain iterator, one JSON per process), config/, normalizer/,
                              policy/ (policy_spec: inference without the dataset)
  DIR/eval_results.json, .md  Best-of-K of the EMA params on the test split (end of training,
                              or --mode=eval), written by egodex_jax.evaluate
A run started on a workdir that holds a checkpoint resumes from its latest step, with the
normaliser stored in the checkpoint; SIGTERM saves a checkpoint and exits cleanly; a NaN/inf
loss stops the run, naming the step (the last good checkpoint stays).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import numpy as np

from egodex_jax import checkpoint as ckpt_lib
from egodex_jax import guards
from egodex_jax import evaluate
from egodex_jax.guards import TrainingError  # noqa: F401  (train.TrainingError, as before)
from egodex_jax import metrics as metrics_lib
from egodex_jax import sharding as sharding_lib
from egodex_jax.data import batch as batch_lib
from egodex_jax.data import holdout
from egodex_jax.data import normalize
from egodex_jax.data import pipeline
from egodex_jax.models import config as config_lib
from egodex_jax.models import policy as policy_lib
# The state and the pure step live in step.py (importable without the data pipeline); train.X
# names them as before.
from egodex_jax.step import (TrainState, abstract_state, create_state, init_state,  # noqa: F401
                             jit_train_step, make_optimizer, make_schedule, train_step)


class UserError(Exception):
  """Bad input a user can fix: printed as one line, exit status 1, no traceback."""


# ----------------------------------------------------------------------------- data

def missing_dataset_message(data_dir: str) -> str:
  return (f'No EgoDex dataset at {data_dir} (looked for {data_dir}/egodex/<config>/<version>/'
          'dataset_info.json and egodex_meta.json). Either build it from the raw EgoDex files with '
          f'`python -m tfds_builder.egodex --raw_dir RAW --data_dir {data_dir}` (or point '
          '--config.data.data_dir at a built one), or run the demo on synthetic data: '
          '`python -m egodex_jax.main --config=configs/fm_encdec.py:demo --workdir=workdirs/demo`.')


def load_meta(config) -> pipeline.DatasetMeta:
  """The built dataset's metadata, without the held-out tasks' training episodes; a missing or
  unusable dataset, or a holdout fragment that matches no task, is a one-sentence UserError."""
  data_dir = os.path.abspath(os.path.expanduser(config.data.data_dir))
  try:
    meta = pipeline.load_metadata(data_dir)
  except FileNotFoundError:
    raise UserError(missing_dataset_message(data_dir)) from None
  if config.data.horizon > meta.max_horizon:
    raise UserError(f'data.horizon={config.data.horizon} exceeds the {meta.max_horizon} future '
                    f'frames stored in {meta.data_dir}.')
  held = held_out_tasks(config, meta)
  if not held:
    return meta
  kept = holdout.without_tasks(meta, held)
  if not kept.episodes.get('train'):
    raise UserError(f'data.holdout_tasks={config.data.holdout_tasks!r} holds out every task '
                    f'with training episodes in {meta.data_dir}.')
  if jax.process_index() == 0:
    print(f'Held-out tasks (data.holdout_tasks={config.data.holdout_tasks!r}): {", ".join(held)}; '
          f'{len(meta.episodes["train"]) - len(kept.episodes["train"])} training episodes left '
          'out, their test episodes evaluated apart.', flush=True)
  return kept


def held_out_tasks(config, meta) -> list[str]:
  """The task names `config.data.holdout_tasks` matches (data/holdout.py), [] when none."""
  try:
    return holdout.resolve(config.data.get('holdout_tasks', ''), meta.tasks)
  except ValueError as e:
    raise UserError(f'{e}.') from None


def fit_normalizer(config, meta) -> normalize.Normalizer:
  """Statistics of exactly what this run trains on: its episodes (data_fraction), rows 1..H."""
  stats = normalize.horizon_stats(
      pipeline.read_windows(meta, 'train', data_fraction=config.data.data_fraction),
      config.data.horizon)
  try:
    return normalize.Normalizer(stats, config.data.normalization, config.data.action_repr)
  except ValueError as e:
    raise UserError(f'{meta.data_dir}: {e}.') from None


def dataset_signature(config, meta) -> dict:
  """What a checkpoint must agree on with the dataset it is resumed or evaluated on."""
  return dict(instructions=list(meta.instructions), tasks=list(meta.tasks),
              horizon=int(config.data.horizon), normalization=config.data.normalization,
              action_repr=config.data.action_repr,
              holdout_tasks=','.join(held_out_tasks(config, meta)))


def check_signature(saved: dict | None, now: dict, workdir: str) -> None:
  """A checkpoint used with another representation, horizon or vocabulary is refused by name."""
  for key, value in now.items():
    if saved is None or key not in saved or saved[key] == value:
      continue
    if isinstance(value, list):
      raise UserError(f'{workdir} was trained on a dataset with other {key} ({len(saved[key])} '
                      f'vs {len(value)} now); evaluate or resume it on the dataset it was '
                      'trained on, or use a new workdir.')
    raise UserError(f'{workdir} was trained with data.{key}={saved[key]!r}, today\'s config says '
                    f'{value!r}: pass --config.data.{key}={saved[key]!r} or use a new workdir.')


def _dataset(config, meta, split: str, batch_size: int, *, shuffle: bool, seed: int,
             sharded: bool, **kw):
  return pipeline.make_dataset(
      meta.data_dir, split, batch_size=batch_size, horizon=config.data.horizon,
      goal=config.data.goal, seed=seed, shuffle=shuffle, meta=meta,
      shard_index=jax.process_index() if sharded else 0,
      shard_count=jax.process_count() if sharded else 1, **kw)


def make_train_iter(config, meta, local_batch_size: int):
  """This process's shard of the (shuffled, repeating) training split: a checkpointable iterator."""
  return iter(_dataset(config, meta, 'train', local_batch_size, shuffle=True, seed=config.seed,
                       sharded=True, data_fraction=config.data.data_fraction,
                       worker_count=config.data.worker_count,
                       confidence=config.data.min_confidence > 0))


def policy_spec(config, meta) -> dict:
  """What the policy is built from besides the config; a learned vocabulary sees the training
  split's words only. Saved in every checkpoint ('policy'), so inference needs no dataset."""
  del config
  return dict(instructions=list(meta.instructions), image_size=int(meta.image_size),
              vocab_instructions=sorted({e['instruction'] for e in meta.episodes.get('train', [])}))


def policy_from_spec(config, spec: dict):
  """The policy of `config.model` and `config.data` (horizon, goal) with a `policy_spec`."""
  return policy_lib.make_policy(config.model, horizon=config.data.horizon,
                                instructions=spec['instructions'], image_size=spec['image_size'],
                                goal=config.data.goal,
                                vocab_instructions=spec['vocab_instructions'])


def make_policy(config, meta):
  """The policy of `config.model` on the dataset of `meta`."""
  return policy_from_spec(config, policy_spec(config, meta))


def example_obs(config, meta) -> dict:
  """A one-row batch of zeros with the pipeline's layout (parameter shapes need nothing more)."""
  return batch_lib.dummy_batch(batch_size=1, horizon=config.data.horizon,
                               image_size=meta.image_size, goal=config.data.goal)


# ----------------------------------------------------------------------------- the loop

def _host_params(params):
  """Params usable by a single-process jitted function (eval): gathered when multi-host."""
  if jax.process_count() == 1:
    return params
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(params, tiled=True)


def run_evaluation(config, meta, evaluator, params, normalizer, *, num_batches: int,
                   workdir: str | None = None) -> dict:
  """Best-of-K of `params` on the test split with the baselines (static, mean trajectory).

  num_batches < 0: the whole split; else num_batches batches' worth of samples spread evenly over
  it. Every process evaluates the same (unsharded) samples; only process 0 writes.
  """
  bs = config.eval.batch_size
  test = _dataset(config, meta, config.eval.split, bs, shuffle=False, seed=config.seed,
                  sharded=False, worker_count=0, num_epochs=1, drop_remainder=False,
                  max_samples=None if num_batches < 0 else num_batches * bs,
                  confidence=evaluator.min_confidence > 0)
  return evaluator(params, iter(test), rng=jax.random.PRNGKey(config.seed + 2), tasks=meta.tasks,
                   mean_trajectory=np.asarray(normalizer.stats['mean_delta'], np.float32),
                   reference=_oracle(config, meta, num_batches) if workdir else None,
                   held_out=held_out_tasks(config, meta),
                   workdir=workdir if jax.process_index() == 0 else None)


def make_evaluator(config, policy, normalizer) -> evaluate.Evaluator:
  return evaluate.Evaluator(policy, normalizer, ks=tuple(config.eval.ks),
                            min_confidence=config.eval.get('min_confidence', 0.0))


def _oracle(config, meta, num_batches: int) -> dict | None:
  """The oracle rows of a synthetic run (what is achievable, evaluate/oracle.py), else None."""
  if not config.demo.enabled:
    return None
  d = config.demo
  bs = config.eval.batch_size
  return evaluate.oracle_results(
      meta.data_dir, d.raw_dir, config.eval.split, horizon=config.data.horizon,
      ks=tuple(config.eval.ks), max_samples=None if num_batches < 0 else num_batches * bs,
      tasks=meta.tasks, source=dict(seed=d.seed, min_frames=d.min_frames, max_frames=d.max_frames))


def _due(step: int, every: int) -> bool:
  return every > 0 and step % every == 0


def train(config, workdir: str) -> dict:
  """Trains (or resumes) in `workdir`; returns the final evaluation results (or {})."""
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  num_steps = int(config.train.num_steps)
  mesh = sharding_lib.make_mesh(config.mesh.fsdp)
  local_bs = sharding_lib.check_batch_size(config.data.batch_size, mesh)

  # Data and normaliser: a resumed run keeps the normaliser it was trained with.
  meta = load_meta(config)
  manager = ckpt_lib.make_manager(workdir, save_every=config.train.save_every,
                                  keep=config.train.keep,
                                  async_save=config.train.async_checkpoint)
  resuming = manager.latest_step() is not None
  signature = dataset_signature(config, meta)
  if resuming:
    config = with_checkpoint_layout(config, manager, workdir)
    normalizer = restore_normalizer(manager, workdir, signature)
  else:
    normalizer = fit_normalizer(config, meta)

  # Model, optimiser, state.
  policy = make_policy(config, meta)
  optimizer, schedule = make_optimizer(config.optim, num_steps)
  train_iter = make_train_iter(config, meta, local_bs)
  obs = example_obs(config, meta)
  abstract, shardings = abstract_state(policy, optimizer, obs, config.seed, mesh,
                                       config.mesh.min_shard_size)
  config_json = config.to_json_best_effort()
  if resuming:
    state, start = ckpt_lib.restore(manager, abstract, data_iter=train_iter)
    if is_main:
      print(f'Resuming from {ckpt_lib.checkpoint_dir(workdir)} at step {start}.', flush=True)
  else:
    state, start = create_state(policy, optimizer, obs, config.seed, shardings), 0
  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config_json)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    print(f'Model: {config.model.backbone} + {config.model.head}, {n / 1e6:.2f}M parameters; '
          f'mesh {dict(mesh.shape)}; global batch {config.data.batch_size}; '
          f'{num_steps} steps.', flush=True)

  step_fn = jit_train_step(
      functools.partial(train_step, policy=policy, optimizer=optimizer, schedule=schedule,
                        normalizer=normalizer, ema_decay=config.optim.ema_decay,
                        min_confidence=config.data.min_confidence),
      mesh, shardings)
  evaluator = make_evaluator(config, policy, normalizer)
  # Other processes log only when asked (tests of multi-host runs compare their losses).
  proc = jax.process_index()
  writer = metrics_lib.MetricWriter(
      workdir, total_steps=num_steps, batch_size=config.data.batch_size, start_step=start,
      enabled=is_main or config.train.log_all_processes, tensorboard=is_main, progress=is_main,
      filename='metrics.jsonl' if is_main else f'metrics.process{proc}.jsonl')
  guard = guards.FiniteGuard(manager, workdir)
  saved = [start]  # the last step saved (or restored): never save one step twice

  def save(s, force=False):
    if s != saved[0] and ckpt_lib.save(manager, s, state, data_iter=train_iter,
                                       config_json=config_json,
                                       normalizer={**normalizer.to_json(),
                                                   'signature': signature},
                                       policy=policy_spec(config, meta), force=force):
      saved[0] = s

  step, data_wait = start, 0.0
  t_start = time.perf_counter()
  try:
    with guards.Preemption() as preempt:
      while step < num_steps:
        t0 = time.perf_counter()
        batch = sharding_lib.global_batch(
            batch_lib.select(next(train_iter), batch_lib.TRAIN_KEYS), mesh)
        data_wait += time.perf_counter() - t0
        state, m = step_fn(state, batch)
        step += 1
        guard.push(step, m)
        last, stop = step == num_steps, preempt.should_stop() and step < num_steps
        save_due = _due(step, config.train.save_every) or last or stop
        if step == start + 1:
          guard.sync()
          writer.reset_timer(step)  # steps/s excludes compilation
          data_wait = 0.0
        if _due(step, max(1, int(config.train.log_every))) or last:
          host = guard.sync()
          writer.write(step, dict(host, data_wait_s=data_wait))
          data_wait = 0.0
        if _due(step, config.train.eval_every) and not last:
          results = run_evaluation(config, meta, evaluator, _host_params(state.ema_params),
                                   normalizer, num_batches=config.eval.num_batches)
          writer.write(step, {k: v for k, v in results.get('model', {}).items()
                               if isinstance(v, (int, float))}, prefix='eval/')
        if save_due:
          guard.sync()  # never checkpoint a non-finite state
          save(step, force=last or stop)  # the manager saves on its interval otherwise
        if stop:
          manager.wait_until_finished()
          if is_main:
            print(f'Stopped at step {step} on request; checkpoint saved. Run the same command '
                  'to resume.', flush=True)
          writer.close()
          return {}
      guard.sync()
      manager.wait_until_finished()
  except BaseException:
    manager.wait_until_finished()  # never leave a half-written async save behind
    writer.close()
    raise

  if is_main:
    print(f'Trained steps {start}..{step} in {time.perf_counter() - t_start:.1f} s.', flush=True)
  writer.close()
  results = {}
  if config.eval.final_num_batches != 0:
    t_eval = time.perf_counter()
    results = run_evaluation(config, meta, evaluator, _host_params(state.ema_params), normalizer,
                             num_batches=config.eval.final_num_batches, workdir=workdir)
    if is_main:
      print(f'Evaluated {results.get("num_samples", 0)} unpadded test samples in '
            f'{time.perf_counter() - t_eval:.1f} s (compilation included).', flush=True)
  if is_main:
    metrics_lib.plot_loss_curve(workdir)
  return results


# ----------------------------------------------------------------------------- a trained workdir

def with_checkpoint_layout(config, manager, workdir: str):
  """`config` with the layer layout (model.scan_layers) the latest checkpoint was saved with: its
  params' tree depends on it. Saved configs without the field are unrolled ones (older runs)."""
  saved = ckpt_lib.restore_json(manager, 'config') or {}
  layout = config_lib.checkpoint_layout(saved.get('model'))
  if config_lib.resolve_config(config.model)['scan_layers'] == layout:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.scan_layers = layout
  if jax.process_index() == 0:
    print(f'{workdir}: its checkpoints were saved with model.scan_layers={layout}; using that '
          'layout.', flush=True)
  return config


def restore_normalizer(manager, workdir: str, signature: dict) -> normalize.Normalizer:
  """The normaliser a checkpoint was trained with, checked against today's config and data."""
  saved = ckpt_lib.restore_json(manager, 'normalizer')
  if saved is None:
    raise UserError(f'{ckpt_lib.checkpoint_dir(workdir)}: the latest checkpoint has no '
                    'normalizer item (written by an older version); retrain in a new workdir.')
  check_signature(saved.get('signature'), signature, workdir)
  return normalize.Normalizer.from_json(saved)


def restore_for_eval(config, workdir: str, meta):
  """(policy, EMA params, normaliser, step) from the latest checkpoint in `workdir`."""
  manager = ckpt_lib.make_manager(workdir, save_every=1, keep=config.train.keep, async_save=False)
  if manager.latest_step() is None:
    raise UserError(f'{ckpt_lib.checkpoint_dir(workdir)}: no checkpoint to evaluate (train first '
                    'with --mode=train).')
  config = with_checkpoint_layout(config, manager, workdir)
  normalizer = restore_normalizer(manager, workdir, dataset_signature(config, meta))
  mesh = sharding_lib.make_mesh(config.mesh.fsdp)
  policy = make_policy(config, meta)
  optimizer, _ = make_optimizer(config.optim, int(config.train.num_steps))
  abstract, _ = abstract_state(policy, optimizer, example_obs(config, meta), config.seed, mesh,
                               config.mesh.min_shard_size)
  state, step = ckpt_lib.restore(manager, abstract)
  return policy, _host_params(state.ema_params), normalizer, step


def evaluate_checkpoint(config, workdir: str) -> dict:
  """--mode=eval: Best-of-K of the latest checkpoint's EMA params; writes eval_results.json/md."""
  meta = load_meta(config)
  policy, params, normalizer, step = restore_for_eval(config, workdir, meta)
  if jax.process_index() == 0:
    print(f'Evaluating the EMA parameters of step {step} from {workdir}.', flush=True)
  evaluator = make_evaluator(config, policy, normalizer)
  return run_evaluation(config, meta, evaluator, params, normalizer,
                        num_batches=config.eval.final_num_batches, workdir=workdir)
