"""Sampling speed of the flow-matching policies, as the evaluator runs them (run by hand).

  python benchmarks/sampling_bench.py [--batch 8] [--image_size 224] [--horizon 60] [--k 10]
                                      [--repeats 1] [--backbones encdec,dec] [--jit_naive]

On one batch, for a mid-size FM policy (ResNet-18 + a 320-wide transformer, ~22M parameters, to
compare with X-IL's 24M) of each backbone, timed side by side (every function is compiled ahead
of time with `.lower().compile()`, so compilation is excluded without a warm-up run; best of
`--repeats`):
  (a) `policy.sample`: K x S-step sampling as the evaluator runs it, the observation encoded once
      and only the action part rerun, the K samples folded into one batch of K*B;
  (b) the honest naive sampler, X-IL's PyTorch loop: the full network (image encoder included) at
      every step at batch K*B, called S times from Python, so nothing can be hoisted out of the
      loop. The S calls are identical and independent, so (b) = S x one jitted full forward.
      With `--jit_naive` also: (b_jit_barrier) the same inside one jitted `lax.fori_loop`, with
      `jax.lax.optimization_barrier` tying the inputs to the step's x_t so XLA cannot hoist the
      loop-invariant image encoder (slow: S full forwards); and (b_jit_hoisted) the plain
      jitted `policy.sample_naive`, where XLA DOES hoist the encoder out of the loop (so it is
      NOT the full model every step: about the floor; reported for reference only).
  (c) the floor: one `policy.encode` of the batch plus K*S action-part steps at batch B
      (`policy.predict` in a `lax.fori_loop`), each timed alone, summed;
  (c_kb) the floor at (a)'s batch size: one `policy.encode` plus S action-part steps at batch K*B
      (the observation repeated K times outside the timed loop).
Targets: (a) within 1.2x of (c) and at least 3x faster than (b) (`targets_met`).
The machine this runs on may be shared: run it when idle, or compare figures from one run only.
Prints one JSON line per backbone.
For scale: X-IL (PyTorch) on a 2-core CPU at 224 px, batch 32, K = 10 x 16 steps: about 98 s.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from egodex_jax.data import batch as batch_lib
from egodex_jax.models import config as config_lib
from egodex_jax.models import policy as policy_lib
from egodex_jax.models.network import PolicyNet

MID = dict(emb_dim=320, num_heads=5, num_layers=6, enc_layers=3, dec_layers=3, dropout=0.0)


def _best(fn, args, repeats):
  """fn: a jitted function. Compiled ahead of time (not timed), then run `repeats` times."""
  compiled = fn.lower(*args).compile()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def bench(backbone, *, batch, image_size, horizon, k, repeats, jit_naive=False,
          same_batch_floor=True):
  cfg = config_lib.model_config("paper", backbone=backbone, head="fm", **MID)
  policy = policy_lib.make_policy(cfg, horizon=horizon, instructions=["pick up the cup"])
  rng = np.random.default_rng(0)
  data = batch_lib.dummy_batch(batch_size=batch, horizon=horizon, image_size=image_size)
  data["image"] = rng.integers(0, 255, data["image"].shape, dtype=np.uint8)
  data["state"] = rng.normal(size=data["state"].shape).astype(np.float32)
  # Random params of the right shapes: compiling `policy.init` is beside the point here.
  shapes = jax.eval_shape(policy.init, jax.random.key(0), data)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.02, x.dtype), shapes)
  num_params = int(sum(x.size for x in jax.tree.leaves(params)))
  data = jax.tree.map(jnp.asarray, data)
  key = jax.random.key(1)
  s = policy.num_steps
  res = {"backbone": backbone, "head": "fm", "params": num_params, "batch": batch,
         "image_size": image_size, "horizon": horizon, "k": k, "steps": s}

  sample = jax.jit(lambda params, data, rng: policy.sample(params, data, rng, k))
  encode = jax.jit(policy.encode)
  obs = jax.block_until_ready(encode(params, data))

  def action_steps(n, steps):
    """`steps` action-part evaluations at batch n (obs repeated n / B times, outside the loop)."""
    @jax.jit
    def run(params, obs):
      x = jnp.zeros((n, horizon, 48), jnp.float32)
      t = jnp.full((n,), 0.5, jnp.float32)
      body = lambda i, x: x - 0.01 * policy.predict(params, obs, x, t)
      return jax.lax.fori_loop(0, steps, body, x)
    return run

  full = jax.jit(lambda params, inputs, x, t: policy.net.apply(
      {"params": params}, inputs, x, t, method=PolicyNet.full))
  inputs_k = jax.tree.map(lambda x: jnp.concatenate([x] * k), policy.inputs(data))
  x_k = jax.random.normal(key, (k * batch, horizon, 48), jnp.float32)
  t_k = jnp.full((k * batch,), 0.5, jnp.float32)

  t_a = _best(sample, (params, data, key), repeats)
  t_enc = _best(encode, (params, data), repeats)
  t_steps = _best(action_steps(batch, k * s), (params, obs), repeats)
  t_b = s * _best(full, (params, inputs_k, x_k, t_k), repeats)
  t_c = t_enc + t_steps
  res.update(a_sample_s=round(t_a, 3), b_naive_eager_s=round(t_b, 3), c_floor_s=round(t_c, 3),
             c_encode_s=round(t_enc, 3), c_action_steps_s=round(t_steps, 3))
  if same_batch_floor:
    obs_k = jax.block_until_ready(policy_lib.repeat_items(obs, k))
    t_c_kb = t_enc + _best(action_steps(k * batch, s), (params, obs_k), repeats)
    res.update(c_kb_floor_s=round(t_c_kb, 3), a_over_c_kb=round(t_a / t_c_kb, 3))
  if jit_naive:
    def naive_barrier(params, batch, rng):
      inputs = policy_lib.repeat_items(policy.inputs(batch), k)
      def predict(x_t, t):
        inp, x_t = jax.lax.optimization_barrier((inputs, x_t))  # inputs now vary per step
        return policy.net.apply({"params": params}, inp, x_t, t, method=PolicyNet.full)
      return policy.head.sample(predict, (k * batch["image"].shape[0], horizon, 48), rng)
    t_bj = _best(jax.jit(naive_barrier), (params, data, key), repeats)
    naive = jax.jit(lambda params, data, rng: policy.sample_naive(params, data, rng, k))
    t_bh = _best(naive, (params, data, key), repeats)
    res.update(b_jit_barrier_s=round(t_bj, 3), b_jit_hoisted_s=round(t_bh, 3))
  res.update(a_over_c=round(t_a / t_c, 3), b_over_a=round(t_b / t_a, 2),
             targets_met=bool(t_a <= 1.2 * t_c and t_b >= 3 * t_a),
             device=str(jax.devices()[0].platform))
  return res


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--horizon", type=int, default=60)
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--backbones", default="encdec,dec")
  p.add_argument("--jit_naive", action="store_true",
                 help="also time the jitted naive loops (b_jit_barrier: slow; b_jit_hoisted)")
  p.add_argument("--no_same_batch_floor", action="store_true", help="skip (c_kb)")
  a = p.parse_args()
  for backbone in a.backbones.split(","):
    print(json.dumps(bench(backbone, batch=a.batch, image_size=a.image_size, horizon=a.horizon,
                           k=a.k, repeats=a.repeats, jit_naive=a.jit_naive,
                           same_batch_floor=not a.no_same_batch_floor)), flush=True)


if __name__ == "__main__":
  main()
