"""The policy: a network and a head behind one pure interface, chosen by `config.model` alone.

  policy = make_policy(model_config, horizon=H, instructions=[...], image_size=S, goal=False)
  params = policy.init(rng, batch)
  loss, metrics = policy.loss(params, batch, rng, train=True)
  samples = policy.sample(params, obs, rng, num_samples)      # [K, B, H, 48], normalised space
`batch` / `obs` are normalised (Normalizer.normalize_batch / normalize_obs; keys in
data/batch.py). Sampling encodes the observation once (encoder memory or decoder KV cache) and
reruns only the action part for each of the K samples and S steps, K folded into the batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from egodex_jax import skeleton
from egodex_jax.data import batch as batch_lib
from egodex_jax.models import config as config_lib
from egodex_jax.models import encoders
from egodex_jax.models.network import PolicyNet


def repeat_items(tree, k: int):
  """Leaves [B, ...] -> [K*B, ...], sample-major (row k*B + b is copy k of item b)."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x[None], (k,) + x.shape).reshape(
      (k * x.shape[0],) + x.shape[1:]), tree)


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
  """See the module docstring and docs/interfaces.md. All methods are pure and jittable."""
  config: dict  # the resolved model config
  horizon: int
  goal: bool
  net: PolicyNet
  head: Any
  lang_table: np.ndarray  # [num_instructions, ...]: word ids, or a frozen sentence embedding

  @property
  def num_steps(self) -> int:
    return self.head.num_steps

  @property
  def is_deterministic(self) -> bool:
    """One sample stands for every K (BC)."""
    return self.head.is_deterministic

  def inputs(self, obs) -> dict:
    """The network's inputs from a (normalised) observation: image(s), state, language."""
    ids = jnp.asarray(obs["instruction_id"], jnp.int32)
    out = dict(image=obs["image"], state=obs["state"], lang=jnp.asarray(self.lang_table)[ids])
    if self.goal:
      if "goal_image" not in obs:
        raise KeyError("policy.py: this policy is goal-conditioned but the batch has no "
                       "'goal_image'.")
      out["goal_image"] = obs["goal_image"]
    return out

  def _dummy_xt(self, b):
    if not self.head.takes_noisy_actions:
      return None, None
    return (jnp.zeros((b, self.horizon, skeleton.ACTION_DIM), jnp.float32),
            jnp.zeros((b,), jnp.float32))

  def init(self, rng, obs):
    # One jitted program: run eagerly, every initializer is its own dispatch and compilation.
    return jax.jit(self._init)(rng, obs)

  def _init(self, rng, obs):
    x_t, t = self._dummy_xt(obs["image"].shape[0])
    rng_p, rng_d = jax.random.split(rng)
    variables = self.net.init({"params": rng_p, "dropout": rng_d}, self.inputs(obs), x_t, t,
                              method=PolicyNet.full)
    return variables["params"]

  def loss(self, params, batch, rng, train=True):
    rng_head, rng_drop = jax.random.split(rng)
    inputs = self.inputs(batch)

    def predict(x_t, t):
      return self.net.apply({"params": params}, inputs, x_t, t, train=train,
                            method=PolicyNet.full, rngs={"dropout": rng_drop})

    loss, metrics = self.head.loss(predict, batch["actions"], batch.get("padding"), rng_head)
    return loss, dict(metrics, loss=loss)

  def encode(self, params, obs):
    """Observation part once -> memory pytree (leaves [B, ...])."""
    return self.net.apply({"params": params}, self.inputs(obs), method=PolicyNet.encode)

  def predict(self, params, memory, x_t, t):
    """One evaluation of the action part: memory (leaves [N, ...]), x_t [N, H, 48], t [N]."""
    return self.net.apply({"params": params}, memory, x_t, t, method=PolicyNet.decode)

  def _samples(self, make_predict, b, k, rng):
    """[k, B, H, 48] from the head; `make_predict(n)` is the closure over n copies of each item."""
    n = 1 if self.is_deterministic else k  # a deterministic head: computed once
    x = self.head.sample(make_predict(n), (n * b, self.horizon, skeleton.ACTION_DIM), rng)
    x = x.reshape((n, b) + x.shape[1:])
    return jnp.broadcast_to(x, (k,) + x.shape[1:])

  def sample_from_memory(self, params, memory, rng, num_samples: int):
    """-> [K, B, H, 48] from an encoded observation (`encode`)."""

    def make_predict(n):
      memory_n = repeat_items(memory, n)
      return lambda x_t, t: self.predict(params, memory_n, x_t, t)

    return self._samples(make_predict, jax.tree.leaves(memory)[0].shape[0], num_samples, rng)

  def sample(self, params, obs, rng, num_samples: int):
    """[K, B, H, 48] samples in normalised space; the observation is encoded once."""
    return self.sample_from_memory(params, self.encode(params, obs), rng, num_samples)

  def sample_naive(self, params, obs, rng, num_samples: int):
    """Reference sampler: the full network (observation included) at every step."""

    def make_predict(n):
      inputs = repeat_items(self.inputs(obs), n)
      return lambda x_t, t: self.net.apply({"params": params}, inputs, x_t, t,
                                           method=PolicyNet.full)

    return self._samples(make_predict, obs["image"].shape[0], num_samples, rng)


def make_policy(model_config, *, horizon: int, instructions, image_size: int | None = None,
                goal: bool = False, vocab_instructions=None) -> Policy:
  """Builds the policy `config.model` describes (see docs/interfaces.md, "Model config").

  instructions: every instruction, indexed by `instruction_id`; vocab_instructions: those a
  learned vocabulary is built from (the training split's; default: all)."""
  if horizon < 1:
    raise ValueError(f"policy.py: horizon must be >= 1, got {horizon}.")
  cfg = config_lib.resolve_config(model_config)
  lang_cls = encoders.LANGUAGE.get(cfg["language"]["encoder"])
  table, lang_context = lang_cls.table(config_lib.part_options(cfg, "language"),
                                       list(instructions or []), vocab_instructions)
  frozen = ml_collections.FrozenConfigDict
  net = PolicyNet(frozen(cfg), horizon, bool(goal), image_size, frozen(lang_context))
  return Policy(cfg, horizon, bool(goal), net, config_lib.make_head(cfg), table)


def param_shapes(model_config, *, horizon: int, image_size: int, goal: bool = False,
                 instructions=None):
  """The params pytree as ShapeDtypeStructs (jax.eval_shape: nothing allocated)."""
  policy = make_policy(model_config, horizon=horizon, instructions=instructions or ["pick up"],
                       image_size=image_size, goal=goal)
  obs = batch_lib.dummy_batch(batch_size=1, horizon=horizon, image_size=image_size, goal=goal,
                              abstract=True)
  return jax.eval_shape(policy.init, jax.ShapeDtypeStruct((2,), jnp.uint32), obs)


def param_count(model_config, *, horizon: int, image_size: int, goal: bool = False,
                instructions=None) -> int:
  """Number of trainable parameters, via jax.eval_shape (no allocation)."""
  shapes = param_shapes(model_config, horizon=horizon, image_size=image_size, goal=goal,
                        instructions=instructions)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))
