"""Policies: observation encoders + transformer backbone + a BC, DDPM or flow-matching head.

One interface for all six (backbone x head) pairs, chosen by `config.model` alone:
  policy = make_policy(model_config, horizon=H, instructions=[...], goal=False)
  params = policy.init(rng, batch)
  loss, metrics = policy.loss(params, batch, rng, train=True)
  samples = policy.sample(params, batch, rng, num_samples)      # [K, B, H, 48], normalised space
Sampling encodes the observation once (encoder memory or decoder KV cache) and reruns only the
action part for each of the K samples and S steps, K folded into the batch ([K*B, ...]).

The heads (`BCHead`, `DDPMHead`, `FlowMatchingHead`) only see a `predict(x_t, t) -> [N, H, D]`
function, so the same head code drives the policies and the toy tests of multimodality.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from egodex_jax import skeleton
from egodex_jax.models import encoders
from egodex_jax.models import minilm
from egodex_jax.models import tokenizer
from egodex_jax.models import transformer

BACKBONES = ("dec", "encdec")
HEADS = ("bc", "ddpm", "fm")

# Every field of `config.model`; presets override some of them. See docs/interfaces.md.
_DEFAULTS = dict(
    size="paper", backbone="encdec", head="fm", mask="block",
    emb_dim=1024, num_heads=16, num_layers=11, enc_layers=5, dec_layers=5, mlp_ratio=4,
    dropout=0.1, attn_dropout=0.0, dtype="float32", relative_actions=False,
    image=dict(stage_sizes=(2, 2, 2, 2), width=64, groups=32, num_tokens=1),
    language=dict(encoder="learned", max_len=32, width=128, num_layers=1),
    state=dict(hidden=256, num_layers=2),
    ddpm=dict(train_steps=16, sample_steps=16, clip_x0=0.0),
    fm=dict(time_dist="beta", sample_steps=16),
)

PRESETS = {
    # Unit tests: a few thousand parameters, 16-32 px images.
    "tiny": dict(emb_dim=32, num_heads=2, num_layers=2, enc_layers=1, dec_layers=1, dropout=0.0,
                 image=dict(stage_sizes=(1, 1), width=8, groups=4),
                 language=dict(width=16, num_layers=0), state=dict(hidden=32)),
    # The CPU demo at 64 px: about 1-2M parameters.
    "demo": dict(emb_dim=128, num_heads=4, num_layers=4, enc_layers=2, dec_layers=2, dropout=0.0,
                 image=dict(stage_sizes=(1, 1, 1, 1), width=16, groups=8),
                 language=dict(width=64, num_layers=1), state=dict(hidden=128)),
    # The paper's ~200M (ResNet-18 + a 1024-wide transformer).
    "paper": dict(emb_dim=1024, num_heads=16, num_layers=11, enc_layers=5, dec_layers=5),
    # The paper's 500M ablation.
    "large": dict(emb_dim=1536, num_heads=24, num_layers=13, enc_layers=6, dec_layers=6),
}


def _merge(base: dict, over: dict, where: str) -> dict:
  out = copy.deepcopy(base)
  for k, v in over.items():
    if k not in base:
      raise ValueError(f"policies.py: unknown model config field '{where}{k}'; "
                       f"known fields: {sorted(base)}.")
    if isinstance(base[k], dict):
      if not isinstance(v, dict):
        raise ValueError(f"policies.py: model config field '{where}{k}' must be a dict.")
      out[k] = _merge(base[k], v, f"{where}{k}.")
    else:
      out[k] = tuple(v) if isinstance(v, list) else v
  return out


def resolve_config(model_config) -> dict:
  """Defaults <- preset `size` <- the given fields; validated. Returns a plain nested dict."""
  given = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config or {})
  size = given.get("size", _DEFAULTS["size"])
  if size not in PRESETS:
    raise ValueError(f"policies.py: unknown model size {size!r}; expected one of {list(PRESETS)}.")
  cfg = _merge(_merge(_DEFAULTS, PRESETS[size], ""), given, "")
  checks = [
      (cfg["backbone"] in BACKBONES, f"model.backbone must be one of {BACKBONES}"),
      (cfg["head"] in HEADS, f"model.head must be one of {HEADS}"),
      (cfg["mask"] in transformer.MASKS, f"model.mask must be one of {transformer.MASKS}"),
      (cfg["emb_dim"] % cfg["num_heads"] == 0, "model.emb_dim must be divisible by num_heads"),
      (cfg["language"]["encoder"] in ("learned", "minilm"),
       "model.language.encoder must be 'learned' or 'minilm'"),
      (cfg["fm"]["time_dist"] in ("beta", "uniform"), "model.fm.time_dist must be beta/uniform"),
      (1 <= cfg["ddpm"]["sample_steps"] <= cfg["ddpm"]["train_steps"],
       "model.ddpm.sample_steps must be in [1, train_steps]"),
      (cfg["fm"]["sample_steps"] >= 1, "model.fm.sample_steps must be >= 1"),
      (not cfg["relative_actions"], "model.relative_actions is not implemented; set it False"),
      (cfg["dtype"] in ("float32", "bfloat16"), "model.dtype must be float32 or bfloat16"),
  ]
  for ok, msg in checks:
    if not ok:
      raise ValueError(f"policies.py: {msg} (got {cfg}).")
  return cfg


def model_config(size: str = "paper", **overrides) -> ml_collections.ConfigDict:
  """The complete `config.model` for a preset, with optional overrides (nested dicts allowed)."""
  return ml_collections.ConfigDict(resolve_config(dict(size=size, **overrides)))


# ----------------------------------------------------------------------------------------------
# Heads: pure functions of a `predict(x_t, t)` closure.

def masked_mse(pred, target, padding=None):
  """Mean squared error over valid elements; padding [N, H] True = padded (excluded)."""
  err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))  # [N, H, D]
  if padding is None:
    return err.mean()
  w = (~padding).astype(jnp.float32)[..., None]
  return (err * w).sum() / jnp.maximum(w.sum() * err.shape[-1], 1.0)


@dataclasses.dataclass(frozen=True)
class BCHead:
  """Behaviour cloning: predict the chunk directly (MSE)."""
  num_steps: int = 1
  stochastic: bool = False

  def loss(self, predict, actions, padding, rng):
    del rng
    loss = masked_mse(predict(None, None), actions, padding)
    return loss, {"mse": loss}

  def sample(self, predict, shape, rng):
    del shape, rng
    return predict(None, None)


def cosine_alphas_cumprod(num_steps: int, s: float = 0.008) -> np.ndarray:
  """Nichol & Dhariwal's cosine schedule (betas capped at 0.999) -> alpha_bar [T] float64."""
  f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
  i = np.arange(num_steps, dtype=np.float64)
  betas = np.minimum(1.0 - f((i + 1) / num_steps) / f(i / num_steps), 0.999)
  return np.cumprod(1.0 - betas)


