"""Deterministic, resumable, multi-host image classification input pipeline.

The pipeline produces process-local NumPy batches; the trainer assembles them
into global `jax.Array`s itself, so this module does not import JAX.

Datasets (config field `name`):

* `digits` (the embedded default): scikit-learn's `load_digits()`, 1797 real
  8x8 grey handwritten digits that ship with scikit-learn, so nothing is
  downloaded. A fixed, stratified test split of 360 images is carved with an
  internal seed that no config field changes; the other 1437 images are the
  train split. Images are upsampled bilinearly to `image_size`, replicated to
  three channels (so models built for RGB run unchanged) and normalised with
  mean 0.5 and std 0.5 (i.e. mapped to [-1, 1]); these round constants are
  used instead of dataset statistics because the data is a smoke-test stand-in
  and round numbers are easy to reproduce. Training augmentation is a zero-pad
  plus random crop only: there is no horizontal flip because digits are not
  flip-invariant (a mirrored 2, 3, 7 or 9 is not that digit).
* `cifar10`, `cifar100`: TFDS ArrayRecord data (splits `train` and `test`).
  Training augmentation is the standard zero-pad by 4 + random 32x32 crop +
  horizontal flip; evaluation uses the images as they are.
* `imagenet2012`: TFDS ArrayRecord data (splits `train` and `validation`).
  Training uses the Inception-style random-resized-crop (scale (0.08, 1),
  aspect ratio (3/4, 4/3), 10 attempts, then a centre crop) + horizontal flip;
  evaluation resizes the shorter side to `image_size / 0.875` (256 for 224) and
  takes the centre `image_size` crop.
* `imagenet100`: the same TFDS `imagenet2012` data restricted to 100 classes,
  labels remapped to 0..99 in the order of the class list. The default class
  list is every 10th ImageNet class id (0, 10, ..., 990). The widely used CMC
  ImageNet-100 list is deliberately not built in: no copy of it could be
  verified here, and a silently wrong class list would make results
  incomparable while looking right. Pass the list you need as the config field
  `class_subset` (a tuple of 100 ImageNet class ids). `class_subset` also works
  for the other datasets, where it may have any non-zero length.

Images of other sizes than the native 32x32 (CIFAR) or 8x8 (digits) are first
resized bilinearly to `image_size`; the pad of the pad-and-crop augmentation is
then scaled as `round(4 * image_size / 32)`.

Splits exposed by this module:

* `'train'`: the dataset's training split minus the held-out part.
* `'holdout'`: a search-validation split carved from the training split,
  either `holdout_per_class` examples of every class (e.g. 50 for ImageNet as
  in NAS-BNN) or a `holdout_fraction` of it (e.g. 0.5 for the DARTS-style
  halves of CIFAR train). The carving depends only on the dataset, the holdout
  settings and `split_seed`, never on the training seed, so every run and every
  host agrees on it. With both settings zero the holdout split is empty and
  asking for it is an error.
* `'test'`: CIFAR test, ImageNet validation, digits test.

A fractional holdout is a uniform random subset and needs no labels. A
per-class holdout and any class subset need the label of every training
example. The labels are read from an ArrayRecord source that skips image
decoding, in parallel, and cached in memory and as a `.npy` file in
`cache_dir` (if set) or else next to the prepared TFDS data (if that folder is
writable). For CIFAR this takes seconds; for ImageNet's 1.28M examples it
still reads every record once (tens of GB of I/O, minutes to tens of minutes),
so run `get_dataset_info` once before a multi-host job: otherwise every host
scans at the same time on the first run.

Determinism: epoch `e` of a split is a permutation drawn from
`(seed, split, e)`; the remainder that does not fill a global batch is dropped.
Global batch `b` of epoch `e` is therefore the same examples in the same order
for every process count, and process `p` takes rows `[p * local, (p + 1) *
local)`. The augmentation randomness of an example comes from `(seed, split,
epoch, position in epoch)`, so batches are bit-identical across process counts
and across a resume from `TrainIterator.get_state()`.

Preparing TFDS data needs network and is never done here: see
`get_dataset_info` for the error that tells the user how to prepare it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import glob
import logging
import math
import numbers
import operator
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable

import numpy as np
from PIL import Image

from bnas_jax.errors import UserInputError

_log = logging.getLogger(__name__)

DATASET_NAMES = ('digits', 'cifar10', 'cifar100', 'imagenet2012',
                 'imagenet100')
SPLITS = ('train', 'holdout', 'test')
_TRAIN_ITERATOR_SPLITS = ('train', 'holdout')

# Seed-sequence tags keep the random streams of different purposes apart even
# when the user picks equal seeds for them.
_PERMUTATION_TAG = 1
_AUGMENT_TAG = 2
_HOLDOUT_TAG = 3
_DIGITS_TEST_TAG = 4
# The digits test split must never move, so its seed is not configurable.
_DIGITS_TEST_SEED = 0
_DIGITS_TEST_SIZE = 360
_SPLIT_IDS = {'train': 0, 'holdout': 1}

_CIFAR_PAD = 4
_IMAGENET_EVAL_CROP_FRACTION = 0.875
_RRC_SCALE = (0.08, 1.0)
_RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_RRC_ATTEMPTS = 10
_LABEL_SCAN_CHUNK = 1024

_BILINEAR = getattr(Image, 'Resampling', Image).BILINEAR


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to know about a configured dataset.

  Attributes:
    name: The dataset name from the config.
    num_classes: Number of output classes (after any class subset).
    image_shape: (H, W, C) of the produced images.
    num_examples: Number of examples of 'train', 'holdout' and 'test'.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_examples: dict[str, int]


@dataclasses.dataclass(frozen=True)
class _DatasetSpec:
  """Static description of one supported dataset."""
  tfds_name: str | None
  tfds_train_split: str
  tfds_test_split: str
  num_base_classes: int
  default_class_subset: tuple[int, ...] | None
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  imagenet_style: bool
  flip: bool
  required_subset_size: int | None = None


_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
_CIFAR100_STD = (0.2673, 0.2564, 0.2762)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_SPECS = {
    'digits': _DatasetSpec(
        tfds_name=None, tfds_train_split='train', tfds_test_split='test',
        num_base_classes=10, default_class_subset=None,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), imagenet_style=False,
        flip=False),
    'cifar10': _DatasetSpec(
        tfds_name='cifar10', tfds_train_split='train', tfds_test_split='test',
        num_base_classes=10, default_class_subset=None, mean=_CIFAR10_MEAN,
        std=_CIFAR10_STD, imagenet_style=False, flip=True),
    'cifar100': _DatasetSpec(
        tfds_name='cifar100', tfds_train_split='train',
        tfds_test_split='test', num_base_classes=100,
        default_class_subset=None, mean=_CIFAR100_MEAN, std=_CIFAR100_STD,
        imagenet_style=False, flip=True),
    'imagenet2012': _DatasetSpec(
        tfds_name='imagenet2012', tfds_train_split='train',
        tfds_test_split='validation', num_base_classes=1000,
        default_class_subset=None, mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
        imagenet_style=True, flip=True),
    'imagenet100': _DatasetSpec(
        tfds_name='imagenet2012', tfds_train_split='train',
        tfds_test_split='validation', num_base_classes=1000,
        default_class_subset=tuple(range(0, 1000, 10)), mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD, imagenet_style=True, flip=True,
        required_subset_size=100),
}


@dataclasses.dataclass(frozen=True)
class _Settings:
  """Validated, normalised data config."""
  name: str
  image_size: int
  data_dir: str | None
  holdout_per_class: int
  holdout_fraction: float
  split_seed: int
  class_subset: tuple[int, ...] | None
  cache_dir: str | None

  @property
  def spec(self) -> _DatasetSpec:
    return _SPECS[self.name]


# --------------------------------------------------------------------------
# Config validation.


def _field(config: Any, name: str, default: Any) -> Any:
  """Reads an optional field from a ConfigDict, attribute object or mapping."""
  if isinstance(config, Mapping):
    return config.get(name, default)
  return getattr(config, name, default)


def _is_int(value: Any) -> bool:
  # bool is an Integral, but `image_size=True` is a typo, not a size.
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _resolve(data_config: Any) -> _Settings:
  """Validates the data config and returns normalised settings."""
  name = _field(data_config, 'name', 'digits')
  if not isinstance(name, str) or name not in _SPECS:
    raise UserInputError(
        f'Unknown dataset name {name!r} in the data config (field `name`). '
        f'Valid names are: {", ".join(DATASET_NAMES)}; for example '
        '--config.data.name=digits (built in, needs no download).')
  spec = _SPECS[name]

  image_size = _field(data_config, 'image_size', 32)
  if not _is_int(image_size) or image_size <= 0:
    raise UserInputError(
        f'Invalid image_size {image_size!r} for dataset {name!r}: it must be '
        'a positive integer number of pixels, e.g. 32 for CIFAR/digits or '
        '224 for ImageNet (--config.data.image_size=32).')

  data_dir = _field(data_config, 'data_dir', None)
  if data_dir is not None:
    if not isinstance(data_dir, (str, os.PathLike)) or not os.fspath(data_dir):
      raise UserInputError(
          f'Invalid data_dir {data_dir!r}: it must be a directory path '
          'holding prepared TFDS datasets, or None to use TFDS_DATA_DIR / '
          '~/tensorflow_datasets.')
    data_dir = os.path.expanduser(os.fspath(data_dir))

  cache_dir = _field(data_config, 'cache_dir', None)
  if cache_dir is not None:
    if (not isinstance(cache_dir, (str, os.PathLike)) or
        not os.fspath(cache_dir)):
      raise UserInputError(
          f'Invalid cache_dir {cache_dir!r}: it must be a directory path '
          '(created if missing) for the cached label index, or None.')
    cache_dir = os.path.expanduser(os.fspath(cache_dir))

  per_class = _field(data_config, 'holdout_per_class', 0)
  per_class = 0 if per_class is None else per_class
  if not _is_int(per_class) or per_class < 0:
    raise UserInputError(
        f'Invalid holdout_per_class {per_class!r}: it must be a '
        'non-negative integer number of held-out examples per class (e.g. 50 '
        'for ImageNet), or 0 for no per-class holdout.')
  fraction = _field(data_config, 'holdout_fraction', 0.0)
  fraction = 0.0 if fraction is None else fraction
  if (not isinstance(fraction, numbers.Real) or isinstance(fraction, bool) or
      not 0.0 <= float(fraction) < 1.0):
    raise UserInputError(
        f'Invalid holdout_fraction {fraction!r}: it must be a number in '
        '[0, 1), the share of the training split held out (e.g. 0.5 for the '
        'DARTS-style halves), or 0 for no fractional holdout.')
  if per_class > 0 and fraction > 0:
    raise UserInputError(
        f'Both holdout_per_class={per_class} and '
        f'holdout_fraction={fraction} are set; at most one of them may be '
        'non-zero. Set the other to 0 (e.g. '
        '--config.data.holdout_fraction=0.0).')

  split_seed = _field(data_config, 'split_seed', 0)
  split_seed = 0 if split_seed is None else split_seed
  if not _is_int(split_seed) or split_seed < 0:
    raise UserInputError(
        f'Invalid split_seed {split_seed!r}: it must be a non-negative '
        'integer (default 0); it fixes which examples are held out.')

  class_subset = _field(data_config, 'class_subset', None)
  if class_subset is not None:
    class_subset = _validate_class_subset(name, spec, class_subset)

  return _Settings(
      name=name, image_size=int(image_size), data_dir=data_dir,
      holdout_per_class=int(per_class), holdout_fraction=float(fraction),
      split_seed=int(split_seed), class_subset=class_subset,
      cache_dir=cache_dir)


def model_input_spec(data_config: Any) -> tuple[int, tuple[int, int, int]]:
  """(num_classes, image_shape) from the config alone, without opening any data.

  The cost summary needs only these, so it works for ImageNet configs on a
  machine where ImageNet is not prepared.
  """
  settings = _resolve(data_config)
  subset = settings.class_subset or settings.spec.default_class_subset
  num_classes = len(subset) if subset else settings.spec.num_base_classes
  return num_classes, (settings.image_size, settings.image_size, 3)


def _validate_class_subset(name: str, spec: _DatasetSpec,
                           class_subset: Any) -> tuple[int, ...]:
  """Checks a user class list and returns it as a tuple of ints."""
  limit = spec.num_base_classes
  ok = (isinstance(class_subset, Sequence) and
        not isinstance(class_subset, str) and len(class_subset) > 0 and
        all(_is_int(c) and 0 <= c < limit for c in class_subset))
  if not ok:
    raise UserInputError(
        f'Invalid class_subset {class_subset!r} for dataset {name!r}: it '
        'must be a non-empty tuple of integer class ids in '
        f'[0, {limit - 1}], e.g. (0, 10, 20), or None for all classes.')
  subset = tuple(int(c) for c in class_subset)
  if len(set(subset)) != len(subset):
    duplicates = sorted({c for c in subset if subset.count(c) > 1})
    raise UserInputError(
        f'class_subset for dataset {name!r} repeats class ids {duplicates}; '
        'every class id may appear once (its position is its new label).')
  if (spec.required_subset_size is not None and
      len(subset) != spec.required_subset_size):
    raise UserInputError(
        f'class_subset for dataset {name!r} has {len(subset)} classes but '
        f'{name!r} means exactly {spec.required_subset_size}; pass '
        f'{spec.required_subset_size} ImageNet class ids, or use '
        "name='imagenet2012' with your class_subset for another size.")
  return subset


def _check_split(split: Any, allowed: Sequence[str]) -> str:
  if split not in allowed:
    raise UserInputError(
        f'Unknown split {split!r}; valid splits here are '
        f'{", ".join(map(repr, allowed))}.')
  return split


def _check_batch(global_batch_size: Any, process_index: Any,
                 process_count: Any) -> int:
  """Validates the batch/process arguments and returns the local batch size."""
  if not _is_int(global_batch_size) or global_batch_size <= 0:
    raise UserInputError(
        f'Invalid global batch size {global_batch_size!r}: it must be a '
        'positive integer.')
  if not _is_int(process_count) or process_count <= 0:
    raise UserInputError(
        f'Invalid process_count {process_count!r}: it must be a positive '
        'integer (jax.process_count()).')
  if not _is_int(process_index) or not 0 <= process_index < process_count:
    raise UserInputError(
        f'Invalid process_index {process_index!r}: it must be in '
        f'[0, {process_count - 1}] (jax.process_index()).')
  if global_batch_size % process_count:
    raise UserInputError(
        f'The global batch size {global_batch_size} is not divisible by the '
        f'process count {process_count}; every process must get the same '
        'number of rows. Pick a batch size that is a multiple of '
        f'{process_count}, e.g. '
        f'{max(1, global_batch_size // process_count) * process_count}.')
  return global_batch_size // process_count


def _check_num_threads(num_threads: Any) -> int:
  if num_threads is None:
    return min(8, os.cpu_count() or 1)
  if not _is_int(num_threads) or num_threads <= 0:
    raise UserInputError(
        f'Invalid num_threads {num_threads!r}: it must be a positive integer '
        'or None for min(8, CPU count).')
  return int(num_threads)


# --------------------------------------------------------------------------
# Digits (scikit-learn, no download).


@functools.lru_cache(maxsize=1)
def _digits_base() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns the raw digits (N, 8, 8) float32 in 0..16, labels and test ids."""
  from sklearn import datasets  # Deferred: only the digits path needs it.
  digits = datasets.load_digits()
  images = np.asarray(digits.images, np.float32)
  labels = np.asarray(digits.target, np.int64)
  test = _stratified_sample(labels, _DIGITS_TEST_SIZE,
                            np.random.default_rng(
                                [_DIGITS_TEST_TAG, _DIGITS_TEST_SEED]))
  return images, labels, test


