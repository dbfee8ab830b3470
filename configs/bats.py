r"""BATS (Bulat, Martinez, Tzimiropoulos, ECCV 2020): binary cell search with a temperature.

COMMAND (search + derive + train the derived network on the embedded digits data):
  python -m bnas_jax.main --config=configs/bats.py --workdir=/tmp/bats

Presets (`--config=configs/bats.py:PRESET`):
  digits    (default) small supernet / network at 16x16 on the embedded digits data.
  cifar10   search 25 epochs, final network 75 epochs (NAS-BNN Table 2's BATS counts).
  cifar100  the same on CIFAR-100.
  imagenet  final network with the DARTS ImageNet stem; pass the CIFAR genotype with
            --config.genotype_file=...

Only the BATS supplement is available here and no BATS search code was ever
released (seed_methods_reference.md Sec. 4), so most of this file is
RECONSTRUCTED and labelled:
  * ops: the `bnn` library's evaluation ops (grouped binary conv -> PReLU ->
    channel shuffle -> + identity; FactorizedReduce skip; pooling; zero), see
    bnas_jax/models/darts_ops.py; DARTS cell template without BNAS's
    inter-cell skips; no Zeroise in the derived cells (DARTS rule).
  * softmax(alpha / T) with T = 0.5 ([recalled] T < 1 gives more convolutions;
    the value is a guess).
  * search with binary activations and real weights ([recalled]).
  * no distillation from a real-valued teacher and no two-stage Real-to-Binary
    training of the final network (not implemented).
  * optimizers: Adam for the binary networks ([supp] only says the real-valued
    control used SGD 0.1 "with the following changes").
"""

import ml_collections

from bnas_jax import presets
from configs import bnas as bnas_config

PRESETS = ("digits", "cifar10", "cifar100", "imagenet")


def get_config(arg=None):
  preset = presets.select(arg, PRESETS, "configs/bats.py")
  c = bnas_config.base_config("bats")
  c.model.inter_cell_skip = False
  c.model.groups = 4  # divides the digits widths (8, 16, 32); the `bnn` default is 12
  c.search.temperature = 0.5  # RECONSTRUCTED
  c.search.binary_weights = False  # [recalled]: real weights, binary activations in search
  c.search.diversity_lambda = 0.0  # BNAS's regularizer is not part of BATS
  c.derive.keep_zeroise = False
  c.search.optimizer = ml_collections.ConfigDict(
    dict(
      name="adam",
      learning_rate=2e-3,
      schedule="cosine",
      weight_decay=0.0,
      grad_clip_norm=ml_collections.FieldReference(None, float),
    )
  )
  c.final.optimizer = ml_collections.ConfigDict(
    dict(
      name="adam",
      schedule="cosine",
      learning_rate=2e-3,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      grad_clip_norm=ml_collections.FieldReference(None, float),
    )
  )
  if preset in ("cifar10", "cifar100"):
    c.data.name = preset
    c.data.image_size = 32
    # RECONSTRUCTED: DARTS search sizes with C = 24 so that 12 groups divide it.
    c.model.groups = 12
    c.model.channels = 24
    c.model.num_cells = 8
    c.search.num_epochs = 25  # NAS-BNN Table 2
    c.search.arch_optimizer.learning_rate = 3e-4
    c.search.optimizer.learning_rate = 1e-3
    c.final.update(
      dict(num_cells=20, channels=36, num_epochs=75, batch_size=256, random_baseline=False)
    )
    c.final.optimizer.learning_rate = 1e-3
    c.eval_batch_size = 500
  elif preset == "imagenet":
    c.data = presets.data_config(name="imagenet2012", image_size=224, holdout_fraction=0.0)
    c.model.groups = 12
    c.final.update(
      dict(
        num_cells=14,
        channels=48,
        stem="imagenet",
        num_epochs=75,
        batch_size=256,
        label_smoothing=0.1,
        random_baseline=False,
      )
    )
    c.final.optimizer.learning_rate = 1e-3
    c.eval_batch_size = 500
  return c


FIELD_RULES = bnas_config.FIELD_RULES  # the DARTS-family fields (configs/bnas.py)
RELATIONS = bnas_config.RELATIONS
