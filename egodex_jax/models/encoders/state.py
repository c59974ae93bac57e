"""Hand-state encoder 'mlp' and the time embedding of the diffusion / flow heads."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from egodex_jax.models.encoders import base


@base.STATE.register("mlp")
class StateEncoder(nn.Module):
  """Hand state [B, 48] -> [B, 1, out_dim] through an MLP."""
  hidden: int
  num_layers: int
  out_dim: int
  dtype: Any = jnp.float32

  DEFAULTS = dict(hidden=256, num_layers=2)
  SIZES = {"tiny": dict(hidden=32), "demo": dict(hidden=128)}

  @classmethod
  def from_config(cls, options, *, out_dim, dtype, **context):
    del context
    return cls(int(options["hidden"]), int(options["num_layers"]), out_dim, dtype)

  count_tokens = staticmethod(base.one_token)

  @nn.compact
  def __call__(self, state, *, train=False):
    del train
    x = state.astype(self.dtype)
    for i in range(self.num_layers - 1):
      x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name=f"dense_{i}")(x))
    return nn.Dense(self.out_dim, dtype=self.dtype, name="out")(x)[:, None]


def sinusoidal(t, dim: int, max_period: float = 10_000.0):
  """t [N] in [0, 1] -> [N, dim] sinusoidal features (t scaled by 1000 as in DDPM practice)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], -1)
  return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


class TimeEncoder(nn.Module):
  """Diffusion / flow time t [N] in [0, 1] -> one token [N, 1, out_dim]."""
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t):
    x = sinusoidal(t, self.out_dim).astype(self.dtype)
    x = nn.silu(nn.Dense(self.out_dim, dtype=self.dtype, name="dense_0")(x))
    return nn.Dense(self.out_dim, dtype=self.dtype, name="dense_1")(x)[:, None]
