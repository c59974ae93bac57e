"""Transformer backbones by name (`config.model.backbone`), with the interface the policy uses.

A backbone class, registered with `@register("name")`, provides
  from_config(model_config: dict, dtype) -> flax Module, with the methods
  full(obs [B, To, D], act [B, Ta, D], *, train) -> [B, Ta, D]    every token, every layer
  encode_obs(obs, *, n_act, train) -> memory                      the observation part, once
  decode_actions(act, memory, *, n_obs, train) -> [B, Ta, D]      only the action tokens
where decode_actions(act, encode_obs(obs)) == full(obs, act): sampling encodes the observation once and
reruns only `decode_actions` for each of the K x S steps. Observation tokens never attend to actions.
The memory's leaves are batch-leading [B, ...] (the policy repeats them K times on axis 0): with
`model.scan_layers` the stacked caches [L, B, ...] are kept as [B, L, ...] between the two calls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from egodex_jax.models import registry
from egodex_jax.models import transformer

BACKBONES = registry.Registry("backbone")
register = BACKBONES.register


def _common(cfg: dict, dtype) -> dict:
  return dict(dim=cfg["emb_dim"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"],
              dropout=cfg["dropout"], attn_dropout=cfg["attn_dropout"], dtype=dtype,
              scan=cfg["scan_layers"], remat=cfg["remat"])


def _swap_layer_batch(module, memory):
  """Stacked caches [L, B, ...] <-> the memory's batch-leading [B, L, ...] (scanned only)."""
  return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), memory) if module.scan else memory


@register("dec")
class DecoderOnly(transformer.Decoder):
  """One stack over [observation tokens | action tokens]; the cache is each block's K/V."""
  mask_kind: str = "block"

  @classmethod
  def from_config(cls, cfg: dict, dtype):
    return cls(num_layers=cfg["num_layers"], mask_kind=cfg["mask"], **_common(cfg, dtype))

  def _mask(self, n_obs, n_act):
    return transformer.decoder_mask(n_obs, n_act, self.mask_kind)

  def full(self, obs, act, *, train=False):
    n_obs, n_act = obs.shape[1], act.shape[1]
    y = self(jnp.concatenate([obs, act.astype(obs.dtype)], 1), self._mask(n_obs, n_act),
             train=train)
    return y[:, n_obs:]

  def encode_obs(self, obs, *, n_act, train=False):
    n_obs = obs.shape[1]
    cache = self.prefix(obs, self._mask(n_obs, n_act)[:n_obs, :n_obs], train=train)
    return _swap_layer_batch(self, cache)

  def decode_actions(self, act, memory, *, n_obs, train=False):
    return self.extend(act, _swap_layer_batch(self, memory),
                       self._mask(n_obs, act.shape[1])[n_obs:], train=train)


@register("encdec")
class EncoderDecoder(transformer.EncoderDecoder):
  """Encoder over observations; decoder over actions with cross-attention (memory: cross K/V)."""
  mask_kind: str = "block"

  @classmethod
  def from_config(cls, cfg: dict, dtype):
    return cls(enc_layers=cfg["enc_layers"], dec_layers=cfg["dec_layers"], mask_kind=cfg["mask"],
               **_common(cfg, dtype))

  def full(self, obs, act, *, train=False):
    return self(obs, act, transformer.encdec_masks(obs.shape[1], act.shape[1], self.mask_kind),
                train=train)

  def encode_obs(self, obs, *, n_act, train=False):
    enc_mask, _, _ = transformer.encdec_masks(obs.shape[1], n_act, self.mask_kind)
    return _swap_layer_batch(self, self.encode(obs, enc_mask, train=train))

  def decode_actions(self, act, memory, *, n_obs, train=False):
    _, self_mask, cross_mask = transformer.encdec_masks(n_obs, act.shape[1], self.mask_kind)
    return self.decode(act, _swap_layer_batch(self, memory), self_mask, cross_mask, train=train)
