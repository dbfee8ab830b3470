r"""Bimodal parameter perturbation (Ahn et al., WACV 2023): BNAS cell and binary MBConv spaces.

COMMAND (search with noise on alpha and weights + derive + train on the embedded digits data):
  python -m bnas_jax.main --config=configs/bimodal.py --workdir=/tmp/bimodal

Presets (`--config=configs/bimodal.py:PRESET`):
  digits    (default) the BNAS digits setting of configs/bnas.py with epsilon_A = 0.2,
            epsilon_W = 0.25 (the supplement's operating point, Figs. 3-5).
  cifar100  the BNAS search of Sec. 5.1 on CIFAR-100 and the supplement's BNAS-A
            model (20 cells, 32 channels; Table 3: mini = (10, 24), C_m = (16, 48)).
Noise on/off: --config.search.noise.arch_scale=0 / --config.search.noise.weight_scale=0.

Only the supplement is available, so the form of the noise is RECONSTRUCTED
(seed_methods_reference.md Sec. 6): uniform U(-eps, eps) (SDARTS-RS, which the
supplement cites) added to alpha before the softmax (absolute scale) and to the
latent conv kernels (scale relative to each kernel's mean |w|: absolute 0.25 would
swamp weights initialised at ~1/sqrt(fan_in)), in the forward pass of the weight
step only; the gradient at the perturbed point updates the clean parameters.
Every one of these is a switch in config.search.noise (distribution,
*_relative, arch_placement "alpha"/"softmax", steps ("weights", "arch")).

Binary MBConv space (supp. Sec. 1, 4, 5; `search_spaces/mbconv.py`,
`models/binary_mbconv.py`), same noise:
  python -m bnas_jax.main --config=configs/bimodal.py:mbconv --workdir=/tmp/bimodal_mbconv
  mbconv           digits at 16x16: stem 8, three one-layer stages, search per layer over
                   kernel {3, 5} x expansion {1, 3, 6} and per stage over two widths, then
                   derive the choice list (WORKDIR/genotype.json) and train it.
                   Train a given choice list without searching:
                   --config.genotype_file='c16[MB3(6)] c24[MB5(3)] c32[MB3(1)]' (or a JSON file).
                   A random choice list at the same OPs is trained too (final.random_baseline).
  mbconv_cifar100  CIFAR-100 at 32x32, 12 layers in 4 stages; paper-scale search and
                   training budgets (see `_mbconv_cifar100`).
  The reduction-block shortcut filler: --config.model.shortcut=partially_duplicate (paper's
  choice) | zero | global_average.
RECONSTRUCTED for MBConv (the supplement gives no layout, no candidate lists besides
k in {3, 5}, no hyper-parameters): the stage layouts and width candidates, expansion
ratios {1, 3, 6}, per-stage (not per-layer) width search with FBNetV2-style soft channel
masks, ReActNet's per-conv order (RSign -> binary conv -> BN -> RPReLU, shortcut added
before the project conv's RPReLU), real stem (3x3 conv) and classifier only, and all
optimizer settings. Equivalent OPs = FLOPs + BOPs / 64 (supp. Table 3).
"""

import math

import ml_collections

from bnas_jax import config_validation as cv
from bnas_jax import presets
from bnas_jax.search_spaces import mbconv
from configs import bnas as bnas_config

PRESETS = ("digits", "cifar100", "mbconv", "mbconv_cifar100")


def _mbconv_digits(c: ml_collections.ConfigDict) -> None:
  """The tiny MBConv run on digits (minutes on 2 CPU cores); RECONSTRUCTED sizes."""
  c.space = mbconv.NAME
  c.model = ml_collections.ConfigDict(
    dict(
      stem_width=8,
      stem_stride=1,
      # (repeats, stride, candidate widths) per stage; 16x16 -> 16, 8, 4.
      stages=((1, 1, (8, 16)), (1, 2, (16, 24)), (1, 2, (24, 32))),
      kernel_sizes=(3, 5),
      expansions=(1, 3, 6),
      groups=2,  # supp. Fig. 6: g = 2
      shortcut="partially_duplicate",  # supp. Sec. 1, Table 1 winner
      binary_weights=True,  # final network; search uses search.binary_weights
      kernel_norm=ml_collections.FieldReference(None, str),
    )
  )  # None = ReActNet sign*mean|W|
  # The final network is the choice list on config.model's space: no cells/channels.
  for name in ("num_cells", "channels", "stem"):
    del c.final[name]
  # No Zeroise in this space, so no diversity regularizer on pooling-vs-conv collapse.
  c.search.diversity_lambda = 0.0
  # ReActNet's optimizer for binary weights (Adam, no weight decay; configs/reactnet.py's
  # digits values), in search and final training: with the cell presets' SGD 0.1 the
  # digits supernet stayed at chance held-out accuracy over 6 epochs. RECONSTRUCTED.
  adam = dict(name="adam", schedule="cosine", learning_rate=2e-3, weight_decay=0.0)
  c.search.optimizer.update(adam)
  c.final.optimizer.update(adam)
  c.final.num_epochs = 10


