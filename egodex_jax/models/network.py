"""The policy network: observation encoders + a backbone + the action token maps.

Observation tokens: [language | image x n | hand state | goal image x n (goal runs)].
Action tokens: [time | H embedded noisy actions] for heads that read (x_t, t), else H learned
queries. Methods: `full` (naive forward), `encode` (the observation part, once), `decode` (only
the action tokens against the encoded observation).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from egodex_jax import skeleton
from egodex_jax.models import backbones
from egodex_jax.models import config as config_lib
from egodex_jax.models import encoders
from egodex_jax.models import heads


def _encoder(cfg, part: str, out_dim: int, dtype, **context):
  cls = encoders.REGISTRIES[part].get(cfg[part]["encoder"])
  return cls.from_config(config_lib.part_options(cfg, part), out_dim=out_dim, dtype=dtype,
                         **context)


def num_obs_tokens(cfg, *, goal: bool, image_size: int | None) -> int:
  """How many observation tokens the encoders produce for this input spec."""
  spec = dict(image_size=image_size)
  count = lambda part: encoders.REGISTRIES[part].get(cfg[part]["encoder"]).count_tokens(
      config_lib.part_options(cfg, part), spec)
  return count("language") + count("image") * (2 if goal else 1) + count("state")


class PolicyNet(nn.Module):
  cfg: Any               # ml_collections.FrozenConfigDict of the resolved model config
  horizon: int
  goal: bool
  image_size: Any        # int, or None when the image encoder's token count does not need it
  lang_context: Any      # a FrozenConfigDict: what the language encoder's table implies

  @property
  def noisy_input(self) -> bool:
    return heads.get(self.cfg.head).takes_noisy_actions

  @property
  def n_obs(self) -> int:
    return num_obs_tokens(self.cfg, goal=self.goal, image_size=self.image_size)

  @property
  def n_act(self) -> int:
    return self.horizon + (1 if self.noisy_input else 0)

  def setup(self):
    c = self.cfg
    d, dtype = c.emb_dim, jnp.dtype(c.dtype)
    self.image_encoder = _encoder(c, "image", d, dtype)
    self.language_encoder = _encoder(c, "language", d, dtype, **dict(self.lang_context))
    self.state_encoder = _encoder(c, "state", d, dtype)
    init = nn.initializers.normal(0.02)
    if self.noisy_input:
      self.time_encoder = encoders.TimeEncoder(d, dtype)
      self.action_in = nn.Dense(d, dtype=dtype)
    else:
      self.action_queries = self.param("action_queries", init, (self.horizon, d))
    self.obs_pos = self.param("obs_pos", init, (self.n_obs, d))
    self.act_pos = self.param("act_pos", init, (self.n_act, d))
    self.backbone = backbones.BACKBONES.get(c.backbone).from_config(c, dtype)
    self.action_out = nn.Dense(skeleton.ACTION_DIM, dtype=jnp.float32)

  def obs_tokens(self, inputs, train):
    """inputs: image [B,S,S,3] uint8, goal_image (goal), state [B,48], lang -> [B, n_obs, D]."""
    b = inputs["image"].shape[0]
    images = inputs["image"]
    if self.goal:
      images = jnp.concatenate([images, inputs["goal_image"]], 0)  # one pass, shared weights
    img = self.image_encoder(images, train=train)
    parts = [self.language_encoder(inputs["lang"], train=train), img[:b],
             self.state_encoder(inputs["state"], train=train)]
    if self.goal:
      parts.append(img[b:])
    x = jnp.concatenate([p.astype(img.dtype) for p in parts], 1)
    return x + self.obs_pos.astype(x.dtype)

  def act_tokens(self, x_t, t, batch_size):
    if self.noisy_input:
      x = jnp.concatenate([self.time_encoder(t), self.action_in(x_t.astype(self.cfg.dtype))], 1)
    else:
      x = jnp.broadcast_to(self.action_queries, (batch_size,) + self.action_queries.shape)
    return x + self.act_pos.astype(x.dtype)

  def _out(self, y):
    return self.action_out(y[:, -self.horizon:].astype(jnp.float32))  # [B, H, 48]

  def full(self, inputs, x_t, t, train=False):
    """The naive forward: every token, every layer."""
    obs = self.obs_tokens(inputs, train)
    act = self.act_tokens(x_t, t, obs.shape[0])
    return self._out(self.backbone.full(obs, act, train=train))

  def encode(self, inputs, train=False):
    """The observation part, computed once: per-block KV cache (dec) or cross K/V (encdec)."""
    return self.backbone.encode_obs(self.obs_tokens(inputs, train), n_act=self.n_act, train=train)

  def decode(self, obs, x_t, t, train=False):
    """Only the action tokens, against the encoded observation -> [B, H, 48]."""
    b = jax.tree.leaves(obs)[0].shape[0]
    act = self.act_tokens(x_t, t, b)
    return self._out(self.backbone.decode_actions(act, obs, n_obs=self.n_obs, train=train))
