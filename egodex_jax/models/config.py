"""The model config schema (`config.model`): defaults <- size preset <- the given fields.

Backbone and width fields live at the top level; each observation part is
`{part: {"encoder": name, **options}}` with the options and per-size overrides its encoder
class declares (models/encoders/); each registered head's options live in `config.model.<head>`
(models/heads/). So a new encoder or head brings its own fields; nothing here lists them.
"""

from __future__ import annotations

import copy

import ml_collections

from egodex_jax.models import backbones
from egodex_jax.models import encoders
from egodex_jax.models import heads
from egodex_jax.models import transformer

DTYPES = ("float32", "bfloat16")
DEFAULT_ENCODERS = dict(image="resnet", language="learned", state="mlp")

_DEFAULTS = dict(
    size="paper", backbone="encdec", head="fm", mask="block",
    emb_dim=1024, num_heads=16, num_layers=11, enc_layers=5, dec_layers=5, mlp_ratio=4,
    dropout=0.1, attn_dropout=0.0, dtype="float32",
    # nn.scan over each stack of identical blocks, params stacked [L, ...]: XLA traces one block
    # per stack instead of every block. Off: on XLA:CPU it does not shorten the paper-size step's
    # compile (measured in docs/compile.md). A checkpoint whose saved config lacks the field was
    # saved unrolled: `checkpoint_layout` reads it as False, whatever this default is.
    scan_layers=False,
    remat=False,  # nn.remat each scanned block: recompute activations in the backward pass
)

PRESETS = {
    # Unit tests: a few thousand parameters, 16-32 px images.
    "tiny": dict(emb_dim=32, num_heads=2, num_layers=2, enc_layers=1, dec_layers=1, dropout=0.0),
    # The CPU demo at 64 px: about 1-2M parameters.
    "demo": dict(emb_dim=128, num_heads=4, num_layers=4, enc_layers=2, dec_layers=2, dropout=0.0),
    # The paper's ~200M (ResNet-18 + a 1024-wide transformer).
    "paper": dict(emb_dim=1024, num_heads=16, num_layers=11, enc_layers=5, dec_layers=5),
    # The paper's 500M ablation.
    "large": dict(emb_dim=1536, num_heads=24, num_layers=13, enc_layers=6, dec_layers=6),
}


def _merge(base: dict, over: dict, where: str) -> dict:
  out = copy.deepcopy(base)
  for k, v in over.items():
    if k not in base:
      raise ValueError(f"unknown model config field '{where}{k}'; known fields: {sorted(base)}.")
    if isinstance(base[k], dict):
      if not isinstance(v, dict):
        raise ValueError(f"model config field '{where}{k}' must be a dict.")
      out[k] = _merge(base[k], v, f"{where}{k}.")
    else:
      out[k] = tuple(v) if isinstance(v, list) else v
  return out


def _schema(size: str, given: dict) -> dict:
  """The defaults at `size`, with the blocks of the chosen encoders and of every head."""
  base = _merge(_DEFAULTS, PRESETS[size], "")
  for part, registry in encoders.REGISTRIES.items():
    name = (given.get(part) or {}).get("encoder", DEFAULT_ENCODERS[part])
    cls = registry.get(name)
    base[part] = dict(encoder=name, **_merge(cls.DEFAULTS, cls.SIZES.get(size, {}), f"{part}."))
  for name in heads.HEADS:
    if name in base:
      raise ValueError(f"head {name!r}: its name clashes with the model config field {name!r}.")
    base[name] = dict(heads.get(name).DEFAULTS)
  return base


def resolve_config(model_config) -> dict:
  """Defaults <- preset `size` <- the given fields; validated. Returns a plain nested dict."""
  given = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config or {})
  size = given.get("size", _DEFAULTS["size"])
  if size not in PRESETS:
    raise ValueError(f"unknown model size {size!r}; expected one of {list(PRESETS)}.")
  try:
    cfg = _merge(_schema(size, given), given, "")
  except ValueError as e:
    raise ValueError(f"models/config.py: {e}") from None
  checks = [
      (cfg["backbone"] in backbones.BACKBONES,
       f"model.backbone must be one of {backbones.BACKBONES.names()}"),
      (cfg["head"] in heads.HEADS, f"model.head must be one of {heads.HEADS.names()}"),
      (cfg["mask"] in transformer.MASKS, f"model.mask must be one of {transformer.MASKS}"),
      (cfg["emb_dim"] % cfg["num_heads"] == 0, "model.emb_dim must be divisible by num_heads"),
      (cfg["dtype"] in DTYPES, f"model.dtype must be one of {DTYPES}"),
  ]
  for ok, msg in checks:
    if not ok:
      raise ValueError(f"models/config.py: {msg} (got {cfg}).")
  make_head(cfg)  # the head validates its own options
  return cfg


def checkpoint_layout(saved_model_config) -> bool:
  """The `scan_layers` a checkpoint was saved with, from its saved `config.model`: configs saved
  before the field existed had unrolled layers (False), whatever today's default is."""
  return bool((saved_model_config or {}).get("scan_layers", False))


def make_head(cfg: dict):
  """The head object of a resolved config."""
  return heads.get(cfg["head"]).from_config(cfg[cfg["head"]])


def part_options(cfg, part: str) -> dict:
  """The encoder options of one observation part, without its `encoder` name."""
  return {k: v for k, v in dict(cfg[part]).items() if k != "encoder"}


def model_config(size: str = "paper", **overrides) -> ml_collections.ConfigDict:
  """The complete `config.model` for a preset, with optional overrides (nested dicts allowed)."""
  return ml_collections.ConfigDict(resolve_config(dict(size=size, **overrides)))
