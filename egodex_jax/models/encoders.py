"""Observation encoders: image (ResNet with GroupNorm), language, hand state, diffusion time.

Each maps its input to one or more tokens of width `out_dim` for the transformer backbone.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from egodex_jax.models import transformer

# ImageNet statistics: the usual input scaling for a ResNet (also what X-IL's ResNets expect).
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _groups(channels: int, groups: int) -> int:
  """Largest group count <= `groups` that divides `channels` (narrow CPU variants)."""
  return math.gcd(channels, groups)


class BasicBlock(nn.Module):
  """ResNet-18/34 basic block with GroupNorm."""
  features: int
  strides: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    norm = lambda name: nn.GroupNorm(_groups(self.features, self.groups), dtype=self.dtype,
                                     name=name)
    y = nn.Conv(self.features, (3, 3), self.strides, padding=1, use_bias=False, dtype=self.dtype,
                name="conv1")(x)
    y = nn.relu(norm("norm1")(y))
    y = nn.Conv(self.features, (3, 3), 1, padding=1, use_bias=False, dtype=self.dtype,
                name="conv2")(y)
    y = norm("norm2")(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False, dtype=self.dtype,
                  name="proj_conv")(x)
      x = norm("proj_norm")(x)
    return nn.relu(x + y)


def _pool_grid(feat, grid: int):
  """[B, h, w, C] -> [B, grid*grid, C] by average pooling (exact when grid divides h and w)."""
  b, h, w, c = feat.shape
  if h % grid == 0 and w % grid == 0:
    feat = feat.reshape(b, grid, h // grid, grid, w // grid, c).mean(axis=(2, 4))
  else:
    feat = jax.image.resize(feat, (b, grid, grid, c), "linear", antialias=True)
  return feat.reshape(b, grid * grid, c)


class ResNetEncoder(nn.Module):
  """uint8 images [B, S, S, 3] -> tokens [B, num_tokens, out_dim].

  stage_sizes (2, 2, 2, 2) with width 64 is ResNet-18 (11.2M parameters without its classifier);
  fewer stages / a smaller width give the CPU variants. num_tokens = 1: global average pool then a
  linear map; n > 1 (a square): the last feature map pooled to a sqrt(n) x sqrt(n) grid.
  """
  stage_sizes: Sequence[int]
  width: int
  groups: int
  num_tokens: int
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    grid = int(round(math.sqrt(self.num_tokens)))
    if grid * grid != self.num_tokens:
      raise ValueError(f"encoders.py: image.num_tokens must be a square (1, 4, 9, ...), "
                       f"got {self.num_tokens}.")
    x = (images.astype(jnp.float32) / 255.0 - _MEAN) / _STD
    x = x.astype(self.dtype)
    x = nn.Conv(self.width, (7, 7), 2, padding=3, use_bias=False, dtype=self.dtype,
                name="stem_conv")(x)
    x = nn.relu(nn.GroupNorm(_groups(self.width, self.groups), dtype=self.dtype,
                             name="stem_norm")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = BasicBlock(self.width * 2**i, 2 if (i > 0 and j == 0) else 1, self.groups, self.dtype,
                       name=f"stage_{i}_block_{j}")(x)
    tokens = _pool_grid(x, grid)  # [B, n, C]
    return nn.Dense(self.out_dim, dtype=self.dtype, name="proj")(tokens)


class WordEncoder(nn.Module):
  """Learned text encoder over word ids [B, L] (0 = padding) -> one token [B, 1, out_dim].

  Embedding + learned positions + `num_layers` transformer blocks (0: plain mean of embeddings),
  then a mean over real words and a linear map.
  """
  vocab_size: int
  max_len: int
  width: int
  num_layers: int
  num_heads: int
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids, *, train=False):
    valid = ids > 0  # [B, L]
    x = nn.Embed(self.vocab_size, self.width, name="embed")(ids)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (self.max_len, self.width))
    x = (x + pos[None, :ids.shape[1]]).astype(self.dtype)
    # Padded keys masked out; an all-padding row attends to everything rather than to nothing.
    key_mask = valid | ~valid.any(-1, keepdims=True)
    for i in range(self.num_layers):
      x, _ = transformer.Block(self.width, self.num_heads, dtype=self.dtype, name=f"block_{i}")(
          x, key_mask[:, None, :], train=train)
    w = valid[..., None].astype(x.dtype)
    pooled = (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
    return nn.Dense(self.out_dim, dtype=self.dtype, name="proj")(pooled)[:, None]


class FrozenEmbeddingProjection(nn.Module):
  """A frozen sentence embedding [B, E] (e.g. MiniLM's, looked up outside) -> [B, 1, out_dim]."""
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, emb):
    return nn.Dense(self.out_dim, dtype=self.dtype, name="proj")(emb.astype(self.dtype))[:, None]


class StateEncoder(nn.Module):
  """Hand state [B, 48] -> [B, 1, out_dim] through an MLP."""
  hidden: int
  num_layers: int
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, state):
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
