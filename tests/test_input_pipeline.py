"""Tests for bnas_jax.input_pipeline and its bnas_jax.data package (no network: digits, TFDS mocks)."""

import os
from unittest import mock

import ml_collections
import numpy as np
import pytest

from bnas_jax import input_pipeline as ip
from bnas_jax.data import preprocessing
from bnas_jax.data import settings as settings_lib
from bnas_jax.data import sources
from bnas_jax.data import splits
from bnas_jax.errors import UserInputError


def _config(**overrides):
  fields = dict(
    name='digits',
    image_size=32,
    data_dir=None,
    holdout_per_class=0,
    holdout_fraction=0.0,
    split_seed=0,
    class_subset=None,
    cache_dir=None,
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_batches_equal(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for key in g:
      np.testing.assert_array_equal(g[key], w[key])


def _train_holdout_indices(config):
  settings = settings_lib.resolve(config)
  source = sources.open_source(settings, test=False)
  return splits.train_side_indices(settings, source, num_threads=1)


# ---------------------------------------------------------------- digits


def test_digits_info_and_batch_format():
  info = ip.get_dataset_info(_config())
  assert info == ip.DatasetInfo(
    name='digits',
    num_classes=10,
    image_shape=(32, 32, 3),
    num_examples={'train': 1437, 'holdout': 0, 'test': 360},
  )
  batch = next(ip.make_train_iterator(_config(), 'train', 32, seed=0))
  assert batch['image'].shape == (32, 32, 32, 3)
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
  assert batch['label'].min() >= 0 and batch['label'].max() <= 9
  # Mean 0.5 / std 0.5 maps [0, 1] to [-1, 1]; channels are replicated grey.
  assert batch['image'].min() >= -1.0 and batch['image'].max() <= 1.0
  np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])


def test_digits_other_image_size():
  info = ip.get_dataset_info(_config(image_size=16))
  assert info.image_shape == (16, 16, 3)
  batch = next(ip.make_train_iterator(_config(image_size=16), 'train', 8, 0))
  assert batch['image'].shape == (8, 16, 16, 3)


def test_digits_test_split_is_stratified_and_fixed():
  config = _config()
  labels = np.concatenate([b['label'] for b in ip.make_eval_batches(config, 'test', 360)])
  counts = np.bincount(labels, minlength=10)
  assert counts.sum() == 360 and counts.min() >= 35 and counts.max() <= 37
  # split_seed moves the holdout, never the test split.
  other = np.concatenate(
    [b['label'] for b in ip.make_eval_batches(_config(split_seed=5), 'test', 360)]
  )
  np.testing.assert_array_equal(labels, other)


def test_holdout_fraction_halves_train_and_is_disjoint():
  config = _config(holdout_fraction=0.5)
  info = ip.get_dataset_info(config)
  assert info.num_examples == {'train': 719, 'holdout': 718, 'test': 360}
  train, holdout = _train_holdout_indices(config)
  assert np.intersect1d(train, holdout).size == 0
  np.testing.assert_array_equal(np.union1d(train, holdout), np.arange(1437))


def test_holdout_per_class_exact_counts():
  config = _config(holdout_per_class=7)
  info = ip.get_dataset_info(config)
  assert info.num_examples == {'train': 1437 - 70, 'holdout': 70, 'test': 360}
  train, holdout = _train_holdout_indices(config)
  assert np.intersect1d(train, holdout).size == 0
  labels = np.concatenate(
    [b['label'][b['mask'] > 0] for b in ip.make_eval_batches(config, 'holdout', 32)]
  )
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 7))


def test_holdout_depends_on_split_seed_only():
  _, holdout_a = _train_holdout_indices(_config(holdout_fraction=0.5))
  _, holdout_b = _train_holdout_indices(_config(holdout_fraction=0.5))
  _, holdout_c = _train_holdout_indices(_config(holdout_fraction=0.5, split_seed=1))
  np.testing.assert_array_equal(holdout_a, holdout_b)
  assert not np.array_equal(holdout_a, holdout_c)


def test_class_subset_remaps_labels():
  config = _config(class_subset=(7, 3))
  info = ip.get_dataset_info(config)
  assert info.num_classes == 2
  labels = np.concatenate(
    [b['label'][b['mask'] > 0] for b in ip.make_eval_batches(config, 'test', 64)]
  )
  all_labels = np.concatenate([b['label'] for b in ip.make_eval_batches(_config(), 'test', 360)])
  assert labels.size == info.num_examples['test']
  assert labels.size == np.isin(all_labels, [7, 3]).sum()
  # Position in class_subset is the new label: 7 -> 0, 3 -> 1.
  np.testing.assert_array_equal(labels, (all_labels[np.isin(all_labels, [7, 3])] == 3))


