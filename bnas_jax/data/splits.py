"""Split carving: train / holdout / test indices of a source (see `bnas_jax.input_pipeline`)."""

from __future__ import annotations

import math

import numpy as np

from bnas_jax.errors import UserInputError
from bnas_jax.data.settings import HOLDOUT_TAG, Settings
from bnas_jax.data.sources import open_source


def _class_subset(settings: Settings) -> tuple[int, ...] | None:
  if settings.class_subset is not None:
    return settings.class_subset
  return settings.spec.default_class_subset


def class_label_map(settings: Settings) -> np.ndarray | None:
  """Maps base labels to output labels (-1: excluded), or None for identity."""
  subset = _class_subset(settings)
  if subset is None:
    return None
  mapping = np.full(settings.spec.num_base_classes, -1, np.int64)
  mapping[list(subset)] = np.arange(len(subset))
  return mapping


def class_count(settings: Settings) -> int:
  subset = _class_subset(settings)
  return settings.spec.num_base_classes if subset is None else len(subset)


def train_side_indices(
  settings: Settings, source, num_threads: int
) -> tuple[np.ndarray, np.ndarray]:
  """Returns sorted source indices of ('train', 'holdout')."""
  mapping = class_label_map(settings)
  per_class = settings.holdout_per_class
  labels = None
  if mapping is not None or per_class > 0:
    labels = source.labels(num_threads)
  if mapping is None:
    candidates = np.arange(len(source), dtype=np.int64)
  else:
    candidates = np.flatnonzero(mapping[labels] >= 0).astype(np.int64)
  rng = np.random.default_rng([HOLDOUT_TAG, settings.split_seed])
  if per_class > 0:
    classes = (
      range(settings.spec.num_base_classes) if mapping is None else sorted(_class_subset(settings))
    )
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
          'instead.'
        )
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
        'holdout.'
      )
    holdout = np.sort(candidates[rng.permutation(candidates.size)[:count]])
  else:
    holdout = np.zeros(0, np.int64)
  train = np.setdiff1d(candidates, holdout, assume_unique=True)
  return train, holdout


def test_indices(settings: Settings, source, num_threads: int) -> np.ndarray:
  mapping = class_label_map(settings)
  if mapping is None:
    return np.arange(len(source), dtype=np.int64)
  return np.flatnonzero(mapping[source.labels(num_threads)] >= 0).astype(np.int64)


def split_source(settings: Settings, split: str, num_threads: int):
  """Opens what `split` needs; returns (source, sorted indices)."""
  if split == 'test':
    source = open_source(settings, test=True)
    return source, test_indices(settings, source, num_threads)
  source = open_source(settings, test=False)
  train, holdout = train_side_indices(settings, source, num_threads)
  indices = train if split == 'train' else holdout
  if indices.size == 0:
    raise UserInputError(
      f'The {split!r} split of dataset {settings.name!r} is empty'
      + (
        ': no holdout is configured. Set holdout_per_class (e.g. 50) or '
        'holdout_fraction (e.g. 0.5) in the data config to carve one.'
        if split == 'holdout'
        else '.'
      )
    )
  return source, indices
