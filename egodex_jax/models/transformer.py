"""Transformer backbones in the X-IL style: pre-norm RMSNorm blocks, QK-norm, SwiGLU MLP.

Two backbones:
- `Decoder` ('dec'): one stack over [observation tokens | action tokens].
- `EncoderDecoder` ('encdec'): an encoder over observation tokens; a decoder over action tokens
  with self-attention and cross-attention to the encoder output.

Masks are boolean (True = may attend), broadcastable to [B, Tq, Tk]. Two kinds:
- 'block': observations attend to observations; actions attend to all observations and to each other.
- 'xil_causal': X-IL's causal masks, including its upper-left-aligned causal cross-attention
  (decoder token i sees encoder tokens 0..i).
Under both, observation tokens never attend to action tokens, so the observation part is computed
once per sample batch: `Decoder.prefix` returns each block's keys/values (a KV cache) and
`Decoder.extend` runs only the action tokens against it; `EncoderDecoder.encode` returns each
decoder block's cross-attention keys/values.

Layer layouts (`scan`, config `model.scan_layers`, docs/compile.md): unrolled, every block is its
own module (`block_<i>`, `enc_block_<i>`, `dec_block_<i>`) and XLA compiles each one; scanned,
each stack of identical blocks is one module (`blocks`, `enc_blocks`, `dec_blocks`) run under
`nn.scan` with its parameters stacked on a leading layer axis [L, ...], compiled once. Both give
the same outputs for the same weights; `stack_layers` / `unstack_layers` convert the params.
With scan, the caches are stacked too: `prefix` -> (k, v) each [L, B, To, heads, D/heads],
`encode` -> cross (k, v) each [L, B, To, heads, D/heads]; unrolled, lists of per-block (k, v).
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MASKS = ("block", "xil_causal")
# Unrolled block name prefix -> the scanned stack's module name. sharding.py never splits the
# leading (layer) axis of parameters under these names.
STACKS = {"block": "blocks", "enc_block": "enc_blocks", "dec_block": "dec_blocks"}
STACKED = tuple(STACKS.values())


# ----------------------------------------------------------------------------------------------
# Masks (pure NumPy: they are constants of the token layout)

def decoder_mask(n_obs: int, n_act: int, kind: str) -> np.ndarray:
  """[T, T] bool for the decoder-only stack over [obs | actions], T = n_obs + n_act."""
  t = n_obs + n_act
  if kind == "block":
    m = np.ones((t, t), bool)
    m[:n_obs, n_obs:] = False  # observations never see actions
    return m
  if kind == "xil_causal":
    return np.tril(np.ones((t, t), bool))
  raise ValueError(f"transformer.py: unknown mask {kind!r}; expected one of {MASKS}.")


def encdec_masks(n_obs: int, n_act: int, kind: str):
  """-> (encoder [To, To], decoder self [Ta, Ta], cross [Ta, To]) bool masks."""
  if kind == "block":
    return (np.ones((n_obs, n_obs), bool), np.ones((n_act, n_act), bool),
            np.ones((n_act, n_obs), bool))
  if kind == "xil_causal":
    # Upper-left aligned cross mask (X-IL's, probably accidental): action token i sees obs 0..i.
    return (np.tril(np.ones((n_obs, n_obs), bool)), np.tril(np.ones((n_act, n_act), bool)),
            np.tril(np.ones((n_act, n_obs), bool)))
  raise ValueError(f"transformer.py: unknown mask {kind!r}; expected one of {MASKS}.")


# ----------------------------------------------------------------------------------------------
# Layers

def tokens_2d(layer, x):
  """A Dense layer over the last axis of x [..., D], applied to x as [N, D] rows.

  Same parameters and maths: XLA:CPU runs the weight gradient of a [B, T, D] input (contracting
  two axes) slower than that of the [B*T, D] one (measured: docs/performance.md).
  """
  return layer(x.reshape(-1, x.shape[-1])).reshape(x.shape[:-1] + (-1,))


class Attention(nn.Module):
  """Multi-head attention with QK-norm. Keys/values are returned so callers can cache them."""
  dim: int
  num_heads: int
  attn_dropout: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    dense = lambda name: nn.Dense(self.dim, use_bias=False, dtype=self.dtype, name=name)
    self.q, self.k, self.v, self.o = dense("q"), dense("k"), dense("v"), dense("o")
    self.q_norm = nn.RMSNorm(dtype=self.dtype, name="q_norm")
    self.k_norm = nn.RMSNorm(dtype=self.dtype, name="k_norm")
    self.drop = nn.Dropout(self.attn_dropout)

  def kv(self, x):
    """x [B, Tk, D] -> (k, v) each [B, Tk, heads, D/heads], k already normalised."""
    b, t, _ = x.shape
    split = lambda y: y.reshape(b, t, self.num_heads, -1)
    return self.k_norm(split(tokens_2d(self.k, x))), split(tokens_2d(self.v, x))

  def __call__(self, x, mask, *, kv=None, prefix_kv=None, train=False):
    """x [B, Tq, D] queries; keys/values from `kv` (cross) or from x itself, after `prefix_kv`.

    Returns (out [B, Tq, D], (k, v)) where (k, v) are the keys/values computed here from x
    (not including the prefix), for caching.
    """
    b, t, d = x.shape
    q = self.q_norm(tokens_2d(self.q, x).reshape(b, t, self.num_heads, -1))
    own = self.kv(x) if kv is None else kv
    k, v = own
    if prefix_kv is not None:
      k = jnp.concatenate([prefix_kv[0], k], axis=1)
      v = jnp.concatenate([prefix_kv[1], v], axis=1)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(q.shape[-1])
    # The 'block' masks of the action part are all True (constants of the layout): skip the
    # select over [B, heads, Tq, Tk] logits rather than trust XLA to fold it, every sampling step.
    if not (isinstance(mask, np.ndarray) and mask.all()):
      mask = jnp.asarray(mask, bool)
      mask = mask[None, None] if mask.ndim == 2 else mask[:, None]
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = self.drop(jax.nn.softmax(logits, axis=-1), deterministic=not train).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)
    return tokens_2d(self.o, out), own


class SwiGLU(nn.Module):
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [..., D] -> [..., D], computed on [N, D] rows (see `tokens_2d`)."""
    d, rows = x.shape[-1], x.reshape(-1, x.shape[-1])
    gate = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype, name="gate")(rows)
    up = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype, name="up")(rows)
    out = nn.Dense(d, use_bias=False, dtype=self.dtype, name="down")(nn.silu(gate) * up)
    return out.reshape(x.shape)


