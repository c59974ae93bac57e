"""The train state and the pure train step: optimiser, init, loss + AdamW + EMA, FSDP jit.

Kept apart from train.py (which re-exports every name) so that code needing only the step, the
GPU check and the FSDP memory benchmark (benchmarks/), imports jax, flax, optax and the model, and
none of the data pipeline (Grain, TFDS), checkpointing (orbax) or logging (tensorboardX).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from egodex_jax import sharding as sharding_lib
from egodex_jax.data import batch as batch_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # [] int32, updates done
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array           # [2] uint32; the step's key is fold_in(rng, step), so resuming is exact


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


# ----------------------------------------------------------------------------- state and step

def init_state(policy, optimizer, obs: dict, seed: int) -> TrainState:
  """`obs`: normalised, any batch size (the parameters do not depend on it)."""
  # Two streams: the parameters' init key is never one of the steps' keys.
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = policy.init(init_rng, obs)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    ema_params=jax.tree.map(jnp.copy, params), rng=step_rng)


def train_step(state: TrainState, batch: dict, *, policy, optimizer, schedule, normalizer,
               ema_decay: float, min_confidence: float = 0.0):
  """(state, batch in canonical metres) -> (state, metrics): loss, gradients, AdamW, EMA.
  min_confidence > 0: the chunk's low-confidence keypoint dims leave the loss too."""
  if min_confidence > 0:
    batch = dict(batch, padding=batch_lib.loss_padding(batch, min_confidence))
  batch = normalizer.normalize_batch(batch)
  rng = jax.random.fold_in(state.rng, state.step)
  (loss, aux), grads = jax.value_and_grad(
      lambda p: policy.loss(p, batch, rng, train=True), has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # Warmed-up decay: early on the average would otherwise be dominated by the random init.
  decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
  ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
  metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state.step))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema), metrics


def abstract_state(policy, optimizer, obs: dict, seed: int, mesh, min_shard_size: int = 2**14):
  """(ShapeDtypeStructs with shardings, the shardings) of the TrainState; allocates nothing."""
  shapes = jax.eval_shape(lambda b: init_state(policy, optimizer, b, seed), obs)
  shardings = sharding_lib.tree_shardings(mesh, shapes, min_shard_size)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
  return abstract, shardings


def create_state(policy, optimizer, obs: dict, seed: int, shardings) -> TrainState:
  """Initialises the state directly into its shardings (no full copy on one device first)."""
  init = jax.jit(lambda b: init_state(policy, optimizer, b, seed), out_shardings=shardings)
  return init(obs)


def jit_train_step(step_fn, mesh, state_shardings):
  """jax.jit with the state FSDP-sharded (and donated), the batch over every device."""
  return jax.jit(step_fn,
                 in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                 donate_argnums=(0,))
