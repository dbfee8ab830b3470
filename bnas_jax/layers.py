"""Binarized Flax (linen) layers with larq's vocabulary.

A quantized layer names what happens to its inputs (`input_quantizer`) and to its
weights (`kernel_quantizer`) by larq's string names (see `quantizers.get_quantizer`);
with both `None` it is the full-precision layer. Every layer that multiplies also
says how many multiply-accumulates it does and at which precision (`macs`) and how
many bits each of its parameters takes (`param_precision`): the cost model
(`cost_model.py`) reads exactly these methods while the model runs abstractly, so
the summary and the OPs of a network come from the module definitions that train.

Binary convolutions accumulate in float32 whatever the input dtype: a 3x3x512
binary conv sums up to 4608 terms of +-1, beyond bfloat16's exact integer range.
"""

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnas_jax import convolution
from bnas_jax import quantizers
from bnas_jax.errors import UserInputError

Array = jax.Array

# PyTorch's default conv/linear init (kaiming_uniform with a=sqrt(5)) is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the reference BNN codes train from it.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _bits(quantizer_name: Optional[str]) -> int:
  return quantizers.precision(quantizer_name)


class QuantConv(nn.Module):
  """2-D convolution (NHWC, HWIO kernel) with input and kernel quantizers.

  Attributes:
    features: output channels.
    kernel_size: square kernel size k.
    strides: square stride.
    feature_group_count: groups of the convolution (NAS-BNN's g).
    kernel_dilation: dilation of the kernel (BNAS/BATS dilated convs); the
      padding `kernel_dilation * (k - 1) // 2` keeps the size at stride 1.
    use_bias: add a bias after the convolution.
    input_quantizer: larq name applied to the input (e.g. "approx_sign"). The
      layer quantizes its own input (as larq does) so that nothing between a
      quantizer and the conv can make a "binary" conv silently non-binary, and
      so that the cost model sees the true input precision.
    learnable_threshold: add a learnable per-channel shift (zero-initialised)
      before the input quantizer: ReActNet's RSign (ReActNet Eq. 1).
    kernel_quantizer: larq name applied to the kernel (e.g.
      "magnitude_aware_sign"), or "lsq" for LSQ fake quantization to
      `kernel_bits` with a learnable per-output-channel scale.
    kernel_bits: bit width for kernel_quantizer="lsq".
    lsq_grad_scale: how many weights the LSQ step-size gradient is scaled for,
      `1/sqrt(n * Qp)`: "whole_kernel" (default; NAS-BNN's public code, n = all
      weights of the active kernel, also with per-channel step sizes) or
      "per_filter" (the LSQ paper's N_W per step size: one output filter).
    lsq_min_scale: floor of the LSQ step size, applied in every forward pass
      (NAS-BNN's public code clamps the step size to float32 eps before every
      forward); None for no floor.
    kernel_norm: None, "channelwise" (NAS-BNN Eq. 6, applied before the kernel
      quantizer) or "standardize" (Weight Standardization, DMS App. B.2.3).
    pad_value: value used to pad the (quantized) input; 0 as in the PyTorch
      reference codes, larq uses 1.0 to keep padded inputs binary.
    input_precision: bits of the input as the cost model should count them
      when no input quantizer says so (NAS-BNN counts the 8-bit stem as int8
      ops although the image itself is not quantized).
    conv_form: how a grouped conv runs (same function): "lax" (one grouped
      conv), "split" (one plain conv per group) or "auto"
      (`convolution.grouped_form()`: split on XLA:CPU, whose grouped-conv
      weight gradients are many times slower, lax elsewhere).
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  feature_group_count: int = 1
  kernel_dilation: int = 1
  use_bias: bool = False
  input_quantizer: Optional[str] = None
  learnable_threshold: bool = False
  kernel_quantizer: Optional[str] = None
  kernel_bits: int = 8
  lsq_grad_scale: str = "whole_kernel"
  lsq_min_scale: Optional[float] = float(jnp.finfo(jnp.float32).eps)
  kernel_norm: Optional[str] = None
  pad_value: float = 0.0
  input_precision: Optional[int] = None
  kernel_init: Callable[..., Array] = torch_default_init
  conv_form: str = "lax"

  def _check(self, in_features: int) -> None:
    g = self.feature_group_count
    if in_features % g or self.features % g:
      raise UserInputError(
        f"Layer {'/'.join(self.scope.path)}: groups={g} must divide both the input width "
        f"({in_features}) and the output width ({self.features}) of a grouped convolution; "
        "choose a group count that divides both channel counts."
      )
    if self.conv_form not in ("lax", "split", "auto"):
      raise UserInputError(f"conv_form={self.conv_form!r} is not one of 'lax', 'split', 'auto'.")
    if self.kernel_norm not in (None, "channelwise", "standardize"):
      raise UserInputError(
        f"kernel_norm={self.kernel_norm!r} is not one of None, 'channelwise', 'standardize'."
      )
    if self.lsq_grad_scale not in ("whole_kernel", "per_filter"):
      raise UserInputError(
        f"lsq_grad_scale={self.lsq_grad_scale!r} is not one of 'whole_kernel' (NAS-BNN's "
        "public code) or 'per_filter' (the LSQ paper)."
      )

  def _lsq_grad_scale(self, kernel: Array, active_features: Optional[Array]) -> Optional[Array]:
    """LSQ's step-size gradient multiplier 1/sqrt(n * Qp) (None: lsq_quantize's per-filter n)."""
    if self.lsq_grad_scale == "per_filter":
      return None
    qp = 2 ** (self.kernel_bits - 1) - 1
    per_filter = kernel.size // kernel.shape[-1]
    n = per_filter * (kernel.shape[-1] if active_features is None else active_features)
    return jax.lax.rsqrt(jnp.asarray(n * qp, jnp.float32))

  def quantized_kernel(self, kernel: Array, active_features: Optional[Array] = None) -> Array:
    """The kernel the convolution uses: normalized, then quantized."""
    if self.kernel_norm == "channelwise":
      kernel = quantizers.channelwise_weight_norm(kernel)
    elif self.kernel_norm == "standardize":
      kernel = quantizers.weight_standardization(kernel)
    if self.kernel_quantizer == "lsq":
      scale = self.param(
        "kernel_scale", lambda _: quantizers.lsq_init_scale(kernel, self.kernel_bits)
      )
      return quantizers.lsq_quantize(
        kernel,
        scale,
        bits=self.kernel_bits,
        grad_scale=self._lsq_grad_scale(kernel, active_features),
        min_scale=self.lsq_min_scale,
      )
    quantize = quantizers.get_quantizer(self.kernel_quantizer)
    return kernel if quantize is None else quantize(kernel)

  @nn.compact
  def __call__(self, x: Array, active_features: Optional[Array] = None) -> Array:
    """Convolves `x`.

    `active_features` (possibly traced): how many leading output channels a
    caller keeps when it masks the rest (the NAS-BNN supernet's sliced stem);
    only LSQ's "whole_kernel" gradient scale reads it, to count the weights of
    the sliced kernel as the public code does.
    """
    in_features = x.shape[-1]
    self._check(in_features)
    k = self.kernel_size
    kernel = self.param(
      "kernel",
      self.kernel_init,
      (k, k, in_features // self.feature_group_count, self.features),
      jnp.float32,
    )
    w = self.quantized_kernel(kernel, active_features)
    quantize_input = quantizers.get_quantizer(self.input_quantizer)
    if self.learnable_threshold:
      threshold = self.param("input_threshold", nn.initializers.zeros, (in_features,), jnp.float32)
      x = quantizers.rsign(x, threshold, sign_fn=quantize_input)
    elif quantize_input is not None:
      x = quantize_input(x)
    pad = self.kernel_dilation * (k - 1) // 2  # symmetric, as PyTorch's
    if self.pad_value != 0.0 and pad:
      x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=self.pad_value)
      padding = "VALID"
    else:
      padding = ((pad, pad), (pad, pad))
    y = convolution.grouped_conv(
      x.astype(jnp.float32),
      w.astype(jnp.float32),
      self.feature_group_count,
      self.strides,
      dilation=self.kernel_dilation,
      padding=padding,
      form=self.conv_form,
    )
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return y

  def weight_precision(self) -> int:
    return self.kernel_bits if self.kernel_quantizer == "lsq" else _bits(self.kernel_quantizer)

  def param_precision(self, name: str) -> int:
    return self.weight_precision() if name == "kernel" else 32

  def macs(self, inputs: Sequence[Any], output: Any) -> tuple[int, int]:
    """(multiply-accumulates, precision in bits) of one call; bias adds count as MACs."""
    x = inputs[0]
    n, h, w, c = output.shape
    k = self.kernel_size
    per_output = k * k * (x.shape[-1] // self.feature_group_count) + int(self.use_bias)
    in_bits = (
      _bits(self.input_quantizer)
      if self.input_quantizer is not None
      else (self.input_precision or 32)
    )
    return per_output * h * w * c, max(in_bits, self.weight_precision())


class QuantDense(nn.Module):
  """Dense layer with input and kernel quantizers (full precision by default).

  Initialised as torch.nn.Linear (kernel and bias uniform in +-1/sqrt(fan_in))
  unless `zero_init` (kernel and bias 0, big_vision's `head_zeroinit`).
  """

  features: int
  use_bias: bool = True
  input_quantizer: Optional[str] = None
  kernel_quantizer: Optional[str] = None
  kernel_init: Callable[..., Array] = torch_default_init
  zero_init: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel_init = nn.initializers.zeros if self.zero_init else self.kernel_init
    kernel = self.param("kernel", kernel_init, (x.shape[-1], self.features), jnp.float32)
    quantize_kernel = quantizers.get_quantizer(self.kernel_quantizer)
    quantize_input = quantizers.get_quantizer(self.input_quantizer)
    if quantize_kernel is not None:
      kernel = quantize_kernel(kernel)
    if quantize_input is not None:
      x = quantize_input(x)
    y = jnp.dot(x.astype(jnp.float32), kernel, preferred_element_type=jnp.float32)
    if self.use_bias:
      fan_in = x.shape[-1]
      uniform = nn.initializers.uniform(2.0 / fan_in**0.5)
      bias_init = (
        nn.initializers.zeros
        if self.zero_init
        else (lambda key, shape: uniform(key, shape) - 1.0 / fan_in**0.5)
      )
      bias = self.param("bias", bias_init, (self.features,))
      y = y + bias
    return y

  def param_precision(self, name: str) -> int:
    return _bits(self.kernel_quantizer) if name == "kernel" else 32

  def macs(self, inputs: Sequence[Any], output: Any) -> tuple[int, int]:
    """(MACs, precision); the bias counts one MAC per output as in NAS-BNN's FC count."""
    x = inputs[0]
    batch = 1
    for d in output.shape[:-1]:
      batch *= d
    per_output = x.shape[-1] + int(self.use_bias)
    return per_output * self.features * batch, max(
      _bits(self.input_quantizer), _bits(self.kernel_quantizer)
    )


class LearnableBias(nn.Module):
  """Per-channel learnable shift, zero-initialised (ReActNet's `LearnableBias`)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return x + self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)


class RPReLU(nn.Module):
  """ReActNet RPReLU: PReLU(x + b_in) + b_out with per-channel slope (init 0.25).

  References: Liu et al., ReActNet, ECCV 2020 (arXiv:2003.03488), Eq. 3.
  """

  slope_init: float = 0.25

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    bias_in = self.param("bias_in", nn.initializers.zeros, (c,), jnp.float32)
    slope = self.param("slope", nn.initializers.constant(self.slope_init), (c,), jnp.float32)
    bias_out = self.param("bias_out", nn.initializers.zeros, (c,), jnp.float32)
    return quantizers.rprelu(x, bias_in, slope, bias_out)


def batch_norm(train: bool, name: Optional[str] = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 = flax 0.9, eps 1e-5).

  Under `jax.jit` with the batch sharded over the mesh's data axis, the batch
  statistics are computed over the global batch (no per-device statistics).
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def avg_pool_2x2(x: Array) -> Array:
  """2x2/2 average pooling: the shortcut of a stride-2 block (NAS-BNN, ReActNet)."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def match_channels(residual: Array, channels: int) -> Array:
  """NAS-BNN's channel-matching shortcut: repeat the residual's channels, truncate.

  48 -> 64 channels gives [x_0..x_47, x_0..x_15]; a narrower target truncates.
  No parameters and no multiplications, so a width change costs nothing.
  """
  c = residual.shape[-1]
  if c == channels:
    return residual
  reps = -(-channels // c)
  return jnp.concatenate([residual] * reps, axis=-1)[..., :channels]
