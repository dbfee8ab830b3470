"""Data settings: dataset specs, the validated data config, argument checks (see `bnas_jax.input_pipeline`)."""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from bnas_jax.errors import UserInputError


DATASET_NAMES = ('digits', 'cifar10', 'cifar100', 'imagenet2012', 'imagenet100')
SPLITS = ('train', 'holdout', 'test')
TRAIN_ITERATOR_SPLITS = ('train', 'holdout')

# Seed-sequence tags keep the random streams of different purposes apart even
# when the user picks equal seeds for them.
PERMUTATION_TAG = 1
AUGMENT_TAG = 2
HOLDOUT_TAG = 3
DIGITS_TEST_TAG = 4
# The digits test split must never move, so its seed is not configurable.
DIGITS_TEST_SEED = 0
DIGITS_TEST_SIZE = 360
SPLIT_IDS = {'train': 0, 'holdout': 1}

CIFAR_PAD = 4
IMAGENET_EVAL_CROP_FRACTION = 0.875
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10
LABEL_SCAN_CHUNK = 1024

BILINEAR = getattr(Image, 'Resampling', Image).BILINEAR


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
    tfds_name=None,
    tfds_train_split='train',
    tfds_test_split='test',
    num_base_classes=10,
    default_class_subset=None,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    imagenet_style=False,
    flip=False,
  ),
  'cifar10': _DatasetSpec(
    tfds_name='cifar10',
    tfds_train_split='train',
    tfds_test_split='test',
    num_base_classes=10,
    default_class_subset=None,
    mean=_CIFAR10_MEAN,
    std=_CIFAR10_STD,
    imagenet_style=False,
    flip=True,
  ),
  'cifar100': _DatasetSpec(
    tfds_name='cifar100',
    tfds_train_split='train',
    tfds_test_split='test',
    num_base_classes=100,
    default_class_subset=None,
    mean=_CIFAR100_MEAN,
    std=_CIFAR100_STD,
    imagenet_style=False,
    flip=True,
  ),
  'imagenet2012': _DatasetSpec(
    tfds_name='imagenet2012',
    tfds_train_split='train',
    tfds_test_split='validation',
    num_base_classes=1000,
    default_class_subset=None,
    mean=_IMAGENET_MEAN,
    std=_IMAGENET_STD,
    imagenet_style=True,
    flip=True,
  ),
  'imagenet100': _DatasetSpec(
    tfds_name='imagenet2012',
    tfds_train_split='train',
    tfds_test_split='validation',
    num_base_classes=1000,
    default_class_subset=tuple(range(0, 1000, 10)),
    mean=_IMAGENET_MEAN,
    std=_IMAGENET_STD,
    imagenet_style=True,
    flip=True,
    required_subset_size=100,
  ),
}


@dataclasses.dataclass(frozen=True)
class Settings:
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


def is_int(value: Any) -> bool:
  # bool is an Integral, but `image_size=True` is a typo, not a size.
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def resolve(data_config: Any) -> Settings:
  """Validates the data config and returns normalised settings."""
  name = _field(data_config, 'name', 'digits')
  if not isinstance(name, str) or name not in _SPECS:
    raise UserInputError(
      f'Unknown dataset name {name!r} in the data config (field `name`). '
      f'Valid names are: {", ".join(DATASET_NAMES)}; for example '
      '--config.data.name=digits (built in, needs no download).'
    )
  spec = _SPECS[name]

  image_size = _field(data_config, 'image_size', 32)
  if not is_int(image_size) or image_size <= 0:
    raise UserInputError(
      f'Invalid image_size {image_size!r} for dataset {name!r}: it must be '
      'a positive integer number of pixels, e.g. 32 for CIFAR/digits or '
      '224 for ImageNet (--config.data.image_size=32).'
    )

  data_dir = _field(data_config, 'data_dir', None)
  if data_dir is not None:
    if not isinstance(data_dir, (str, os.PathLike)) or not os.fspath(data_dir):
      raise UserInputError(
        f'Invalid data_dir {data_dir!r}: it must be a directory path '
        'holding prepared TFDS datasets, or None to use TFDS_DATA_DIR / '
        '~/tensorflow_datasets.'
      )
    data_dir = os.path.expanduser(os.fspath(data_dir))

  cache_dir = _field(data_config, 'cache_dir', None)
  if cache_dir is not None:
    if not isinstance(cache_dir, (str, os.PathLike)) or not os.fspath(cache_dir):
      raise UserInputError(
        f'Invalid cache_dir {cache_dir!r}: it must be a directory path '
        '(created if missing) for the cached label index, or None.'
      )
    cache_dir = os.path.expanduser(os.fspath(cache_dir))

  per_class = _field(data_config, 'holdout_per_class', 0)
  per_class = 0 if per_class is None else per_class
  if not is_int(per_class) or per_class < 0:
    raise UserInputError(
      f'Invalid holdout_per_class {per_class!r}: it must be a '
      'non-negative integer number of held-out examples per class (e.g. 50 '
      'for ImageNet), or 0 for no per-class holdout.'
    )
  fraction = _field(data_config, 'holdout_fraction', 0.0)
  fraction = 0.0 if fraction is None else fraction
  if (
    not isinstance(fraction, numbers.Real)
    or isinstance(fraction, bool)
    or not 0.0 <= float(fraction) < 1.0
  ):
    raise UserInputError(
      f'Invalid holdout_fraction {fraction!r}: it must be a number in '
      '[0, 1), the share of the training split held out (e.g. 0.5 for the '
      'DARTS-style halves), or 0 for no fractional holdout.'
    )
  if per_class > 0 and fraction > 0:
    raise UserInputError(
      f'Both holdout_per_class={per_class} and '
      f'holdout_fraction={fraction} are set; at most one of them may be '
      'non-zero. Set the other to 0 (e.g. '
      '--config.data.holdout_fraction=0.0).'
    )

  split_seed = _field(data_config, 'split_seed', 0)
  split_seed = 0 if split_seed is None else split_seed
  if not is_int(split_seed) or split_seed < 0:
    raise UserInputError(
      f'Invalid split_seed {split_seed!r}: it must be a non-negative '
      'integer (default 0); it fixes which examples are held out.'
    )

  class_subset = _field(data_config, 'class_subset', None)
  if class_subset is not None:
    class_subset = _validate_class_subset(name, spec, class_subset)

  return Settings(
    name=name,
    image_size=int(image_size),
    data_dir=data_dir,
    holdout_per_class=int(per_class),
    holdout_fraction=float(fraction),
    split_seed=int(split_seed),
    class_subset=class_subset,
    cache_dir=cache_dir,
  )


