"""Training: optimiser, state, the jitted sharded step, and the loop (read top to bottom).

Workdir layout (`--workdir=DIR`):
  DIR/config.json             the resolved config of the latest start (also inside each checkpoint)
  DIR/metrics.jsonl           one JSON object per logged step: step, loss, lr, grad_norm,
                              steps_per_s, samples_per_s (+ the policy's own metrics); evaluation
                              rows carry `eval/...` keys (Best-of-K figures, metres)
  DIR/tensorboard/            TensorBoard event files of the same scalars (tensorboardX, no TF)
  DIR/loss.png                the training-loss curve, drawn at the end of a run
  DIR/checkpoints/<step>/     orbax: state/ (step, params, opt_state, ema_params, rng), data/ (the
                              Grain iterator, one JSON per process), config/, norm_stats/
  DIR/eval_results.json, .md  Best-of-K of the EMA params on the test split (end of training,
                              or --mode=eval), written by egodex_jax.evaluate.write_results
A run started on a workdir that holds a checkpoint resumes from its latest step; SIGTERM saves a
checkpoint and exits cleanly; a NaN/inf loss stops the run, naming the step (the last good
checkpoint stays).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from egodex_jax import checkpoint as ckpt_lib
from egodex_jax import metrics as metrics_lib
from egodex_jax import sharding as sharding_lib

# The batch keys the policy reads (docs/interfaces.md); the rest stays on the host.
POLICY_KEYS = ('image', 'goal_image', 'state', 'actions', 'padding', 'instruction_id')


class TrainingError(RuntimeError):
  """A run that must stop (non-finite loss, ...); str(e) is one sentence for the user."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # [] int32, updates done
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array           # [2] uint32; the step's key is fold_in(rng, step), so resuming is exact


# ----------------------------------------------------------------------------- data and model

class UserError(Exception):
  """Bad input a user can fix: printed as one line, exit status 1, no traceback."""


@dataclasses.dataclass
class Data:
  """What the model and the loops need to know about the dataset on disk."""
  data_dir: str
  meta: Any
  instructions: list
  tasks: list
  norm_stats: dict
  normalizer: Any


def missing_dataset_message(data_dir: str) -> str:
  return (f'No EgoDex dataset at {data_dir} (looked for {data_dir}/egodex/<config>/<version>/'
          'dataset_info.json and egodex_meta.json). Either build it from the raw EgoDex files with '
          f'`python -m tfds_builder.egodex --raw_dir RAW --data_dir {data_dir}` (or point '
          '--config.data.data_dir at a built one), or run the demo on synthetic data: '
          '`python -m egodex_jax.main --config=configs/fm_encdec.py:demo --workdir=workdirs/demo`.')


def load_data(config) -> Data:
  from egodex_jax.data import normalize, pipeline
  data_dir = os.path.abspath(os.path.expanduser(config.data.data_dir))
  if config.data.synthetic:
    from egodex_jax import demo
    demo.ensure_dataset(config)
  try:
    meta = pipeline.load_metadata(data_dir)
  except FileNotFoundError:
    raise UserError(missing_dataset_message(data_dir)) from None
  if meta.norm_stats is None:
    raise UserError(f'{meta.data_dir}: norm_stats.json is missing (the build did not finish; '
                    'rebuild the dataset).')
  if config.data.horizon > meta.max_horizon:
    raise UserError(f'data.horizon={config.data.horizon} exceeds the {meta.max_horizon} future '
                    f'frames stored in {meta.data_dir}.')
  return Data(data_dir=meta.data_dir, meta=meta, instructions=list(meta.instructions),
              tasks=list(meta.tasks), norm_stats=meta.norm_stats,
              normalizer=_normalizer(meta, config))


def _normalizer(meta, config):
  from egodex_jax.data import normalize
  try:
    return normalize.Normalizer(meta.norm_stats, config.data.normalization,
                                config.data.get('action_repr', 'absolute'))
  except ValueError as e:
    raise UserError(f'{meta.data_dir}/norm_stats.json: {e}.') from None


def make_policy(config, data: Data):
  from egodex_jax.models import policies
  return policies.make_policy(config.model, horizon=config.data.horizon,
                              instructions=data.instructions, goal=config.data.goal)


def _dataset(config, data: Data, split: str, batch_size: int, *, shuffle: bool, seed: int,
             sharded: bool, **kw):
  import jax
  from egodex_jax.data import pipeline
  return pipeline.make_dataset(
      data.data_dir, split, batch_size=batch_size, horizon=config.data.horizon,
      goal=config.data.goal, seed=seed, shuffle=shuffle, meta=data.meta,
      shard_index=jax.process_index() if sharded else 0,
      shard_count=jax.process_count() if sharded else 1, **kw)


