r"""ReActNet-style binary MobileNetV1 on the NAS-BNN template, trained end to end.

COMMAND (embedded digits data, a few minutes on a 2-core CPU):
  python -m bnas_jax.main --config=configs/reactnet.py --workdir=/tmp/reactnet

Presets (`--config=configs/reactnet.py:PRESET`):
  cifar10   ReActNet-A layout at 0.5 width on CIFAR-10 (32x32, stem stride 2).
  imagenet  ReActNet-A at 224x224 with ReActNet's two-step recipe.
Any field can be overridden, e.g. `--config.num_epochs=2 --config.batch_size=64`.
"""

import math

import ml_collections

from bnas_jax import config_validation as cv
from bnas_jax import presets
from bnas_jax.models.reactnet import REACTNET_A

PRESETS = ("digits", "cifar10", "imagenet")

# A scaled copy of the ReActNet-A layout for 32x32 digits: same block order,
# stride pattern and sub-block structure, widths /8 and fewer 512-wide blocks.
DIGITS_BLOCKS = (
  (16, 1, 3, 1),
  (32, 2, 3, 1),
  (32, 1, 3, 1),
  (64, 2, 3, 1),
  (64, 1, 3, 1),
  (128, 2, 3, 1),
  (128, 1, 3, 1),
)


def get_config(arg=None):
  preset = presets.select(arg, PRESETS, "configs/reactnet.py")
  c = ml_collections.ConfigDict()
  c.trainer = "supervised"
  c.seed = 0
  c.num_devices = 0  # 0 = all visible devices

  c.data = presets.data_config()

  c.model = ml_collections.ConfigDict(
    dict(
      name="reactnet",
      blocks=DIGITS_BLOCKS,
      stem_features=16,
      width_multiplier=1.0,
      # NAS-BNN Eq. 6 channel-wise weight normalization before sign(w)*mean|w|;
      # None gives ReActNet's original weight binarizer.
      kernel_norm="channelwise",
      stem_weight_bits=8,
      binary_weights=True,
    )
  )

  c.num_epochs = 12
  c.num_train_steps = 0  # >0 overrides num_epochs
  c.batch_size = 64
  c.eval_batch_size = 128
  c.label_smoothing = 0.0
  c.optimizer = ml_collections.ConfigDict(
    dict(
      name="adam",
      learning_rate=2e-3,
      schedule="cosine",
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      grad_clip_norm=ml_collections.FieldReference(None, float),
    )
  )
  # ReActNet's two-step recipe: step 1 binary activations with real weights,
  # step 2 fully binary initialised from step 1 (ReActNet Sec. 4.1).
  c.two_step = False
  c.step1_weight_decay = 1e-5

  c.log_every_steps = 20
  c.checkpoint_every_steps = 0  # 0 = once per epoch
  c.keep_checkpoints = 3
  c.eval_every_epochs = 0
  c.max_eval_examples = 0  # 0 = the whole split
  c.progress_bar = True

  if preset == "cifar10":
    c.data.name = "cifar10"
    c.model.blocks = REACTNET_A
    c.model.stem_features = 32
    c.model.width_multiplier = 0.5
    c.num_epochs = 256
    c.batch_size = 256
    c.optimizer.learning_rate = 5e-4
    c.optimizer.schedule = "linear"
    c.two_step = True
  elif preset == "imagenet":
    # ReActNet-A recipe (ReActNet Sec. 4.1 and its public run scripts): Adam,
    # linear decay to 0, batch 256, lr 5e-4 for 256 epochs per step, weight
    # decay 1e-5 in step 1 and 0 in step 2. ReActNet distils from a ResNet-34
    # teacher; this preset trains with labels (label smoothing 0.1) instead.
    c.data.name = "imagenet2012"
    c.data.image_size = 224
    c.model.blocks = REACTNET_A
    c.model.stem_features = 32
    c.model.kernel_norm = None
    c.num_epochs = 256
    c.batch_size = 256
    c.eval_batch_size = 250
    c.label_smoothing = 0.1
    c.optimizer.learning_rate = 5e-4
    c.optimizer.schedule = "linear"
    c.two_step = True
    c.step1_weight_decay = 1e-5
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000
  return c


# Valid values of the fields only this config has; shared fields (learning
# rates, batch sizes, data, checkpointing, ...) are ruled by name in
# bnas_jax/config_validation.py. Checked by bnas_jax.main before any compute.
FIELD_RULES = {
  "model.name": cv.one_of("reactnet"),
  "model.blocks": cv.sequence_of(
    cv.record(cv.WIDTH, cv.STRIDE, cv.KERNEL, cv.COUNT),
    min_len=1,
    meaning="(width, stride, kernel, groups) per block",
  ),
}
RELATIONS = (
  # The stem has stride 2.
  cv.min_map_size(
    "data.image_size",
    ("model.blocks",),
    lambda c: 2 * math.prod(b[1] for b in c.model.blocks),
    "the network",
  ),
  cv.some_training("num_epochs", "num_train_steps"),
)