def _stratified_sample(labels: np.ndarray, size: int,
                       rng: np.random.Generator) -> np.ndarray:
  """Returns `size` sorted indices with class shares matching `labels`."""
  classes, counts = np.unique(labels, return_counts=True)
  ideal = counts * size / labels.size
  take = np.floor(ideal).astype(np.int64)
  # Largest-remainder rounding so the total is exactly `size`; ties go to the
  # lower class id (argsort is stable) to stay deterministic.
  order = np.argsort(-(ideal - take), kind='stable')
  take[order[:size - take.sum()]] += 1
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
      image = np.asarray(grey.resize((image_size, image_size), _BILINEAR))
    resized[i] = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255)
  is_test = np.zeros(len(images), bool)
  is_test[test] = True
  out = {'train': (resized[~is_test], labels[~is_test]),
         'test': (resized[is_test], labels[is_test])}
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
  return os.path.expanduser(
      os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def _diagnose_tfds_dir(data_dir: str, tfds_name: str,
                       error: Exception) -> str:
  """Says in words what is wrong with the prepared data, if it can tell."""
  root = os.path.join(data_dir, tfds_name)
  # <name>/<version>/ or, for builders with configs, <name>/<config>/<version>/.
  prepared = (glob.glob(os.path.join(root, '*', 'dataset_info.json')) +
              glob.glob(os.path.join(root, '*', '*', 'dataset_info.json')))
  if not prepared:
    return f'nothing is prepared at {root}'
  folders = sorted({os.path.dirname(path) for path in prepared})
  if not any(glob.glob(os.path.join(folder, '*.array_record*'))
             for folder in folders):
    return (f'{", ".join(folders)} holds it only in another file format '
            "(e.g. the TFRecord default of tfds.load), which has no random "
            'access')
  detail = ' '.join(f'{type(error).__name__}: {error}'.split())
  if len(detail) > 300:
    detail = detail[:300] + '...'
  return f'TFDS could not open it ({detail})'


def _not_prepared_message(settings: _Settings, tfds_name: str, split: str,
                          error: Exception) -> str:
  """One paragraph telling the user what is missing and how to prepare it."""
  data_dir = _effective_data_dir(settings.data_dir)
  prepare = (
      'python -c "import tensorflow_datasets as tfds; '
      f"tfds.builder('{tfds_name}', data_dir='{data_dir}', "
      "file_format='array_record').download_and_prepare()\"")
  manual = ''
  if tfds_name == 'imagenet2012':
    manual = (
        ' (ImageNet cannot be downloaded automatically: first put '
        'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from '
        'image-net.org into '
        f'{os.path.join(data_dir, "downloads", "manual")})')
  return (
      f'Dataset {settings.name!r} reads the TFDS dataset {tfds_name!r} '
      f'(split {split!r}) in the ArrayRecord format from {data_dir}, but '
      f'{_diagnose_tfds_dir(data_dir, tfds_name, error)}. This pipeline never '
      'downloads. To prepare the data, run '
      f'`{prepare}` on a machine with network{manual}, or copy an already '
      f'prepared {tfds_name}/<version>/ folder (with its .array_record files) '
      'into a directory; then point to that directory with '
      '--config.data.data_dir=DIR or the TFDS_DATA_DIR environment variable. '
      '(--config.data.name=digits is built in and needs no data.)')


def _open_tfds(settings: _Settings, split: str, skip_image: bool = False):
  """Opens a TFDS random-access source, or explains how to prepare it."""
  tfds = _import_tfds()
  tfds_name = settings.spec.tfds_name
  decoders = {'image': tfds.decode.SkipDecoding()} if skip_image else None
  try:
    # download=False: opening must never start a download, whatever is on
    # disk; a missing dataset has to become a clear error instead.
    return tfds.data_source(tfds_name, split=split, data_dir=settings.data_dir,
                            download=False, decoders=decoders)
  except Exception as e:  # pylint: disable=broad-except
    # TFDS reports a missing or wrongly formatted dataset through several
    # exception types (NotImplementedError, ValueError, FileNotFoundError,
    # tf.errors.*); all of them mean the same to the user.
    raise UserInputError(
        _not_prepared_message(settings, tfds_name, split, e)) from e


_LABEL_CACHE: dict[tuple[Any, ...], np.ndarray] = {}
_LABEL_CACHE_LOCK = threading.Lock()


class _TfdsSource:
  """Random access over one TFDS split, opened once."""

  def __init__(self, settings: _Settings, split: str):
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
    key = (settings.spec.tfds_name, self._split,
           _effective_data_dir(settings.data_dir), self._len)
    with _LABEL_CACHE_LOCK:
      cached = _LABEL_CACHE.get(key)
    if cached is not None:
      return cached
    label_ds = _open_tfds(settings, self._split, skip_image=True)
    info = getattr(label_ds, 'dataset_info', None)
    version = str(getattr(info, 'version', 'unknown'))
    filename = (f'bnas_jax_labels-{settings.spec.tfds_name}-{version}-'
                f'{self._split}-{self._len}.npy')
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
        _log.warning('Ignoring label cache %s with shape %s.', path,
                     loaded.shape)
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
          'rebuilt.')
    labels.setflags(write=False)
    with _LABEL_CACHE_LOCK:
      _LABEL_CACHE[key] = labels
    return labels