def make_train_iter(config, data: Data, local_batch_size: int):
  """This process's shard of the (shuffled, repeating) training split: a checkpointable iterator."""
  return iter(_dataset(config, data, 'train', local_batch_size, shuffle=True, seed=config.seed,
                       sharded=True, data_fraction=config.data.data_fraction,
                       worker_count=config.data.worker_count))


def dummy_example(config, data: Data) -> dict:
  """A one-row batch of zeros with the pipeline's layout (parameter shapes need nothing more)."""
  from egodex_jax.models import policies
  return policies.dummy_batch(batch_size=1, horizon=config.data.horizon,
                              image_size=data.meta.image_size, goal=config.data.goal)


def run_evaluation(config, data: Data, policy, params, *, num_batches: int,
                   workdir: str | None = None) -> dict:
  """Best-of-K of `params` on the test split with the baselines (static, mean trajectory).

  num_batches < 0: the whole split; else num_batches batches' worth of samples spread evenly over
  it. Every process evaluates the same (unsharded) samples; only process 0 writes.
  """
  import jax
  from egodex_jax import evaluate
  bs = config.eval.batch_size
  test = _dataset(config, data, config.eval.split, bs, shuffle=False, seed=config.seed,
                  sharded=False, worker_count=0, num_epochs=1, drop_remainder=False,
                  max_samples=None if num_batches < 0 else num_batches * bs)
  train_it = _dataset(config, data, 'train', bs, shuffle=True, seed=config.seed + 1,
                      sharded=False, worker_count=0)
  mean_delta = evaluate.mean_trajectory(iter(train_it), max_batches=4)
  return evaluate.evaluate(
      policy, params, iter(test), data.normalizer, ks=tuple(config.eval.ks),
      rng=jax.random.PRNGKey(config.seed + 2), tasks=data.tasks, mean_trajectory=mean_delta,
      workdir=workdir if jax.process_index() == 0 else None)


# ----------------------------------------------------------------------------- optimiser

def make_schedule(optim, num_steps: int) -> optax.Schedule:
  """Linear warmup, then constant or cosine (to lr * end_factor at num_steps)."""
  warmup = max(0, min(int(optim.warmup_steps), num_steps))
  if optim.schedule == 'constant':
    after = optax.constant_schedule(optim.lr)
  elif optim.schedule == 'cosine':
    after = optax.cosine_decay_schedule(optim.lr, max(1, num_steps - warmup), alpha=optim.end_factor)
  else:
    raise ValueError(f"optim.schedule={optim.schedule!r}: expected 'constant' or 'cosine'.")
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), after], [warmup])


def make_optimizer(optim, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = make_schedule(optim, num_steps)
  chain = []
  if optim.grad_clip and optim.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(optim.grad_clip))
  chain.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))
  return optax.chain(*chain), schedule


# ----------------------------------------------------------------------------- the step

def normalize_batch(normalizer, batch: dict) -> dict:
  """Canonical metres -> the policy's space (inside jit); keeps only the keys the policy reads."""
  out = {k: batch[k] for k in POLICY_KEYS if k in batch}
  if normalizer is not None:
    # Actions first: a state-relative representation subtracts the canonical state.
    out['actions'] = normalizer.normalize_actions(out['actions'], state=out['state'])
    out['state'] = normalizer.normalize_state(out['state'])
  return out


def init_state(policy, optimizer, batch: dict, seed: int) -> TrainState:
  """`batch`: normalised, any batch size (the parameters do not depend on it)."""
  rng = jax.random.PRNGKey(seed)
  params = policy.init(jax.random.fold_in(rng, 1), batch)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    ema_params=jax.tree.map(jnp.copy, params), rng=rng)


def make_train_step(policy, optimizer, schedule, normalizer, *, ema_decay: float,
                    inject_nan_at_step: int = -1) -> Callable:
  """(state, batch) -> (state, metrics): loss, gradients, AdamW, EMA; batch in canonical metres."""

  def step_fn(state: TrainState, batch: dict):
    batch = normalize_batch(normalizer, batch)
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      loss, aux = policy.loss(params, batch, rng, train=True)
      if inject_nan_at_step >= 0:  # debug knob: exercises the NaN guard for real
        loss = loss * jnp.where(state.step + 1 == inject_nan_at_step, jnp.nan, 1.0)
      return loss, aux

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Warmed-up decay: early on the average would otherwise be dominated by the random init.
    decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    metrics = dict(aux)
    metrics.update(loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema)
    return new_state, metrics

  return step_fn


