"""The encoder contract and the three registries: image, language, hand state.

Each observation part is `config.model.<part>` = {"encoder": name, **that encoder's options}.
An encoder class, registered with `@IMAGE.register("name")` (or LANGUAGE / STATE), provides:
  DEFAULTS: dict                       its options at the paper's size
  SIZES: dict[size, dict]              overrides per model size preset ('tiny', 'demo', ...)
  from_config(options, *, out_dim, dtype, **context) -> flax Module
      whose __call__(x, *, train=False) -> tokens [B, n, out_dim]
  count_tokens(options, spec) -> int   n for an input spec (e.g. {"image_size": 224})
Language encoders also provide
  table(options, instructions, vocab_texts=None) -> (table [num_instructions, ...], context)
      the per-instruction lookup (word ids, or a frozen sentence embedding) that the policy
      indexes by `instruction_id`, and the context `from_config` needs (e.g. vocab_size);
      a learned vocabulary comes from `vocab_texts` only (the training split's instructions).
"""

from __future__ import annotations

from egodex_jax.models import registry

IMAGE = registry.Registry("image encoder")
LANGUAGE = registry.Registry("language encoder")
STATE = registry.Registry("state encoder")

REGISTRIES = {"image": IMAGE, "language": LANGUAGE, "state": STATE}


def one_token(options, spec) -> int:
  """`count_tokens` of an encoder that always gives one token (pooled text, the hand state)."""
  del options, spec
  return 1