class Block(nn.Module):
  """Pre-norm self-attention block (encoder / decoder-only)."""
  dim: int
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  attn_dropout: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    self.norm1 = nn.RMSNorm(dtype=self.dtype)
    self.attn = Attention(self.dim, self.num_heads, self.attn_dropout, self.dtype)
    self.norm2 = nn.RMSNorm(dtype=self.dtype)
    self.mlp = SwiGLU(self.mlp_ratio * self.dim, self.dtype)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, x, mask, prefix_kv=None, train=False):
    """-> (x, (k, v) of x's own tokens). Positional arguments: `_scan` passes them so."""
    h, kv = self.attn(self.norm1(x), mask, prefix_kv=prefix_kv, train=train)
    x = x + self.drop(h, deterministic=not train)
    x = x + self.drop(self.mlp(self.norm2(x)), deterministic=not train)
    return x, kv


class CrossBlock(nn.Module):
  """Pre-norm decoder block: self-attention, cross-attention to the encoder output, MLP."""
  dim: int
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  attn_dropout: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    self.norm1 = nn.RMSNorm(dtype=self.dtype)
    self.attn = Attention(self.dim, self.num_heads, self.attn_dropout, self.dtype)
    self.norm_cross = nn.RMSNorm(dtype=self.dtype)
    self.cross = Attention(self.dim, self.num_heads, self.attn_dropout, self.dtype)
    self.norm2 = nn.RMSNorm(dtype=self.dtype)
    self.mlp = SwiGLU(self.mlp_ratio * self.dim, self.dtype)
    self.drop = nn.Dropout(self.dropout)

  def cross_kv(self, memory):
    """Encoder output [B, To, D] -> this block's cross-attention (k, v): compute once, reuse."""
    return self.cross.kv(memory)

  def __call__(self, x, self_mask, cross_kv, cross_mask, train=False):
    h, _ = self.attn(self.norm1(x), self_mask, train=train)
    x = x + self.drop(h, deterministic=not train)
    h, _ = self.cross(self.norm_cross(x), cross_mask, kv=cross_kv, train=train)
    x = x + self.drop(h, deterministic=not train)
    x = x + self.drop(self.mlp(self.norm2(x)), deterministic=not train)
    return x