# ---------------------------------------------------------- determinism


def test_same_seed_same_batches_different_seed_differs():
  config = _config()
  a = _take(ip.make_train_iterator(config, 'train', 64, seed=3), 3)
  b = _take(ip.make_train_iterator(config, 'train', 64, seed=3, num_threads=1), 3)
  c = _take(ip.make_train_iterator(config, 'train', 64, seed=4), 3)
  _assert_batches_equal(a, b)
  assert not np.array_equal(a[0]['image'], c[0]['image'])


def test_train_and_holdout_streams_are_not_aligned():
  config = _config(holdout_fraction=0.5)
  a = next(ip.make_train_iterator(config, 'train', 64, seed=0))
  b = next(ip.make_train_iterator(config, 'holdout', 64, seed=0))
  assert not np.array_equal(a['image'], b['image'])


@pytest.mark.parametrize('augment', [True, False])
def test_process_sharding_matches_global_batch(augment):
  config = _config()
  steps = 7  # 1437 // 256 = 5 batches per epoch: crosses an epoch boundary.
  whole = _take(ip.make_train_iterator(config, 'train', 256, seed=1, augment=augment), steps)
  parts = [
    _take(
      ip.make_train_iterator(
        config, 'train', 256, seed=1, augment=augment, process_index=p, process_count=2
      ),
      steps,
    )
    for p in range(2)
  ]
  for step in range(steps):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
        np.concatenate([parts[0][step][key], parts[1][step][key]]), whole[step][key]
      )
    assert parts[0][step]['image'].shape[0] == 128


def test_resume_reproduces_batches_across_epoch_boundary():
  config = _config()
  reference = ip.make_train_iterator(config, 'train', 256, seed=2)
  assert reference.num_batches_per_epoch == 5
  _take(reference, 3)
  state = reference.get_state()
  assert state == {'epoch': 0, 'batch_in_epoch': 3}
  expected = _take(reference, 6)  # Epoch 0 batches 3-4, epoch 1 batches 0-3.
  assert reference.get_state() == {'epoch': 1, 'batch_in_epoch': 4}

  resumed = ip.make_train_iterator(config, 'train', 256, seed=2)
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 6), expected)

  # A resume on another process count continues with this process's rows.
  shard = ip.make_train_iterator(config, 'train', 256, seed=2, process_index=1, process_count=2)
  shard.set_state(state)
  for got, want in zip(_take(shard, 6), expected):
    np.testing.assert_array_equal(got['image'], want['image'][128:])


def test_epochs_are_reshuffled_and_drop_remainder():
  config = _config(holdout_fraction=0.5)  # 719 train examples.
  assert ip.num_batches_per_epoch(config, 'train', 100) == 7
  iterator = ip.make_train_iterator(config, 'train', 100, seed=0, augment=False)
  epoch0 = np.concatenate([b['label'] for b in _take(iterator, 7)])
  epoch1 = np.concatenate([b['label'] for b in _take(iterator, 7)])
  assert not np.array_equal(epoch0, epoch1)
  # 700 of 719 examples per epoch: class histograms nearly equal.
  assert (
    np.abs(np.bincount(epoch0, minlength=10) - np.bincount(epoch1, minlength=10)).sum() <= 2 * 19
  )


def test_augment_false_uses_eval_preprocessing():
  config = _config()
  eval_images = {
    image.tobytes()
    for batch in ip.make_eval_batches(config, 'train', 512)
    for image in batch['image']
  }
  batch = next(ip.make_train_iterator(config, 'train', 64, seed=0, augment=False))
  assert all(image.tobytes() in eval_images for image in batch['image'])
  augmented = next(ip.make_train_iterator(config, 'train', 64, seed=0))
  assert sum(image.tobytes() in eval_images for image in augmented['image']) < 32


def test_set_state_rejects_bad_state():
  iterator = ip.make_train_iterator(_config(), 'train', 256, seed=0)
  for state in (
    {},
    {'epoch': -1, 'batch_in_epoch': 0},
    {'epoch': 0, 'batch_in_epoch': 5},
    'epoch=0',
    {'epoch': 1.5, 'batch_in_epoch': 0},
  ):
    with pytest.raises(UserInputError):
      iterator.set_state(state)
  # Restored checkpoints may hold NumPy integers.
  iterator.set_state({'epoch': np.int64(2), 'batch_in_epoch': np.array(1)})
  assert iterator.get_state() == {'epoch': 2, 'batch_in_epoch': 1}
  iterator.close()


