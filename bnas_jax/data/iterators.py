"""Deterministic, resumable, per-process batch iterators and dataset descriptions.

See `bnas_jax.input_pipeline` for the determinism and multi-host contract.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from bnas_jax.errors import UserInputError
from bnas_jax.data.settings import AUGMENT_TAG
from bnas_jax.data.settings import DatasetInfo
from bnas_jax.data.settings import PERMUTATION_TAG
from bnas_jax.data.settings import SPLITS
from bnas_jax.data.settings import SPLIT_IDS
from bnas_jax.data.settings import Settings
from bnas_jax.data.settings import TRAIN_ITERATOR_SPLITS
from bnas_jax.data.settings import check_batch
from bnas_jax.data.settings import check_num_threads
from bnas_jax.data.settings import check_split
from bnas_jax.data.settings import is_int
from bnas_jax.data.settings import resolve
from bnas_jax.data.sources import open_source
from bnas_jax.data.splits import class_count
from bnas_jax.data.splits import class_label_map
from bnas_jax.data.splits import split_source
from bnas_jax.data.splits import test_indices
from bnas_jax.data.splits import train_side_indices
from bnas_jax.data.preprocessing import Preprocessor, make_pool, map_rows


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
  settings = resolve(data_config)
  num_threads = check_num_threads(None)
  train_source = open_source(settings, test=False)
  train, holdout = train_side_indices(settings, train_source, num_threads)
  test_source = open_source(settings, test=True)
  test = test_indices(settings, test_source, num_threads)
  size = settings.image_size
  return DatasetInfo(
    name=settings.name,
    num_classes=class_count(settings),
    image_shape=(size, size, 3),
    num_examples={'train': int(train.size), 'holdout': int(holdout.size), 'test': int(test.size)},
  )


def num_batches_per_epoch(data_config: Any, split: str, global_batch_size: int) -> int:
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
  settings = resolve(data_config)
  check_split(split, SPLITS)
  check_batch(global_batch_size, 0, 1)
  _, indices = split_source(settings, split, check_num_threads(None))
  return _full_batches(settings, split, indices.size, global_batch_size)


def _full_batches(settings: Settings, split: str, size: int, global_batch_size: int) -> int:
  batches = size // global_batch_size
  if batches == 0:
    raise UserInputError(
      f'The global batch size {global_batch_size} is larger than the '
      f'{size} examples of the {split!r} split of {settings.name!r}, so '
      'not even one full batch fits. Use a batch size of at most '
      f'{size}.'
    )
  return batches


class TrainIterator:
  """Infinite iterator over this process's share of global training batches.

  Every `__next__` returns `{'image': float32 (local_bs, H, W, C), 'label':
  int32 (local_bs,)}` with `local_bs = global_batch_size // process_count`.
  Use `get_state`/`set_state` to checkpoint and resume exactly; the state
  does not depend on the process count, so a job may resume on a different
  number of hosts.
  """

  def __init__(
    self,
    *,
    source,
    indices: np.ndarray,
    label_map: np.ndarray | None,
    preprocess: Preprocessor,
    augment: bool,
    image_size: int,
    global_batch_size: int,
    seed: int,
    split: str,
    process_index: int,
    process_count: int,
    num_threads: int,
  ):
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
    self._split_id = SPLIT_IDS[split]
    self._num_batches = indices.size // global_batch_size
    self._pool = make_pool(num_threads)
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
      rng = np.random.default_rng([PERMUTATION_TAG, self._seed, self._split_id, epoch])
      self._perm = rng.permutation(self._indices.size)
      self._perm_epoch = epoch
    return self._perm

  def __next__(self) -> dict[str, np.ndarray]:
    epoch, batch = self._epoch, self._batch
    perm = self._permutation(epoch)
    local = self._local_batch_size
    first = batch * self._global_batch_size + self._row_offset
    example_ids = self._indices[perm[first : first + local]]
    size = self._image_size
    images = np.empty((local, size, size, 3), np.float32)
    labels = np.empty((local,), np.int32)

    def fill(row: int) -> None:
      image, label = self._source.load(example_ids[row])
      rng = None
      if self._augment:
        rng = np.random.default_rng([AUGMENT_TAG, self._seed, self._split_id, epoch, first + row])
      images[row] = self._preprocess(image, rng)
      labels[row] = label if self._label_map is None else self._label_map[label]

    map_rows(self._pool, fill, local)
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
    if epoch is None or epoch < 0 or batch is None or not 0 <= batch < self._num_batches:
      raise UserInputError(
        f'Invalid input pipeline state {state!r}: expected '
        "{'epoch': e >= 0, 'batch_in_epoch': 0 <= b < "
        f'{self._num_batches}}} as returned by TrainIterator.get_state() '
        'for the same dataset, split and global batch size.'
      )
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


def make_train_iterator(
  data_config: Any,
  split: str,
  global_batch_size: int,
  seed: int,
  *,
  augment: bool = True,
  process_index: int = 0,
  process_count: int = 1,
  num_threads: int | None = None,
) -> TrainIterator:
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
  settings = resolve(data_config)
  check_split(split, TRAIN_ITERATOR_SPLITS)
  check_batch(global_batch_size, process_index, process_count)
  if not is_int(seed) or seed < 0:
    raise UserInputError(
      f'Invalid seed {seed!r} for the input pipeline: it must be a non-negative integer.'
    )
  num_threads = check_num_threads(num_threads)
  source, indices = split_source(settings, split, num_threads)
  _full_batches(settings, split, indices.size, global_batch_size)
  return TrainIterator(
    source=source,
    indices=indices,
    label_map=class_label_map(settings),
    preprocess=Preprocessor(settings, augment=augment),
    augment=bool(augment),
    image_size=settings.image_size,
    global_batch_size=int(global_batch_size),
    seed=int(seed),
    split=split,
    process_index=int(process_index),
    process_count=int(process_count),
    num_threads=num_threads,
  )


def make_eval_batches(
  data_config: Any,
  split: str,
  global_batch_size: int,
  *,
  process_index: int = 0,
  process_count: int = 1,
  num_threads: int | None = None,
  max_examples: int | None = None,
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
  settings = resolve(data_config)
  check_split(split, SPLITS)
  local = check_batch(global_batch_size, process_index, process_count)
  if max_examples is not None and (not is_int(max_examples) or max_examples <= 0):
    raise UserInputError(
      f'Invalid max_examples {max_examples!r}: it must be a positive '
      'integer, or None for the whole split.'
    )
  num_threads = check_num_threads(num_threads)
  source, indices = split_source(settings, split, num_threads)
  if max_examples is not None:
    indices = indices[:max_examples]
  return _eval_batches(
    source=source,
    indices=indices,
    label_map=class_label_map(settings),
    preprocess=Preprocessor(settings, augment=False),
    image_size=settings.image_size,
    global_batch_size=global_batch_size,
    local=local,
    first_row=process_index * local,
    num_threads=num_threads,
  )


def _eval_batches(
  *,
  source,
  indices: np.ndarray,
  label_map: np.ndarray | None,
  preprocess: Preprocessor,
  image_size: int,
  global_batch_size: int,
  local: int,
  first_row: int,
  num_threads: int,
) -> Iterator[dict[str, np.ndarray]]:
  """Generator behind `make_eval_batches` (inputs already validated)."""
  total = indices.size
  num_batches = -(-total // global_batch_size)
  pool = make_pool(num_threads)
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

      map_rows(pool, fill, real)
      yield {'image': images, 'label': labels, 'mask': mask}
  finally:
    # Runs on exhaustion and when an abandoned generator is closed.
    if pool is not None:
      pool.shutdown(wait=True)
