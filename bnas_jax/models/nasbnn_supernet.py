"""The NAS-BNN binary supernet: every architecture of the space in one program.

NAS-BNN (Lin et al. 2024) Sec. 3.2-3.3. Every tensor is allocated at its
largest size; an architecture arrives as traced int32 arrays
(`search_spaces.nasbnn.encode`), so every subnet runs through the same compiled
program and sampling never recompiles. Its semantics are those of the public
reference's slicing supernet (reference notes Sec. 2-4):

* width: the leading `c` channels are active; the others are held at exactly
  zero after every op that could leak into them (sign(0) = +1, BN's beta,
  RPReLU's biases).
* kernel: a 3x3 choice in a {3, 5} layer is the centre crop of the 5x5 weight
  times a learnable 9x9 matrix (OFA); a kernel equal to the layer's largest
  gets the Bi-Transformation (Eq. 5) in binary-weight mode only.
* groups: the weight is stored as (K, K, Cmax / g_min, Cmax) and g groups of
  width c read its input slice `(i % r) * c/g ...` cyclically, as the
  reference does (r = stored in-width // (c/g)).
* depth: the first `depth` blocks of a stage run; the others pass their input
  through and leave their BN statistics untouched.
* weights: channel-wise normalization (Eq. 6) over the active entries, then
  sign x mean|w| (binary) or the normalized real weight (FP teacher modes).

Execution: the k x k conv runs as a grouped conv with g_min groups at the
largest width; a finer group count g = m * g_min is realised by gathering the
active channels so that each of the g_min conv groups holds m consecutive
fine groups, with a block-diagonal weight mask inside it (exact, and the cost
of the layer's largest choice). The 1x1 conv is a masked dense conv.

`weight_mode` / `activation_mode` ("binary" | "fp") select BWBA (students),
FWBA (the Bi-Teacher) and FWFA (the teacher ablation of Sec. 4.4).
"""

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bnas_jax import layers
from bnas_jax import quantizers
from bnas_jax.search_spaces import nasbnn

Array = jax.Array


def channel_mask(width: Array, size: int) -> Array:
  """1.0 for the leading `width` of `size` channels, else 0.0."""
  return (jnp.arange(size) < width).astype(jnp.float32)


