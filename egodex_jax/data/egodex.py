"""One raw EgoDex episode: an HDF5 pose file and the MP4 beside it.

`load_episode` reads and validates everything a later stage needs (69 transforms, intrinsics,
confidences, the instruction, the root attributes) and raises `EpisodeError` with one sentence
naming the file and the fault, so a dataset builder can skip a bad episode and say why. With
`partial=True` non-finite pose frames and a video shorter than the poses are not faults: the
dataset builder keeps such an episode's good frames (tfds_builder/egodex/records.py).
`VideoReader` decodes frames by index without decoding from the start for every frame.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Sequence

import numpy as np

from egodex_jax import geometry
from egodex_jax import skeleton

# Real transforms are float32 ARKit poses: orthonormal to ~1e-6. The tolerance only has to catch
# scaled / sheared / garbage matrices, so it is loose enough to never reject a real file.
RIGID_ATOL = 1e-2
# Reading forward up to this many frames beats a seek (a seek decodes from the last keyframe).
MAX_FORWARD_GAP = 30
# FFmpeg prints its own complaints ("moov atom not found") for files we reject with a clear
# EpisodeError anyway; keep them off stderr unless the user asked for a level. Read by OpenCV
# when it opens its first capture.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


class EpisodeError(ValueError):
  """A raw episode that cannot be used; str(e) is one sentence: '<file>: <what is wrong>'."""


def _error(path: str, what: str) -> EpisodeError:
  return EpisodeError(f"{path}: {what}")


@dataclasses.dataclass(frozen=True)
class Episode:
  hdf5_path: str
  video_path: str
  transforms: dict[str, np.ndarray]  # 68 joints + 'camera' -> [N, 4, 4] float32, X-to-world
  intrinsic: np.ndarray  # [3, 3] float32
  confidences: dict[str, np.ndarray] | None  # joint -> [N] float32; None when absent
  instruction: str
  task: str
  attrs: dict[str, Any]
  # Leading frames of the video that decode (<= N); N in strict mode, None when not checked.
  video_frames: int | None = None

  @property
  def num_frames(self) -> int:
    return int(self.transforms[skeleton.CAMERA].shape[0])

  @property
  def camera(self) -> np.ndarray:
    return self.transforms[skeleton.CAMERA]


# --- attributes ---------------------------------------------------------------------


def _decode_attr(value: Any) -> Any:
  """HDF5 attribute -> plain Python: bytes to str, arrays to lists, numpy scalars to scalars."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray):
    if value.dtype.kind in ("S", "O", "U"):
      return [_decode_attr(v) for v in value.reshape(-1).tolist()]
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


def _read_attrs(f) -> dict[str, Any]:
  """Every readable root attribute, decoded; one that HDF5 cannot read is skipped, not fatal."""
  out = {}
  for k in f.attrs.keys():
    try:
      out[k] = _decode_attr(f.attrs[k])
    except (OSError, TypeError, ValueError):
      continue
  return out


def _present(value: Any) -> bool:
  return isinstance(value, str) and value.strip() != "" and value.strip() != "None"


def instruction_from_attrs(attrs: dict[str, Any]) -> str:
  """The language instruction by the rule of docs/egodex_format.md, section 2 ('' when none).

  For `llm_type == 'reversible'` the description chosen by `which_llm_description` ('1' or '2');
  otherwise `llm_description`. The literal "None" counts as absent; when the chosen description is
  absent the other one is used rather than nothing.
  """
  d1, d2 = attrs.get("llm_description"), attrs.get("llm_description2")
  first, second = d1, d2
  if str(attrs.get("llm_type", "")).strip() == "reversible":
    if str(attrs.get("which_llm_description", "1")).strip() == "2":
      first, second = d2, d1
  for d in (first, second):
    if _present(d):
      return d.strip()
  return ""


# --- reading the HDF5 ---------------------------------------------------------------


def _default_video_path(hdf5_path: str) -> str:
  return os.path.splitext(hdf5_path)[0] + ".mp4"


def _read_intrinsic(f, width: int | None, height: int | None) -> np.ndarray:
  """`camera/intrinsic` when it is a finite (3, 3) pinhole K; the constant EgoDex K otherwise."""
  if width and height:
    fallback = skeleton.default_intrinsic(width, height)
  else:
    fallback = skeleton.default_intrinsic()
  ds = f.get("camera/intrinsic")
  if ds is None or not hasattr(ds, "shape") or tuple(ds.shape) != (3, 3):
    return fallback
  try:
    K = np.asarray(ds[()], np.float32)
  except (TypeError, ValueError, OSError):
    return fallback
  if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0 or abs(K[2, 2] - 1) > 1e-3:
    return fallback
  return K