# ------------------------------------------------------------------- eval


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_masks_cover_split_exactly(process_count):
  config = _config(holdout_per_class=3)
  per_process = [
    list(ip.make_eval_batches(config, 'test', 64, process_index=p, process_count=process_count))
    for p in range(process_count)
  ]
  assert len({len(batches) for batches in per_process}) == 1
  assert len(per_process[0]) == 6  # ceil(360 / 64)
  total = 0.0
  labels = []
  for batches in per_process:
    for batch in batches:
      local = 64 // process_count
      assert batch['image'].shape == (local, 32, 32, 3)
      assert batch['mask'].dtype == np.float32
      total += batch['mask'].sum()
      padding = batch['mask'] == 0
      assert not batch['image'][padding].any()
      assert not batch['label'][padding].any()
      labels.append(batch['label'][~padding])
  assert total == 360
  full = np.concatenate([b['label'] for b in ip.make_eval_batches(config, 'test', 360)])
  np.testing.assert_array_equal(np.sort(np.concatenate(labels)), np.sort(full))


def test_eval_max_examples():
  batches = list(ip.make_eval_batches(_config(), 'test', 16, max_examples=20))
  assert len(batches) == 2
  assert sum(b['mask'].sum() for b in batches) == 20


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize(
  'overrides',
  [
    dict(name='mnist'),
    dict(name=None),
    dict(image_size=0),
    dict(image_size=-32),
    dict(image_size='32'),
    dict(image_size=True),
    dict(holdout_per_class=5, holdout_fraction=0.5),
    dict(holdout_fraction=1.0),
    dict(holdout_fraction=-0.1),
    dict(holdout_per_class=-1),
    dict(holdout_per_class=200),  # More than some digit classes hold.
    dict(holdout_fraction=1e-6),  # Rounds to no example.
    dict(split_seed=-1),
    dict(class_subset=(1, 1)),
    dict(class_subset=(10,)),
    dict(class_subset=()),
  ],
)
def test_bad_config_raises_user_input_error(overrides):
  with pytest.raises(UserInputError):
    ip.get_dataset_info(_config(**overrides))


def test_unknown_name_message_lists_valid_names():
  with pytest.raises(UserInputError, match='cifar10.*imagenet100'):
    ip.get_dataset_info(_config(name='cifar11'))


def test_imagenet100_subset_must_have_100_classes():
  with pytest.raises(UserInputError, match='100'):
    ip.get_dataset_info(_config(name='imagenet100', class_subset=(1, 2, 3)))


@pytest.mark.parametrize(
  'kwargs',
  [
    dict(global_batch_size=30, process_count=4),
    dict(global_batch_size=0),
    dict(global_batch_size=32, process_index=2, process_count=2),
    dict(global_batch_size=2048),  # Larger than the split.
    dict(global_batch_size=32, split='test'),
    dict(global_batch_size=32, split='validation'),
    dict(global_batch_size=32, split='holdout'),  # No holdout configured.
    dict(global_batch_size=32, seed=-1),
    dict(global_batch_size=32, num_threads=0),
  ],
)
def test_bad_iterator_arguments_raise(kwargs):
  kwargs = dict(dict(split='train', seed=0), **kwargs)
  with pytest.raises(UserInputError):
    ip.make_train_iterator(_config(), **kwargs)


def test_bad_eval_arguments_raise_eagerly():
  with pytest.raises(UserInputError):
    ip.make_eval_batches(_config(), 'test', 30, process_count=4)
  with pytest.raises(UserInputError):
    ip.make_eval_batches(_config(), 'holdout', 32)
  with pytest.raises(UserInputError):
    ip.make_eval_batches(_config(), 'test', 32, max_examples=0)
  with pytest.raises(UserInputError):
    ip.num_batches_per_epoch(_config(), 'holdout', 32)


def test_plain_attribute_object_config():

  class Config:
    name = 'digits'
    image_size = 8

  info = ip.get_dataset_info(Config())
  assert info.image_shape == (8, 8, 3)
  assert info.num_examples['train'] == 1437


# ------------------------------------------------------------------- TFDS


