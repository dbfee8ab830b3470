"""Deterministic, resumable, multi-host image classification input pipeline.

This module is the front of the `bnas_jax/data/` package: `settings`
(dataset specs, the validated data config), `sources` (digits in memory,
TFDS ArrayRecord splits), `splits` (carving train / holdout / test),
`preprocessing` (image ops and augmentation) and `iterators` (the resumable
per-process iterators). Trainers use only the names exported here.

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

from bnas_jax.data.settings import DatasetInfo
from bnas_jax.data.iterators import get_dataset_info
from bnas_jax.data.iterators import make_eval_batches
from bnas_jax.data.iterators import make_train_iterator
from bnas_jax.data.settings import model_input_spec
from bnas_jax.data.iterators import num_batches_per_epoch
from bnas_jax.data.iterators import TrainIterator
from bnas_jax.data.settings import DATASET_NAMES
from bnas_jax.data.settings import SPLITS

__all__ = (
  "DATASET_NAMES",
  "SPLITS",
  "DatasetInfo",
  "TrainIterator",
  "get_dataset_info",
  "make_eval_batches",
  "make_train_iterator",
  "model_input_spec",
  "num_batches_per_epoch",
)
