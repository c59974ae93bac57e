"""The config of every model (big_vision style): `get_config(arg)`, arg a comma-separated list.

  python -m egodex_jax.main --config=configs/fm_encdec.py:demo --workdir=workdirs/demo
  python -m egodex_jax.main --config=configs/egodex.py:head=bc,backbone=dec,h=30,goal --workdir=...

arg keys (typed from their defaults; a bare key sets a bool): `demo` (synthetic data, a small
model, a few minutes on a CPU), `study` (the demo's recipe on 200 longer synthetic episodes, H = 60:
benchmarks/study.py), `seed=N`, `head=bc|ddpm|fm|...` and `backbone=dec|encdec` (any registered
name), `h=30|60|90` (horizon; default 60, 30 with `demo`), `goal` (the frame at t+H as a goal image), `size=tiny|demo|paper|
large` (default: paper, or demo with `demo`), `frac=F` (fraction of the training episodes),
`fsdp=N` (mesh), `steps=N`, `bs=N` (global batch), `pred=...` (what a diffusion head's network
outputs: `data`, or the noise-side target `velocity` (fm) / `epsilon` (ddpm); heads/flow.py),
`holdout=paper|<task>[+<task>...]` (tasks left out of training and reported apart:
data/holdout.py).
Defaults are the paper's: 224 px, H=60, ~200M parameters, batch 2048, 50K steps, AdamW 1e-4,
16 sampling steps, EMA 0.995, min-max normalisation.
"""

from __future__ import annotations

import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
  """big_vision's parse_arg: 'demo,h=30' with spec demo=False, h=60 -> {demo: True, h: 30}.

  Values are cast to the type of their default; a bare key means True (bools only); unknown keys
  and bad values are errors naming the key.
  """
  out = ml_collections.ConfigDict(dict(spec))
  for token in (arg or '').split(','):
    token = token.strip()
    if not token:
      continue
    key, eq, value = token.partition('=')
    if key not in spec:
      raise ValueError(f'config arg {token!r}: unknown key {key!r} (known: {", ".join(spec)}).')
    default = spec[key]
    if isinstance(default, bool):
      if eq and value.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(f'config arg {token!r}: {key} is a flag (true/false).')
      out[key] = (not eq) or value.lower() in ('true', '1')
    elif not eq:
      raise ValueError(f'config arg {token!r}: {key} needs a value ({key}=...).')
    else:
      try:
        out[key] = type(default)(value)
      except ValueError:
        raise ValueError(f'config arg {token!r}: {key} must be a {type(default).__name__}.'
                         ) from None
  return out


