"""Image encoder 'resnet': a ResNet with GroupNorm (ResNet-18 at the paper's size)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from egodex_jax.models.encoders import base

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


@base.IMAGE.register("resnet")
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
  chunk_size: int = 0

  # chunk_size: images per pass through the trunk, 0 = the whole batch at once (see __call__).
  DEFAULTS = dict(stage_sizes=(2, 2, 2, 2), width=64, groups=32, num_tokens=1, chunk_size=0)
  SIZES = {"tiny": dict(stage_sizes=(1, 1), width=8, groups=4),
           "demo": dict(stage_sizes=(1, 1, 1, 1), width=16, groups=8)}

  @classmethod
  def from_config(cls, options, *, out_dim, dtype, **context):
    del context
    return cls(tuple(options["stage_sizes"]), int(options["width"]), int(options["groups"]),
               int(options["num_tokens"]), out_dim, dtype, int(options["chunk_size"]))

  @staticmethod
  def count_tokens(options, spec) -> int:
    del spec  # pooled to a fixed grid whatever the image size
    return int(options["num_tokens"])

  def setup(self):
    grid = int(round(math.sqrt(self.num_tokens)))
    if grid * grid != self.num_tokens:
      raise ValueError(f"resnet.py: image.num_tokens must be a square (1, 4, 9, ...), "
                       f"got {self.num_tokens}.")
    self.grid = grid
    self.stem_conv = nn.Conv(self.width, (7, 7), 2, padding=3, use_bias=False, dtype=self.dtype)
    self.stem_norm = nn.GroupNorm(_groups(self.width, self.groups), dtype=self.dtype)
    self.blocks = [BasicBlock(self.width * 2**i, 2 if (i > 0 and j == 0) else 1, self.groups,
                              self.dtype, name=f"stage_{i}_block_{j}")
                   for i, n in enumerate(self.stage_sizes) for j in range(n)]
    self.proj = nn.Dense(self.out_dim, dtype=self.dtype)

  def features(self, images):
    """uint8 [b, S, S, 3] -> the last feature map [b, h, w, C]; every op is per sample."""
    x = (images.astype(jnp.float32) / 255.0 - _MEAN) / _STD
    x = nn.relu(self.stem_norm(self.stem_conv(x.astype(self.dtype))))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x)
    return x

  def __call__(self, images, *, train=False):
    del train
    # On XLA:CPU a large-image ResNet runs faster in passes of a few images than over the whole
    # batch: each pass's feature maps stay in cache, and the passes are independent operations
    # the scheduler can put on different cores (each op runs on one thread). Every op is per
    # sample, so the values are those of one pass (measured: docs/performance.md). Off (0) by
    # default: each pass is another copy of the trunk to compile.
    b, n = images.shape[0], self.chunk_size
    if n <= 0 or n >= b:
      feats = self.features(images)
    else:
      feats = jnp.concatenate([self.features(images[i:i + n]) for i in range(0, b, n)])
    return self.proj(_pool_grid(feats, self.grid))  # [B, num_tokens, out_dim]