def abstract_state(policy, optimizer, example_batch: dict, seed: int, mesh,
                   min_shard_size: int = 2**14):
  """(ShapeDtypeStructs with shardings, the shardings) of the TrainState; allocates nothing."""
  shapes = jax.eval_shape(lambda b: init_state(policy, optimizer, b, seed), example_batch)
  shardings = sharding_lib.tree_shardings(mesh, shapes, min_shard_size)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
  return abstract, shardings


def create_state(policy, optimizer, example_batch: dict, seed: int, shardings) -> TrainState:
  """Initialises the state directly into its shardings (no full copy on one device first)."""
  init = jax.jit(lambda b: init_state(policy, optimizer, b, seed), out_shardings=shardings)
  return init(example_batch)


def jit_train_step(step_fn, mesh, state_shardings):
  """jax.jit with the state FSDP-sharded (and donated), the batch over every device."""
  return jax.jit(step_fn,
                 in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                 donate_argnums=(0,))


# ----------------------------------------------------------------------------- pre-emption

class Preemption:
  """SIGTERM (and SIGINT) set a flag; the loop saves at the next step and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    print(f'Received signal {signum}: saving a checkpoint and stopping.', flush=True)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)

  def should_stop(self) -> bool:
    """Every process must agree, or the collective save would hang."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.array(self.requested, np.int32))
    return bool(np.any(flags))


# ----------------------------------------------------------------------------- the loop