def model_input_spec(data_config: Any) -> tuple[int, tuple[int, int, int]]:
  """(num_classes, image_shape) from the config alone, without opening any data.

  The cost summary needs only these, so it works for ImageNet configs on a
  machine where ImageNet is not prepared.
  """
  settings = resolve(data_config)
  subset = settings.class_subset or settings.spec.default_class_subset
  num_classes = len(subset) if subset else settings.spec.num_base_classes
  return num_classes, (settings.image_size, settings.image_size, 3)


def _validate_class_subset(name: str, spec: _DatasetSpec, class_subset: Any) -> tuple[int, ...]:
  """Checks a user class list and returns it as a tuple of ints."""
  limit = spec.num_base_classes
  ok = (
    isinstance(class_subset, Sequence)
    and not isinstance(class_subset, str)
    and len(class_subset) > 0
    and all(is_int(c) and 0 <= c < limit for c in class_subset)
  )
  if not ok:
    raise UserInputError(
      f'Invalid class_subset {class_subset!r} for dataset {name!r}: it '
      'must be a non-empty tuple of integer class ids in '
      f'[0, {limit - 1}], e.g. (0, 10, 20), or None for all classes.'
    )
  subset = tuple(int(c) for c in class_subset)
  if len(set(subset)) != len(subset):
    duplicates = sorted({c for c in subset if subset.count(c) > 1})
    raise UserInputError(
      f'class_subset for dataset {name!r} repeats class ids {duplicates}; '
      'every class id may appear once (its position is its new label).'
    )
  if spec.required_subset_size is not None and len(subset) != spec.required_subset_size:
    raise UserInputError(
      f'class_subset for dataset {name!r} has {len(subset)} classes but '
      f'{name!r} means exactly {spec.required_subset_size}; pass '
      f'{spec.required_subset_size} ImageNet class ids, or use '
      "name='imagenet2012' with your class_subset for another size."
    )
  return subset


def check_split(split: Any, allowed: Sequence[str]) -> str:
  if split not in allowed:
    raise UserInputError(
      f'Unknown split {split!r}; valid splits here are {", ".join(map(repr, allowed))}.'
    )
  return split


def check_batch(global_batch_size: Any, process_index: Any, process_count: Any) -> int:
  """Validates the batch/process arguments and returns the local batch size."""
  if not is_int(global_batch_size) or global_batch_size <= 0:
    raise UserInputError(
      f'Invalid global batch size {global_batch_size!r}: it must be a positive integer.'
    )
  if not is_int(process_count) or process_count <= 0:
    raise UserInputError(
      f'Invalid process_count {process_count!r}: it must be a positive '
      'integer (jax.process_count()).'
    )
  if not is_int(process_index) or not 0 <= process_index < process_count:
    raise UserInputError(
      f'Invalid process_index {process_index!r}: it must be in '
      f'[0, {process_count - 1}] (jax.process_index()).'
    )
  if global_batch_size % process_count:
    raise UserInputError(
      f'The global batch size {global_batch_size} is not divisible by the '
      f'process count {process_count}; every process must get the same '
      'number of rows. Pick a batch size that is a multiple of '
      f'{process_count}, e.g. '
      f'{max(1, global_batch_size // process_count) * process_count}.'
    )
  return global_batch_size // process_count


def check_num_threads(num_threads: Any) -> int:
  if num_threads is None:
    return min(8, os.cpu_count() or 1)
  if not is_int(num_threads) or num_threads <= 0:
    raise UserInputError(
      f'Invalid num_threads {num_threads!r}: it must be a positive integer '
      'or None for min(8, CPU count).'
    )
  return int(num_threads)