def get_config(arg=None, *, head='fm', backbone='encdec'):
  from egodex_jax.models import config as model_config
  a = parse_arg(arg, demo=False, study=False, head=head, backbone=backbone, h=0, goal=False,
                size='', frac=1.0, fsdp=1, steps=0, bs=0, seed=0, pred='',
                holdout='')
  a.demo = a.demo or a.study  # the study is the demo's recipe on a larger synthetic set
  c = ml_collections.ConfigDict()
  c.seed = a.seed

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = os.path.join(REPO, 'data', 'egodex')   # built by `python -m tfds_builder.egodex`
  c.data.horizon = a.h or (30 if a.demo else 60)  # frames; 30 (1 s) fits the demo's episodes
  c.data.goal = a.goal
  c.data.batch_size = a.bs or 2048  # global, over all devices and processes
  c.data.data_fraction = a.frac
  c.data.worker_count = 0        # Grain worker processes per host (0: in the main process)
  c.data.normalization = 'minmax'
  # 'relative': the policy sees actions - state (the chunk relative to its first action, UMI style
  # as the paper); 'absolute': the chunk itself. Either way the evaluator scores absolute metres.
  c.data.action_repr = 'relative'
  # Tasks never trained on, evaluated beside the others (the paper's OOD study): fragments of
  # task names, ',' or '+' separated, or 'paper' (its six OOD tasks); '' = none.
  c.data.holdout_tasks = a.holdout
  # Chunk keypoints tracked with a confidence below this leave the loss (their 3 dims, a wrist's
  # rotation with it); 0.0 = off, the paper's setting.
  c.data.min_confidence = 0.0

  # Every field of the model (models/config.py), filled from the size preset; the size itself is
  # chosen by the arg only, since changing it later would not refill the other fields.
  size = a.size or ('demo' if a.demo else 'paper')
  c.model = model_config.model_config(size, backbone=a.backbone, head=a.head)
  del c.model['size']
  if a.pred:
    if 'prediction' not in c.model.get(a.head, {}):
      raise ValueError(f'config arg pred={a.pred}: head {a.head!r} has no prediction option.')
    c.model[a.head].prediction = a.pred

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4
  c.optim.schedule = 'constant'  # 'constant' | 'cosine' (to lr * end_factor), after warmup
  c.optim.warmup_steps = 1000
  c.optim.end_factor = 0.0
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.weight_decay = 1e-4
  c.optim.grad_clip = 1.0        # global norm; 0 disables
  c.optim.ema_decay = 0.995      # X-IL; the EMA params are the ones evaluated

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = a.steps or 50_000
  c.train.log_every = 50
  c.train.save_every = 1000
  c.train.keep = 3
  c.train.eval_every = 5000      # 0: only at the end
  c.train.async_checkpoint = True
  c.train.log_all_processes = False  # also write metrics.process<i>.jsonl on processes > 0

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (1, 5, 10)
  c.eval.batch_size = 256
  c.eval.num_batches = 8         # periodic evaluation during training (a subset of the test split)
  c.eval.final_num_batches = -1  # --mode=eval and the end of training: -1 = the whole test split
  c.eval.split = 'test'
  # The second set of figures: Best-of-K over the ground-truth keypoints tracked with at least
  # this confidence (docs/metric.md); 0.0 = not reported. The standard figures are unchanged.
  c.eval.min_confidence = 0.5

  c.mesh = ml_collections.ConfigDict(dict(fsdp=a.fsdp, min_shard_size=2**14))

  # The demo's own data: synthetic episodes generated and built into data.data_dir when it holds
  # no dataset yet (egodex_jax/demo.py). Off unless `demo`.
  # 200 episodes, not fewer: with 40 (7-8 per multimodal task) every training observation
  # identifies its episode and so its outcome, and the flow-matching policy memorised the mode
  # per episode (coverage@10 0.66 on training frames, 0.0 on the one multimodal test episode)
  # instead of learning the fork. The folders name the count, so a build of another size is
  # never reused silently.
  c.demo = ml_collections.ConfigDict(dict(
      enabled=False, raw_dir=os.path.join(REPO, 'data', 'demo_e200', 'raw'), num_episodes=200,
      seed=0, raw_width=160, raw_height=120, min_frames=60, max_frames=120, image_size=64,
      max_horizon=30))

  if a.demo:  # sized for ~5 minutes on a 2-core CPU, data generation included
    c.demo.enabled = True
    c.data.data_dir = os.path.join(REPO, 'data', 'demo_e200')  # builds: <dir>/egodex/<cfg>/<v>
    c.data.batch_size = a.bs or 32
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.optim.schedule = 'cosine'
    c.optim.end_factor = 0.1
    c.optim.weight_decay = 0.0
    c.optim.ema_decay = 0.99
    c.train.num_steps = a.steps or 600
    c.train.log_every = 50
    c.train.save_every = 300
    c.train.eval_every = 0       # no periodic evaluation: one evaluator compile, at the end
    # 128 test frames spread evenly over the test split, K up to 10 with the paper's 16
    # sampling steps; one batch shape, so one compile.
    c.eval.batch_size = 64
    c.eval.num_batches = 2
    c.eval.final_num_batches = 2
  if a.study:  # benchmarks/study.py: one budget for every run, episodes long enough for H = 90
    c.data.data_dir = os.path.join(REPO, 'data', 'study_e200')
    c.demo.raw_dir = os.path.join(REPO, 'data', 'study_e200', 'raw')
    c.demo.min_frames, c.demo.max_frames = 120, 180
    c.demo.max_horizon = 90
    c.data.horizon = a.h or 60      # the paper's default, 2 s
    c.eval.num_batches = c.eval.final_num_batches = 4
  return c
