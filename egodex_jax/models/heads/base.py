"""The policy-head contract and its registry.

A head turns the network into a policy of one kind (regression, diffusion, flow, ...). It never
sees the network's parameters or the observation, only a closure

  predict(x_t, t) -> [N, H, D]    x_t [N, H, D] noisy actions, t [N] in [0, 1]

built by the policy around the encoded observation (heads that do not read noisy actions get
`predict(None, None)`). So the same head code drives the policies and the toy tests.

A head class, registered with `@register("name")`, provides:
  DEFAULTS: dict                  its options; they live in `config.model.<name>`
  from_config(options) -> head    (a classmethod; `options` = DEFAULTS updated by the config)
  is_deterministic: bool          True: one sample stands for every K (BC)
  takes_noisy_actions: bool       True: the network reads (x_t, t); False: learned queries only
  num_steps: int                  network evaluations per sample
  loss(predict, actions [N, H, D], padding [N, H] | [N, H, D] | None, rng)
      -> (scalar, {name: scalar})     padding: True = left out of the loss (`masked_mse`)
  sample(predict, shape (N, H, D), rng) -> [N, H, D]
All in the policy's (normalised) action space, all pure and jittable.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax.numpy as jnp

from egodex_jax.models import registry

HEADS = registry.Registry("head")
register = HEADS.register

Predict = Callable[[Any, Any], Any]


class Head(Protocol):
  DEFAULTS: dict
  is_deterministic: bool
  takes_noisy_actions: bool
  num_steps: int

  @classmethod
  def from_config(cls, options: dict) -> "Head": ...

  def loss(self, predict: Predict, actions, padding, rng) -> tuple[Any, dict]: ...

  def sample(self, predict: Predict, shape: tuple[int, int, int], rng): ...


def masked_mse(pred, target, padding=None):
  """Mean squared error over valid elements; padding True = excluded: [N, H] whole frames (past
  the episode end), or [N, H, D] single dims (`batch.loss_padding`: low-confidence keypoints)."""
  err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))  # [N, H, D]
  if padding is None:
    return err.mean()
  if padding.ndim == err.ndim:
    w = (~padding).astype(jnp.float32)
    return (err * w).sum() / jnp.maximum(w.sum(), 1.0)
  w = (~padding).astype(jnp.float32)[..., None]
  return (err * w).sum() / jnp.maximum(w.sum() * err.shape[-1], 1.0)
