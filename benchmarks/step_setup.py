"""The real train step outside train.py, for benchmarks/gpu_check.py and benchmarks/fsdp_memory.py.

Imports jax, flax, optax, numpy, ml_collections and the model only (egodex_jax.step, not train.py,
which pulls in Grain, orbax and tensorboardX): what a bare accelerator machine has.
  setup = build('paper', image_size=224, dtype='bfloat16')
  abstract, shardings = setup.abstract_state(mesh)
  step = setup.jit_step(mesh, shardings)        # train.jit_train_step of train.train_step
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import numpy as np

from configs import common
from egodex_jax import sharding as sharding_lib
from egodex_jax import step as step_lib
from egodex_jax.data import batch as batch_lib
from egodex_jax.data import normalize
from egodex_jax.models import config as config_lib
from egodex_jax.models import policy as policy_lib

INSTRUCTIONS = ('pick up the cup', 'open the drawer')


@dataclasses.dataclass(frozen=True)
class Setup:
  config: Any          # configs/common.py's config (ml_collections)
  image_size: int
  policy: Any
  optimizer: Any
  schedule: Any
  normalizer: normalize.Normalizer

  @property
  def horizon(self) -> int:
    return int(self.config.data.horizon)

  def example_obs(self) -> dict:
    return batch_lib.dummy_batch(batch_size=1, horizon=self.horizon, image_size=self.image_size)

  def abstract_state(self, mesh, min_shard_size: int | None = None):
    """(ShapeDtypeStructs with shardings, shardings) of the TrainState (step.abstract_state)."""
    if min_shard_size is None:
      min_shard_size = self.config.mesh.min_shard_size
    return step_lib.abstract_state(self.policy, self.optimizer, self.example_obs(),
                                   self.config.seed, mesh, min_shard_size)

  def create_state(self, shardings):
    return step_lib.create_state(self.policy, self.optimizer, self.example_obs(),
                                 self.config.seed, shardings)

  def step_fn(self):
    """train.train_step with this setup's policy, optimiser and normaliser bound (as train.py)."""
    c = self.config
    return functools.partial(step_lib.train_step, policy=self.policy, optimizer=self.optimizer,
                             schedule=self.schedule, normalizer=self.normalizer,
                             ema_decay=c.optim.ema_decay, min_confidence=c.data.min_confidence)

  def jit_step(self, mesh, shardings, step_fn=None):
    return step_lib.jit_train_step(step_fn or self.step_fn(), mesh, shardings)

  def abstract_batch(self, batch_size: int, mesh) -> dict:
    """The train step's batch as ShapeDtypeStructs split over the mesh (nothing allocated)."""
    sharding = sharding_lib.batch_sharding(mesh)
    shapes = batch_lib.dummy_batch(batch_size=batch_size, horizon=self.horizon,
                                   image_size=self.image_size, abstract=True)
    return {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding)
            for k, s in shapes.items()}


def synthetic_normalizer(horizon: int, seed: int = 0) -> normalize.Normalizer:
  """The configs' normaliser (min-max, relative actions) fitted to random walks: the step's
  arithmetic is the real one, the statistics need no dataset."""
  rng = np.random.default_rng(seed)
  walks = np.cumsum(rng.normal(0.0, 0.01, (64, horizon + 1, 48)), 1).astype(np.float32)
  stats = normalize.horizon_stats([(walks, np.zeros((64, horizon), bool))], horizon)
  return normalize.Normalizer(stats, 'minmax', 'relative')


def build(size: str, *, image_size: int, dtype: str = 'float32', head: str = 'fm',
          backbone: str = 'encdec', horizon: int = 60, batch_size: int = 256,
          model: dict | None = None) -> Setup:
  """The run of configs/common.py at `size` (its optimiser, EMA, model fields), compute `dtype`
  (parameters stay float32), on `image_size` px images; `model`: fields over the preset's
  (nested dicts allowed, e.g. {'emb_dim': 256, 'image': {'chunk_size': 4}})."""
  config = common.get_config(f'size={size},head={head},backbone={backbone},h={horizon},'
                             f'bs={batch_size}')
  if model:
    config.model = config_lib.model_config(size, backbone=backbone, head=head, **model)
  config.model.dtype = dtype
  policy = policy_lib.make_policy(config.model, horizon=horizon, instructions=INSTRUCTIONS,
                                  image_size=image_size)
  optimizer, schedule = step_lib.make_optimizer(config.optim, int(config.train.num_steps))
  return Setup(config, image_size, policy, optimizer, schedule, synthetic_normalizer(horizon))


def random_batch(batch_size: int, horizon: int, image_size: int, seed: int = 0) -> dict:
  """A NumPy train batch in canonical metres: random pixels, hand states near the origin and
  random-walk chunks from them (no padding)."""
  rng = np.random.default_rng(seed)
  b = batch_lib.dummy_batch(batch_size=batch_size, horizon=horizon, image_size=image_size)
  b['image'] = rng.integers(0, 256, b['image'].shape, dtype=np.uint8)
  b['state'] = rng.normal(0.0, 0.1, b['state'].shape).astype(np.float32)
  steps = rng.normal(0.0, 0.01, b['actions'].shape)
  b['actions'] = (b['state'][:, None] + np.cumsum(steps, 1)).astype(np.float32)
  b['instruction_id'] = rng.integers(0, len(INSTRUCTIONS), batch_size).astype(np.int32)
  return b


def nbytes(x, per_device: bool = False) -> int:
  """Bytes of one array or ShapeDtypeStruct; per_device: of one device's shard."""
  shape = tuple(x.shape)
  if per_device:
    shape = tuple(x.sharding.shard_shape(shape))
  return math.prod(shape) * np.dtype(x.dtype).itemsize


def tree_bytes(tree, per_device: bool = False) -> int:
  return int(sum(nbytes(x, per_device) for x in jax.tree.leaves(tree)))


def replicated_leaves(tree, min_devices: int = 2) -> list[tuple[str, int]]:
  """(path, bytes) of the leaves every device holds whole, on a mesh of >= min_devices."""
  out = []
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    if x.sharding.num_devices >= min_devices and x.sharding.is_fully_replicated:
      out.append((jax.tree_util.keystr(path), nbytes(x)))
  return out
