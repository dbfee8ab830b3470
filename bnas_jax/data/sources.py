"""Random-access example sources: scikit-learn digits in memory and TFDS ArrayRecord splits.

The TFDS sources never download; their label index is scanned once and cached
(in memory and as a .npy file). See `bnas_jax.input_pipeline` for the datasets.
"""

from __future__ import annotations

import concurrent.futures
import functools
import glob
import logging
import os
import threading
from typing import Any

import numpy as np
from PIL import Image

from bnas_jax.errors import UserInputError
from bnas_jax.data.settings import BILINEAR
from bnas_jax.data.settings import DIGITS_TEST_SEED
from bnas_jax.data.settings import DIGITS_TEST_SIZE
from bnas_jax.data.settings import DIGITS_TEST_TAG
from bnas_jax.data.settings import LABEL_SCAN_CHUNK
from bnas_jax.data.settings import Settings

_log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _digits_base() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns the raw digits (N, 8, 8) float32 in 0..16, labels and test ids."""
  from sklearn import datasets  # Deferred: only the digits path needs it.

  digits = datasets.load_digits()
  images = np.asarray(digits.images, np.float32)
  labels = np.asarray(digits.target, np.int64)
  test = _stratified_sample(
    labels, DIGITS_TEST_SIZE, np.random.default_rng([DIGITS_TEST_TAG, DIGITS_TEST_SEED])
  )
  return images, labels, test


def _stratified_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """Returns `size` sorted indices with class shares matching `labels`."""
  classes, counts = np.unique(labels, return_counts=True)
  ideal = counts * size / labels.size
  take = np.floor(ideal).astype(np.int64)
  # Largest-remainder rounding so the total is exactly `size`; ties go to the
  # lower class id (argsort is stable) to stay deterministic.
  order = np.argsort(-(ideal - take), kind='stable')
  take[order[: size - take.sum()]] += 1
  chosen = []
  for cls, k in zip(classes, take):
    members = np.flatnonzero(labels == cls)
    chosen.append(members[rng.permutation(members.size)[:k]])
  return np.sort(np.concatenate(chosen))


@functools.lru_cache(maxsize=4)
def _digits_arrays(image_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Returns {'train'|'test': (uint8 (N, S, S), int64 labels)}, read-only."""
  images, labels, test = _digits_base()
  resized = np.empty((len(images), image_size, image_size), np.uint8)
  for i, image in enumerate(images):
    if image_size != image.shape[0]:
      # Resizing in float mode keeps the 17 grey levels exact until the one
      # final rounding to uint8.
      grey = Image.fromarray(np.ascontiguousarray(image, np.float32))
      image = np.asarray(grey.resize((image_size, image_size), BILINEAR))
    resized[i] = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255)
  is_test = np.zeros(len(images), bool)
  is_test[test] = True
  out = {
    'train': (resized[~is_test], labels[~is_test]),
    'test': (resized[is_test], labels[is_test]),
  }
  for arrays in out.values():
    for array in arrays:
      array.setflags(write=False)  # Shared by every iterator via the cache.
  return out


