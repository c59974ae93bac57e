"""Observation encoders by name (`config.model.{image,language,state}.encoder`).

The contract: `encoders/base.py`. A new encoder is a new module here, registered in its part's
registry and imported below.
"""

from egodex_jax.models.encoders.base import IMAGE, LANGUAGE, REGISTRIES, STATE
from egodex_jax.models.encoders import language, resnet, state  # noqa: F401  (registers them)
from egodex_jax.models.encoders.language import FrozenEmbeddingProjection, WordEncoder
from egodex_jax.models.encoders.resnet import BasicBlock, ResNetEncoder
from egodex_jax.models.encoders.state import StateEncoder, TimeEncoder, sinusoidal
