"""The pipeline's JPEG decode gives OpenCV's pixels (the builder's round trip), on every path."""

import cv2
import numpy as np
import pytest

from egodex_jax.data import frames


def _jpegs():
  rng = np.random.default_rng(0)
  blocky = np.repeat(np.repeat(rng.integers(0, 256, (27, 48, 3), np.uint8), 40, 0), 40, 1)
  smooth = cv2.GaussianBlur(rng.integers(0, 256, (1080, 1920, 3), np.uint8), (31, 31), 8)
  return [frames.encode_frame(img, s) for img in (blocky, smooth) for s in (32, 224)]


def _cv2_rgb(data):
  return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)


def test_simplejpeg_is_the_decoder_and_its_pixels_are_opencvs():
  assert frames._simplejpeg is not None  # pinned in requirements.txt: not the slower fallback
  for data in _jpegs():
    want = _cv2_rgb(data)
    s = want.shape[0]
    np.testing.assert_array_equal(frames.decode_jpeg(data), want)
    out = np.zeros((s, s, 3), np.uint8)
    got = frames.decode_jpeg(data, s, out)
    assert np.shares_memory(got, out)  # written into `out`, no other array
    np.testing.assert_array_equal(out, want)
    if s > 16:  # a smaller image_size: decode, then OpenCV's INTER_AREA resize
      small = np.zeros((16, 16, 3), np.uint8)
      frames.decode_jpeg(data, 16, small)
      np.testing.assert_array_equal(small, cv2.resize(want, (16, 16),
                                                      interpolation=cv2.INTER_AREA))


def test_opencv_fallback_gives_the_same_pixels(monkeypatch):
  data = _jpegs()[1]
  fast = frames.decode_jpeg(data)
  monkeypatch.setattr(frames, "_simplejpeg", None)
  np.testing.assert_array_equal(frames.decode_jpeg(data), fast)
  out = np.zeros_like(fast)
  frames.decode_jpeg(data, fast.shape[0], out)
  np.testing.assert_array_equal(out, fast)


def test_a_buffer_of_another_shape_is_not_written_as_if_it_fitted():
  data = _jpegs()[1]  # 224 px
  out = np.zeros((32, 32, 3), np.uint8)
  frames.decode_jpeg(data, 32, out)  # resized into it, not 224 px bytes poured into 32 px
  np.testing.assert_array_equal(out, cv2.resize(_cv2_rgb(data), (32, 32),
                                                interpolation=cv2.INTER_AREA))


def test_a_strided_buffer_is_filled_too():
  data = _jpegs()[1]
  batch = np.zeros((224, 2, 224, 3), np.uint8)  # batch[:, 1] is not contiguous
  frames.decode_jpeg(data, 224, batch[:, 1])
  np.testing.assert_array_equal(batch[:, 1], _cv2_rgb(data))
  assert not batch[:, 0].any()


def test_not_a_jpeg_is_an_error():
  with pytest.raises(ValueError, match="not a decodable JPEG"):
    frames.decode_jpeg(b"\x00" * 100)
