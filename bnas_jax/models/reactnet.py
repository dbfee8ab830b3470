"""A fixed binary MobileNetV1 with ReActNet blocks: the NAS-BNN template network.

Every block is the pair of sub-blocks NAS-BNN's supernet uses (NAS-BNN Sec. 3.1,
Fig. 2; ReActNet-A, Liu et al. 2020, Fig. 3):

  RSign -> binary kxk conv (groups g, stride s, width kept) -> BN
        -> + shortcut (2x2 avg-pool when s = 2) -> RPReLU
  RSign -> binary 1x1 conv (width changes) -> BN
        -> + channel-matching shortcut -> RPReLU

The stem (3x3/2 conv) has 8-bit LSQ weights, the classifier is full precision.
Deviation from ReActNet-A: ReActNet doubles the width with two 1x1 convs whose
outputs are concatenated; NAS-BNN's template (used here) uses one 1x1 conv and a
parameter-free repeat-and-truncate shortcut, which works for any width ratio.

`binary_weights=False` gives binary activations with real-valued (but
normalized) weights: step 1 of ReActNet's two-step training.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnas_jax import layers

Array = jax.Array

# (output width, stride, kernel, groups of the kxk conv) per block.
BlockSpec = tuple[int, int, int, int]

# ReActNet-A / MobileNetV1 layout (ReActNet Table 1, full 3x3 convs, no groups).
REACTNET_A: tuple[BlockSpec, ...] = (
  (64, 1, 3, 1),
  (128, 2, 3, 1),
  (128, 1, 3, 1),
  (256, 2, 3, 1),
  (256, 1, 3, 1),
  (512, 2, 3, 1),
  (512, 1, 3, 1),
  (512, 1, 3, 1),
  (512, 1, 3, 1),
  (512, 1, 3, 1),
  (512, 1, 3, 1),
  (1024, 2, 3, 1),
  (1024, 1, 3, 1),
)


class ReActBlock(nn.Module):
  """One NAS-BNN/ReActNet block (see module docstring)."""

  features: int
  strides: int = 1
  kernel_size: int = 3
  groups: int = 1
  binary_weights: bool = True
  kernel_norm: Optional[str] = "channelwise"
  input_quantizer: str = "approx_sign"

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    kernel_quantizer = "magnitude_aware_sign" if self.binary_weights else None
    # RSign is the conv's own input quantizer with a learnable threshold.
    conv = lambda name, **kw: layers.QuantConv(
      input_quantizer=self.input_quantizer,
      learnable_threshold=True,
      kernel_norm=self.kernel_norm,
      kernel_quantizer=kernel_quantizer,
      name=name,
      **kw,
    )
    width = x.shape[-1]
    y = conv(
      "conv_kxk",
      features=width,
      kernel_size=self.kernel_size,
      strides=self.strides,
      feature_group_count=self.groups,
      # NAS-BNN's grouped choices: one plain conv per group on XLA:CPU. Measured
      # 2026-12-02 (quiet, 2 cores, batch 64, digits subnets): a gradient step
      # of the biggest subnet 175 vs 228 ms, of the smallest 22 vs 96 ms.
      conv_form="auto",
    )(x)
    y = layers.batch_norm(train, name="bn_kxk")(y)
    shortcut = layers.avg_pool_2x2(x) if self.strides == 2 else x
    out1 = layers.RPReLU(name="rprelu_kxk")(y + shortcut)
    y = conv("conv_1x1", features=self.features, kernel_size=1)(out1)
    y = layers.batch_norm(train, name="bn_1x1")(y)
    return layers.RPReLU(name="rprelu_1x1")(y + layers.match_channels(out1, self.features))


class Stem(nn.Module):
  """3x3/2 conv with 8-bit LSQ weights -> BN -> RPReLU (NAS-BNN's stem block)."""

  features: int
  weight_bits: Optional[int] = 8

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    quantized = self.weight_bits is not None
    x = layers.QuantConv(
      self.features,
      kernel_size=3,
      strides=2,
      kernel_quantizer="lsq" if quantized else None,
      kernel_bits=self.weight_bits or 32,
      input_precision=self.weight_bits if quantized else None,
      name="conv",
    )(x)
    x = layers.batch_norm(train, name="bn")(x)
    return layers.RPReLU(name="rprelu")(x)


class ReActNet(nn.Module):
  """Binary MobileNetV1 with ReActNet blocks.

  Attributes:
    num_classes: classifier outputs.
    stem_features: stem width.
    blocks: per-block (width, stride, kernel, groups).
    binary_weights: False for ReActNet step 1 (binary activations, real weights).
    kernel_norm: weight normalization of the binary convs ("channelwise" =
      NAS-BNN Eq. 6, None = ReActNet's plain sign(w)*mean|w|).
    stem_weight_bits: 8 (LSQ) or None for a full-precision stem.
  """

  num_classes: int
  stem_features: int = 32
  blocks: Sequence[BlockSpec] = REACTNET_A
  binary_weights: bool = True
  kernel_norm: Optional[str] = "channelwise"
  stem_weight_bits: Optional[int] = 8

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = Stem(self.stem_features, self.stem_weight_bits, name="stem")(x, train)
    for i, (features, strides, kernel, groups) in enumerate(self.blocks):
      x = ReActBlock(
        features,
        strides,
        kernel,
        groups,
        binary_weights=self.binary_weights,
        kernel_norm=self.kernel_norm,
        name=f"block{i}",
      )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return layers.QuantDense(self.num_classes, name="classifier")(x)
