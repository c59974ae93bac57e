"""Behaviour cloning: the chunk regressed directly (MSE); one prediction stands for every K."""

from __future__ import annotations

import dataclasses

from egodex_jax.models.heads import base


@base.register("bc")
@dataclasses.dataclass(frozen=True)
class BCHead:
  DEFAULTS = {}
  is_deterministic = True
  takes_noisy_actions = False
  num_steps = 1

  @classmethod
  def from_config(cls, options: dict) -> "BCHead":
    del options
    return cls()

  def loss(self, predict, actions, padding, rng):
    del rng
    loss = base.masked_mse(predict(None, None), actions, padding)
    return loss, {"mse": loss}

  def sample(self, predict, shape, rng):
    del shape, rng
    return predict(None, None)