@dataclasses.dataclass(frozen=True)
class DDPMHead:
  """DDPM with epsilon prediction and a cosine schedule of `train_steps` timesteps.

  Sampling uses `sample_steps` <= train_steps timesteps, evenly strided from T-1 down to 0, with
  the DDIM update at eta = 1 (ancestral: fresh noise each step), which is exactly DDPM's posterior
  sampling when sample_steps == train_steps. The network sees time as (index + 1) / T in (0, 1].
  """
  train_steps: int = 16
  sample_steps: int = 16
  clip_x0: float = 0.0
  stochastic: bool = True

  @property
  def num_steps(self):
    return self.sample_steps

  def loss(self, predict, actions, padding, rng):
    n = actions.shape[0]
    rng_t, rng_e = jax.random.split(rng)
    idx = jax.random.randint(rng_t, (n,), 0, self.train_steps)
    ab = jnp.asarray(cosine_alphas_cumprod(self.train_steps), jnp.float32)[idx][:, None, None]
    eps = jax.random.normal(rng_e, actions.shape, jnp.float32)
    x_t = jnp.sqrt(ab) * actions + jnp.sqrt(1 - ab) * eps
    loss = masked_mse(predict(x_t, (idx + 1) / self.train_steps), eps, padding)
    return loss, {"mse": loss}

  def sample(self, predict, shape, rng):
    ab_all = cosine_alphas_cumprod(self.train_steps)
    ts = np.round(np.linspace(self.train_steps - 1, 0, self.sample_steps)).astype(np.int32)
    ab_t = jnp.asarray(ab_all[ts], jnp.float32)
    ab_prev = jnp.asarray(np.append(ab_all[ts[1:]], 1.0), jnp.float32)  # alpha_bar(-1) = 1
    t_in = jnp.asarray((ts + 1) / self.train_steps, jnp.float32)
    rng_x, rng_z = jax.random.split(rng)
    x = jax.random.normal(rng_x, shape, jnp.float32)

    def step(i, x):
      a, ap = ab_t[i], ab_prev[i]
      eps = predict(x, jnp.full((shape[0],), t_in[i])).astype(jnp.float32)
      x0 = (x - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a)
      if self.clip_x0 > 0:
        x0 = jnp.clip(x0, -self.clip_x0, self.clip_x0)
        eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
      var = (1 - ap) / (1 - a) * (1 - a / ap)  # eta = 1
      mean = jnp.sqrt(ap) * x0 + jnp.sqrt(jnp.maximum(1 - ap - var, 0.0)) * eps
      z = jax.random.normal(jax.random.fold_in(rng_z, i), shape, jnp.float32)
      return mean + jnp.sqrt(var) * z

    return jax.lax.fori_loop(0, self.sample_steps, step, x)


