"""Policy heads, by name (`config.model.head`). The contract: `heads/base.py`.

A new head is a new module here, decorated with `@register("name")` and imported below (or
anywhere before the policy is built: tests register one of their own).
"""

from egodex_jax.models.heads.base import HEADS, Head, masked_mse, register
from egodex_jax.models.heads import bc, ddpm, flow  # noqa: F401  (registers bc, ddpm, fm)
from egodex_jax.models.heads.bc import BCHead
from egodex_jax.models.heads.ddpm import DDPMHead, cosine_alphas_cumprod
from egodex_jax.models.heads.flow import FlowMatchingHead


def get(name: str):
  return HEADS.get(name)