def _read_pose_dataset(path: str, f, name: str) -> np.ndarray:
  ds = f["transforms"][name]
  if not hasattr(ds, "shape"):
    raise _error(path, f"transforms/{name} is a group, not a dataset")
  if len(ds.shape) != 3 or tuple(ds.shape[1:]) != (4, 4):
    raise _error(path, f"transforms/{name} has shape {tuple(ds.shape)}, expected (N, 4, 4)")
  try:
    return np.asarray(ds[()], np.float32)
  except (TypeError, ValueError, OSError) as e:
    raise _error(path, f"transforms/{name} cannot be read as float poses ({e})") from None


def _check_poses(path: str, transforms: dict[str, np.ndarray], partial: bool = False) -> None:
  """Same N everywhere, N > 0, finite values (unless `partial`), rigid finite matrices."""
  lengths = {name: T.shape[0] for name, T in transforms.items()}
  n = lengths[skeleton.CAMERA]
  bad = sorted(name for name, m in lengths.items() if m != n)
  if bad:
    raise _error(path, f"transform datasets have mismatched lengths ({bad[0]} has "
                 f"{lengths[bad[0]]} rows, camera has {n})")
  if n == 0:
    raise _error(path, "the episode has no frames (N = 0)")
  for name, T in transforms.items():
    finite = np.isfinite(T).all(axis=(1, 2))
    if not finite.all():
      if not partial:
        i = int(np.argmin(finite))
        raise _error(path, f"transforms/{name} holds NaN or inf values (first at frame {i})")
      # In partial mode a non-finite matrix is a missing pose, not a garbage one.
      T = np.where(finite[:, None, None], T, np.eye(4, dtype=T.dtype))
    rigid = geometry.is_rigid(T, atol=RIGID_ATOL)
    if not rigid.all():
      i = int(np.argmin(rigid))
      raise _error(path, f"transforms/{name} is not a rigid transform at frame {i}")


def _read_confidences(path: str, f, n: int) -> dict[str, np.ndarray] | None:
  group = f.get("confidences")
  if group is None or not hasattr(group, "keys"):
    return None
  out = {}
  for name in skeleton.JOINTS:
    ds = group.get(name)
    if ds is None:
      continue  # a partial group keeps what it has; readers default the rest
    if not hasattr(ds, "shape") or tuple(ds.shape) != (n,):
      shape = tuple(ds.shape) if hasattr(ds, "shape") else "a group"
      raise _error(path, f"confidences/{name} has shape {shape}, expected ({n},) like the poses")
    c = np.asarray(ds[()], np.float32)
    if not np.isfinite(c).all():
      raise _error(path, f"confidences/{name} holds NaN or inf values")
    out[name] = c
  return out


def load_episode(hdf5_path: str, video_path: str | None = None, *,
                 check_video: bool = True, partial: bool = False) -> Episode:
  """Reads and validates one episode; raises EpisodeError (one sentence) for any fault.

  With `check_video` the MP4 is opened and the last needed frame (N - 1) decoded, which catches a
  missing, truncated or too-short video without decoding it all.
  With `partial` two faults that only spoil some frames are allowed: non-finite poses (NaN / inf
  matrices stay in `transforms`; `actions.mask_windows` tells the frames they spoil) and, with
  `check_video`, a video that decodes fewer than N frames (`video_frames` says how many). A
  missing or unopenable video, and every other fault, still raise.
  """
  import h5py  # pylint: disable=g-import-not-at-top

  hdf5_path = os.fspath(hdf5_path)
  video_path = os.fspath(video_path) if video_path is not None else _default_video_path(hdf5_path)
  if not os.path.isfile(hdf5_path):
    raise _error(hdf5_path, "file not found")
  try:
    is_hdf5 = h5py.is_hdf5(hdf5_path)
  except OSError:
    is_hdf5 = False
  if not is_hdf5:
    raise _error(hdf5_path, "not an HDF5 file")

  width = height = None
  reader = None
  if check_video:
    if not os.path.isfile(video_path):
      raise _error(hdf5_path, f"its video {video_path} is missing")
    reader = VideoReader(video_path)
    width, height = reader.width, reader.height

  try:
    with h5py.File(hdf5_path, "r") as f:
      if "transforms" not in f or not hasattr(f["transforms"], "keys"):
        raise _error(hdf5_path, "no 'transforms' group")
      names = skeleton.JOINTS + (skeleton.CAMERA,)
      missing = [n for n in names if n not in f["transforms"]]
      if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        shown = ", ".join(missing[:6]) + more
        raise _error(hdf5_path, f"missing joint transforms: {shown}")
      transforms = {name: _read_pose_dataset(hdf5_path, f, name) for name in names}
      _check_poses(hdf5_path, transforms, partial)
      n = transforms[skeleton.CAMERA].shape[0]
      confidences = _read_confidences(hdf5_path, f, n)
      intrinsic = _read_intrinsic(f, width, height)
      attrs = _read_attrs(f)
    video_frames = None
    if reader is not None:
      video_frames = (decodable_frames(reader, n) if partial
                      else _check_video_length(hdf5_path, reader, n))
  except EpisodeError:
    raise
  except (OSError, KeyError, ValueError, TypeError) as e:
    raise _error(hdf5_path, f"cannot be read as an EgoDex HDF5 file ({type(e).__name__}: {e})"
                 ) from None
  finally:
    if reader is not None:
      reader.close()

  task = attrs.get("task")
  if not _present(task):
    task = os.path.basename(os.path.dirname(os.path.abspath(hdf5_path)))
  return Episode(
      hdf5_path=hdf5_path,
      video_path=video_path,
      transforms=transforms,
      intrinsic=intrinsic,
      confidences=confidences,
      instruction=instruction_from_attrs(attrs),
      task=str(task),
      attrs=attrs,
      video_frames=video_frames,
  )