@dataclasses.dataclass(frozen=True)
class FlowMatchingHead:
  """Flow matching: x_t = (1 - t) x + t e, target velocity e - x; Euler from t = 1 to 0."""
  time_dist: str = "beta"
  sample_steps: int = 16
  stochastic: bool = True

  @property
  def num_steps(self):
    return self.sample_steps

  def sample_time(self, rng, n):
    """Training times [n] in (0, 1]."""
    u = jax.random.uniform(rng, (n,))
    if self.time_dist == "beta":  # openpi's Beta(1.5, 1): more weight on noisy times
      # Beta(a, 1) has CDF t^a, so u^(1/a) samples it exactly (jax.random.beta's rejection
      # sampler costs ~17 s of XLA:CPU compilation).
      return u ** (1.0 / 1.5) * 0.999 + 0.001
    return u

  def loss(self, predict, actions, padding, rng):
    n = actions.shape[0]
    rng_t, rng_e = jax.random.split(rng)
    t = self.sample_time(rng_t, n)
    eps = jax.random.normal(rng_e, actions.shape, jnp.float32)
    tb = t[:, None, None]
    x_t = (1 - tb) * actions + tb * eps
    loss = masked_mse(predict(x_t, t), eps - actions, padding)
    return loss, {"mse": loss}

  def sample(self, predict, shape, rng):
    dt = 1.0 / self.sample_steps
    x = jax.random.normal(rng, shape, jnp.float32)

    def step(i, x):
      t = jnp.full((shape[0],), 1.0 - i * dt)
      return x - dt * predict(x, t).astype(jnp.float32)

    return jax.lax.fori_loop(0, self.sample_steps, step, x)


def make_head(cfg: dict):
  if cfg["head"] == "bc":
    return BCHead()
  if cfg["head"] == "ddpm":
    d = cfg["ddpm"]
    return DDPMHead(int(d["train_steps"]), int(d["sample_steps"]), float(d["clip_x0"]))
  return FlowMatchingHead(cfg["fm"]["time_dist"], int(cfg["fm"]["sample_steps"]))


# ----------------------------------------------------------------------------------------------
# The network