def _scan_labels(label_ds, length: int, num_threads: int,
                 what: str) -> np.ndarray:
  """Reads every label (images are left encoded) in parallel chunks."""
  _log.info('Reading %d labels for %s (done once, then cached).', length,
            what)
  labels = np.empty(length, np.int64)

  def read_chunk(start: int) -> None:
    for i in range(start, min(start + _LABEL_SCAN_CHUNK, length)):
      labels[i] = int(label_ds[i]['label'])

  starts = range(0, length, _LABEL_SCAN_CHUNK)
  if num_threads > 1 and length > _LABEL_SCAN_CHUNK:
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


def _open_source(settings: _Settings, test: bool):
  """Returns the underlying source of the train side or of the test split."""
  spec = settings.spec
  if spec.tfds_name is None:
    images, labels = _digits_arrays(settings.image_size)[
        'test' if test else 'train']
    return _ArraySource(images, labels)
  return _TfdsSource(settings,
                     spec.tfds_test_split if test else spec.tfds_train_split)


# --------------------------------------------------------------------------
# Split carving.


def _class_subset(settings: _Settings) -> tuple[int, ...] | None:
  if settings.class_subset is not None:
    return settings.class_subset
  return settings.spec.default_class_subset


def _label_map(settings: _Settings) -> np.ndarray | None:
  """Maps base labels to output labels (-1: excluded), or None for identity."""
  subset = _class_subset(settings)
  if subset is None:
    return None
  mapping = np.full(settings.spec.num_base_classes, -1, np.int64)
  mapping[list(subset)] = np.arange(len(subset))
  return mapping


