"""The candidate operations of the DARTS-family binary cell spaces (BNAS, BATS) as modules.

The spaces themselves (op names, Zeroise, learnable ops) are data in
`search_spaces/darts.py`; here is one function that builds an op (`make_op`)
and one that builds a cell-input preprocessing layer (`make_preprocess`). The supernet
(`models/darts_cells.py`) and the derived network use the same builders, with
`search=True` giving the search-time variant (BN without affine parameters, as
DARTS and BNAS do; BN after pooling in the supernet).

BNAS (Kim, Singh, Choi, ECCV 2020, Sec. 4.1, Table 3; public code
`src/operations.py`, see seed_methods_reference.md Sec. 3.1):
  * bin_conv_{3x3,5x5}, bin_dil_conv_{3x3,5x5}: BN -> sign -> conv (XNOR
    weights sign(W) * mean|W| per filter, Eq. 1 without the activation scale K,
    which the reference code discards) -> ReLU. Dilation 2.
  * max_pool_3x3, avg_pool_3x3 (avg without padded zeros), none = Zeroise.
  * No separable convs (Sec. 4.1.2) and no skip op (identity paths come from
    the inter-cell skip of the cell template, Fig. 5b).
  * Preprocessing: real BN -> 1x1 conv -> ReLU in the supernet (3x3 stride 2
    after a reduction cell), the binary op of the same shape in the final net.

BATS (Bulat, Martinez, Tzimiropoulos, ECCV 2020; supplement Fig. 2 and the
first author's `bnn` library, seed_methods_reference.md Sec. 4.2):
  * group_conv_{3x3,5x5}, dil_group_conv_{3x3,5x5}: BN -> sign -> grouped
    binary conv -> per-channel PReLU -> channel shuffle(4) -> + identity when
    stride 1. RECONSTRUCTED: no BATS search code exists; op structure from the
    `bnn` evaluation network.
  * skip_connect: identity, or FactorizedReduce (BN -> two binary 1x1 stride-2
    convs, the second on the input shifted by one pixel -> concat -> PReLU).
  * max_pool_3x3, avg_pool_3x3 (no BN in the final net), none.
  * Preprocessing: BN -> binary 1x1 conv -> PReLU (+ x when shapes match).
"""

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnas_jax import layers
from bnas_jax.errors import UserInputError
from bnas_jax.search_spaces.darts import CellSpace
from bnas_jax.search_spaces.darts import ZEROISE

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class OpOptions:
  """Per-run choices the ops take (hashable: a static module attribute).

  Attributes:
    binary_weights: XNOR-binarized weights (True) or real weights with binary
      activations (BATS searches that way, [recalled] in the reference notes).
    groups: BATS grouped-conv group count (the `bnn` library default is 12).
    shuffle_groups: BATS channel shuffle groups (4 in the `bnn` library).
  """

  binary_weights: bool = True
  groups: int = 12
  shuffle_groups: int = 4


def batch_norm(train: bool, affine: bool, name: Optional[str] = None) -> nn.BatchNorm:
  """PyTorch-default BN; `affine=False` drops scale and bias (DARTS/BNAS search)."""
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    use_scale=affine,
    use_bias=affine,
    name=name,
  )


def binary_conv(
  features: int,
  kernel_size: int,
  strides: int = 1,
  dilation: int = 1,
  groups: int = 1,
  *,
  binary_weights: bool = True,
  name: str,
) -> nn.Module:
  """The ops' binary conv: sign(x) input, XNOR weights sign(W) * mean|W| per filter.

  XNOR-Net / BNAS Eq. 1 without K (`quantizers.xnor_weight`), zero padding
  `dilation * (k - 1) // 2` (PyTorch's), float32 accumulation; with
  `binary_weights=False` the kernel stays real (binary activations only).
  Grouped (BATS) convs run as one plain conv per group on XLA:CPU
  (`conv_form="auto"`), whose grouped-conv weight gradients are many times
  slower.
  """
  return layers.QuantConv(
    features,
    kernel_size,
    strides,
    feature_group_count=groups,
    kernel_dilation=dilation,
    input_quantizer="ste_sign",
    kernel_quantizer="xnor_weight" if binary_weights else None,
    conv_form="auto",
    name=name,
  )


class PReLU(nn.Module):
  """Per-channel PReLU (PyTorch `PReLU(C)`, slope 0.25), used by the BATS ops."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    slope = self.param("slope", nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, slope * x)


def channel_shuffle(x: Array, groups: int) -> Array:
  """ShuffleNet channel shuffle on NHWC (PyTorch view(b, g, c/g).transpose(1, 2))."""
  n, h, w, c = x.shape
  if c % groups:
    return x
  return x.reshape(n, h, w, groups, c // groups).swapaxes(-1, -2).reshape(n, h, w, c)


class Zeroise(nn.Module):
  """The `none` op: zeros, spatially subsampled when the edge has stride 2."""

  strides: int = 1

  def __call__(self, x: Array, train: bool = False) -> Array:
    del train
    return jnp.zeros_like(x[:, :: self.strides, :: self.strides, :])


class Identity(nn.Module):
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train
    return x


class Pool(nn.Module):
  """3x3 max / avg pooling (padding 1; avg excludes padded zeros), optional BN after."""

  kind: str
  strides: int = 1
  bn_after: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    pad = ((1, 1), (1, 1))
    s = (self.strides, self.strides)
    if self.kind == "max":
      y = nn.max_pool(x, (3, 3), strides=s, padding=pad)
    else:
      y = nn.avg_pool(x, (3, 3), strides=s, padding=pad, count_include_pad=False)
    if self.bn_after:  # DARTS/BNAS supernet: BN(affine=False) after pooling
      y = batch_norm(train, affine=False, name="bn")(y)
    return y


class BnasConv(nn.Module):
  """BNAS binary conv op: BN -> sign -> XNOR conv -> ReLU (seed notes Sec. 2.5, 3.1)."""

  features: int
  kernel_size: int
  strides: int = 1
  dilation: int = 1
  affine: bool = True
  binary_weights: bool = True

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = batch_norm(train, self.affine, name="bn")(x)
    y = binary_conv(
      self.features,
      self.kernel_size,
      self.strides,
      self.dilation,
      binary_weights=self.binary_weights,
      name="conv",
    )(x)
    return nn.relu(y)


class RealConvBnRelu(nn.Module):
  """BNAS's real `ReLUConvBN` (order BN -> conv -> ReLU in its code): stem, search preprocess."""

  features: int
  kernel_size: int = 1
  strides: int = 1
  affine: bool = True

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = batch_norm(train, self.affine, name="bn")(x)
    y = layers.QuantConv(self.features, self.kernel_size, self.strides, name="conv")(x)
    return nn.relu(y)


