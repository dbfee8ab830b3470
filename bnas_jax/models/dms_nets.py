"""DMS networks: binary VGG-11 and ResNet-18 (CIFAR widths) with any per-layer widths.

The two backbones of DMS (Li et al., ICLR 2020 NAS workshop, Sec. 3.1) with CIFAR
widths, 1/4 of ImageNet's (16 ... 128 base channels). Only channel counts change;
kernel sizes, strides and depth are the originals.

* First and last layers are full precision (App. B.2.3).
* Every other convolution is binary: Weight Standardization, then XNOR's
  sign(w) * E|w| per output filter (Eq. 1, App. B.2.3), on an input quantized by the
  unsigned 1-bit activation quantizer alpha * round(clip(x / alpha, 0, 1)) in {0, alpha}
  with a learnable alpha per layer (Eq. 2, LSQ gradient). The quantizer sits
  immediately before its convolution(s) (`UnsignedActivation`), and the conv is a
  `layers.QuantConv` told its input is 1-bit (`input_precision=1`), so the cost model
  counts the MACs as BOPs and the kernel as 1-bit parameters (Table 1: binary weights
  1 bit, everything else 32 bits).
* Full-precision baselines (`binary=False`) use ReLU where the BNN quantizes.

Widths are one tuple per network ("slots", see `dms_widths.slot_names`), so any width vector
builds: the uniform baselines are the base widths times 1-4 (Table 1), a searched
network is round(mu * base). VGG-11 has one slot per conv. ResNet-18 (App. A.3) has
one slot per residual block for its inner width (conv1's output), one per stage for
the residual stream width (the stem for stage 1; for stages 2-4 the output "r2" of the
block with the downsample shortcut, shared by the stage's identity block so skips stay
intact). The stem slot is not named in App. A.3; it is searched here so that the
uniform baselines are points of the same width vector.

During the search the same modules run at buffer widths (at least the largest
candidate of each slot) with `channel_masks` (one (width,) mask per slot,
`search/dms.channel_mask`) applied to every BN output of the slot: the mixture of the
three nested candidates (Eq. 6, 11), channels beyond the largest candidate masked to 0.
The mask follows BN because a per-channel scale before batch normalization is
normalized away (mu would get no signal from the loss). As in Eq. 6, where every
candidate of a layer convolves the same (padded) input, a binary conv's Weight
Standardization and E|w| are taken over all its input channels, including those a
narrower candidate of the previous layer leaves at 0.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bnas_jax import cost_model
from bnas_jax import layers
from bnas_jax import quantizers
from bnas_jax.errors import UserInputError
from bnas_jax.search_spaces import dms_widths

Array = jax.Array

# The width slots and base widths are the space's (`search_spaces/dms_widths.py`); the
# layouts below are the networks': VGG-11 pools 2x2 after convs 1, 2, 4, 6 and 8, and
# ResNet-18's four stages of 2 BasicBlocks run at strides 1, 2, 2, 2.
VGG11_POOL_AFTER = (0, 1, 3, 5, 7)
RESNET18_STRIDES = (1, 2, 2, 2)


class UnsignedActivation(nn.Module):
  """DMS Eq. 2: alpha * round(clip(x / alpha, 0, 1)) in {0, alpha}, alpha learnable.

  alpha is one scalar per layer; its gradient is LSQ's, scaled by 1/sqrt(features)
  (Esser et al.'s g with Q_p = 1).
  """

  alpha_init: float = 1.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    alpha = self.param("alpha", nn.initializers.constant(self.alpha_init), (), jnp.float32)
    features = int(np.prod(x.shape[1:]))
    return quantizers.unsigned_activation_quantizer(x, alpha, grad_scale=features**-0.5)


def _conv(
  features: int, kernel: int, stride: int, binary: bool, binary_weights: bool, name: str
) -> layers.QuantConv:
  """A 3x3/1x1 conv; binary ones take an already quantized 1-bit input."""
  if not binary:
    return layers.QuantConv(features, kernel, stride, name=name)
  return layers.QuantConv(
    features,
    kernel,
    stride,
    input_precision=1,
    kernel_norm="standardize",
    kernel_quantizer="xnor_weight" if binary_weights else None,
    name=name,
  )


def _masked(x: Array, masks: Optional[Sequence[Array]], slot: int) -> Array:
  return x if masks is None else x * masks[slot].astype(x.dtype)


class DMSVGG11(nn.Module):
  """VGG-11 for 32x32 inputs with one width per conv (DMS Sec. 3.1, Fig. 4b).

  Attributes:
    widths: output channels of the 8 convs.
    num_classes: classifier outputs.
    binary: False gives the full-precision network (ReLU activations).
    binary_weights: with `binary`, False keeps real-valued weights behind the
      binary activations (two-step training's first step).
  """

  widths: tuple[int, ...]
  num_classes: int = 10
  binary: bool = True
  binary_weights: bool = True

  @nn.compact
  def __call__(
    self, x: Array, train: bool = True, channel_masks: Optional[Sequence[Array]] = None
  ) -> Array:
    dms_widths.check_widths("dms_vgg11", self.widths)
    for i, width in enumerate(self.widths):
      binary = self.binary and i > 0
      if binary:
        x = UnsignedActivation(name=f"act{i + 1}")(x)
      elif i > 0:
        x = nn.relu(x)
      x = _conv(width, 3, 1, binary, self.binary_weights, f"conv{i + 1}")(x)
      x = layers.batch_norm(train, name=f"bn{i + 1}")(x)
      x = _masked(x, channel_masks, i)
      if i in VGG11_POOL_AFTER:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(nn.relu(x), axis=(1, 2))
    return layers.QuantDense(self.num_classes, name="classifier")(x)


class BasicBlock(nn.Module):
  """ResNet BasicBlock; the BNN quantizes once and feeds conv1 and the shortcut conv.

  Attributes:
    mid_width, out_width: conv1's and conv2's output channels.
    stride: conv1's stride (and the shortcut's).
    mid_slot, out_slot: width slots (for the search masks).
    binary, binary_weights: as `DMSVGG11`.
  """

  mid_width: int
  out_width: int
  stride: int
  mid_slot: int
  out_slot: int
  binary: bool = True
  binary_weights: bool = True

  @nn.compact
  def __call__(self, x: Array, train: bool, channel_masks=None) -> Array:
    conv = functools.partial(_conv, binary=self.binary, binary_weights=self.binary_weights)
    a = UnsignedActivation(name="act1")(x) if self.binary else x
    h = conv(self.mid_width, 3, self.stride, name="conv1")(a)
    h = _masked(layers.batch_norm(train, name="bn1")(h), channel_masks, self.mid_slot)
    h = UnsignedActivation(name="act2")(h) if self.binary else nn.relu(h)
    h = conv(self.out_width, 3, 1, name="conv2")(h)
    h = _masked(layers.batch_norm(train, name="bn2")(h), channel_masks, self.out_slot)
    if self.stride != 1 or x.shape[-1] != self.out_width:
      shortcut = conv(self.out_width, 1, self.stride, name="conv_shortcut")(a)
      shortcut = _masked(
        layers.batch_norm(train, name="bn_shortcut")(shortcut), channel_masks, self.out_slot
      )
    else:
      shortcut = x
    return nn.relu(h + shortcut)


class DMSResNet18(nn.Module):
  """ResNet-18 (CIFAR form) with per-block and per-stage widths (DMS App. A.3, Fig. 2).

  Attributes:
    widths: 12 widths in `dms_widths.RESNET18_SLOT_NAMES` order: stem (stage-1 residual
      width), then per block its inner width and, for the first block of stages
      2-4, the stage's residual width ("r2").
    num_classes, binary, binary_weights: as `DMSVGG11`.
  """

  widths: tuple[int, ...]
  num_classes: int = 10
  binary: bool = True
  binary_weights: bool = True

  @nn.compact
  def __call__(
    self, x: Array, train: bool = True, channel_masks: Optional[Sequence[Array]] = None
  ) -> Array:
    dms_widths.check_widths("dms_resnet18", self.widths)
    x = _conv(self.widths[0], 3, 1, False, False, "conv_stem")(x)
    x = nn.relu(_masked(layers.batch_norm(train, name="bn_stem")(x), channel_masks, 0))
    residual_slot, slot = 0, 1
    for s, stride in enumerate(RESNET18_STRIDES):
      for b in range(2):
        mid_slot = slot
        slot += 1
        if b == 0 and s > 0:
          residual_slot = slot
          slot += 1
        x = BasicBlock(
          self.widths[mid_slot],
          self.widths[residual_slot],
          stride if b == 0 else 1,
          mid_slot,
          residual_slot,
          self.binary,
          self.binary_weights,
          name=f"layer{s + 1}_{b}",
        )(x, train, channel_masks)
    x = jnp.mean(x, axis=(1, 2))
    return layers.QuantDense(self.num_classes, name="classifier")(x)


def make_net(
  family: str,
  widths: Sequence[int],
  num_classes: int,
  *,
  binary: bool = True,
  binary_weights: bool = True,
) -> nn.Module:
  """The `family` network at `widths` (validated)."""
  if family not in dms_widths.FAMILIES:
    raise UserInputError(f"DMS model family {family!r} is not one of {dms_widths.FAMILIES}.")
  widths = tuple(int(w) if int(w) == w else w for w in widths)
  dms_widths.check_widths(family, widths)
  cls = DMSVGG11 if family == "dms_vgg11" else DMSResNet18
  return cls(widths=widths, num_classes=num_classes, binary=binary, binary_weights=binary_weights)


def build(model_config: Any, num_classes: int, *, binary_weights: bool = True) -> nn.Module:
  """`models.build_model` for `model.name` in `dms_widths.FAMILIES`: fields `widths`, `binary`."""
  return make_net(
    model_config.name,
    tuple(model_config.widths),
    num_classes,
    binary=model_config.get("binary", True),
    binary_weights=binary_weights and model_config.get("binary_weights", True),
  )


@functools.lru_cache(maxsize=None)
def _size_bytes_by_layer(
  family: str,
  widths: tuple[int, ...],
  num_classes: int,
  image_shape: tuple[int, int, int],
  binary: bool,
) -> dict[str, float]:
  model = make_net(family, widths, num_classes, binary=binary)
  report = cost_model.count_costs(model, (1, *image_shape), train=False)
  return {l.name: sum(b * n for b, n in l.params.items()) / 8 for l in report.layers}


@functools.lru_cache(maxsize=None)
def size_polynomial(
  family: str,
  num_classes: int,
  image_shape: tuple[int, int, int] = (32, 32, 3),
  binary: bool = True,
) -> dict[str, np.ndarray]:
  """Model size in bytes as a polynomial of the width vector, read off the cost model.

  Every parameter tensor's size is a product of at most two widths, so the size is
  const + sum_j a_j w_j + sum_{j<k} b_jk w_j w_k. The coefficients are probed with
  `cost_model.count_costs` itself, layer by layer, at widths in {2, 3}: all 2; each slot
  raised to 3 alone (which slots a layer depends on); all raised to 3 (a two-slot layer's
  bilinear term). Each layer's size is multilinear in its at most two slots, so these
  values fix its coefficients exactly: n + 2 counts for n slots. The result equals
  `count_costs(...).model_size_bytes` at every width vector (tested).

  Returns:
    {"const": float, "linear": (n,), "pairwise": (n, n) strictly upper triangular}.
  """
  n = len(dms_widths.base_widths(family))
  size = functools.partial(
    _size_bytes_by_layer, family, num_classes=num_classes, image_shape=image_shape, binary=binary
  )
  at_base = size((2,) * n)
  single = [size(tuple(3 if i == j else 2 for i in range(n))) for j in range(n)]
  all_raised = size((3,) * n)
  const, linear, pairwise = 0.0, np.zeros(n), np.zeros((n, n))
  for name, f0 in at_base.items():
    deps = [j for j in range(n) if single[j][name] != f0]
    if len(deps) > 2:
      raise ValueError(f"Layer {name} depends on slots {deps}; sizes are at most bilinear.")
    if not deps:
      const += f0
    elif len(deps) == 1:
      (j,) = deps
      slope = single[j][name] - f0
      linear[j] += slope
      const += f0 - 2 * slope
    else:
      j, k = deps
      fj, fk, fjk = single[j][name], single[k][name], all_raised[name]
      # f = c + a_j w_j + a_k w_k + b w_j w_k, probed at w in {2, 3}^2.
      b = fjk - fj - fk + f0
      a_j = fj - f0 - 2 * b
      a_k = fk - f0 - 2 * b
      pairwise[min(j, k), max(j, k)] += b
      linear[j] += a_j
      linear[k] += a_k
      const += f0 - 2 * a_j - 2 * a_k - 4 * b
  return {"const": const, "linear": linear, "pairwise": pairwise}