def _mock_tfds(num_examples):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # USE_CODE: no metadata files needed; the mock patches the builder's
  # as_data_source, so tfds.data_source returns deterministic random examples.
  return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def _unnormalise(images, name):
  spec = settings_lib._SPECS[name]
  return np.rint((images * np.asarray(spec.std) + np.asarray(spec.mean)) * 255).astype(np.int64)


def test_cifar10_mock_shapes_and_augmentation():
  config = _config(name='cifar10', holdout_fraction=0.5)
  with _mock_tfds(64):
    info = ip.get_dataset_info(config)
    assert info.num_classes == 10 and info.image_shape == (32, 32, 3)
    assert info.num_examples == {'train': 32, 'holdout': 32, 'test': 64}
    plain = next(ip.make_train_iterator(config, 'train', 8, seed=0, augment=False))
    augmented = next(ip.make_train_iterator(config, 'train', 8, seed=0))
  assert augmented['image'].shape == (8, 32, 32, 3)
  assert augmented['image'].dtype == np.float32
  np.testing.assert_array_equal(plain['label'], augmented['label'])
  assert not np.array_equal(plain['image'], augmented['image'])
  # Each augmented image is its plain image zero-padded by 4, shifted and
  # possibly mirrored.
  raw = _unnormalise(plain['image'], 'cifar10')
  aug = _unnormalise(augmented['image'], 'cifar10')
  flips = 0
  for source, target in zip(raw, aug):
    padded = np.pad(source, ((4, 4), (4, 4), (0, 0)))
    matches = [
      (flip, dy, dx)
      for flip in (False, True)
      for dy in range(9)
      for dx in range(9)
      if np.array_equal(
        padded[dy : dy + 32, dx : dx + 32][:, ::-1] if flip else padded[dy : dy + 32, dx : dx + 32],
        target,
      )
    ]
    assert matches, 'augmented image is not a shifted/flipped original'
    flips += matches[0][0]
  assert 0 < flips < 8  # Fixed seed: some rows flipped, some not.


def test_cifar_per_class_holdout_uses_label_cache(tmp_path, monkeypatch):
  config = _config(name='cifar10', holdout_per_class=2, cache_dir=str(tmp_path))
  with _mock_tfds(200):
    info = ip.get_dataset_info(config)
    assert info.num_examples['holdout'] == 20
    assert info.num_examples['train'] == 180
    labels = np.concatenate([b['label'] for b in ip.make_eval_batches(config, 'holdout', 20)])
    # A new process finds the labels on disk instead of scanning again.
    monkeypatch.setattr(sources, '_LABEL_CACHE', {})
    monkeypatch.setattr(sources, '_scan_labels', mock.Mock(side_effect=AssertionError('rescanned')))
    assert ip.get_dataset_info(config) == info
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 2))
  cached = [f for f in os.listdir(tmp_path) if f.endswith('.npy')]
  assert cached
  assert all(f.startswith('bnas_jax_labels-cifar10-') for f in cached)


def test_imagenet2012_mock_train_and_eval_paths():
  config = _config(name='imagenet2012', image_size=32, holdout_fraction=0.25)
  with _mock_tfds(48):
    info = ip.get_dataset_info(config)
    assert info.num_classes == 1000
    assert info.num_examples == {'train': 36, 'holdout': 12, 'test': 48}
    train = _take(ip.make_train_iterator(config, 'train', 12, seed=0), 4)
    evaluated = list(ip.make_eval_batches(config, 'test', 32))
  for batch in train:
    assert batch['image'].shape == (12, 32, 32, 3)
    assert np.isfinite(batch['image']).all()
    assert batch['label'].max() < 1000
  assert len(evaluated) == 2
  assert evaluated[0]['image'].shape == (32, 32, 32, 3)
  assert sum(b['mask'].sum() for b in evaluated) == 48


def test_imagenet_crops_on_odd_shapes():
  rng = np.random.default_rng(0)
  for shape in [(5, 50, 3), (50, 5, 3), (7, 7, 3), (300, 200, 3)]:
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    assert preprocessing._random_resized_crop(image, 24, rng).shape == (24, 24, 3)
    assert preprocessing._resize_shorter_centre_crop(image, 24).shape == (24, 24, 3)
  assert preprocessing._resize_shorter_centre_crop(
    np.zeros((300, 400, 3), np.uint8), 224
  ).shape == (224, 224, 3)


