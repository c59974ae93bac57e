"""Sampling speed of the flow-matching policies, as the evaluator runs them (run by hand).

  python benchmarks/sampling_bench.py [--batch 8] [--image_size 224] [--horizon 60] [--k 10]
                                      [--repeats 3] [--naive_repeats 1] [--backbones encdec,dec]

On one batch, for a mid-size FM policy (ResNet-18 + a 320-wide transformer, ~22M parameters, to
compare with X-IL's 24M) of each backbone, timed side by side (compile and warm-up excluded,
best of `--repeats`):
  (a) `policy.sample`: K x S-step sampling as the evaluator runs it, the observation encoded once
      and only the action part rerun, the K samples folded into the batch;
  (b) `policy.sample_naive`: the full network (image encoder included) at every step, in one jitted
      `lax.fori_loop` (XLA may hoist the loop-invariant image encoder out of the loop);
  (b2) the eager naive loop (as X-IL's PyTorch sampler runs): one full forward per step at batch
      K*B, called S times from Python, nothing hoisted (timed as S x one jitted full forward);
  (c) the floor: one `policy.encode` of the batch plus K*S action-part steps (`policy.predict` at
      batch B in a `lax.fori_loop`), each timed alone, summed.
Targets: (a) within 1.2x of (c) and at least 3x faster than (b) (`targets_met` uses (b)).
Prints one JSON line per backbone.
For scale: X-IL (PyTorch) on a 2-core CPU at 224 px, batch 32, K = 10 x 16 steps: about 98 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from egodex_jax.models import policies

MID = dict(emb_dim=320, num_heads=5, num_layers=6, enc_layers=3, dec_layers=3, dropout=0.0)


def _best(fn, repeats):
  jax.block_until_ready(fn())  # compile + warm-up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return min(times)


def bench(backbone, *, batch, image_size, horizon, k, repeats, naive_repeats, eager_naive=True):
  cfg = policies.model_config("paper", backbone=backbone, head="fm", **MID)
  policy = policies.make_policy(cfg, horizon=horizon, instructions=["pick up the cup"])
  rng = np.random.default_rng(0)
  data = policies.dummy_batch(batch_size=batch, horizon=horizon, image_size=image_size)
  data["image"] = rng.integers(0, 255, data["image"].shape, dtype=np.uint8)
  data["state"] = rng.normal(size=data["state"].shape).astype(np.float32)
  # Random params of the right shapes: compiling `policy.init` is slow on a CPU, and beside the point.
  shapes = jax.eval_shape(policy.init, jax.random.key(0), data)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.02, x.dtype), shapes)
  num_params = int(sum(x.size for x in jax.tree.leaves(params)))
  data = jax.tree.map(jnp.asarray, data)
  key = jax.random.key(1)
  steps = k * policy.num_steps

  sample = jax.jit(policy.sample, static_argnums=3)
  naive = jax.jit(policy.sample_naive, static_argnums=3)
  encode = jax.jit(policy.encode)
  obs = jax.block_until_ready(encode(params, data))

  @jax.jit
  def action_steps(params, obs):
    x = jnp.zeros((batch, horizon, 48), jnp.float32)
    t = jnp.full((batch,), 0.5, jnp.float32)
    return jax.lax.fori_loop(0, steps, lambda i, x: x - 0.01 * policy.predict(params, obs, x, t), x)

  # (b2) the eager naive sampler (X-IL's PyTorch loop): one full forward per step at batch K*B,
  # called S times from Python, so nothing is hoisted out of the loop. The S calls are identical
  # and independent, so (b2) = S x the best time of one jitted full forward (saves S-1 of them).
  full = jax.jit(lambda params, inputs, x, t: policy.net.apply(
      {"params": params}, inputs, x, t, method=policies.PolicyNet.full))
  inputs_k = jax.tree.map(lambda x: jnp.concatenate([x] * k), policy.inputs(data))
  x_k = jax.random.normal(key, (k * batch, horizon, 48), jnp.float32)
  t_k = jnp.full((k * batch,), 0.5, jnp.float32)

  t_a = _best(lambda: sample(params, data, key, k), repeats)
  t_enc = _best(lambda: encode(params, data), repeats)
  t_steps = _best(lambda: action_steps(params, obs), repeats)
  t_b = _best(lambda: naive(params, data, key, k), naive_repeats)
  t_b2 = (policy.num_steps * _best(lambda: full(params, inputs_k, x_k, t_k), naive_repeats)
          if eager_naive else float("nan"))
  t_c = t_enc + t_steps
  return {"backbone": backbone, "head": "fm", "params": num_params, "batch": batch,
          "image_size": image_size, "horizon": horizon, "k": k, "steps": policy.num_steps,
          "a_sample_s": round(t_a, 4), "b_naive_s": round(t_b, 4),
          "b2_naive_eager_s": round(t_b2, 4), "c_floor_s": round(t_c, 4),
          "c_encode_s": round(t_enc, 4), "c_action_steps_s": round(t_steps, 4),
          "a_over_c": round(t_a / t_c, 3), "b_over_a": round(t_b / t_a, 2),
          "b2_over_a": round(t_b2 / t_a, 2),
          "targets_met": bool(t_a <= 1.2 * t_c and t_b >= 3 * t_a),
          "device": str(jax.devices()[0].platform)}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--horizon", type=int, default=60)
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--naive_repeats", type=int, default=1)
  p.add_argument("--backbones", default="encdec,dec")
  p.add_argument("--no_eager_naive", action="store_true", help="skip (b2)")
  a = p.parse_args()
  for backbone in a.backbones.split(","):
    print(json.dumps(bench(backbone, batch=a.batch, image_size=a.image_size, horizon=a.horizon,
                           k=a.k, repeats=a.repeats, naive_repeats=a.naive_repeats,
                           eager_naive=not a.no_eager_naive)), flush=True)


if __name__ == "__main__":
  main()