# ----------------------------------------------------------------------------------------------
# Stacks of identical blocks: unrolled (a list of modules) or scanned (one module, stacked params)

def _scan(body, length: int, remat: bool):
  """nn.scan of `body(block, carry, xs) -> (carry, ys)` over `length` layers: the block's params
  (and their init rngs) and the dropout rngs are split per layer; ys come back stacked [L, ...].
  Masks and `train` are closed over (constants: an all-True NumPy mask still skips the select)."""
  if remat:  # recompute each block's activations in the backward pass (memory for time)
    body = nn.remat(body, prevent_cse=False)  # prevent_cse is unneeded under scan (flax docs)
  return nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                 length=length)


def stack_layers(params):
  """Unrolled params -> the scanned layout: `block_<i>` subtrees (any depth, also `enc_block_<i>`,
  `dec_block_<i>`) become one subtree (`blocks`, ...) with every leaf stacked [L, ...] in layer
  order. For loading unrolled checkpoints' params into a scanned model; other keys pass through."""
  if not isinstance(params, dict):
    return params
  out, groups = {}, {}
  for key, value in params.items():
    m = re.fullmatch(r"(%s)_(\d+)" % "|".join(STACKS), key)
    if m:
      groups.setdefault(m.group(1), {})[int(m.group(2))] = value
    else:
      out[key] = stack_layers(value)
  for prefix, layers in groups.items():
    if sorted(layers) != list(range(len(layers))):
      raise ValueError(f"stack_layers: {prefix}_<i> layers {sorted(layers)} are not 0..L-1.")
    out[STACKS[prefix]] = jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in
                                                                    range(len(layers))])
  return out


def unstack_layers(params):
  """The inverse of `stack_layers`: `blocks` [L, ...] -> `block_0` ... `block_<L-1>`."""
  if not isinstance(params, dict):
    return params
  out = {}
  prefixes = {v: k for k, v in STACKS.items()}
  for key, value in params.items():
    if key in prefixes:
      n = jax.tree.leaves(value)[0].shape[0]
      for i in range(n):
        out[f"{prefixes[key]}_{i}"] = jax.tree.map(lambda x: x[i], value)
    else:
      out[key] = unstack_layers(value)
  return out


# ----------------------------------------------------------------------------------------------
# Backbones