def test_imagenet100_filters_and_remaps_classes():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  config = _config(name='imagenet100', image_size=16)
  with _mock_tfds(400):
    raw = tfds.data_source('imagenet2012', split='validation')
    raw_labels = np.array([int(raw[i]['label']) for i in range(len(raw))])
    info = ip.get_dataset_info(config)
    labels = np.concatenate(
      [b['label'][b['mask'] > 0] for b in ip.make_eval_batches(config, 'test', 64)]
    )
    train = next(ip.make_train_iterator(config, 'train', 8, seed=0))
    custom = _config(name='imagenet100', image_size=16, class_subset=tuple(range(999, 899, -1)))
    custom_labels = np.concatenate(
      [b['label'][b['mask'] > 0] for b in ip.make_eval_batches(custom, 'test', 64)]
    )
  assert info.num_classes == 100
  kept = raw_labels[raw_labels % 10 == 0]
  assert info.num_examples['test'] == kept.size > 0
  np.testing.assert_array_equal(labels, kept // 10)
  assert train['label'].min() >= 0 and train['label'].max() <= 99
  np.testing.assert_array_equal(custom_labels, 999 - raw_labels[raw_labels >= 900])


def test_unprepared_tfds_dataset_explains_how_to_prepare(tmp_path):
  config = _config(name='cifar10', data_dir=str(tmp_path))
  with pytest.raises(UserInputError) as excinfo:
    ip.get_dataset_info(config)
  message = str(excinfo.value)
  assert 'download_and_prepare' in message
  assert "file_format='array_record'" in message
  assert str(tmp_path) in message
  assert '\n' not in message
  # Nothing was downloaded or prepared.
  assert not any(files for _, _, files in os.walk(tmp_path))
  with pytest.raises(UserInputError, match='ILSVRC2012_img_train.tar'):
    ip.make_train_iterator(_config(name='imagenet2012', data_dir=str(tmp_path)), 'train', 8, 0)
  # Prepared, but in the TFRecord format that has no random access.
  version_dir = tmp_path / 'cifar100' / '3.0.2'
  version_dir.mkdir(parents=True)
  (version_dir / 'dataset_info.json').write_text('{}')
  (version_dir / 'cifar100-train.tfrecord-00000-of-00001').write_text('')
  with pytest.raises(UserInputError, match='another file format'):
    ip.get_dataset_info(_config(name='cifar100', data_dir=str(tmp_path)))


@pytest.fixture(scope='module')
def prepared_cifar10(tmp_path_factory):
  """A real ArrayRecord cifar10 built offline from fake CIFAR binary files."""
  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds
  from tensorflow_datasets.image_classification import cifar

  # pylint: enable=g-import-not-at-top
  root = tmp_path_factory.mktemp('fake_cifar')
  binaries = root / 'extracted' / 'cifar-10-batches-bin'
  binaries.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for name, count in [(f'data_batch_{i}.bin', 12) for i in range(1, 6)] + [('test_batch.bin', 20)]:
    labels = (np.arange(count) % 10).astype(np.uint8)
    pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
    np.concatenate([labels[:, None], pixels], 1).tofile(binaries / name)
  (binaries / 'batches.meta.txt').write_text('\n'.join('abcdefghij'))
  data_dir = root / 'tfds'
  # The builder's checksum lookup needs `code_path`, which imports
  # importlib_resources; it is irrelevant when nothing is downloaded.
  cifar.Cifar10.code_path = None
  try:
    with mock.patch.object(
      tfds.download.DownloadManager, 'download_and_extract', return_value=str(root / 'extracted')
    ):
      tfds.builder(
        'cifar10', data_dir=str(data_dir), file_format='array_record'
      ).download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f'cannot prepare a fake cifar10 offline here: {e}')
  finally:
    del cifar.Cifar10.code_path
  return str(data_dir)


def test_real_arrayrecord_cifar10(prepared_cifar10, tmp_path):
  config = _config(
    name='cifar10', data_dir=prepared_cifar10, holdout_per_class=1, cache_dir=str(tmp_path)
  )
  info = ip.get_dataset_info(config)
  assert info.num_examples == {'train': 50, 'holdout': 10, 'test': 20}
  holdout = np.concatenate([b['label'] for b in ip.make_eval_batches(config, 'holdout', 10)])
  np.testing.assert_array_equal(np.sort(holdout), np.arange(10))
  assert len(os.listdir(tmp_path)) == 1  # Label cache written.
  a = _take(ip.make_train_iterator(config, 'train', 16, seed=0), 4)
  b = _take(ip.make_train_iterator(config, 'train', 16, seed=0), 4)
  _assert_batches_equal(a, b)
  assert a[0]['image'].shape == (16, 32, 32, 3)
