"""Writing episodes: the EgoDex hdf5 layout, the mp4 video, and `generate`, which writes many
episodes (tasks round-robin) through a process pool."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import sys

import numpy as np

from egodex_jax import skeleton
from egodex_jax.data.synthetic import render
from egodex_jax.data.synthetic import scene
from egodex_jax.data.synthetic import tasks


SOURCE_ATTR = "synthetic_source"  # JSON {seed, episode, min_frames, max_frames}: re-simulation


def _attrs(task, plan, rng, index, world) -> dict:
  """The hdf5 root attributes: one phrasing drawn as the instruction, mode targets moved into
  the world frame [4, 4] and stored as JSON."""
  a = dict(plan.attrs)
  phrasings = a.pop("phrasings", None)
  if phrasings is not None:
    a["llm_description"] = phrasings[int(rng.integers(len(phrasings)))]
    a["llm_description2"] = "None"
    a["which_llm_description"] = "1"
  targets = [(world[:3, :3] @ p + world[:3, 3]).tolist() for p in plan.mode_targets]
  a.update(task=task, environment="synthetic_tabletop", session_name=f"synthetic_{index:05d}",
           mode=int(plan.mode), mode_targets=json.dumps(targets))
  return a


def write_hdf5(path: str, transforms: dict, *, confidences: dict | None = None,
               intrinsic: np.ndarray | None = None, attrs: dict | None = None) -> None:
  """Writes poses in the EgoDex layout: transforms/<name> [N, 4, 4] float32, confidences/<joint>
  [N] float32, camera/intrinsic, root attributes (lists as string arrays). Deterministic bytes."""
  import h5py  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with h5py.File(tmp, "w") as f:
    if intrinsic is not None:
      f.create_dataset("camera/intrinsic", data=np.asarray(intrinsic, np.float32),
                       track_times=False)
    for name, T in transforms.items():
      f.create_dataset(f"transforms/{name}", data=np.asarray(T, np.float32), track_times=False)
    for name, c in (confidences or {}).items():
      f.create_dataset(f"confidences/{name}", data=np.asarray(c, np.float32), track_times=False)
    for k, v in (attrs or {}).items():
      if isinstance(v, (list, tuple)):
        f.attrs[k] = np.array(v, dtype=h5py.string_dtype())
      else:
        f.attrs[k] = v
  os.replace(tmp, path)


def write_episode(hdf5_path: str, mp4_path: str | None, task: str, seed: int, episode: int = 0,
                  *, width: int = 320, height: int = 240, num_frames: int | None = None,
                  min_frames: int = 90, max_frames: int = 240) -> dict:
  """Writes one episode (the video only when mp4_path is given) -> its root attributes."""
  drawn = (None, None) if num_frames else (min_frames, max_frames)
  sim, transforms, attrs, rng = _episode(task, seed, episode, num_frames, *drawn)
  # What re-simulates the episode (`counterfactual_poses`); an extra attribute, after the others.
  attrs[SOURCE_ATTR] = json.dumps(dict(seed=int(seed), episode=int(episode),
                                       min_frames=drawn[0], max_frames=drawn[1]))
  K = skeleton.default_intrinsic(width, height)
  write_hdf5(hdf5_path, transforms, confidences=sim["confidences"], intrinsic=K, attrs=attrs)
  if mp4_path is not None:
    _write_video(mp4_path, sim, width, height, K, rng)
  return attrs


def _episode(task, seed, episode, num_frames, min_frames, max_frames, mode=None):
  """The one derivation of an episode from (seed, episode): (sim, world-frame transforms
  {name: [N, 4, 4] float64}, root attributes, the rng as the video takes it over)."""
  rng = tasks.episode_rng(seed, episode)
  n = int(num_frames) if min_frames is None else int(rng.integers(min_frames, max_frames + 1))
  sim = tasks.simulate(task, rng, n, mode)
  world = scene.world_transform(rng)
  attrs = _attrs(task, sim["plan"], rng, episode, world)
  transforms = {name: world @ sim["scene"][name] for name in skeleton.JOINTS + (skeleton.CAMERA,)}
  return sim, transforms, attrs, rng


def counterfactual_poses(hdf5_path: str, *, source: dict | None = None
                         ) -> list[dict[str, np.ndarray]]:
  """A written synthetic episode re-simulated under each of its modes -> [{name: [N, 4, 4]
  float32}] indexed by mode (one element, the episode itself, for a unimodal task), in the world
  frame and dtype `write_episode` wrote.

  The generator's arguments come from the file's SOURCE_ATTR; for a file written before it was
  recorded, `source` = {seed, min_frames, max_frames} as `generate` was called (the episode
  number is read from session_name). The episode's own mode must give its file's transforms
  exactly, so a wrong guess is an error, never a wrong counterfactual: ValueError (one sentence)
  when the source is unknown or the file is not reproduced.
  """
  import h5py  # pylint: disable=g-import-not-at-top
  text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
  with h5py.File(hdf5_path, "r") as f:
    attrs = dict(f.attrs)
    written = {name: f[f"transforms/{name}"][()] for name in f["transforms"]}
  session = text(attrs.get("session_name", ""))
  if SOURCE_ATTR in attrs:
    src = json.loads(text(attrs[SOURCE_ATTR]))
  elif source is not None and session.startswith("synthetic_") and session[10:].isdigit():
    src = dict(source, episode=int(session[10:]))
  else:
    raise ValueError(f"{hdf5_path}: not a synthetic episode with a recorded seed (no "
                     f"'{SOURCE_ATTR}' attribute, nor a given source and a synthetic_<episode> "
                     "session_name); regenerate it with egodex_jax.data.synthetic")
  task, mode = text(attrs["task"]), int(attrs["mode"])
  n = written[skeleton.CAMERA].shape[0]
  modes = (0, 1) if task in tasks.MULTIMODAL_TASKS else (-1,)
  out = []
  for m in modes:
    _, transforms, _, _ = _episode(task, src["seed"], src["episode"], n, src.get("min_frames"),
                                   src.get("max_frames"), m)
    out.append({k: v.astype(np.float32) for k, v in transforms.items()})
  own = out[max(mode, 0)]
  if set(own) != set(written) or any(not np.array_equal(own[k], written[k]) for k in written):
    raise ValueError(f"{hdf5_path}: re-simulating seed {src['seed']}, episode {src['episode']} "
                     "does not reproduce the file (another seed or frame range, or another "
                     "version of the generator)")
  return out


def _write_video(mp4_path, sim, width, height, K, rng) -> None:
  import cv2  # pylint: disable=g-import-not-at-top
  poses, plan = sim["scene"], sim["plan"]  # joint -> [N, 4, 4] scene frame
  renderer = render.Renderer(width, height, K, rng)
  tmp = mp4_path + ".tmp.mp4"
  writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(skeleton.FPS),
                           (width, height))
  if not writer.isOpened():
    raise OSError(f"{mp4_path}: OpenCV cannot open an mp4v video writer")
  try:
    joints = {s: {j: poses[j][:, :3, 3] for j in skeleton.hand_joints(s)} for s in skeleton.SIDES}
    for bgr in renderer.render(poses[skeleton.CAMERA], plan.objects, joints):
      writer.write(bgr)
  finally:
    writer.release()
  os.replace(tmp, mp4_path)


def _write_job(args):
  out_dir, episode, seed, width, height, min_frames, max_frames, video = args
  task, i = tasks.episode_task(episode)
  h = os.path.join(out_dir, task, f"{i}.hdf5")
  m = os.path.join(out_dir, task, f"{i}.mp4")
  write_episode(h, m if video else None, task, seed, episode, width=width, height=height,
                min_frames=min_frames, max_frames=max_frames)
  return h, m


def generate(out_dir: str, num_episodes: int, seed: int = 0, *, width: int = 320,
             height: int = 240, min_frames: int = 90, max_frames: int = 240,
             workers: int | None = None, video: bool = True) -> list[tuple[str, str]]:
  """Writes `num_episodes` episodes (tasks round-robin) -> [(hdf5, mp4)] in episode order."""
  if min_frames < 1 or max_frames < min_frames:
    raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
  jobs = [(out_dir, e, seed, width, height, min_frames, max_frames, video)
          for e in range(num_episodes)]
  if workers is None:
    workers = min(len(jobs), os.cpu_count() or 1)
  if workers <= 1 or len(jobs) <= 1:
    return [_write_job(j) for j in jobs]
  try:
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
      return list(pool.map(_write_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
  except concurrent.futures.BrokenExecutor:
    # A worker could not start (e.g. spawn cannot re-import an unguarded __main__): writes are
    # idempotent, so do them here instead.
    return [_write_job(j) for j in jobs]


def _pool_context():
  """fork when it is safe (fast, no re-import of __main__); spawn once JAX runs its threads,
  which a fork does not survive, unless __main__ cannot be re-imported by a spawned worker."""
  main_file = getattr(sys.modules.get("__main__"), "__file__", None)
  spawnable = main_file is None or os.path.isfile(main_file)
  if "jax" in sys.modules and spawnable:
    return multiprocessing.get_context("spawn")
  return multiprocessing.get_context("fork")