def _check_video_length(hdf5_path: str, reader: "VideoReader", n: int) -> int:
  """Decodes frame N - 1 (-> N); OpenCV's frame count can be wrong, so it alone decides nothing."""
  try:
    reader.read([n - 1])
    return n
  except EpisodeError:
    if 0 < reader.num_frames < n:
      raise _error(hdf5_path, f"its video has {reader.num_frames} frames, fewer than the "
                   f"{n} pose rows") from None
    raise _error(hdf5_path, f"its video {os.path.basename(reader.path)} cannot be decoded up to "
                 f"frame {n - 1} (truncated or corrupt)") from None


def decodable_frames(reader: "VideoReader", n: int) -> int:
  """How many leading frames of the video decode, at most n. Decoding frame n - 1 settles the
  common case; otherwise the video is read in order, as the builder's encoder reads it, so the
  two agree on where it ends (a seek can land elsewhere in a truncated file)."""
  try:
    reader.read([n - 1])
    return n
  except EpisodeError:
    pass
  count = 0
  for _ in reader:
    count += 1
    if count == n:
      break
  return count


def find_episodes(root: str) -> list[tuple[str, str]]:
  """Sorted (hdf5, mp4) pairs under `root`, one per `.hdf5` file.

  The mp4 path is where the video should be (beside the hdf5) even when it is missing, so that a
  builder reports the episode as broken instead of silently not seeing it.
  """
  root = os.fspath(root)
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__MACOSX")))
    for name in filenames:
      if name.endswith(".hdf5") and not name.startswith("."):
        h = os.path.join(dirpath, name)
        out.append((h, _default_video_path(h)))
  return sorted(out)


# --- video --------------------------------------------------------------------------


class VideoReader:
  """Frames of one MP4 by index (OpenCV). Reads forward when the next index is close, seeks
  otherwise; `num_frames` is the container's count, which can be wrong for some files."""

  def __init__(self, path: str):
    import cv2  # pylint: disable=g-import-not-at-top
    self._cv2 = cv2
    self.path = os.fspath(path)
    if not os.path.isfile(self.path):
      raise _error(self.path, "video file not found")
    self._cap = cv2.VideoCapture(self.path)
    if not self._cap.isOpened():
      self._cap.release()
      raise _error(self.path, "cannot be opened as a video")
    self.num_frames = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
    self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    self.fps = float(self._cap.get(cv2.CAP_PROP_FPS))
    self._pos = 0  # index of the frame the next cap.read() returns

  def _decode_next(self, index: int) -> np.ndarray:
    ok, frame = self._cap.read()
    if not ok or frame is None:
      self._pos = -1  # unknown: force a seek next time
      raise _error(self.path, f"cannot decode frame {index} (the video has "
                   f"{self.num_frames} frames by its header; truncated or corrupt?)")
    self._pos = index + 1
    return frame

  def _seek(self, index: int) -> None:
    self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, index)
    self._pos = index

  def _read_one(self, index: int) -> np.ndarray:
    """BGR frame `index`."""
    if index < 0:
      raise _error(self.path, f"frame index {index} is negative")
    if not 0 <= self._pos <= index or index - self._pos > MAX_FORWARD_GAP:
      self._seek(index)
    while self._pos < index:
      if not self._cap.grab():
        self._pos = -1
        raise _error(self.path, f"cannot decode frame {index} (the video ends before it)")
      self._pos += 1
    return self._decode_next(index)

  def read(self, indices: Sequence[int]) -> np.ndarray:
    """[n] frame indices (any order, repeats allowed) -> [n, h, w, 3] uint8 RGB."""
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    if not indices:
      return np.zeros((0, self.height, self.width, 3), np.uint8)
    frames = {}
    for i in sorted(set(indices)):  # ascending, so near neighbours are read forward
      frames[i] = self._cv2.cvtColor(self._read_one(i), self._cv2.COLOR_BGR2RGB)
    return np.stack([frames[i] for i in indices])

  def __iter__(self) -> Iterator[np.ndarray]:
    """Every frame in order, [h, w, 3] uint8 RGB, one at a time."""
    if self._pos != 0:
      self._seek(0)
    while True:
      ok, frame = self._cap.read()
      if not ok or frame is None:
        self._pos = -1
        return
      self._pos += 1
      yield self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB)

  def close(self) -> None:
    if self._cap is not None:
      self._cap.release()
      self._cap = None

  def __enter__(self) -> "VideoReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass
