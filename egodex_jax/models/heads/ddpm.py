"""DDPM: a cosine schedule, ancestral (DDIM eta = 1) sampling; the network predicts the noise
(`prediction="epsilon"`, Ho et al.) or the clean chunk (`"data"`; see heads/flow.py for why)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from egodex_jax.models.heads import base

PREDICTIONS = ("epsilon", "data")


def cosine_alphas_cumprod(num_steps: int, s: float = 0.008) -> np.ndarray:
  """Nichol & Dhariwal's cosine schedule (betas capped at 0.999) -> alpha_bar [T] float64."""
  f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
  i = np.arange(num_steps, dtype=np.float64)
  betas = np.minimum(1.0 - f((i + 1) / num_steps) / f(i / num_steps), 0.999)
  return np.cumprod(1.0 - betas)


@base.register("ddpm")
@dataclasses.dataclass(frozen=True)
class DDPMHead:
  """`train_steps` timesteps; sampling uses `sample_steps` <= train_steps of them, evenly strided
  from T-1 down to 0, with the DDIM update at eta = 1 (fresh noise each step), which is exactly
  DDPM's posterior sampling when sample_steps == train_steps. The network sees time as
  (index + 1) / T in (0, 1].

  `prediction="data"`: the network outputs x0 and the loss is on x0; the noise the update needs is
  (x - sqrt(a) x0) / sqrt(1 - a), and the last step returns x0 itself.

  `clip_x0` > 0 clips the predicted clean chunk to [-c, c] at each sampling step (0: never). At
  the first steps alpha_bar is tiny, so x0 = (x - sqrt(1 - a) eps) / sqrt(a) multiplies the
  network's error by 1 / sqrt(a) (32x at T = 16, more with fewer, strided steps); clipping to
  the data's range keeps a few-step sampler from leaving it. Min-max normalised actions lie in
  [-1, 1] between their 1st and 99th percentiles: the default 1.5 leaves room for the tails.
  """
  train_steps: int = 16
  sample_steps: int = 16
  clip_x0: float = 1.5
  prediction: str = "data"

  DEFAULTS = dict(train_steps=16, sample_steps=16, clip_x0=1.5, prediction="data")
  is_deterministic = False
  takes_noisy_actions = True

  def __post_init__(self):
    if not 1 <= self.sample_steps <= self.train_steps:
      raise ValueError(f"model.ddpm.sample_steps must be in [1, train_steps={self.train_steps}], "
                       f"got {self.sample_steps}.")
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"model.ddpm.prediction must be one of {PREDICTIONS}, "
                       f"got {self.prediction!r}.")

  @classmethod
  def from_config(cls, options: dict) -> "DDPMHead":
    return cls(int(options["train_steps"]), int(options["sample_steps"]),
               float(options["clip_x0"]), str(options["prediction"]))

  @property
  def num_steps(self) -> int:
    return self.sample_steps

  def loss(self, predict, actions, padding, rng):
    n = actions.shape[0]
    rng_t, rng_e = jax.random.split(rng)
    idx = jax.random.randint(rng_t, (n,), 0, self.train_steps)
    ab = jnp.asarray(cosine_alphas_cumprod(self.train_steps), jnp.float32)[idx][:, None, None]
    eps = jax.random.normal(rng_e, actions.shape, jnp.float32)
    x_t = jnp.sqrt(ab) * actions + jnp.sqrt(1 - ab) * eps
    target = actions if self.prediction == "data" else eps
    loss = base.masked_mse(predict(x_t, (idx + 1) / self.train_steps), target, padding)
    return loss, {"mse": loss}

  def sample(self, predict, shape, rng):
    ab_all = cosine_alphas_cumprod(self.train_steps)
    ts = np.round(np.linspace(self.train_steps - 1, 0, self.sample_steps)).astype(np.int32)
    ab_t = jnp.asarray(ab_all[ts], jnp.float32)
    ab_prev = jnp.asarray(np.append(ab_all[ts[1:]], 1.0), jnp.float32)  # alpha_bar(-1) = 1
    t_in = jnp.asarray((ts + 1) / self.train_steps, jnp.float32)
    rng_x, rng_z = jax.random.split(rng)
    x = jax.random.normal(rng_x, shape, jnp.float32)

    def step(i, x):
      a, ap = ab_t[i], ab_prev[i]
      out = predict(x, jnp.full((shape[0],), t_in[i])).astype(jnp.float32)
      if self.prediction == "data":
        x0, eps = out, (x - jnp.sqrt(a) * out) / jnp.sqrt(1 - a)
      else:
        x0, eps = (x - jnp.sqrt(1 - a) * out) / jnp.sqrt(a), out
      if self.clip_x0 > 0:
        x0 = jnp.clip(x0, -self.clip_x0, self.clip_x0)
        eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
      var = (1 - ap) / (1 - a) * (1 - a / ap)  # eta = 1
      mean = jnp.sqrt(ap) * x0 + jnp.sqrt(jnp.maximum(1 - ap - var, 0.0)) * eps
      z = jax.random.normal(jax.random.fold_in(rng_z, i), shape, jnp.float32)
      return mean + jnp.sqrt(var) * z

    return jax.lax.fori_loop(0, self.sample_steps, step, x)