class PolicyNet(nn.Module):
  """Encoders + backbone + action in/out maps. Methods: `full` (naive forward), `encode`, `decode`.

  Observation tokens: [language | image x n | hand state | goal image x n (goal)].
  Action tokens: [time (ddpm/fm) | H actions (learned queries for BC, embedded x_t otherwise)].
  """
  cfg: Any  # ml_collections.FrozenConfigDict of the resolved model config
  horizon: int
  goal: bool
  vocab_size: int
  lang_len: int

  @property
  def n_obs(self):
    return 2 + self.cfg.image.num_tokens * (2 if self.goal else 1)

  @property
  def n_act(self):
    return self.horizon + (0 if self.cfg.head == "bc" else 1)

  def setup(self):
    c = self.cfg
    d, dtype = c.emb_dim, jnp.dtype(c.dtype)
    self.image_encoder = encoders.ResNetEncoder(
        tuple(c.image.stage_sizes), c.image.width, c.image.groups, c.image.num_tokens, d, dtype)
    if c.language.encoder == "minilm":
      self.language_encoder = encoders.FrozenEmbeddingProjection(d, dtype)
    else:
      lw = c.language.width
      self.language_encoder = encoders.WordEncoder(
          self.vocab_size, self.lang_len, lw, c.language.num_layers, max(1, lw // 64), d, dtype)
    self.state_encoder = encoders.StateEncoder(c.state.hidden, c.state.num_layers, d, dtype)
    init = nn.initializers.normal(0.02)
    if c.head == "bc":
      self.action_queries = self.param("action_queries", init, (self.horizon, d))
    else:
      self.time_encoder = encoders.TimeEncoder(d, dtype)
      self.action_in = nn.Dense(d, dtype=dtype)
    self.obs_pos = self.param("obs_pos", init, (self.n_obs, d))
    self.act_pos = self.param("act_pos", init, (self.n_act, d))
    common = dict(dim=d, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, dropout=c.dropout,
                  attn_dropout=c.attn_dropout, dtype=dtype)
    if c.backbone == "dec":
      self.backbone = transformer.Decoder(num_layers=c.num_layers, **common)
    else:
      self.backbone = transformer.EncoderDecoder(enc_layers=c.enc_layers,
                                                 dec_layers=c.dec_layers, **common)
    self.action_out = nn.Dense(skeleton.ACTION_DIM, dtype=jnp.float32)

  def obs_tokens(self, inputs, train):
    """inputs: image [B,S,S,3] uint8, goal_image (goal), state [B,48], lang -> [B, n_obs, D]."""
    b = inputs["image"].shape[0]
    images = inputs["image"]
    if self.goal:
      images = jnp.concatenate([images, inputs["goal_image"]], 0)  # one pass, shared weights
    img = self.image_encoder(images)
    lang = (self.language_encoder(inputs["lang"]) if self.cfg.language.encoder == "minilm" else
            self.language_encoder(inputs["lang"], train=train))
    parts = [lang, img[:b], self.state_encoder(inputs["state"])]
    if self.goal:
      parts.append(img[b:])
    x = jnp.concatenate([p.astype(img.dtype) for p in parts], 1)
    return x + self.obs_pos.astype(x.dtype)

  def act_tokens(self, x_t, t, batch_size):
    if self.cfg.head == "bc":
      x = jnp.broadcast_to(self.action_queries, (batch_size,) + self.action_queries.shape)
    else:
      x = jnp.concatenate([self.time_encoder(t), self.action_in(x_t.astype(self.cfg.dtype))], 1)
    return x + self.act_pos.astype(x.dtype)

  def _out(self, y):
    return self.action_out(y[:, -self.horizon:].astype(jnp.float32))  # [B, H, 48]

  def full(self, inputs, x_t, t, train=False):
    """The naive forward: every token, every layer."""
    obs = self.obs_tokens(inputs, train)
    act = self.act_tokens(x_t, t, obs.shape[0])
    if self.cfg.backbone == "dec":
      mask = transformer.decoder_mask(self.n_obs, self.n_act, self.cfg.mask)
      y = self.backbone(jnp.concatenate([obs, act.astype(obs.dtype)], 1), mask, train=train)
    else:
      masks = transformer.encdec_masks(self.n_obs, self.n_act, self.cfg.mask)
      y = self.backbone(obs, act, masks, train=train)
    return self._out(y)

  def encode(self, inputs, train=False):
    """The observation part, computed once: per-block KV cache (dec) or cross K/V (encdec)."""
    obs = self.obs_tokens(inputs, train)
    if self.cfg.backbone == "dec":
      mask = transformer.decoder_mask(self.n_obs, self.n_act, self.cfg.mask)
      return self.backbone.prefix(obs, mask[:self.n_obs, :self.n_obs], train=train)
    enc_mask, _, _ = transformer.encdec_masks(self.n_obs, self.n_act, self.cfg.mask)
    return self.backbone.encode(obs, enc_mask, train=train)

  def decode(self, obs, x_t, t, train=False):
    """Only the action tokens, against the encoded observation -> [B, H, 48]."""
    b = jax.tree.leaves(obs)[0].shape[0]
    act = self.act_tokens(x_t, t, b)
    if self.cfg.backbone == "dec":
      mask = transformer.decoder_mask(self.n_obs, self.n_act, self.cfg.mask)
      y = self.backbone.extend(act, obs, mask[self.n_obs:], train=train)
    else:
      _, self_mask, cross_mask = transformer.encdec_masks(self.n_obs, self.n_act, self.cfg.mask)
      y = self.backbone.decode(act, obs, self_mask, cross_mask, train=train)
    return self._out(y)


# ----------------------------------------------------------------------------------------------
# The policy

def _repeat(tree, k: int):
  """Leaves [B, ...] -> [K*B, ...], sample-major (row k*B + b is copy k of item b)."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x[None], (k,) + x.shape).reshape(
      (k * x.shape[0],) + x.shape[1:]), tree)


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
  """See the module docstring and docs/interfaces.md. All methods are pure and jittable."""
  config: dict  # the resolved model config
  horizon: int
  goal: bool
  net: PolicyNet
  head: Any
  lang_table: np.ndarray  # [num_instructions, L] int32 word ids, or [num_instructions, 384]

  @property
  def num_steps(self) -> int:
    return self.head.num_steps

  def inputs(self, batch) -> dict:
    """The network's inputs from a (normalised) batch: image(s), state, looked-up language."""
    ids = jnp.asarray(batch["instruction_id"], jnp.int32)
    out = dict(image=batch["image"], state=batch["state"],
               lang=jnp.asarray(self.lang_table)[ids])
    if self.goal:
      if "goal_image" not in batch:
        raise KeyError("policies.py: this policy is goal-conditioned but the batch has no "
                       "'goal_image'.")
      out["goal_image"] = batch["goal_image"]
    return out

  def _dummy_xt(self, b):
    if self.config["head"] == "bc":
      return None, None
    return (jnp.zeros((b, self.horizon, skeleton.ACTION_DIM), jnp.float32),
            jnp.zeros((b,), jnp.float32))

  def init(self, rng, batch):
    # One jitted program: run eagerly, every initializer is its own dispatch and compilation
    # (~50 s for the tiny preset on a loaded 2-core CPU, vs ~15 s jitted). Nested jit is free.
    return jax.jit(self._init)(rng, batch)

  def _init(self, rng, batch):
    x_t, t = self._dummy_xt(batch["image"].shape[0])
    rng_p, rng_d = jax.random.split(rng)
    variables = self.net.init({"params": rng_p, "dropout": rng_d}, self.inputs(batch), x_t, t,
                              method=PolicyNet.full)
    return variables["params"]

  def loss(self, params, batch, rng, train=True):
    rng_head, rng_drop = jax.random.split(rng)
    inputs = self.inputs(batch)

    def predict(x_t, t):
      return self.net.apply({"params": params}, inputs, x_t, t, train=train,
                            method=PolicyNet.full, rngs={"dropout": rng_drop})

    loss, metrics = self.head.loss(predict, batch["actions"], batch.get("padding"), rng_head)
    return loss, dict(metrics, loss=loss)

  def encode(self, params, batch):
    """Observation part once -> obs pytree (leaves [B, ...])."""
    return self.net.apply({"params": params}, self.inputs(batch), method=PolicyNet.encode)

  @staticmethod
  def repeat_obs(obs, num_samples: int):
    return _repeat(obs, num_samples)

  def predict(self, params, obs, x_t, t):
    """One evaluation of the action part: obs (leaves [N, ...]), x_t [N, H, 48], t [N]."""
    return self.net.apply({"params": params}, obs, x_t, t, method=PolicyNet.decode)

  def _fold(self, x, k, b):
    return x.reshape((k, b) + x.shape[1:])

  def sample_from_obs(self, params, obs, rng, num_samples: int):
    """-> [K, B, H, 48]: K samples per item, all K folded into one batch of K*B."""
    b = jax.tree.leaves(obs)[0].shape[0]
    k = num_samples if self.head.stochastic else 1  # BC is deterministic: compute once
    obs_k = _repeat(obs, k)
    shape = (k * b, self.horizon, skeleton.ACTION_DIM)
    x = self.head.sample(lambda x_t, t: self.predict(params, obs_k, x_t, t), shape, rng)
    x = self._fold(x, k, b)
    return jnp.broadcast_to(x, (num_samples,) + x.shape[1:])

  def sample(self, params, batch, rng, num_samples: int):
    """[K, B, H, 48] samples in normalised space; the observation is encoded once."""
    return self.sample_from_obs(params, self.encode(params, batch), rng, num_samples)

  def sample_naive(self, params, batch, rng, num_samples: int):
    """Reference sampler: the full network (observation included) at every step."""
    b = batch["image"].shape[0]
    k = num_samples if self.head.stochastic else 1
    inputs = _repeat(self.inputs(batch), k)

    def predict(x_t, t):
      return self.net.apply({"params": params}, inputs, x_t, t, method=PolicyNet.full)

    shape = (k * b, self.horizon, skeleton.ACTION_DIM)
    x = self._fold(self.head.sample(predict, shape, rng), k, b)
    return jnp.broadcast_to(x, (num_samples,) + x.shape[1:])


def make_policy(model_config, *, horizon: int, instructions, goal: bool = False) -> Policy:
  """Builds the policy `config.model` describes (see docs/interfaces.md, "Model config")."""
  if horizon < 1:
    raise ValueError(f"policies.py: horizon must be >= 1, got {horizon}.")
  cfg = resolve_config(model_config)
  instructions = list(instructions or [])
  if cfg["language"]["encoder"] == "minilm":
    table = minilm.embed(instructions or [""])  # [N, 384], a constant, never trained
    vocab_size, lang_len = 0, 0
  else:
    table, vocab = tokenizer.build_table(instructions, cfg["language"]["max_len"])
    vocab_size, lang_len = len(vocab) + 2, table.shape[1]
  net = PolicyNet(ml_collections.FrozenConfigDict(cfg), horizon, bool(goal), vocab_size, lang_len)
  return Policy(cfg, horizon, bool(goal), net, make_head(cfg), table)


def dummy_batch(*, batch_size: int, horizon: int, image_size: int, goal: bool = False,
                abstract: bool = False) -> dict:
  """A batch of the pipeline's layout (zeros), or of ShapeDtypeStructs when `abstract`."""
  shapes = dict(image=((batch_size, image_size, image_size, 3), np.uint8),
                state=((batch_size, skeleton.ACTION_DIM), np.float32),
                actions=((batch_size, horizon, skeleton.ACTION_DIM), np.float32),
                padding=((batch_size, horizon), np.bool_),
                instruction_id=((batch_size,), np.int32))
  if goal:
    shapes["goal_image"] = shapes["image"]
  if abstract:
    return {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}
  return {k: np.zeros(s, d) for k, (s, d) in shapes.items()}


def param_shapes(model_config, *, horizon: int, image_size: int, goal: bool = False,
                 instructions=None):
  """The params pytree as ShapeDtypeStructs (jax.eval_shape: nothing allocated)."""
  policy = make_policy(model_config, horizon=horizon, instructions=instructions or ["pick up"],
                       goal=goal)
  batch = dummy_batch(batch_size=1, horizon=horizon, image_size=image_size, goal=goal,
                      abstract=True)
  return jax.eval_shape(policy.init, jax.ShapeDtypeStruct((2,), jnp.uint32), batch)


def param_count(model_config, *, horizon: int, image_size: int, goal: bool = False,
                instructions=None) -> int:
  """Number of trainable parameters, via jax.eval_shape (no allocation)."""
  shapes = param_shapes(model_config, horizon=horizon, image_size=image_size, goal=goal,
                        instructions=instructions)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))


def partition_rules():
  """Optional hints for FSDP: (regex over '/'-joined param paths, which axis to shard).

  Large 2-D kernels (attention q/k/v/o, SwiGLU, projections) shard their input axis; everything
  else (norm scales, biases, small convs, position embeddings) is small enough to replicate.
  """
  return (
      (r".*backbone/.*/(q|k|v|gate|up)/kernel$", 0),
      (r".*backbone/.*/(o|down)/kernel$", 1),
      (r".*", None),
  )