class BatsConv(nn.Module):
  """BATS conv op: BN -> sign -> grouped conv -> PReLU -> shuffle -> + x (stride 1)."""

  features: int
  kernel_size: int
  strides: int = 1
  dilation: int = 1
  groups: int = 12
  shuffle_groups: int = 4
  affine: bool = True
  binary_weights: bool = True

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    y = batch_norm(train, self.affine, name="bn")(x)
    y = binary_conv(
      self.features,
      self.kernel_size,
      self.strides,
      self.dilation,
      self.groups,
      binary_weights=self.binary_weights,
      name="conv",
    )(y)
    y = channel_shuffle(PReLU(name="prelu")(y), self.shuffle_groups)
    if self.strides == 1 and x.shape[-1] == self.features:
      y = y + x  # the `bnn` library's unconditional identity (`skip or True`)
    return y


class FactorizedReduce(nn.Module):
  """BN -> two binary 1x1 stride-2 convs (second on x shifted by a pixel) -> concat -> PReLU."""

  features: int
  affine: bool = True
  binary_weights: bool = True

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if self.features % 2:
      raise UserInputError(f"FactorizedReduce needs an even width, got {self.features}.")
    x = batch_norm(train, self.affine, name="bn")(x)
    half = self.features // 2
    a = binary_conv(half, 1, 2, binary_weights=self.binary_weights, name="conv_a")(x)
    shifted = jnp.pad(x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
    b = binary_conv(half, 1, 2, binary_weights=self.binary_weights, name="conv_b")(shifted)
    return PReLU(name="prelu")(jnp.concatenate([a, b], axis=-1))


class BatsPreprocess(nn.Module):
  """BATS `ReLUConvBN`: BN -> binary 1x1 conv -> PReLU, + x when shapes match."""

  features: int
  affine: bool = True
  binary_weights: bool = True

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    y = batch_norm(train, self.affine, name="bn")(x)
    y = binary_conv(self.features, 1, binary_weights=self.binary_weights, name="conv")(y)
    y = PReLU(name="prelu")(y)
    return y + x if x.shape[-1] == self.features else y


_KERNELS = {"3x3": 3, "5x5": 5}


def make_op(
  space: CellSpace,
  op: str,
  channels: int,
  strides: int,
  *,
  search: bool,
  options: OpOptions = OpOptions(),
  name: Optional[str] = None,
) -> nn.Module:
  """The module of candidate `op` on an edge with `channels` in and out."""
  affine = not search
  if op == ZEROISE:
    return Zeroise(strides, name=name)
  if op in ("max_pool_3x3", "avg_pool_3x3"):
    # BNAS's supernet (as DARTS) puts BN(affine=False) after pooling; the
    # `bnn` BATS ops have plain pooling.
    return Pool(op[:3], strides, bn_after=search and space.name == "bnas", name=name)
  kernel = _KERNELS.get(op[-3:])
  if space.name == "bnas" and op.startswith("bin_"):
    return BnasConv(
      channels,
      kernel,
      strides,
      2 if "_dil_" in op else 1,
      affine,
      options.binary_weights,
      name=name,
    )
  if space.name == "bats":
    if op == "skip_connect":
      if strides == 1:
        return Identity(name=name)
      return FactorizedReduce(channels, affine, options.binary_weights, name=name)
    if op.endswith(("group_conv_3x3", "group_conv_5x5")):
      return BatsConv(
        channels,
        kernel,
        strides,
        2 if op.startswith("dil_") else 1,
        options.groups,
        options.shuffle_groups,
        affine,
        options.binary_weights,
        name=name,
      )
  raise UserInputError(f"Op {op!r} is not in the {space.name} space ({', '.join(space.ops)}).")


def make_preprocess(
  space: CellSpace,
  channels: int,
  *,
  reduce_input: bool,
  search: bool,
  options: OpOptions = OpOptions(),
  name: Optional[str] = None,
) -> nn.Module:
  """The layer that maps a cell input to `channels` (stride 2 if `reduce_input`).

  BNAS: real BN-conv-ReLU in the supernet (its code keeps 'preprocess' real
  during search), the binary op in the final network; 3x3 stride 2 when the
  input comes from before a reduction cell, else 1x1. BATS: FactorizedReduce
  or its 1x1 preprocess.
  """
  if space.name == "bnas":
    k, s = (3, 2) if reduce_input else (1, 1)
    if search:
      return RealConvBnRelu(channels, k, s, affine=False, name=name)
    return BnasConv(channels, k, s, affine=True, binary_weights=options.binary_weights, name=name)
  if reduce_input:
    return FactorizedReduce(channels, not search, options.binary_weights, name=name)
  return BatsPreprocess(channels, not search, options.binary_weights, name=name)