def _num_classes(settings: _Settings) -> int:
  subset = _class_subset(settings)
  return settings.spec.num_base_classes if subset is None else len(subset)


def _train_side_indices(settings: _Settings, source,
                        num_threads: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns sorted source indices of ('train', 'holdout')."""
  mapping = _label_map(settings)
  per_class = settings.holdout_per_class
  labels = None
  if mapping is not None or per_class > 0:
    labels = source.labels(num_threads)
  if mapping is None:
    candidates = np.arange(len(source), dtype=np.int64)
  else:
    candidates = np.flatnonzero(mapping[labels] >= 0).astype(np.int64)
  rng = np.random.default_rng([_HOLDOUT_TAG, settings.split_seed])
  if per_class > 0:
    classes = (range(settings.spec.num_base_classes) if mapping is None
               else sorted(_class_subset(settings)))
    candidate_labels = labels[candidates]
    order = np.argsort(candidate_labels, kind='stable')
    sorted_labels = candidate_labels[order]
    held = []
    for cls in classes:
      lo, hi = np.searchsorted(sorted_labels, [cls, cls + 1])
      if hi - lo <= per_class:
        raise UserInputError(
            f'holdout_per_class={per_class} is too large for dataset '
            f'{settings.name!r}: class {cls} has only {hi - lo} training '
            f'examples and at least one must stay in the train split. Use '
            f'holdout_per_class <= {max(hi - lo - 1, 0)} or holdout_fraction '
            'instead.')
      members = candidates[order[lo:hi]]
      held.append(members[rng.permutation(hi - lo)[:per_class]])
    holdout = np.sort(np.concatenate(held))
  elif settings.holdout_fraction > 0:
    count = int(math.floor(settings.holdout_fraction * candidates.size))
    if count == 0:
      raise UserInputError(
          f'holdout_fraction={settings.holdout_fraction} of the '
          f'{candidates.size} training examples of {settings.name!r} holds '
          'out no example; use a larger fraction or 0 to disable the '
          'holdout.')
    holdout = np.sort(candidates[rng.permutation(candidates.size)[:count]])
  else:
    holdout = np.zeros(0, np.int64)
  train = np.setdiff1d(candidates, holdout, assume_unique=True)
  return train, holdout


def _test_indices(settings: _Settings, source, num_threads: int) -> np.ndarray:
  mapping = _label_map(settings)
  if mapping is None:
    return np.arange(len(source), dtype=np.int64)
  return np.flatnonzero(mapping[source.labels(num_threads)] >= 0).astype(
      np.int64)


def _split_source(settings: _Settings, split: str, num_threads: int):
  """Opens what `split` needs; returns (source, sorted indices)."""
  if split == 'test':
    source = _open_source(settings, test=True)
    return source, _test_indices(settings, source, num_threads)
  source = _open_source(settings, test=False)
  train, holdout = _train_side_indices(settings, source, num_threads)
  indices = train if split == 'train' else holdout
  if indices.size == 0:
    raise UserInputError(
        f'The {split!r} split of dataset {settings.name!r} is empty'
        + (': no holdout is configured. Set holdout_per_class (e.g. 50) or '
           'holdout_fraction (e.g. 0.5) in the data config to carve one.'
           if split == 'holdout' else '.'))
  return source, indices


# --------------------------------------------------------------------------
# Image processing (uint8 HWC in, uint8 HWC out, then normalisation).


def _ensure_rgb(image: np.ndarray) -> np.ndarray:
  # TFDS decodes ImageNet with 3 channels, but a grey or RGBA image from a
  # differently prepared copy must not break a batch.
  if image.ndim == 2:
    image = image[:, :, None]
  if image.shape[2] == 1:
    return np.repeat(image, 3, axis=2)
  return image[:, :, :3]


def _resize(image: np.ndarray, size: tuple[int, int],
            box: tuple[float, float, float, float] | None = None) -> np.ndarray:
  """Bilinear resize to (width, height), optionally of a crop box only."""
  return np.asarray(Image.fromarray(image).resize(size, _BILINEAR, box=box))


def _pad_crop(image: np.ndarray, pad: int,
              rng: np.random.Generator) -> np.ndarray:
  height, width = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top = int(rng.integers(0, 2 * pad + 1))
  left = int(rng.integers(0, 2 * pad + 1))
  return padded[top:top + height, left:left + width]


def _random_resized_crop(image: np.ndarray, size: int,
                         rng: np.random.Generator) -> np.ndarray:
  """Inception-style crop of random area and aspect ratio, resized."""
  height, width = image.shape[:2]
  area = height * width
  log_ratio = (math.log(_RRC_RATIO[0]), math.log(_RRC_RATIO[1]))
  for _ in range(_RRC_ATTEMPTS):
    target_area = area * rng.uniform(*_RRC_SCALE)
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
    if aspect < _RRC_RATIO[0]:
      crop_w, crop_h = width, int(round(width / _RRC_RATIO[0]))
    elif aspect > _RRC_RATIO[1]:
      crop_w, crop_h = int(round(height * _RRC_RATIO[1])), height
    else:
      crop_w, crop_h = width, height
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
  return _resize(image, (size, size),
                 box=(left, top, left + crop_w, top + crop_h))


def _resize_shorter_centre_crop(image: np.ndarray, size: int) -> np.ndarray:
  """ImageNet eval: shorter side to size / 0.875, then centre size x size."""
  height, width = image.shape[:2]
  short = int(round(size / _IMAGENET_EVAL_CROP_FRACTION))
  if height <= width:
    new_h, new_w = short, max(short, int(round(width * short / height)))
  else:
    new_h, new_w = max(short, int(round(height * short / width))), short
  resized = _resize(image, (new_w, new_h))
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return resized[top:top + size, left:left + size]


class _Preprocessor:
  """Turns a decoded uint8 image into a normalised float32 image."""

  def __init__(self, settings: _Settings, augment: bool):
    spec = settings.spec
    self._size = settings.image_size
    self._augment = augment
    self._imagenet_style = spec.imagenet_style
    self._flip = spec.flip
    self._pad = max(1, int(round(_CIFAR_PAD * self._size / 32)))
    std = np.asarray(spec.std, np.float32)
    # (x / 255 - mean) / std folded into one multiply-add.
    self._scale = (1.0 / (255.0 * std)).astype(np.float32)
    self._offset = (-np.asarray(spec.mean, np.float32) / std).astype(
        np.float32)

  def __call__(self, image: np.ndarray,
               rng: np.random.Generator | None) -> np.ndarray:
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


def _map_rows(pool: concurrent.futures.ThreadPoolExecutor | None,
              fn: Callable[[int], None], rows: int) -> None:
  """Runs fn(row) for every row, in the pool when there is one."""
  if pool is None:
    for row in range(rows):
      fn(row)
  else:
    # list() re-raises the first worker exception here.
    list(pool.map(fn, range(rows)))


def _make_pool(num_threads: int):
  if num_threads <= 1:
    return None
  return concurrent.futures.ThreadPoolExecutor(
      num_threads, thread_name_prefix='bnas_input')


# --------------------------------------------------------------------------
# Public API.


def get_dataset_info(data_config: Any) -> DatasetInfo:
  """Validates the data config and describes the dataset it selects.

  For TFDS datasets this opens the prepared ArrayRecord data (never
  downloads) and, for a per-class holdout or a class subset, reads all labels
  once (cached; see the module docstring).

  Args:
    data_config: ConfigDict or attribute object with the fields `name`,
      `image_size`, `data_dir`, `holdout_per_class`, `holdout_fraction`,
      `split_seed`, `class_subset` and `cache_dir` (missing optional fields
      take their defaults).

  Returns:
    The dataset description.

  Raises:
    UserInputError: bad config values, or the TFDS data is not prepared (the
      message says how to prepare it).
  """
  settings = _resolve(data_config)
  num_threads = _check_num_threads(None)
  train_source = _open_source(settings, test=False)
  train, holdout = _train_side_indices(settings, train_source, num_threads)
  test_source = _open_source(settings, test=True)
  test = _test_indices(settings, test_source, num_threads)
  size = settings.image_size
  return DatasetInfo(
      name=settings.name, num_classes=_num_classes(settings),
      image_shape=(size, size, 3),
      num_examples={'train': int(train.size), 'holdout': int(holdout.size),
                    'test': int(test.size)})


def num_batches_per_epoch(data_config: Any, split: str,
                          global_batch_size: int) -> int:
  """Number of full global batches in one epoch of `split`.

  Args:
    data_config: See `get_dataset_info`.
    split: 'train', 'holdout' or 'test'.
    global_batch_size: Batch size summed over all processes.

  Returns:
    `num_examples // global_batch_size` (the remainder is dropped).

  Raises:
    UserInputError: bad config/split, empty split, or a batch larger than the
      split.
  """
  settings = _resolve(data_config)
  _check_split(split, SPLITS)
  _check_batch(global_batch_size, 0, 1)
  _, indices = _split_source(settings, split, _check_num_threads(None))
  return _full_batches(settings, split, indices.size, global_batch_size)


def _full_batches(settings: _Settings, split: str, size: int,
                  global_batch_size: int) -> int:
  batches = size // global_batch_size
  if batches == 0:
    raise UserInputError(
        f'The global batch size {global_batch_size} is larger than the '
        f'{size} examples of the {split!r} split of {settings.name!r}, so '
        'not even one full batch fits. Use a batch size of at most '
        f'{size}.')
  return batches


class TrainIterator:
  """Infinite iterator over this process's share of global training batches.

  Every `__next__` returns `{'image': float32 (local_bs, H, W, C), 'label':
  int32 (local_bs,)}` with `local_bs = global_batch_size // process_count`.
  Use `get_state`/`set_state` to checkpoint and resume exactly; the state
  does not depend on the process count, so a job may resume on a different
  number of hosts.
  """

  def __init__(self, *, source, indices: np.ndarray,
               label_map: np.ndarray | None, preprocess: _Preprocessor,
               augment: bool, image_size: int, global_batch_size: int,
               seed: int, split: str, process_index: int,
               process_count: int, num_threads: int):
    self._source = source
    self._indices = indices
    self._label_map = label_map
    self._preprocess = preprocess
    self._augment = augment
    self._image_size = image_size
    self._global_batch_size = global_batch_size
    self._local_batch_size = global_batch_size // process_count
    self._row_offset = process_index * self._local_batch_size
    self._seed = seed
    self._split_id = _SPLIT_IDS[split]
    self._num_batches = indices.size // global_batch_size
    self._pool = _make_pool(num_threads)
    self._epoch = 0
    self._batch = 0
    self._perm_epoch = -1
    self._perm = None

  @property
  def num_batches_per_epoch(self) -> int:
    return self._num_batches

  def __iter__(self) -> TrainIterator:
    return self

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._perm_epoch:
      rng = np.random.default_rng(
          [_PERMUTATION_TAG, self._seed, self._split_id, epoch])
      self._perm = rng.permutation(self._indices.size)
      self._perm_epoch = epoch
    return self._perm

  def __next__(self) -> dict[str, np.ndarray]:
    epoch, batch = self._epoch, self._batch
    perm = self._permutation(epoch)
    local = self._local_batch_size
    first = batch * self._global_batch_size + self._row_offset
    example_ids = self._indices[perm[first:first + local]]
    size = self._image_size
    images = np.empty((local, size, size, 3), np.float32)
    labels = np.empty((local,), np.int32)

    def fill(row: int) -> None:
      image, label = self._source.load(example_ids[row])
      rng = None
      if self._augment:
        rng = np.random.default_rng([_AUGMENT_TAG, self._seed, self._split_id,
                                     epoch, first + row])
      images[row] = self._preprocess(image, rng)
      labels[row] = (label if self._label_map is None
                     else self._label_map[label])

    _map_rows(self._pool, fill, local)
    # Advance only after success so that a failed batch is retried, not lost.
    self._batch += 1
    if self._batch == self._num_batches:
      self._epoch, self._batch = epoch + 1, 0
    return {'image': images, 'label': labels}

  def get_state(self) -> dict[str, int]:
    """Returns a JSON-serialisable position: the next batch to produce."""
    return {'epoch': int(self._epoch), 'batch_in_epoch': int(self._batch)}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Moves to a position returned by `get_state` (of any process count)."""
    epoch = batch = None
    if isinstance(state, Mapping):
      # Checkpoint libraries may hand the ints back as NumPy scalars or 0-d
      # arrays; operator.index accepts exactly the integer-like ones.
      try:
        epoch = operator.index(state.get('epoch'))
        batch = operator.index(state.get('batch_in_epoch'))
      except TypeError:
        epoch = batch = None
    if (epoch is None or epoch < 0 or batch is None or
        not 0 <= batch < self._num_batches):
      raise UserInputError(
          f'Invalid input pipeline state {state!r}: expected '
          "{'epoch': e >= 0, 'batch_in_epoch': 0 <= b < "
          f'{self._num_batches}}} as returned by TrainIterator.get_state() '
          'for the same dataset, split and global batch size.')
    self._epoch, self._batch = int(epoch), int(batch)

  def close(self) -> None:
    """Stops the worker threads; the iterator must not be used afterwards."""
    if self._pool is not None:
      self._pool.shutdown(wait=True)
      self._pool = None

  def __enter__(self) -> TrainIterator:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def make_train_iterator(data_config: Any, split: str, global_batch_size: int,
                        seed: int, *, augment: bool = True,
                        process_index: int = 0, process_count: int = 1,
                        num_threads: int | None = None) -> TrainIterator:
  """Creates the infinite, resumable training iterator of this process.

  Args:
    data_config: See `get_dataset_info`.
    split: 'train' or 'holdout' (DARTS-style methods iterate over both).
    global_batch_size: Batch size summed over all processes; divisible by
      `process_count`.
    seed: Non-negative training seed; it fixes the epoch order and the
      augmentation (not the split carving, which uses `split_seed`).
    augment: False gives the eval preprocessing (e.g. for BN recalibration
      on training data); the order is still shuffled per epoch.
    process_index: This process's index (jax.process_index()).
    process_count: Number of processes (jax.process_count()).
    num_threads: Worker threads for loading and augmenting; None means
      min(8, CPU count).

  Returns:
    The iterator, positioned at epoch 0, batch 0.

  Raises:
    UserInputError: bad arguments or config, empty split, batch larger than
      the split, or TFDS data not prepared.
  """
  settings = _resolve(data_config)
  _check_split(split, _TRAIN_ITERATOR_SPLITS)
  _check_batch(global_batch_size, process_index, process_count)
  if not _is_int(seed) or seed < 0:
    raise UserInputError(
        f'Invalid seed {seed!r} for the input pipeline: it must be a '
        'non-negative integer.')
  num_threads = _check_num_threads(num_threads)
  source, indices = _split_source(settings, split, num_threads)
  _full_batches(settings, split, indices.size, global_batch_size)
  return TrainIterator(
      source=source, indices=indices, label_map=_label_map(settings),
      preprocess=_Preprocessor(settings, augment=augment),
      augment=bool(augment), image_size=settings.image_size,
      global_batch_size=int(global_batch_size), seed=int(seed), split=split,
      process_index=int(process_index), process_count=int(process_count),
      num_threads=num_threads)


def make_eval_batches(data_config: Any, split: str, global_batch_size: int, *,
                      process_index: int = 0, process_count: int = 1,
                      num_threads: int | None = None,
                      max_examples: int | None = None
                      ) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split` in fixed order with eval preprocessing.

  Every process yields the same number of batches. The last global batch is
  padded to full size; each batch has 'image' (float32, zeros in padding
  rows), 'label' (int32, 0 in padding rows) and 'mask' (float32, 1 for real
  examples, 0 for padding), so a masked sum over all processes is exact.

  Args:
    data_config: See `get_dataset_info`.
    split: 'train', 'holdout' or 'test'.
    global_batch_size: Batch size summed over all processes; divisible by
      `process_count`.
    process_index: This process's index (jax.process_index()).
    process_count: Number of processes (jax.process_count()).
    num_threads: Worker threads; None means min(8, CPU count).
    max_examples: If set, evaluate only the first `max_examples` examples of
      the fixed order (for fast checks).

  Returns:
    An iterator of batches. Arguments are validated (and the data opened)
    when this function is called, not at the first `next`.

  Raises:
    UserInputError: bad arguments or config, empty split, or TFDS data not
      prepared.
  """
  settings = _resolve(data_config)
  _check_split(split, SPLITS)
  local = _check_batch(global_batch_size, process_index, process_count)
  if max_examples is not None and (not _is_int(max_examples) or
                                   max_examples <= 0):
    raise UserInputError(
        f'Invalid max_examples {max_examples!r}: it must be a positive '
        'integer, or None for the whole split.')
  num_threads = _check_num_threads(num_threads)
  source, indices = _split_source(settings, split, num_threads)
  if max_examples is not None:
    indices = indices[:max_examples]
  return _eval_batches(
      source=source, indices=indices, label_map=_label_map(settings),
      preprocess=_Preprocessor(settings, augment=False),
      image_size=settings.image_size, global_batch_size=global_batch_size,
      local=local, first_row=process_index * local, num_threads=num_threads)


def _eval_batches(*, source, indices: np.ndarray,
                  label_map: np.ndarray | None, preprocess: _Preprocessor,
                  image_size: int, global_batch_size: int, local: int,
                  first_row: int,
                  num_threads: int) -> Iterator[dict[str, np.ndarray]]:
  """Generator behind `make_eval_batches` (inputs already validated)."""
  total = indices.size
  num_batches = -(-total // global_batch_size)
  pool = _make_pool(num_threads)
  try:
    for batch in range(num_batches):
      first = batch * global_batch_size + first_row
      real = int(np.clip(total - first, 0, local))
      images = np.zeros((local, image_size, image_size, 3), np.float32)
      labels = np.zeros((local,), np.int32)
      mask = np.zeros((local,), np.float32)
      mask[:real] = 1.0

      def fill(row: int, first: int = first) -> None:
        image, label = source.load(indices[first + row])
        images[row] = preprocess(image, None)
        labels[row] = label if label_map is None else label_map[label]

      _map_rows(pool, fill, real)
      yield {'image': images, 'label': labels, 'mask': mask}
  finally:
    # Runs on exhaustion and when an abandoned generator is closed.
    if pool is not None:
      pool.shutdown(wait=True)
