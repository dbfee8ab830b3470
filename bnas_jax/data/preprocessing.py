"""Image processing: uint8 HWC in, augmented and normalised float32 out (see `bnas_jax.input_pipeline`)."""

from __future__ import annotations

import concurrent.futures
import math
from typing import Callable

import numpy as np
from PIL import Image

from bnas_jax.data.settings import BILINEAR
from bnas_jax.data.settings import CIFAR_PAD
from bnas_jax.data.settings import IMAGENET_EVAL_CROP_FRACTION
from bnas_jax.data.settings import RRC_ATTEMPTS
from bnas_jax.data.settings import RRC_RATIO
from bnas_jax.data.settings import RRC_SCALE
from bnas_jax.data.settings import Settings


def _ensure_rgb(image: np.ndarray) -> np.ndarray:
  # TFDS decodes ImageNet with 3 channels, but a grey or RGBA image from a
  # differently prepared copy must not break a batch.
  if image.ndim == 2:
    image = image[:, :, None]
  if image.shape[2] == 1:
    return np.repeat(image, 3, axis=2)
  return image[:, :, :3]


def _resize(
  image: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
  """Bilinear resize to (width, height), optionally of a crop box only."""
  return np.asarray(Image.fromarray(image).resize(size, BILINEAR, box=box))


def _pad_crop(image: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
  height, width = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top = int(rng.integers(0, 2 * pad + 1))
  left = int(rng.integers(0, 2 * pad + 1))
  return padded[top : top + height, left : left + width]


def _random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """Inception-style crop of random area and aspect ratio, resized."""
  height, width = image.shape[:2]
  area = height * width
  log_ratio = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
  for _ in range(RRC_ATTEMPTS):
    target_area = area * rng.uniform(*RRC_SCALE)
    aspect = math.exp(rng.uniform(*log_ratio))
    crop_w = int(round(math.sqrt(target_area * aspect)))
    crop_h = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      break
  else:
    # No valid crop found: fall back to the largest centred crop whose aspect
    # ratio lies within the allowed range.
    aspect = width / height
    if aspect < RRC_RATIO[0]:
      crop_w, crop_h = width, int(round(width / RRC_RATIO[0]))
    elif aspect > RRC_RATIO[1]:
      crop_w, crop_h = int(round(height * RRC_RATIO[1])), height
    else:
      crop_w, crop_h = width, height
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
  return _resize(image, (size, size), box=(left, top, left + crop_w, top + crop_h))


def _resize_shorter_centre_crop(image: np.ndarray, size: int) -> np.ndarray:
  """ImageNet eval: shorter side to size / 0.875, then centre size x size."""
  height, width = image.shape[:2]
  short = int(round(size / IMAGENET_EVAL_CROP_FRACTION))
  if height <= width:
    new_h, new_w = short, max(short, int(round(width * short / height)))
  else:
    new_h, new_w = max(short, int(round(height * short / width))), short
  resized = _resize(image, (new_w, new_h))
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return resized[top : top + size, left : left + size]


class Preprocessor:
  """Turns a decoded uint8 image into a normalised float32 image."""

  def __init__(self, settings: Settings, augment: bool):
    spec = settings.spec
    self._size = settings.image_size
    self._augment = augment
    self._imagenet_style = spec.imagenet_style
    self._flip = spec.flip
    self._pad = max(1, int(round(CIFAR_PAD * self._size / 32)))
    std = np.asarray(spec.std, np.float32)
    # (x / 255 - mean) / std folded into one multiply-add.
    self._scale = (1.0 / (255.0 * std)).astype(np.float32)
    self._offset = (-np.asarray(spec.mean, np.float32) / std).astype(np.float32)

  def __call__(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    image = _ensure_rgb(np.asarray(image, np.uint8))
    size = self._size
    if self._imagenet_style:
      if self._augment:
        image = _random_resized_crop(image, size, rng)
      else:
        image = _resize_shorter_centre_crop(image, size)
    else:
      if image.shape[:2] != (size, size):
        image = _resize(image, (size, size))
      if self._augment:
        image = _pad_crop(image, self._pad, rng)
    if self._augment and self._flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return image.astype(np.float32) * self._scale + self._offset


def map_rows(
  pool: concurrent.futures.ThreadPoolExecutor | None, fn: Callable[[int], None], rows: int
) -> None:
  """Runs fn(row) for every row, in the pool when there is one."""
  if pool is None:
    for row in range(rows):
      fn(row)
  else:
    # list() re-raises the first worker exception here.
    list(pool.map(fn, range(rows)))


def make_pool(num_threads: int):
  if num_threads <= 1:
    return None
  return concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix='bnas_input')
