"""Policies: the six (backbone, head) pairs learn, sample, and the heads do what they claim."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from egodex_jax.data import batch as batch_lib
from egodex_jax.models import backbones
from egodex_jax.models import config as config_lib
from egodex_jax.models import encoders
from egodex_jax.models import heads
from egodex_jax.models import minilm
from egodex_jax.models import policy as policy_lib
from egodex_jax.models.network import PolicyNet


H, B, S = 4, 4, 16
INSTRUCTIONS = ["pick up the cup", "put the lid on the pot", "open the drawer"]


def _batch(goal=False, seed=0):
  rng = np.random.default_rng(seed)
  batch = batch_lib.dummy_batch(batch_size=B, horizon=H, image_size=S, goal=goal)
  batch["image"] = rng.integers(0, 256, batch["image"].shape).astype(np.uint8)
  if goal:
    batch["goal_image"] = rng.integers(0, 256, batch["image"].shape).astype(np.uint8)
  batch["state"] = rng.normal(size=batch["state"].shape).astype(np.float32)
  batch["actions"] = rng.normal(size=batch["actions"].shape).astype(np.float32)
  batch["padding"][-1, -2:] = True  # the last item ran past its episode end
  batch["instruction_id"] = np.array([0, 1, 2, 0], np.int32)
  return batch


def _policy(backbone, head, mask="block", goal=False, **kw):
  # Smaller than 'tiny' still: XLA:CPU compilation, not running, is what these tests wait for.
  small = dict(num_layers=1, enc_layers=1, dec_layers=1, image=dict(stage_sizes=(1,), width=8),
               state=dict(num_layers=1))
  cfg = ml_collections.ConfigDict(dict(size="tiny", backbone=backbone, head=head, mask=mask,
                                       **{**small, **kw}))
  return policy_lib.make_policy(cfg, horizon=H, instructions=INSTRUCTIONS, goal=goal)


def _train(loss_fn, params, steps, lr=3e-3, seed=0):
  """`steps` Adam steps in one jitted scan (one compilation)."""
  opt = optax.adam(lr)

  @jax.jit
  def run(params, rng):
    def step(carry, r):
      p, s = carry
      grads = jax.grad(lambda q: loss_fn(q, r)[0])(p)
      upd, s = opt.update(grads, s, p)
      return (optax.apply_updates(p, upd), s), None
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(rng, steps))
    return params

  return run(params, jax.random.PRNGKey(seed))


def _overfit_and_sample(policy, batch, *, naive, steps=40, k=3):
  """Init, `steps` Adam steps, losses before/after (fixed rng), K samples from the trained params
  by the cached sampler and, when `naive`, by the naive one: ONE compilation (XLA:CPU compiles
  slowly here, running is fast)."""
  eval_rng, sample_rng = jax.random.PRNGKey(42), jax.random.PRNGKey(1)
  loss = lambda p, r, train: policy.loss(p, batch, r, train=train)[0]
  opt = optax.adam(3e-3)

  @jax.jit
  def run(rng):
    params = policy.init(rng, batch)

    def step(carry, r):
      p, s = carry
      grads = jax.grad(lambda q: loss(q, r, True))(p)
      upd, s = opt.update(grads, s, p)
      return (optax.apply_updates(p, upd), s), None
    (trained, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(rng, steps))
    after, metrics = policy.loss(trained, batch, eval_rng, train=False)
    out = policy.sample(trained, batch, sample_rng, k)
    ref = policy.sample_naive(trained, batch, sample_rng, k) if naive else out
    return loss(params, eval_rng, False), after, metrics, out, ref

  return run(jax.random.PRNGKey(0))


@pytest.mark.parametrize("backbone", backbones.BACKBONES.names())
@pytest.mark.parametrize("head", ["bc", "ddpm", "fm"])
def test_pair_learns_and_samples(backbone, head):
  policy = _policy(backbone, head)
  batch = _batch()
  # The cached sampler (observation encoded once) vs the full forward at every step: checked for
  # FM on both backbones and DDPM on 'dec' here, under 'xil_causal' below.
  naive = head == "fm" or (head == "ddpm" and backbone == "dec")
  before, after, metrics, out, ref = _overfit_and_sample(policy, batch, naive=naive)
  assert np.isfinite(before) and after < 0.7 * before, (before, after)
  assert {"loss", "mse"} <= set(metrics) and all(np.shape(v) == () for v in metrics.values())
  assert out.shape == (3, B, H, 48) and out.dtype == jnp.float32 and np.isfinite(out).all()
  # DDPM's first step divides by sqrt(alpha_bar) ~ 3e-3: float noise grows, so compare relatively.
  tol = 1e-3 if head == "ddpm" else 1e-4
  np.testing.assert_allclose(out, ref, atol=tol * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("backbone", backbones.BACKBONES.names())
def test_cached_equals_naive_under_xil_causal(backbone):
  policy = _policy(backbone, "fm", mask="xil_causal", goal=True)
  batch = _batch(goal=True)
  x_t = jax.random.normal(jax.random.PRNGKey(1), (B, H, 48))
  t = jnp.linspace(0.1, 0.9, B)

  @jax.jit
  def run(rng):  # one compilation (XLA:CPU compiles slowly here)
    p = policy.init(rng, batch)
    fast = policy.predict(p, policy.encode(p, batch), x_t, t)  # the action part, cached obs
    full = policy.net.apply({"params": p}, policy.inputs(batch), x_t, t,
                            method=PolicyNet.full)
    rng_s = jax.random.PRNGKey(2)
    return fast, full, policy.sample(p, batch, rng_s, 2), policy.sample_naive(p, batch, rng_s, 2)

  fast, full, a, b = run(jax.random.PRNGKey(0))
  np.testing.assert_allclose(fast, full, atol=1e-5)
  np.testing.assert_allclose(a, b, atol=1e-4)


def test_masked_mse_ignores_padded_frames():
  pred = np.zeros((2, 3, 4), np.float32)
  target = np.ones((2, 3, 4), np.float32)
  padding = np.array([[False, False, True], [False, True, True]])
  target[padding] = 1e6  # garbage where padded
  np.testing.assert_allclose(heads.masked_mse(pred, target, padding), 1.0)
  np.testing.assert_allclose(heads.masked_mse(pred, np.ones_like(target), None), 1.0)
  assert float(heads.masked_mse(pred, target, np.ones((2, 3), bool))) == 0.0  # all padded


def test_policy_loss_masks_padding():
  policy = _policy("dec", "bc")  # BC's input never sees the actions: padded targets are irrelevant
  batch = _batch()
  moved = dict(batch, actions=batch["actions"].copy())
  moved["actions"][-1, -2:] += 100.0  # only padded frames change
  valid = dict(moved, actions=moved["actions"].copy())
  valid["actions"][0, 0] += 1.0  # a valid frame changes

  @jax.jit
  def losses(rng):
    p = policy.init(rng, batch)
    return [policy.loss(p, b, rng, train=False)[0] for b in (batch, moved, valid)]

  base, padded, changed = losses(jax.random.PRNGKey(0))
  np.testing.assert_allclose(base, padded, rtol=1e-6)
  assert abs(float(base) - float(changed)) > 1e-4


@pytest.mark.parametrize("head", ["bc", "ddpm"])
def test_sampling_is_deterministic_given_rng(head):
  # DDPM without x0 clipping: an untrained network's clipped samples sit on the bound, equal
  # between rngs; what this test asks is that every element depends on the rng.
  policy = _policy("encdec", head, **({"ddpm": dict(clip_x0=0.0)} if head == "ddpm" else {}))
  batch = _batch()
  sample = jax.jit(lambda r: policy.sample(policy.init(jax.random.PRNGKey(0), batch), batch, r, 4))
  s1 = sample(jax.random.PRNGKey(5))
  np.testing.assert_array_equal(s1, sample(jax.random.PRNGKey(5)))
  s2 = sample(jax.random.PRNGKey(6))
  if head == "bc":  # deterministic: every sample equal, whatever the rng
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(s1[0], s1[3])
  else:
    assert np.abs(s1 - s2).min() > 0 and np.abs(s1[0] - s1[1]).max() > 1e-2


def test_goal_image_is_used_and_required():
  policy = _policy("encdec", "bc", goal=True)
  batch = _batch(goal=True)
  other = dict(batch, goal_image=255 - batch["goal_image"])

  @jax.jit
  def run(rng):
    p = policy.init(rng, batch)
    return p, policy.sample(p, batch, rng, 1), policy.sample(p, other, rng, 1)

  params, a, b = run(jax.random.PRNGKey(0))
  assert np.abs(a - b).max() > 1e-5
  no_goal = {k: v for k, v in batch.items() if k != "goal_image"}
  with pytest.raises(KeyError, match="goal_image"):
    policy.loss(params, no_goal, jax.random.PRNGKey(0))


def test_minilm_language_table_is_frozen_constant():
  policy = _policy("dec", "bc", language=dict(encoder="minilm"))
  np.testing.assert_allclose(policy.lang_table, minilm.embed(INSTRUCTIONS), atol=1e-6)
  batch = _batch()
  params = jax.eval_shape(policy.init, jax.random.PRNGKey(0), batch)
  assert jax.tree.map(lambda x: x.shape, params["language_encoder"]) == {  # the only text params
      "proj": {"kernel": (384, 32), "bias": (32,)}}
  assert "image_encoder" in params and "backbone" in params


@pytest.mark.parametrize("backbone,head", [("dec", "bc"), ("encdec", "fm")])
def test_paper_preset_is_about_200m(backbone, head):
  n = policy_lib.param_count(config_lib.model_config("paper", backbone=backbone, head=head),
                           horizon=60, image_size=224)
  assert 180e6 <= n <= 220e6, n


def test_config_resolution():
  full = config_lib.model_config("demo", head="ddpm", ddpm=dict(sample_steps=8))
  assert full.emb_dim == 128 and full.ddpm.sample_steps == 8 and full.ddpm.train_steps == 16
  assert full.image.stage_sizes == (1, 1, 1, 1) and full.language.encoder == "learned"
  with pytest.raises(ValueError, match="unknown model config field 'emb'"):
    config_lib.resolve_config(dict(size="tiny", emb=3))
  with pytest.raises(ValueError, match="unknown model config field 'image.depth'"):
    config_lib.resolve_config(dict(size="tiny", image=dict(depth=3)))
  with pytest.raises(ValueError, match="model.head"):
    config_lib.resolve_config(dict(size="tiny", head="gan"))
  with pytest.raises(ValueError, match="unknown model size"):
    config_lib.resolve_config(dict(size="huge"))


# ----------------------------------------------------------------------------------------------
# The heads on a toy: one observation, two equally likely 1-D targets (-1 and +1).

class _ToyDenoiser(nn.Module):
  @nn.compact
  def __call__(self, x_t, t):  # [N, 1, 1], [N] -> [N, 1, 1]
    h = jnp.concatenate([x_t[:, :, 0], encoders.sinusoidal(t, 16)], -1)
    for _ in range(2):
      h = nn.gelu(nn.Dense(64)(h))
    return nn.Dense(1)(h)[:, :, None]


def _toy_predict(params, n):
  net = _ToyDenoiser()

  def predict(x_t, t):
    if x_t is None:  # BC: the observation is all there is (the same for every item)
      x_t, t = jnp.zeros((n, 1, 1)), jnp.zeros((n,))
    return net.apply(params, x_t, t)
  return predict


@pytest.mark.parametrize("head", [heads.BCHead(), heads.DDPMHead(prediction="epsilon"),
                                  heads.DDPMHead(prediction="data"),
                                  heads.FlowMatchingHead(prediction="velocity"),
                                  heads.FlowMatchingHead(prediction="data"),
                                  heads.DDPMHead(16, 8)],
                         ids=["bc", "ddpm_eps", "ddpm_data", "fm_velocity", "fm_data",
                              "ddpm_strided"])
def test_heads_cover_both_modes(head):
  n = 256
  params = _ToyDenoiser().init(jax.random.PRNGKey(0), jnp.zeros((n, 1, 1)), jnp.zeros((n,)))

  def loss_fn(p, r):
    r_data, r_head = jax.random.split(r)
    targets = jnp.where(jax.random.bernoulli(r_data, 0.5, (n, 1, 1)), 1.0, -1.0)
    return head.loss(_toy_predict(p, n), targets, jnp.zeros((n, 1), bool), r_head)

  # 800 steps: with the clean chunk as the output, the sharp fork near t = 0 takes the toy
  # network longer to learn (fm data: 0.73 of the samples on a mode after 400 steps, 0.97 after
  # 800; velocity 0.88 / 0.96).
  params = _train(loss_fn, params, steps=800, lr=3e-3)
  m = 2000
  x = np.asarray(jax.jit(lambda p: head.sample(_toy_predict(p, m), (m, 1, 1),
                                               jax.random.PRNGKey(7)))(params)).ravel()
  if isinstance(head, heads.BCHead):
    assert np.abs(x).max() < 0.2  # the mean of the two modes
  else:
    near = np.abs(np.abs(x) - 1.0) < 0.25
    assert near.mean() > 0.8, near.mean()  # samples sit on the modes, not between them
    assert 0.35 < (x > 0).mean() < 0.65, (x > 0).mean()  # and both modes are covered


def test_ddpm_schedule():
  ab = heads.cosine_alphas_cumprod(16)
  assert ab.shape == (16,) and np.all(np.diff(ab) < 0) and 0.95 < ab[0] < 1 and ab[-1] < 1e-3


def test_flow_matching_time_distributions():
  n = 20000
  beta = np.asarray(heads.FlowMatchingHead("beta").sample_time(jax.random.PRNGKey(0), n))
  # Beta(1.5, 1): CDF t^1.5 (up to openpi's 0.999 t + 0.001 squeeze), mean 0.6.
  assert beta.min() >= 0.001 and beta.max() <= 1.0
  assert abs(beta.mean() - (0.6 * 0.999 + 0.001)) < 0.01
  for q in (0.25, 0.5, 0.75):
    assert abs((beta <= q).mean() - ((q - 0.001) / 0.999) ** 1.5) < 0.015
  uni = np.asarray(heads.FlowMatchingHead("uniform").sample_time(jax.random.PRNGKey(0), n))
  assert abs(uni.mean() - 0.5) < 0.01


# ----------------------------------------------------------------------------------------------
# A head defined only here: registered by name, it trains and samples through the policy's code
# path like the built-in ones (the registry's promise: a new head is one class plus its name).

@dataclasses.dataclass(frozen=True)
class OneStepHead:
  """Maps fresh noise to a chunk in one network evaluation (t = 1), trained by regression."""
  noise_scale: float = 1.0

  DEFAULTS = dict(noise_scale=1.0)
  is_deterministic = False
  takes_noisy_actions = True
  num_steps = 1

  @classmethod
  def from_config(cls, options):
    return cls(float(options["noise_scale"]))

  def loss(self, predict, actions, padding, rng):
    eps = self.noise_scale * jax.random.normal(rng, actions.shape)
    loss = heads.masked_mse(predict(eps, jnp.ones(actions.shape[0])), actions, padding)
    return loss, {"mse": loss}

  def sample(self, predict, shape, rng):
    return predict(self.noise_scale * jax.random.normal(rng, shape), jnp.ones(shape[0]))


@pytest.fixture
def one_step_head():
  # Registered for this test only: a name left in the process-wide registry would enter the schema
  # of every config saved later in the session, which a fresh process (predict CLI) cannot read.
  heads.register("one_step_test")(OneStepHead)
  yield OneStepHead
  heads.HEADS.unregister("one_step_test")
  assert "one_step_test" not in config_lib.model_config("tiny").to_dict()


def test_a_head_defined_outside_the_library_trains_and_samples(one_step_head):
  policy = _policy("encdec", "one_step_test", one_step_test=dict(noise_scale=0.5))
  assert policy.head == OneStepHead(0.5) and not policy.is_deterministic
  assert "one_step_test" in config_lib.model_config("tiny").to_dict()  # its options in the schema
  before, after, metrics, out, ref = _overfit_and_sample(policy, _batch(), naive=True)
  assert np.isfinite(before) and after < 0.7 * before, (before, after)
  assert out.shape == (3, B, H, 48) and np.abs(out[0] - out[1]).max() > 0  # K distinct samples
  np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("sample_steps", [16, 4, 2])
def test_few_step_ddpm_stays_in_the_data_range(sample_steps):
  # A network whose epsilon is wrong (here: always 0) is amplified by 1/sqrt(alpha_bar) at the
  # first steps; clipping x0 (the default) keeps every sample in [-clip, clip].
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 4, 3))
  zero_eps = lambda x_t, t: jnp.zeros_like(x_t)
  clipped = heads.DDPMHead(16, sample_steps, prediction="epsilon").sample(
      zero_eps, x.shape, jax.random.PRNGKey(1))
  assert float(jnp.abs(clipped).max()) <= heads.DDPMHead().clip_x0 + 1e-5
  raw = heads.DDPMHead(16, sample_steps, clip_x0=0.0, prediction="epsilon").sample(
      zero_eps, x.shape, jax.random.PRNGKey(1))
  assert float(jnp.abs(raw).max()) > 5.0  # what the clip prevents


@pytest.mark.parametrize("head", [heads.FlowMatchingHead(prediction="data"),
                                  heads.DDPMHead(prediction="data"),
                                  heads.DDPMHead(16, 4, prediction="data")],
                         ids=["fm", "ddpm", "ddpm_strided"])
def test_data_prediction_returns_the_networks_chunk(head):
  # With the clean chunk as the output, the last step returns the network's last prediction: the
  # initial noise (white across the H frames) never reaches a sample unless the network puts it
  # there. A network that always answers the same smooth chunk gives exactly that chunk.
  chunk = jnp.sin(jnp.linspace(0, 3, 4 * 3)).reshape(1, 4, 3)
  const = lambda x_t, t: jnp.broadcast_to(chunk, x_t.shape)
  x = head.sample(const, (8, 4, 3), jax.random.PRNGKey(3))
  np.testing.assert_allclose(np.asarray(x), np.broadcast_to(chunk, (8, 4, 3)), atol=1e-5)


def test_noise_side_prediction_passes_the_noise_through():
  # The same answer read as a velocity leaves the initial noise in the sample (what the
  # "data" default avoids): the sample is the noise minus the integrated constant velocity.
  chunk = jnp.ones((1, 4, 3))
  const = lambda x_t, t: jnp.broadcast_to(chunk, x_t.shape)
  head = heads.FlowMatchingHead(prediction="velocity")
  x = head.sample(const, (8, 4, 3), jax.random.PRNGKey(3))
  noise = jax.random.normal(jax.random.PRNGKey(3), (8, 4, 3))
  np.testing.assert_allclose(np.asarray(x), np.asarray(noise - 1.0), atol=1e-5)


def test_prediction_option_is_checked():
  with pytest.raises(ValueError, match="model.fm.prediction"):
    heads.FlowMatchingHead(prediction="eps")
  with pytest.raises(ValueError, match="model.ddpm.prediction"):
    heads.DDPMHead(prediction="velocity")