def _mbconv_cifar100(c: ml_collections.ConfigDict) -> None:
  """Paper-scale MBConv search + training on CIFAR-100; everything RECONSTRUCTED.

  Layout: a MobileNetV2-for-CIFAR-like stack (real stem 48 at 32x32, stride 1;
  12 layers; resolutions 32, 16, 8, 4) whose middle choice (middle widths,
  MB3(3) everywhere) costs 0.643 GBOPs, 1.33 MFLOPs, 11.4 M equivalent OPs,
  0.92 MB on CIFAR-10 (`bnas_jax.models.binary_mbconv.cost_summary`), close to
  MBConv-A (supp. Table 3: 0.567 GBOPs, 1.36 MFLOPs, 10.58 M, 1.94 MB); the
  space spans 0.07-8.1 GBOPs, which covers MBConv-A..D. The stem width 48 is
  what makes the stem alone cost the ~1.3 MFLOPs of Table 3 (27 * 1024 * 48).
  Table 3's FLOPs grow from A to D (1.36 -> 1.83 M), so the paper's networks
  have more real-valued ops than a stem and a classifier (Fig. 6's dotted
  boxes, which our copy lacks): not reproduced.

  Search: DARTS's CIFAR schedule as for the BNAS space (50 epochs, batch 64,
  halves of the training split, alpha Adam 3e-4) with Adam 1e-3 cosine for
  the binary weights (as the digits preset). Final training: the ReActNet
  CIFAR recipe of configs/reactnet.py:cifar10 (Adam 5e-4, linear decay,
  batch 256, 256 epochs, no weight decay), in one step.
  """
  _mbconv_digits(c)
  c.data.name = "cifar100"
  bnas_config.apply_paper_search(c)
  c.search.diversity_lambda = 0.0
  c.search.optimizer.update(dict(learning_rate=1e-3, weight_decay=0.0))
  c.model.update(
    dict(
      stem_width=48,
      stem_stride=1,
      stages=(
        (2, 1, (48, 56, 64)),
        (3, 2, (64, 80, 96)),
        (4, 2, (96, 112, 128)),
        (3, 2, (128, 160, 192)),
      ),
    )
  )
  c.final.update(dict(num_epochs=256, batch_size=256, random_baseline=False))
  c.final.optimizer.update(dict(learning_rate=5e-4, schedule="linear"))
  c.eval_batch_size = 500
  c.log_every_steps = 50


def get_config(arg=None):
  preset = presets.select(arg, PRESETS, "configs/bimodal.py")
  c = bnas_config.base_config("bnas")
  c.search.noise.update(
    dict(
      arch_scale=0.2,
      weight_scale=0.25,
      distribution="uniform",
      arch_relative=False,
      weight_relative=True,
      arch_placement="alpha",
      steps=("weights",),
    )
  )
  if preset == "cifar100":
    c.data.name = "cifar100"
    bnas_config.apply_paper_search(c)
    c.final.update(
      dict(
        num_cells=20,
        channels=32,
        num_epochs=600,
        batch_size=256,
        drop_path_prob=0.2,
        random_baseline=False,
      )
    )
    c.final.optimizer.update(dict(learning_rate=0.05, weight_decay=3e-6))
    c.eval_batch_size = 500
    c.log_every_steps = 50
  elif preset == "mbconv":
    _mbconv_digits(c)
  elif preset == "mbconv_cifar100":
    _mbconv_cifar100(c)
  return c


# The DARTS-family fields (configs/bnas.py) and the MBConv space's (the mbconv presets).
FIELD_RULES = {
  **bnas_config.FIELD_RULES,
  "model.stem_stride": cv.STRIDE,
  "model.stages": cv.sequence_of(
    cv.record(cv.number(1, 64, integer=True), cv.STRIDE, cv.sequence_of(cv.WIDTH, min_len=1)),
    min_len=1,
    meaning="(repeats, stride, candidate widths) per stage",
  ),
  "model.kernel_sizes": cv.sequence_of(cv.KERNEL, min_len=1),
  "model.expansions": cv.sequence_of(cv.number(1, 16, integer=True), min_len=1),
  "model.shortcut": cv.text(),
}


def _mbconv_stride(c) -> int:
  return c.model.stem_stride * math.prod(stage[1] for stage in c.model.stages)


RELATIONS = bnas_config.RELATIONS + (
  cv.min_map_size(
    "data.image_size",
    ("model.stem_stride", "model.stages"),
    lambda c: _mbconv_stride(c) if "stages" in c.model else 1,
    "the MBConv network",
  ),
)