class _ArraySource:
  """Random access over in-memory grey images."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self._images = images
    self._labels = labels

  def __len__(self) -> int:
    return len(self._labels)

  def load(self, index: int) -> tuple[np.ndarray, int]:
    image = self._images[index]
    return np.repeat(image[:, :, None], 3, axis=2), int(self._labels[index])

  def labels(self, num_threads: int) -> np.ndarray:
    del num_threads  # Labels are already in memory.
    return self._labels


# --------------------------------------------------------------------------
# TFDS ArrayRecord sources.


def _import_tfds():
  # Deferred so that the digits path never pays for importing TFDS.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


def _effective_data_dir(data_dir: str | None) -> str:
  if data_dir:
    return data_dir
  return os.path.expanduser(os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def _diagnose_tfds_dir(data_dir: str, tfds_name: str, error: Exception) -> str:
  """Says in words what is wrong with the prepared data, if it can tell."""
  root = os.path.join(data_dir, tfds_name)
  # <name>/<version>/ or, for builders with configs, <name>/<config>/<version>/.
  prepared = glob.glob(os.path.join(root, '*', 'dataset_info.json')) + glob.glob(
    os.path.join(root, '*', '*', 'dataset_info.json')
  )
  if not prepared:
    return f'nothing is prepared at {root}'
  folders = sorted({os.path.dirname(path) for path in prepared})
  if not any(glob.glob(os.path.join(folder, '*.array_record*')) for folder in folders):
    return (
      f'{", ".join(folders)} holds it only in another file format '
      "(e.g. the TFRecord default of tfds.load), which has no random "
      'access'
    )
  detail = ' '.join(f'{type(error).__name__}: {error}'.split())
  if len(detail) > 300:
    detail = detail[:300] + '...'
  return f'TFDS could not open it ({detail})'


def _not_prepared_message(settings: Settings, tfds_name: str, split: str, error: Exception) -> str:
  """One paragraph telling the user what is missing and how to prepare it."""
  data_dir = _effective_data_dir(settings.data_dir)
  prepare = (
    'python -c "import tensorflow_datasets as tfds; '
    f"tfds.builder('{tfds_name}', data_dir='{data_dir}', "
    "file_format='array_record').download_and_prepare()\""
  )
  manual = ''
  if tfds_name == 'imagenet2012':
    manual = (
      ' (ImageNet cannot be downloaded automatically: first put '
      'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from '
      'image-net.org into '
      f'{os.path.join(data_dir, "downloads", "manual")})'
    )
  return (
    f'Dataset {settings.name!r} reads the TFDS dataset {tfds_name!r} '
    f'(split {split!r}) in the ArrayRecord format from {data_dir}, but '
    f'{_diagnose_tfds_dir(data_dir, tfds_name, error)}. This pipeline never '
    'downloads. To prepare the data, run '
    f'`{prepare}` on a machine with network{manual}, or copy an already '
    f'prepared {tfds_name}/<version>/ folder (with its .array_record files) '
    'into a directory; then point to that directory with '
    '--config.data.data_dir=DIR or the TFDS_DATA_DIR environment variable. '
    '(--config.data.name=digits is built in and needs no data.)'
  )


def _open_tfds(settings: Settings, split: str, skip_image: bool = False):
  """Opens a TFDS random-access source, or explains how to prepare it."""
  tfds = _import_tfds()
  tfds_name = settings.spec.tfds_name
  decoders = {'image': tfds.decode.SkipDecoding()} if skip_image else None
  try:
    # download=False: opening must never start a download, whatever is on
    # disk; a missing dataset has to become a clear error instead.
    return tfds.data_source(
      tfds_name, split=split, data_dir=settings.data_dir, download=False, decoders=decoders
    )
  except Exception as e:  # pylint: disable=broad-except
    # TFDS reports a missing or wrongly formatted dataset through several
    # exception types (NotImplementedError, ValueError, FileNotFoundError,
    # tf.errors.*); all of them mean the same to the user.
    raise UserInputError(_not_prepared_message(settings, tfds_name, split, e)) from e


_LABEL_CACHE: dict[tuple[Any, ...], np.ndarray] = {}
_LABEL_CACHE_LOCK = threading.Lock()


class _TfdsSource:
  """Random access over one TFDS split, opened once."""

  def __init__(self, settings: Settings, split: str):
    self._settings = settings
    self._split = split
    self._ds = _open_tfds(settings, split)
    self._len = len(self._ds)

  def __len__(self) -> int:
    return self._len

  def load(self, index: int) -> tuple[np.ndarray, int]:
    example = self._ds[int(index)]
    return np.asarray(example['image']), int(example['label'])

  def labels(self, num_threads: int) -> np.ndarray:
    """Returns all labels of the split, from a cache when possible."""
    settings = self._settings
    key = (settings.spec.tfds_name, self._split, _effective_data_dir(settings.data_dir), self._len)
    with _LABEL_CACHE_LOCK:
      cached = _LABEL_CACHE.get(key)
    if cached is not None:
      return cached
    label_ds = _open_tfds(settings, self._split, skip_image=True)
    info = getattr(label_ds, 'dataset_info', None)
    version = str(getattr(info, 'version', 'unknown'))
    filename = f'bnas_jax_labels-{settings.spec.tfds_name}-{version}-{self._split}-{self._len}.npy'
    cache_dirs = []
    if settings.cache_dir:
      cache_dirs.append(settings.cache_dir)
    info_dir = getattr(info, 'data_dir', None)
    if isinstance(info_dir, (str, os.PathLike)) and os.path.isdir(info_dir):
      cache_dirs.append(os.fspath(info_dir))
    labels = None
    for directory in cache_dirs:
      path = os.path.join(directory, filename)
      if os.path.exists(path):
        loaded = np.load(path)
        if loaded.shape == (self._len,):
          labels = loaded.astype(np.int64)
          break
        _log.warning('Ignoring label cache %s with shape %s.', path, loaded.shape)
    if labels is None:
      labels = _scan_labels(label_ds, self._len, num_threads, filename)
      if cache_dirs:
        _save_atomically(cache_dirs[0], filename, labels)
    num_classes = settings.spec.num_base_classes
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
      # A stale or foreign cache file would otherwise mislabel silently.
      raise UserInputError(
        f'The label index for {settings.spec.tfds_name!r} split '
        f'{self._split!r} has labels outside [0, {num_classes - 1}]; delete '
        f'the file {filename} from {", ".join(cache_dirs)} so that it is '
        'rebuilt.'
      )
    labels.setflags(write=False)
    with _LABEL_CACHE_LOCK:
      _LABEL_CACHE[key] = labels
    return labels


def _scan_labels(label_ds, length: int, num_threads: int, what: str) -> np.ndarray:
  """Reads every label (images are left encoded) in parallel chunks."""
  _log.info('Reading %d labels for %s (done once, then cached).', length, what)
  labels = np.empty(length, np.int64)

  def read_chunk(start: int) -> None:
    for i in range(start, min(start + LABEL_SCAN_CHUNK, length)):
      labels[i] = int(label_ds[i]['label'])

  starts = range(0, length, LABEL_SCAN_CHUNK)
  if num_threads > 1 and length > LABEL_SCAN_CHUNK:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      list(pool.map(read_chunk, starts))
  else:
    for start in starts:
      read_chunk(start)
  return labels


def _save_atomically(directory: str, filename: str, array: np.ndarray) -> None:
  """Writes a .npy so that concurrent readers never see a partial file."""
  try:
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f'.{filename}.{os.getpid()}.tmp')
    with open(tmp, 'wb') as f:
      np.save(f, array)
    os.replace(tmp, os.path.join(directory, filename))
  except OSError as e:
    # The cache only saves time; a read-only data dir must not fail the run.
    _log.warning('Could not cache labels in %s: %s', directory, e)


def open_source(settings: Settings, test: bool):
  """Returns the underlying source of the train side or of the test split."""
  spec = settings.spec
  if spec.tfds_name is None:
    images, labels = _digits_arrays(settings.image_size)['test' if test else 'train']
    return _ArraySource(images, labels)
  return _TfdsSource(settings, spec.tfds_test_split if test else spec.tfds_train_split)