def _to_host(tree):
  """Replicated global arrays -> NumPy (float() fails on arrays spanning other processes)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _host_params(params):
  """Params usable by a single-process jitted function (eval): gathered when multi-host."""
  if jax.process_count() == 1:
    return params
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(params, tiled=True)


def train(config, workdir: str, *, data=None) -> dict:
  """Trains (or resumes) in `workdir`; returns the final evaluation results (or {}).

  `data`: a `Data` bundle (see `egodex_jax.main.load_data`); built from config when None.
  """
  data = data or load_data(config)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  num_steps = int(config.train.num_steps)

  mesh = sharding_lib.make_mesh(config.mesh.fsdp)
  local_bs = sharding_lib.check_batch_size(config.data.batch_size, mesh)
  policy = make_policy(config, data)
  optimizer, schedule = make_optimizer(config.optim, num_steps)
  train_iter = make_train_iter(config, data, local_bs)

  # Parameters from a one-row example (the shapes do not depend on the batch size).
  example = dummy_example(config, data)
  abstract, shardings = abstract_state(policy, optimizer, example, config.seed, mesh,
                                       config.mesh.min_shard_size)

  manager = ckpt_lib.make_manager(workdir, save_every=config.train.save_every,
                                  keep=config.train.keep,
                                  async_save=config.train.async_checkpoint)
  config_json = config.to_json_best_effort()
  if manager.latest_step() is not None:
    state, start = ckpt_lib.restore(manager, abstract, data_iter=train_iter)
    if is_main:
      print(f'Resuming from {ckpt_lib.checkpoint_dir(workdir)} at step {start}.', flush=True)
  else:
    state, start = create_state(policy, optimizer, example, config.seed, shardings), 0
  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config_json)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    print(f'Model: {config.model.backbone} + {config.model.head}, {n / 1e6:.2f}M parameters; '
          f'mesh {dict(mesh.shape)}; global batch {config.data.batch_size}; '
          f'{num_steps} steps.', flush=True)

  step_fn = make_train_step(policy, optimizer, schedule, data.normalizer,
                            ema_decay=config.optim.ema_decay,
                            inject_nan_at_step=config.train.inject_nan_at_step)
  train_step = jit_train_step(step_fn, mesh, shardings)
  # Other processes log only when asked (tests of multi-host runs compare their losses).
  proc = jax.process_index()
  writer = metrics_lib.MetricWriter(
      workdir, total_steps=num_steps, batch_size=config.data.batch_size, start_step=start,
      enabled=is_main or config.train.log_all_processes, tensorboard=is_main, progress=is_main,
      filename='metrics.jsonl' if is_main else f'metrics.process{proc}.jsonl')
  saved = [start]  # the last step saved (or restored): never save one step twice

  def save(s, force=False):
    if s != saved[0] and ckpt_lib.save(manager, s, state, data_iter=train_iter,
                                       config_json=config_json, norm_stats=data.norm_stats,
                                       force=force):
      saved[0] = s

  def check_finite(step, m):
    loss = float(_to_host(m['loss']))
    if not np.isfinite(loss):
      last = manager.latest_step()
      raise TrainingError(
          f'Non-finite loss ({loss}) at step {step}; stopping. The last good checkpoint is '
          + (f'step {last} in {ckpt_lib.checkpoint_dir(workdir)}.' if last is not None
             else 'none (no checkpoint was written yet).'))
    return loss

  log_every = max(1, int(config.train.log_every))
  step = start
  pending = None  # (step, metrics) of the previous step, checked one step late to keep dispatching
  t_start = time.perf_counter()
  try:
    with Preemption() as preempt:
      while step < num_steps:
        batch = sharding_lib.global_batch(
            {k: v for k, v in next(train_iter).items() if k in POLICY_KEYS}, mesh)
        state, m = train_step(state, batch)
        step += 1
        if pending is not None:
          check_finite(*pending)
        pending = (step, m)
        if step == start + 1:
          check_finite(*pending)
          writer.reset_timer(step)  # steps/s excludes compilation
        if step % log_every == 0 or step == num_steps:
          check_finite(*pending)
          writer.write(step, _to_host(m))
        if config.train.eval_every and step % config.train.eval_every == 0 and step < num_steps:
          results = evaluate_params(config, data, policy, _host_params(state.ema_params),
                                    num_batches=config.eval.num_batches)
          writer.write(step, {k: v for k, v in results.get('model', {}).items()
                               if isinstance(v, (int, float))}, prefix='eval/')
        if step % config.train.save_every == 0 or step == num_steps:
          check_finite(*pending)
          save(step, force=step == num_steps)  # the manager saves on its interval otherwise
        if preempt.should_stop() and step < num_steps:
          check_finite(*pending)
          save(step, force=True)
          manager.wait_until_finished()
          if is_main:
            print(f'Stopped at step {step} on request; checkpoint saved. Run the same command '
                  'to resume.', flush=True)
          writer.close()
          return {}
      manager.wait_until_finished()
  except BaseException:
    manager.wait_until_finished()  # never leave a half-written async save behind
    writer.close()
    raise

  if is_main:
    elapsed = time.perf_counter() - t_start
    print(f'Trained steps {start}..{step} in {elapsed:.1f} s.', flush=True)
  writer.close()
  results = {}
  if config.eval.final_num_batches != 0:
    t_eval = time.perf_counter()
    results = evaluate_params(config, data, policy, _host_params(state.ema_params),
                              num_batches=config.eval.final_num_batches, workdir=workdir)
    if is_main:
      print(f'Evaluated {results.get("num_samples", 0)} unpadded test samples in '
            f'{time.perf_counter() - t_eval:.1f} s (compilation included).', flush=True)
  if is_main:
    metrics_lib.plot_loss_curve(workdir)
  return results


def evaluate_params(config, data, policy, params, *, num_batches: int, workdir=None) -> dict:
  return run_evaluation(config, data, policy, params, num_batches=num_batches, workdir=workdir)


def restore_for_eval(config, workdir: str, data: Data):
  """(policy, EMA params, step) from the latest checkpoint in `workdir`."""
  manager = ckpt_lib.make_manager(workdir, save_every=1, keep=config.train.keep, async_save=False)
  if manager.latest_step() is None:
    raise UserError(f'{ckpt_lib.checkpoint_dir(workdir)}: no checkpoint to evaluate (train first '
                    'with --mode=train).')
  mesh = sharding_lib.make_mesh(config.mesh.fsdp)
  policy = make_policy(config, data)
  optimizer, _ = make_optimizer(config.optim, int(config.train.num_steps))
  abstract, _ = abstract_state(policy, optimizer, dummy_example(config, data), config.seed, mesh,
                               config.mesh.min_shard_size)
  state, step = ckpt_lib.restore(manager, abstract)
  return policy, _host_params(state.ema_params), step


def evaluate_checkpoint(config, workdir: str) -> dict:
  """--mode=eval: Best-of-K of the latest checkpoint's EMA params; writes eval_results.json/md."""
  data = load_data(config)
  policy, params, step = restore_for_eval(config, workdir, data)
  if jax.process_index() == 0:
    print(f'Evaluating the EMA parameters of step {step} from {workdir}.', flush=True)
  return run_evaluation(config, data, policy, params, num_batches=config.eval.final_num_batches,
                        workdir=workdir)