class Decoder(nn.Module):
  """Decoder-only stack. `__call__` is the plain full forward; `prefix` + `extend` the cached one."""
  dim: int
  num_heads: int
  num_layers: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  attn_dropout: float = 0.0
  dtype: Any = jnp.float32
  scan: bool = False   # one scanned module `blocks` (params [L, ...]) instead of `block_<i>`
  remat: bool = False  # nn.remat each block (scan only)

  def setup(self):
    args = (self.dim, self.num_heads, self.mlp_ratio, self.dropout, self.attn_dropout, self.dtype)
    if self.scan:
      self.blocks = Block(*args, name="blocks")  # called only through `_scan`: params [L, ...]
    else:
      self.blocks = [Block(*args, name=f"block_{i}") for i in range(self.num_layers)]
    self.norm = nn.RMSNorm(dtype=self.dtype, name="final_norm")

  def _run(self, x, mask, cache, train):
    """x [B, T, D] through every block, each after its (k, v) of `cache` (None: no prefix).
    -> (x, per-block (k, v) of x's tokens: stacked [L, ...] when scanned, else a list)."""
    if self.scan:
      body = lambda blk, x, kv: blk(x, mask, kv, train)
      return _scan(body, self.num_layers, self.remat)(self.blocks, x, cache)
    kvs = []
    for i, blk in enumerate(self.blocks):
      x, kv = blk(x, mask, None if cache is None else cache[i], train)
      kvs.append(kv)
    return x, kvs

  def __call__(self, x, mask, *, train=False):
    """x [B, T, D], mask [T, T] -> [B, T, D] (final-normed)."""
    return self.norm(self._run(x, mask, None, train)[0])

  def prefix(self, x_obs, obs_mask, *, train=False):
    """Observation tokens [B, To, D] -> per-block (k, v), the KV cache."""
    return self._run(x_obs, obs_mask, None, train)[1]

  def extend(self, x_act, cache, act_mask, *, train=False):
    """Action tokens [B, Ta, D] against the cache; act_mask [Ta, To + Ta] -> [B, Ta, D]."""
    return self.norm(self._run(x_act, act_mask, cache, train)[0])


class EncoderDecoder(nn.Module):
  """Encoder over observations, decoder over actions with cross-attention."""
  dim: int
  num_heads: int
  enc_layers: int
  dec_layers: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  attn_dropout: float = 0.0
  dtype: Any = jnp.float32
  scan: bool = False   # scanned `enc_blocks` / `dec_blocks` (params [L, ...])
  remat: bool = False

  def setup(self):
    args = (self.dim, self.num_heads, self.mlp_ratio, self.dropout, self.attn_dropout, self.dtype)
    if self.scan:
      self.encoder = Block(*args, name="enc_blocks")
      self.decoder = CrossBlock(*args, name="dec_blocks")
    else:
      self.encoder = [Block(*args, name=f"enc_block_{i}") for i in range(self.enc_layers)]
      self.decoder = [CrossBlock(*args, name=f"dec_block_{i}") for i in range(self.dec_layers)]
    self.enc_norm = nn.RMSNorm(dtype=self.dtype, name="enc_norm")
    self.dec_norm = nn.RMSNorm(dtype=self.dtype, name="dec_norm")

  def encode(self, x_obs, enc_mask, *, train=False):
    """Observation tokens [B, To, D] -> per-decoder-block cross (k, v)."""
    if self.scan:
      body = lambda blk, x, _: (blk(x, enc_mask, None, train)[0], None)
      x_obs, _ = _scan(body, self.enc_layers, self.remat)(self.encoder, x_obs, None)
      memory = self.enc_norm(x_obs)
      # The same scanned decoder params, another method: each layer's cross (k, v) [L, ...].
      body = lambda blk, m, _: (m, blk.cross_kv(m))
      return _scan(body, self.dec_layers, False)(self.decoder, memory, None)[1]
    for blk in self.encoder:
      x_obs, _ = blk(x_obs, enc_mask, None, train)
    memory = self.enc_norm(x_obs)
    return [blk.cross_kv(memory) for blk in self.decoder]

  def decode(self, x_act, cross_kvs, self_mask, cross_mask, *, train=False):
    """Action tokens [B, Ta, D] -> [B, Ta, D]."""
    if self.scan:
      body = lambda blk, x, kv: (blk(x, self_mask, kv, cross_mask, train), None)
      x_act, _ = _scan(body, self.dec_layers, self.remat)(self.decoder, x_act, cross_kvs)
    else:
      for blk, kv in zip(self.decoder, cross_kvs):
        x_act = blk(x_act, self_mask, kv, cross_mask, train)
    return self.dec_norm(x_act)

  def __call__(self, x_obs, x_act, masks, *, train=False):
    enc_mask, self_mask, cross_mask = masks
    return self.decode(x_act, self.encode(x_obs, enc_mask, train=train), self_mask, cross_mask,
                       train=train)
