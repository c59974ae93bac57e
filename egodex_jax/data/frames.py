"""The one image path from a video frame to what the model sees: resize, JPEG, decode.

The builder stores `encode_frame(frame, S)` in every record and the pipeline decodes it with
`decode_jpeg`; inference (egodex_jax/inference.py) runs a frame of any size through both
(`model_image`), so a deployed policy sees the same pixels, JPEG artefacts included, as it was
trained on.
"""

from __future__ import annotations

import numpy as np

JPEG_QUALITY = 90

try:
  import simplejpeg as _simplejpeg  # pinned in requirements.txt
except ImportError:  # OpenCV decodes the same pixels, slower
  _simplejpeg = None


def encode_frame(frame_rgb: np.ndarray, size: int) -> bytes:
  """[h, w, 3] uint8 RGB (any size) -> JPEG bytes of the S x S frame (squashed, not cropped)."""
  import cv2  # pylint: disable=g-import-not-at-top
  small = cv2.resize(frame_rgb, (size, size), interpolation=cv2.INTER_AREA)
  ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                          [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
  if not ok:
    raise ValueError(f"OpenCV could not JPEG-encode a {frame_rgb.shape} frame")
  return jpeg.tobytes()


def decode_jpeg(data: bytes, size: int | None = None, out: np.ndarray | None = None
                ) -> np.ndarray:
  """JPEG bytes -> [S, S, 3] uint8 RGB (resized when `size` differs), written into `out` if
  given (fills a batch without another array)."""
  # simplejpeg and OpenCV both run libjpeg-turbo's accurate integer IDCT with fancy upsampling:
  # the same pixels (tests/test_frames.py checks it; benchmarks/jpeg_decoders.py measures it on
  # the stored frames), simplejpeg at ~1.15-1.5x the speed (less per-call overhead, and it writes
  # into `out` instead of a new array copied there). OpenCV only where simplejpeg is missing.
  header = None
  if _simplejpeg is not None:
    try:
      header = _simplejpeg.decode_jpeg_header(data)  # (height, width, colorspace, subsampling)
    except ValueError:
      header = None
  if header is None:
    img = _decode_cv2(data)
  elif (size is not None and header[0] != size or out is None or out.dtype != np.uint8
        or out.shape != (header[0], header[1], 3) or not out.flags.c_contiguous):
    img = _simplejpeg.decode_jpeg(data, "RGB")  # then resized / copied into `out`
  else:
    return _simplejpeg.decode_jpeg(data, "RGB", buffer=out)
  if size is not None and img.shape[0] != size:
    import cv2  # pylint: disable=g-import-not-at-top
    return cv2.resize(img, (size, size), out, interpolation=cv2.INTER_AREA)
  if out is None:
    return img
  out[...] = img
  return out


def _decode_cv2(data: bytes) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top
  # libjpeg-turbo writes RGB directly (OpenCV >= 4.10): no BGR->RGB pass over the pixels.
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
  if img is None:
    raise ValueError("a stored frame is not a decodable JPEG")
  return img


def model_image(frame_rgb: np.ndarray, size: int) -> np.ndarray:
  """[h, w, 3] uint8 RGB -> [S, S, 3] uint8: the pixels a record of this frame decodes to."""
  frame_rgb = np.asarray(frame_rgb)
  if frame_rgb.ndim != 3 or frame_rgb.shape[-1] != 3 or frame_rgb.dtype != np.uint8:
    raise ValueError(f"an image must be [h, w, 3] uint8 RGB, got {frame_rgb.shape} "
                     f"{frame_rgb.dtype}")
  return decode_jpeg(encode_frame(np.ascontiguousarray(frame_rgb), size), size)
