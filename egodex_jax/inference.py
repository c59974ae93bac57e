"""A trained policy as a function: frame, hand state, instruction -> K futures in metres.

  from egodex_jax import inference
  policy = inference.load_policy('workdirs/demo')            # the latest step's EMA parameters
  futures = policy.predict(frame, hand_state, 'put the lid on the pot', k=10)   # [K, H, 48]

Everything comes from the checkpoint itself (config, normaliser, the instruction table and the
learned vocabulary's texts: `train.policy_spec`), never from today's command line or the
dataset. Inputs take the training path exactly: the frame through the builder's resize and
JPEG round trip (`data/frames.py`), the state and the output through the checkpoint's
`Normalizer` (`normalize_obs` / `denormalize_samples`; relative actions get the state added
back). Units: metres in the camera frame of the frame, the 48-D layout of `skeleton.py`.

An instruction of the training table uses its row of the table; any other text is encoded as
the language encoder would have encoded it at training time: the 'learned' word encoder maps
unknown words to UNK (and keeps at most the trained number of words), MiniLM embeds any text.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from egodex_jax import checkpoint as ckpt_lib
from egodex_jax import skeleton
from egodex_jax import train
from egodex_jax.data import batch as batch_lib
from egodex_jax.data import frames
from egodex_jax.data import normalize
from egodex_jax.models import config as config_lib
from egodex_jax.models import encoders

UserError = train.UserError  # bad input a user can fix: one sentence


@dataclasses.dataclass(eq=False)
class TrainedPolicy:
  """A restored policy; `predict` / `predict_batch`. One jit compile per input shape."""
  config: ml_collections.ConfigDict  # the run's config, as saved in the checkpoint
  policy: Any                        # models.policy.Policy
  params: Any                        # the EMA parameters
  normalizer: normalize.Normalizer
  spec: dict                         # train.policy_spec: instructions, vocabulary, image size
  step: int

  def __post_init__(self):
    self._rows: dict[str, np.ndarray] = {}
    self.sample_fn = jax.jit(self._sample, static_argnames="num_samples")

  @property
  def horizon(self) -> int:
    return self.policy.horizon

  @property
  def image_size(self) -> int:
    return int(self.spec["image_size"])

  @property
  def goal(self) -> bool:
    return self.policy.goal

  # -- inputs -----------------------------------------------------------------------------

  def language_row(self, instruction: str) -> np.ndarray:
    """The language encoder's input for `instruction`: a row shaped like the policy's table."""
    if instruction not in self._rows:
      table = np.asarray(self.policy.lang_table)
      known = list(self.spec["instructions"])
      if instruction in known:
        row = table[known.index(instruction)]
      else:
        cfg = self.policy.config
        cls = encoders.LANGUAGE.get(cfg["language"]["encoder"])
        rows, _ = cls.table(config_lib.part_options(cfg, "language"), [instruction],
                            self.spec["vocab_instructions"])
        row = _fit_row(np.asarray(rows)[0], table.shape[1:])
      self._rows[instruction] = row.astype(table.dtype)
    return self._rows[instruction]

  def observation(self, images, hand_states, instructions, goal_images=None) -> dict:
    """Canonical batch (data/batch.py's observation keys) of B raw inputs, with the language
    rows `lang` [B, ...] and instruction_id = row index."""
    images = [frames.model_image(im, self.image_size) for im in images]
    states = np.asarray(hand_states, np.float32)
    b = len(images)
    if states.shape != (b, skeleton.ACTION_DIM):
      raise ValueError(f"hand states must be [{b}, {skeleton.ACTION_DIM}] (one per image), got "
                       f"{states.shape}")
    if isinstance(instructions, str) or len(instructions) != b:
      raise ValueError(f"give one instruction per image ({b}), got {instructions!r}")
    obs = dict(image=np.stack(images), state=states, instruction_id=np.arange(b, dtype=np.int32),
               lang=np.stack([self.language_row(str(s)) for s in instructions]))
    if self.goal:
      if goal_images is None or len(goal_images) != b:
        raise ValueError(f"this policy is goal-conditioned: give one goal image per image ({b})")
      obs["goal_image"] = np.stack([frames.model_image(im, self.image_size) for im in goal_images])
    return obs

  # -- sampling ---------------------------------------------------------------------------

  def _sample(self, params, obs, rng, *, num_samples: int):
    """-> [K, B, H, 48] metres: the evaluator's step (normalise, sample, de-normalise)."""
    policy = dataclasses.replace(self.policy, lang_table=obs["lang"])  # rows of this batch
    samples = policy.sample(params, self.normalizer.normalize_obs(obs), rng, num_samples)
    return self.normalizer.denormalize_samples(samples, obs["state"]).astype(jnp.float32)

  def predict_batch(self, images, hand_states, instructions: Sequence[str], *, k: int = 10,
                    goal_images=None, seed: int = 0) -> np.ndarray:
    """B frames ([B, h, w, 3] uint8 RGB or a list of any sizes), hand states [B, 48] (metres,
    camera frame of each frame), B instructions -> [B, K, H, 48] float32 metres.

    Sampled with PRNGKey(seed) over the whole batch (as the evaluator samples a batch); a
    deterministic head (BC) gives K copies of its one prediction.
    """
    if isinstance(k, bool) or int(k) != k or k < 1:
      raise ValueError(f"k must be an integer >= 1, got {k!r}")
    obs = self.observation(images, hand_states, instructions, goal_images)
    out = self.sample_fn(self.params, obs, jax.random.PRNGKey(seed), num_samples=int(k))
    return np.swapaxes(np.asarray(jax.device_get(out)), 0, 1)

  def predict(self, image, hand_state, instruction: str, *, k: int = 10, goal_image=None,
              seed: int = 0) -> np.ndarray:
    """One frame [h, w, 3] uint8 RGB, hand state [48] metres, instruction -> [K, H, 48] metres."""
    goal = None if goal_image is None else [goal_image]
    return self.predict_batch([image], np.asarray(hand_state, np.float32)[None], [instruction],
                              k=k, goal_images=goal, seed=seed)[0]


def _fit_row(row: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A table row for a new text -> the trained table's row shape: word ids are padded (0) or cut
  to the trained length (the position table has no more rows); other rows must already fit."""
  if row.shape == tuple(shape):
    return row
  if row.ndim == 1 and len(shape) == 1 and np.issubdtype(row.dtype, np.integer):
    out = np.zeros(shape, row.dtype)
    n = min(len(row), shape[0])
    out[:n] = row[:n]
    return out
  raise ValueError(f"the language encoder gave a row of shape {row.shape}, the policy's table "
                   f"has rows of shape {tuple(shape)}")


# ----------------------------------------------------------------------------- loading

def load_policy(workdir: str, step: int | None = None) -> TrainedPolicy:
  """The EMA parameters of `step` (default: the latest) in `workdir`, with the run's config,
  normaliser and instruction table, all read from that checkpoint. Raises UserError (one
  sentence) for a missing workdir or checkpoint."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  ckpt_dir = ckpt_lib.checkpoint_dir(workdir)
  if not os.path.isdir(workdir):
    raise UserError(f'{workdir}: no such workdir.')
  if not os.path.isdir(ckpt_dir):
    raise UserError(f'{workdir}: holds no checkpoints/ folder (train first with '
                    'python -m egodex_jax.main).')
  manager = ckpt_lib.make_manager(workdir, save_every=1, keep=None, async_save=False)
  steps = sorted(manager.all_steps())
  if not steps:
    raise UserError(f'{ckpt_dir}: no checkpoint in it (train first).')
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise UserError(f'{ckpt_dir}: no checkpoint of step {step} (it has {steps}).')
  saved_config = ckpt_lib.restore_json(manager, 'config', step)
  saved_norm = ckpt_lib.restore_json(manager, 'normalizer', step)
  if saved_config is None or saved_norm is None:
    raise UserError(f'{ckpt_dir}/{step}: lacks its config or normalizer item (written by an '
                    'older version); retrain in a new workdir.')
  config = ml_collections.ConfigDict(saved_config)
  # The params' layer layout is the checkpoint's: configs saved before the field were unrolled.
  config.model.scan_layers = config_lib.checkpoint_layout(saved_config.get('model'))
  spec = ckpt_lib.restore_json(manager, 'policy', step) or _spec_from_dataset(config, ckpt_dir)
  policy = train.policy_from_spec(config, spec)
  state = _restore_state(manager, step, config, policy, spec)
  return TrainedPolicy(config=config, policy=policy, params=state.ema_params,
                       normalizer=normalize.Normalizer.from_json(saved_norm), spec=spec,
                       step=step)


def _spec_from_dataset(config, ckpt_dir: str) -> dict:
  """Checkpoints older than the 'policy' item: the spec from the dataset the run trained on."""
  try:
    meta = train.load_meta(config)
  except UserError:
    raise UserError(f'{ckpt_dir}: its checkpoints predate the saved instruction table, and the '
                    f'dataset they were trained on is not at {config.data.data_dir} any more; '
                    'rebuild it there or retrain.') from None
  return train.policy_spec(config, meta)


def _restore_state(manager, step: int, config, policy, spec: dict):
  """The TrainState of `step`, every array on one device (whatever mesh trained it)."""
  optimizer, _ = train.make_optimizer(config.optim, int(config.train.num_steps))
  obs = batch_lib.dummy_batch(batch_size=1, horizon=config.data.horizon,
                              image_size=int(spec['image_size']), goal=config.data.goal)
  shapes = jax.eval_shape(lambda b: train.init_state(policy, optimizer, b, config.seed), obs)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          shapes)
  state, _ = ckpt_lib.restore(manager, abstract, step=step)
  return state
