"""Language encoders: 'learned' (word ids of the dataset's own instructions) and 'minilm'
(a frozen all-MiniLM-L6-v2 sentence embedding, computed once per instruction outside the step)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from egodex_jax.models import minilm
from egodex_jax.models import tokenizer
from egodex_jax.models import transformer
from egodex_jax.models.encoders import base


@base.LANGUAGE.register("learned")
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

  DEFAULTS = dict(max_len=32, width=128, num_layers=1)
  SIZES = {"tiny": dict(width=16, num_layers=0), "demo": dict(width=64, num_layers=1)}

  @staticmethod
  def table(options, instructions, vocab_texts=None):
    ids, vocab = tokenizer.build_table(list(instructions), int(options["max_len"]), vocab_texts)
    return ids, dict(vocab_size=len(vocab) + 2, lang_len=ids.shape[1])

  @classmethod
  def from_config(cls, options, *, out_dim, dtype, vocab_size, lang_len, **context):
    del context
    w = int(options["width"])
    return cls(vocab_size, lang_len, w, int(options["num_layers"]), max(1, w // 64), out_dim,
               dtype)

  count_tokens = staticmethod(base.one_token)

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


@base.LANGUAGE.register("minilm")
class FrozenEmbeddingProjection(nn.Module):
  """A frozen sentence embedding [B, E] (MiniLM's, looked up outside) -> [B, 1, out_dim]."""
  out_dim: int
  dtype: Any = jnp.float32

  DEFAULTS = {}
  SIZES = {}

  @staticmethod
  def table(options, instructions, vocab_texts=None):
    del options, vocab_texts  # any sentence embeds
    return minilm.embed(list(instructions) or [""]), {}  # [N, 384], a constant, never trained

  @classmethod
  def from_config(cls, options, *, out_dim, dtype, **context):
    del options, context
    return cls(out_dim, dtype)

  count_tokens = staticmethod(base.one_token)

  @nn.compact
  def __call__(self, emb, *, train=False):
    del train
    return nn.Dense(self.out_dim, dtype=self.dtype, name="proj")(emb.astype(self.dtype))[:, None]
