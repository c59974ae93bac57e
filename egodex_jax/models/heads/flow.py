"""Flow matching (rectified flow): x_t = (1 - t) x + t e, velocity e - x; Euler from t = 1 to 0.

`prediction` is what the network outputs:
  "velocity"  v = e - x, regressed directly (openpi, X-IL).
  "data"      the clean chunk x; the velocity is (x_t - x_hat) / t, and the loss is on x_hat.
With "velocity" the network must reproduce the noise e, white across the H frames, in every
output; its error is white too and remains, as frame-to-frame jitter, in the sampled chunk. With
"data" the output is a smooth action chunk at every t and the last Euler step returns it
(x_0 = x_hat at t = dt), so the noise never has to pass through the network (Li & He 2025,
"Back to Basics: Let Denoising Generative Models Denoise"). docs/results.md measures both.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from egodex_jax.models.heads import base

TIME_DISTS = ("beta", "uniform")
PREDICTIONS = ("velocity", "data")


@base.register("fm")
@dataclasses.dataclass(frozen=True)
class FlowMatchingHead:
  time_dist: str = "beta"
  sample_steps: int = 16
  prediction: str = "data"

  DEFAULTS = dict(time_dist="beta", sample_steps=16, prediction="data")
  is_deterministic = False
  takes_noisy_actions = True

  def __post_init__(self):
    if self.time_dist not in TIME_DISTS:
      raise ValueError(f"model.fm.time_dist must be one of {TIME_DISTS}, got {self.time_dist!r}.")
    if self.sample_steps < 1:
      raise ValueError(f"model.fm.sample_steps must be >= 1, got {self.sample_steps}.")
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"model.fm.prediction must be one of {PREDICTIONS}, "
                       f"got {self.prediction!r}.")

  @classmethod
  def from_config(cls, options: dict) -> "FlowMatchingHead":
    return cls(str(options["time_dist"]), int(options["sample_steps"]), str(options["prediction"]))

  @property
  def num_steps(self) -> int:
    return self.sample_steps

  def sample_time(self, rng, n):
    """Training times [n] in (0, 1]."""
    u = jax.random.uniform(rng, (n,))
    if self.time_dist == "beta":  # openpi's Beta(1.5, 1): more weight on noisy times
      # Beta(a, 1) has CDF t^a, so u^(1/a) samples it exactly (jax.random.beta's rejection
      # sampler is slow to compile on XLA:CPU).
      return u ** (1.0 / 1.5) * 0.999 + 0.001
    return u

  def loss(self, predict, actions, padding, rng):
    n = actions.shape[0]
    rng_t, rng_e = jax.random.split(rng)
    t = self.sample_time(rng_t, n)
    eps = jax.random.normal(rng_e, actions.shape, jnp.float32)
    tb = t[:, None, None]
    x_t = (1 - tb) * actions + tb * eps
    target = actions if self.prediction == "data" else eps - actions
    loss = base.masked_mse(predict(x_t, t), target, padding)
    return loss, {"mse": loss}

  def velocity(self, predict, x, t):
    """The velocity field at (x [N, H, D], t [N]) from the network's output."""
    out = predict(x, t).astype(jnp.float32)
    if self.prediction == "data":
      return (x - out) / t[:, None, None]
    return out

  def sample(self, predict, shape, rng):
    dt = 1.0 / self.sample_steps
    x = jax.random.normal(rng, shape, jnp.float32)

    def step(i, x):
      t = jnp.full((shape[0],), 1.0 - i * dt)
      return x - dt * self.velocity(predict, x, t)

    return jax.lax.fori_loop(0, self.sample_steps, step, x)
