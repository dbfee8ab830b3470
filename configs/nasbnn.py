r"""NAS-BNN (Lin et al. 2024): binary one-shot supernet, evolutionary search, deployment.

COMMAND (cost summary of a Table 6 architecture; the training/search pipeline is
being built in the NAS-BNN issue and `bnas_jax.main` reports it as not available yet):
  python -m bnas_jax.summary --config=configs/nasbnn.py:imagenet --arch=A --json
  python -m bnas_jax.summary --config=configs/nasbnn.py:imagenet --space --json

Presets (`--config=configs/nasbnn.py:PRESET`):
  digits       (default) Table 1 with widths / 8 at 32x32 on the embedded digits data.
  imagenet     Table 1 at 224x224, ImageNet-1k, the paper's training settings.
  imagenet100  the ablation setting of Sec. 4.4 (ImageNet-100).
  cifar10      Table 1 with widths / 4 at 32x32 on CIFAR-10.
"""

import ml_collections

from bnas_jax.errors import UserInputError

PRESETS = ("digits", "imagenet", "imagenet100", "cifar10")


def get_config(arg=None):
  preset = arg or "digits"
  if preset not in PRESETS:
    raise UserInputError(
        f"Unknown preset {preset!r} for configs/nasbnn.py; known presets: {', '.join(PRESETS)} "
        "(use --config=configs/nasbnn.py:PRESET).")
  c = ml_collections.ConfigDict()
  c.trainer = "nasbnn"
  c.arch_resolver = "bnas_jax.models.nasbnn_subnet"
  c.seed = 0
  c.num_devices = 0

  # Table 1. width_divisor scales every width (structure, choice sets and ND
  # are kept); resolution must be a multiple of the total stride 32.
  c.space = ml_collections.ConfigDict(dict(width_divisor=8, resolution=32, nd_constraint=True))
  c.data = ml_collections.ConfigDict(dict(
      name="digits", image_size=32, data_dir=ml_collections.FieldReference(None, str),
      holdout_per_class=0, holdout_fraction=0.2, split_seed=0,
      class_subset=ml_collections.FieldReference(None, tuple),
      cache_dir=ml_collections.FieldReference(None, str)))
  # The standalone network of an architecture (see bnas_jax/models/nasbnn_subnet.py).
  c.model = ml_collections.ConfigDict(dict(
      name="reactnet", kernel_norm="channelwise", stem_weight_bits=8))

  if preset in ("imagenet", "imagenet100"):
    c.space.width_divisor = 1
    c.space.resolution = 224
    c.data.name = "imagenet2012" if preset == "imagenet" else "imagenet100"
    c.data.image_size = 224
    # 50 held-out training images per class for the search (Sec. 4.1.2 and
    # the public code's split_imagenet.py).
    c.data.holdout_per_class = 50
    c.data.holdout_fraction = 0.0
  elif preset == "cifar10":
    c.space.width_divisor = 4
    c.data.name = "cifar10"
  return c