class MaskedBatchNorm(nn.Module):
  """BatchNorm over the active channels; statistics update only if `update`.

  Per-channel statistics make masking exact: the active channels see exactly
  what a sliced BN would, inactive ones are zeroed. Momentum 0.1 in PyTorch's
  sense (reference), eps 1e-5.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, mask: Array, *, train: bool, update: Array = True) -> Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if train:
      mean = jnp.mean(x, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
      n = x.shape[0] * x.shape[1] * x.shape[2]
      unbiased = var * n / max(n - 1, 1)  # running variance as PyTorch keeps it
      # Recalibration (NAS-BNN Sec. 3.4) averages these over a few batches.
      self.sow("batch_moments", "mean", mean)
      self.sow("batch_moments", "var", unbiased)
      if not self.is_initializing():
        keep = jnp.logical_not(jnp.logical_and(update, mask > 0))
        m = self.momentum
        ra_mean.value = jnp.where(keep, ra_mean.value, m * ra_mean.value + (1 - m) * mean)
        ra_var.value = jnp.where(keep, ra_var.value, m * ra_var.value + (1 - m) * unbiased)
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y * mask


class MaskedRPReLU(nn.Module):
  """RPReLU (ReActNet Eq. 3) on the active channels."""

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    c = x.shape[-1]
    b_in = self.param("bias_in", nn.initializers.zeros, (c,), jnp.float32)
    slope = self.param("slope", nn.initializers.constant(0.25), (c,), jnp.float32)
    b_out = self.param("bias_out", nn.initializers.zeros, (c,), jnp.float32)
    return quantizers.rprelu(x, b_in, slope, b_out) * mask


def _masked_norm_and_binarize(w: Array, valid: Array, binary: bool, reduce_axes,
                              weight_norm: bool = True) -> Array:
  """Eq. 6 over the valid entries of each output filter, then sign x mean|w|.

  Unbiased std with eps, as `quantizers.channelwise_weight_norm`; the scale
  is detached (Bi-Real/ReActNet/NAS-BNN); gradients through sign are the
  clipped STE of `ste_sign`. `weight_norm=False` is the Sec. 4.4 ablation.
  """
  n = jnp.maximum(jnp.sum(valid, axis=reduce_axes, keepdims=True), 2.0)
  if weight_norm:
    mean = jnp.sum(w * valid, axis=reduce_axes, keepdims=True) / n
    centred = (w - mean) * valid
    var = jnp.sum(jnp.square(centred), axis=reduce_axes, keepdims=True) / (n - 1)
    w_n = centred * jax.lax.rsqrt(var + 1e-5)
  else:
    w_n = w * valid
  if not binary:
    return w_n
  alpha = jax.lax.stop_gradient(jnp.sum(jnp.abs(w_n), axis=reduce_axes, keepdims=True) / n)
  return alpha * quantizers.ste_sign(w_n) * valid


class ElasticGroupConv(nn.Module):
  """The k x k binary conv of a block: elastic width, kernel size and groups.

  Attributes:
    max_width: largest input (= output) width this layer can see.
    kernels: the layer's kernel choices (Table 1), e.g. (3, 5).
    groups: the layer's group choices, e.g. (4, 8); each a multiple of the smallest.
    strides: 1 or 2.
    bi_transformation: learn the K^2 x K^2 Bi-Transformation (Eq. 5).
  """

  max_width: int
  kernels: tuple[int, ...]
  groups: tuple[int, ...]
  strides: int = 1
  bi_transformation: bool = True
  weight_norm: bool = True

  def setup(self):
    big, g_min = max(self.kernels), min(self.groups)
    self.kernel = self.param("kernel", layers.torch_default_init,
                             (big, big, self.max_width // g_min, self.max_width), jnp.float32)
    self.kernel_matrices = {
        f"{a}to{b}": self.param(f"matrix_{a}to{b}", lambda _, n=b * b: jnp.eye(n, dtype=jnp.float32))
        for a, b in zip(sorted(self.kernels, reverse=True)[:-1], sorted(self.kernels, reverse=True)[1:])}
    if self.bi_transformation:
      self.fp2bin = self.param("fp2bin", lambda _: jnp.eye(big * big, dtype=jnp.float32))
    self.threshold = self.param("input_threshold", nn.initializers.zeros, (self.max_width,),
                                jnp.float32)

  def kernel_for(self, k: Array, binary_weights: bool) -> Array:
    """The (K, K, in, out) kernel of traced size k, zero-padded to the largest K."""
    big = max(self.kernels)
    out = jnp.zeros_like(self.kernel)
    w = self.kernel
    for size in sorted(self.kernels, reverse=True):
      if size == big:
        variant = w
        if self.bi_transformation and binary_weights and big > 1:
          variant = quantizers.bi_transformation(w, self.fp2bin)
      else:
        w = quantizers.ofa_kernel_transform(w, size, self.kernel_matrices[f"{prev}to{size}"])
        pad = (big - size) // 2
        variant = jnp.pad(w, ((pad, pad), (pad, pad), (0, 0), (0, 0)))
      prev = size
      out = jnp.where(k == size, variant, out)
    return out

  def gathered_weight(self, width: Array, k: Array, g: Array, binary_weights: bool
                      ) -> tuple[Array, Array, Array]:
    """Effective grouped weight in the permuted layout, and the permutation.

    Returns (weight (K, K, B, Cmax), perm (Cmax,) original channel of each
    position or -1, valid (1, 1, B, Cmax) mask), B = Cmax / g_min.
    """
    cmax, g_min = self.max_width, min(self.groups)
    block = cmax // g_min
    per_block = width // g_min                       # active channels per conv group
    sub = width // g                                 # channels per fine group
    pos = jnp.arange(cmax)
    b, t = pos // block, pos % block
    orig = b * per_block + t                          # original channel at each position
    perm = jnp.where(t < per_block, orig, -1)
    # Weight entry (in-block t_in, out position p): same fine group, both active.
    t_in = jnp.arange(block)[:, None]
    ch_in = b[None, :] * per_block + t_in             # original input channel
    o = orig[None, :]
    same_group = (ch_in // sub) == (o // sub)
    valid = same_group & (t_in < per_block) & (t[None, :] < per_block)
    stored_in = block
    r = jnp.maximum(stored_in // sub, 1)
    src_in = ((o // sub) % r) * sub + ch_in % sub     # the reference's cyclic slices
    src_in = jnp.clip(src_in, 0, stored_in - 1)
    src_out = jnp.clip(o, 0, cmax - 1)
    w = self.kernel_for(k, binary_weights)           # (K, K, block, cmax)
    gathered = w[:, :, src_in, src_out]               # (K, K, block, cmax)
    big = max(self.kernels)
    spatial = (jnp.abs(jnp.arange(big) - big // 2) <= k // 2).astype(jnp.float32)
    valid = (valid.astype(jnp.float32)[None, None]
             * spatial[:, None, None, None] * spatial[None, :, None, None])
    return gathered, perm, valid

  def __call__(self, x: Array, width: Array, k: Array, g: Array, *, binary_weights: bool,
               binary_activations: bool) -> Array:
    cmax, g_min = self.max_width, min(self.groups)
    mask = channel_mask(width, cmax)
    x = x + self.threshold
    if binary_activations:
      x = quantizers.approx_sign(x)
    x = x * mask
    w, perm, valid = self.gathered_weight(width, k, g, binary_weights)
    w = _masked_norm_and_binarize(w, valid, binary_weights, (0, 1, 2), self.weight_norm)
    x_perm = jnp.where(perm >= 0, jnp.take(x, jnp.clip(perm, 0, cmax - 1), axis=-1), 0.0)
    pad = (max(self.kernels) - 1) // 2
    y_perm = jax.lax.conv_general_dilated(
        x_perm, w, (self.strides, self.strides), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g_min,
        preferred_element_type=jnp.float32)
    # Back to the original channel order: channel c sits at position inv[c].
    block = cmax // g_min
    per_block = jnp.maximum(width // g_min, 1)
    ch = jnp.arange(cmax)
    inv = (ch // per_block) * block + ch % per_block
    return jnp.take(y_perm, jnp.clip(inv, 0, cmax - 1), axis=-1) * mask


class Elastic1x1Conv(nn.Module):
  """The binary 1x1 conv of a block: input width -> output width, dense."""

  max_in: int
  max_out: int
  weight_norm: bool = True

  @nn.compact
  def __call__(self, x: Array, in_width: Array, out_width: Array, *, binary_weights: bool,
               binary_activations: bool) -> Array:
    kernel = self.param("kernel", layers.torch_default_init, (1, 1, self.max_in, self.max_out),
                        jnp.float32)
    threshold = self.param("input_threshold", nn.initializers.zeros, (self.max_in,), jnp.float32)
    in_mask = channel_mask(in_width, self.max_in)
    out_mask = channel_mask(out_width, self.max_out)
    x = x + threshold
    if binary_activations:
      x = quantizers.approx_sign(x)
    x = x * in_mask
    valid = in_mask[None, None, :, None] * out_mask[None, None, None, :]
    w = _masked_norm_and_binarize(kernel, valid, binary_weights, (0, 1, 2), self.weight_norm)
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     preferred_element_type=jnp.float32)
    return y * out_mask


def repeat_channels(residual: Array, width: Array, out_width: Array, size: int) -> Array:
  """`layers.match_channels` with traced widths: channel c <- residual[c mod width]."""
  idx = jnp.arange(size) % jnp.maximum(width, 1)
  return jnp.take(residual, idx, axis=-1) * channel_mask(out_width, size)


class NasBnnSupernet(nn.Module):
  """The supernet of a `nasbnn.SearchSpace`; `__call__(x, arch, train=...)`.

  Parameter names follow `reactnet.ReActNet` (stem/conv, block{i}/conv_kxk,
  bn_kxk, rprelu_kxk, conv_1x1, bn_1x1, rprelu_1x1, classifier) with one
  block per slot of `nasbnn.block_slots(space)`, so a subnet's parameters are
  the supernet's sliced (`extract_subnet_variables`).
  """

  space: nasbnn.SearchSpace
  num_classes: int
  bi_transformation: bool = True
  weight_norm: bool = True

  @nn.compact
  def __call__(self, x: Array, arch: Mapping[str, Array], *, train: bool = False,
               weight_mode: str = "binary", activation_mode: str = "binary") -> Array:
    binary_w = weight_mode == "binary"
    binary_a = activation_mode == "binary"
    space = self.space
    stem_max = max(space.stem_widths)
    arch = {k: jnp.asarray(v) for k, v in arch.items()}
    width = arch["stem_width"]
    stem_mask = channel_mask(width, stem_max)
    # Stem: 8-bit LSQ weights (sliced output filters), BN, RPReLU.
    y = layers.QuantConv(stem_max, kernel_size=space.stem_kernel, strides=space.stem_stride,
                         kernel_quantizer="lsq", kernel_bits=8, input_precision=8,
                         name="stem_conv")(x)
    y = MaskedBatchNorm(name="stem_bn")(y * stem_mask, stem_mask, train=train)
    x = MaskedRPReLU(name="stem_rprelu")(y, stem_mask)
    in_max = stem_max
    for i, slot in enumerate(nasbnn.block_slots(space)):
      spec = space.stages[slot.stage]
      out_max = max(spec.widths)
      active = arch["active"][i] > 0
      out_width = jnp.where(active, arch["width"][i], width)
      mask_in = channel_mask(width, in_max)
      kxk = ElasticGroupConv(in_max, spec.kernels, spec.groups, slot.stride,
                             self.bi_transformation, self.weight_norm, name=f"block{i}_conv_kxk")
      y = kxk(x, width, arch["kernel"][i], arch["groups"][i], binary_weights=binary_w,
              binary_activations=binary_a)
      y = MaskedBatchNorm(name=f"block{i}_bn_kxk")(y, mask_in, train=train, update=active)
      shortcut = layers.avg_pool_2x2(x) if slot.stride == 2 else x
      out1 = MaskedRPReLU(name=f"block{i}_rprelu_kxk")(y + shortcut, mask_in)
      y = Elastic1x1Conv(in_max, out_max, self.weight_norm, name=f"block{i}_conv_1x1")(
          out1, width, out_width, binary_weights=binary_w, binary_activations=binary_a)
      mask_out = channel_mask(out_width, out_max)
      y = MaskedBatchNorm(name=f"block{i}_bn_1x1")(y, mask_out, train=train, update=active)
      y = y + repeat_channels(out1, width, out_width, out_max)
      y = MaskedRPReLU(name=f"block{i}_rprelu_1x1")(y, mask_out)
      # An inactive slot passes its input through (same width: slots are
      # only inactive after their stage's first, non-strided, block).
      if in_max == out_max and slot.stride == 1:
        x = jnp.where(active, y, x)
      else:
        x = y
      width, in_max = out_width, out_max
    x = jnp.mean(x, axis=(1, 2))
    return layers.QuantDense(self.num_classes, name="classifier")(x)


def extract_subnet_variables(space: nasbnn.SearchSpace, arch: nasbnn.Architecture,
                             variables: Mapping[str, Any], *, bi_transformation: bool = True
                             ) -> dict[str, Any]:
  """Deployment pipeline 1: the supernet's weights sliced to `arch`'s own sizes.

  Returns `{"params", "batch_stats"}` for `reactnet.ReActNet` built from
  `nasbnn_subnet.model_config(space, arch)`; that network then computes the
  same logits as the supernet does for `arch` in binary mode. k x k kernels are
  materialised in their real-valued form (kernel transform and
  Bi-Transformation applied, groups' cyclic input slices resolved); the
  ReActNet layers normalize and binarize them exactly as the supernet does.
  """
  nasbnn.validate(space, arch)
  p, s = variables["params"], variables["batch_stats"]
  w_stem = arch.stem_width
  params: dict[str, Any] = {
      "stem": {"conv": {"kernel": p["stem_conv"]["kernel"][..., :w_stem],
                        "kernel_scale": p["stem_conv"]["kernel_scale"][:w_stem]},
               "bn": {k: v[:w_stem] for k, v in p["stem_bn"].items()},
               "rprelu": {k: v[:w_stem] for k, v in p["stem_rprelu"].items()}},
  }
  stats: dict[str, Any] = {"stem": {"bn": {k: v[:w_stem] for k, v in s["stem_bn"].items()}}}
  slots = nasbnn.block_slots(space)
  active_slots = [i for i, slot in enumerate(slots) if slot.block < arch.depths[slot.stage]]
  width = w_stem
  for n, i in enumerate(active_slots):
    slot = slots[i]
    spec = space.stages[slot.stage]
    block = arch.stages[slot.stage][slot.block]
    in_max = max(space.stem_widths) if i == 0 else max(space.stages[slots[i - 1].stage].widths)
    conv = ElasticGroupConv(in_max, spec.kernels, spec.groups, slot.stride, bi_transformation)
    kernel = conv.apply({"params": p[f"block{i}_conv_kxk"]}, jnp.asarray(block.kernel),
                        binary_weights=True, method=ElasticGroupConv.kernel_for)
    big, k, g, c = max(spec.kernels), block.kernel, block.groups, width
    sub = c // g
    start = (big - k) // 2
    kernel = kernel[start:start + k, start:start + k]
    r = max(kernel.shape[2] // sub, 1)
    o = np.arange(c)
    src_in = ((o // sub) % r)[None, :] * sub + np.arange(sub)[:, None]   # (sub, c)
    grouped = kernel[:, :, src_in, o[None, :]]
    name = f"block{n}"
    params[name] = {
        "conv_kxk": {"kernel": grouped,
                     "input_threshold": p[f"block{i}_conv_kxk"]["input_threshold"][:c]},
        "bn_kxk": {k_: v[:c] for k_, v in p[f"block{i}_bn_kxk"].items()},
        "rprelu_kxk": {k_: v[:c] for k_, v in p[f"block{i}_rprelu_kxk"].items()},
        "conv_1x1": {"kernel": p[f"block{i}_conv_1x1"]["kernel"][:, :, :c, :block.width],
                     "input_threshold": p[f"block{i}_conv_1x1"]["input_threshold"][:c]},
        "bn_1x1": {k_: v[:block.width] for k_, v in p[f"block{i}_bn_1x1"].items()},
        "rprelu_1x1": {k_: v[:block.width] for k_, v in p[f"block{i}_rprelu_1x1"].items()},
    }
    stats[name] = {"bn_kxk": {k_: v[:c] for k_, v in s[f"block{i}_bn_kxk"].items()},
                   "bn_1x1": {k_: v[:block.width] for k_, v in s[f"block{i}_bn_1x1"].items()}}
    width = block.width
  params["classifier"] = {"kernel": p["classifier"]["kernel"][:width],
                          "bias": p["classifier"]["bias"]}
  return {"params": params, "batch_stats": stats}
