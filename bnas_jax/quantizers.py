"""Binarizers, quantizers and weight transforms for binary neural networks.

Everything here is a pure function of arrays. Gradients that are not the true derivative of the
forward pass (straight-through estimators, surrogate sign derivatives, LSQ step-size gradients)
are defined with `jax.custom_vjp`; everything else uses plain autodiff.

Conventions shared by all functions:

* `sign(0) = +1`. A BNN has no zero state: `jnp.sign(0) == 0` would silently zero a weight or
  an activation, so every binarizer here maps 0 to +1.
* The output dtype is the input dtype. Surrogate-gradient and statistics arithmetic is done in
  at least float32 and cast back, because bfloat16 loses the small differences these formulas
  depend on (e.g. `round(v) - v`, a variance).
* Kernels use the Flax HWIO layout `(kh, kw, in_per_group, out)`. "Per output channel" means
  reducing over every axis except the last.
* Hyper-parameters that change the graph (`clip_value`, `bits`, `kernel_size`) must be static
  Python values; learnable or scheduled values (`alpha`, `scale`, `beta`, `grad_scale`,
  thresholds, matrices) may be traced arrays.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from bnas_jax import errors

Array = jax.Array
ArrayLike = Union[jax.Array, np.ndarray, float, int]
Quantizer = Callable[..., Array]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _binary_sign(x: Array) -> Array:
  """sign(x) in x's dtype with sign(0) = +1."""
  one = jnp.ones_like(x)
  return jnp.where(x >= 0, one, -one)


def _compute_dtype(*dtypes) -> jnp.dtype:
  """The common floating dtype of `dtypes`, but never narrower than float32."""
  return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def _sum_to_shape(g: Array, shape: Tuple[int, ...]) -> Array:
  """Reduces a broadcast cotangent `g` back to a parameter of shape `shape`.

  A parameter that was broadcast against a larger array receives the sum of the cotangents of
  every element it was copied to: first the leading axes numpy broadcasting added, then every
  axis where the parameter has size 1.
  """
  lead = g.ndim - len(shape)
  if lead:
    g = jnp.sum(g, axis=tuple(range(lead)))
  ones = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
  if ones:
    g = jnp.sum(g, axis=ones, keepdims=True)
  return g.reshape(shape)


def _filter_axes(w: Array) -> Tuple[int, ...]:
  """Axes of one output filter of an HWIO (or (in, out)) kernel: all axes but the last."""
  if w.ndim < 2:
    raise ValueError(f"Expected a kernel with at least 2 dims (..., out); got shape {w.shape}.")
  return tuple(range(w.ndim - 1))


def _pair(v: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
  if isinstance(v, (int, np.integer)):
    return int(v), int(v)
  v = tuple(int(i) for i in v)
  if len(v) != 2:
    raise ValueError(f"{name} must be an int or a pair of ints; got {v}.")
  return v


# --------------------------------------------------------------------------------------------
# Sign binarizers
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _ste_sign(x: Array, clip_value: Optional[float]) -> Array:
  return _binary_sign(x)


def _ste_sign_fwd(x, clip_value):
  return _binary_sign(x), x


def _ste_sign_bwd(clip_value, x, dy):
  if clip_value is None:
    return (dy,)
  return (jnp.where(jnp.abs(x) <= clip_value, dy, jnp.zeros_like(dy)),)


_ste_sign.defvjp(_ste_sign_fwd, _ste_sign_bwd)


def ste_sign(x: ArrayLike, clip_value: Optional[float] = 1.0) -> Array:
  """Sign binarizer with a (clipped) straight-through estimator.

  Forward: `+1` where `x >= 0` (so `sign(0) = +1`), `-1` elsewhere, in `x`'s dtype.

  Surrogate gradient: `dy` where `|x| <= clip_value` (the boundary passes) and `0` elsewhere,
  i.e. the derivative of `hardtanh` scaled to `clip_value`. `clip_value=None` passes `dy`
  everywhere (identity STE).

  Args:
    x: Input array.
    clip_value: Static Python float (or None): it selects the backward rule at trace time, so a
      traced value raises an error.

  Returns:
    Array of +-1 with `x`'s shape and dtype.

  References:
    Courbariaux et al., "Binarized Neural Networks", arXiv:1602.02830; Bengio et al.,
    "Estimating or Propagating Gradients Through Stochastic Neurons", arXiv:1308.3432.
  """
  if clip_value is not None:
    # float() fails loudly on a tracer, which is the behaviour we want for a static argument.
    clip_value = float(clip_value)
  return _ste_sign(jnp.asarray(x), clip_value)


def identity_sign(x: ArrayLike) -> Array:
  """Sign binarizer with an unclipped straight-through estimator.

  Forward: `+1` where `x >= 0`, `-1` elsewhere (`sign(0) = +1`).

  Surrogate gradient: `dy` everywhere (identity); same as `ste_sign(x, clip_value=None)`.

  Args:
    x: Input array.

  Returns:
    Array of +-1 with `x`'s shape and dtype.

  References:
    Bengio et al., "Estimating or Propagating Gradients Through Stochastic Neurons",
    arXiv:1308.3432.
  """
  return ste_sign(x, clip_value=None)


@jax.custom_vjp
def _approx_sign(x: Array) -> Array:
  return _binary_sign(x)


def _approx_sign_fwd(x):
  return _binary_sign(x), x


def _approx_sign_bwd(x, dy):
  ct = _compute_dtype(x.dtype)
  a = jnp.abs(x.astype(ct))
  # 2 - 2|x| is the derivative of the piecewise quadratic that Bi-Real uses to approximate sign:
  # it is 2 at 0 and falls linearly to 0 at |x| = 1.
  slope = jnp.where(a <= 1, 2 - 2 * a, jnp.zeros_like(a))
  return ((dy.astype(ct) * slope).astype(dy.dtype),)


_approx_sign.defvjp(_approx_sign_fwd, _approx_sign_bwd)


def approx_sign(x: ArrayLike) -> Array:
  """Bi-Real Net ApproxSign.

  Forward: `+1` where `x >= 0`, `-1` elsewhere (`sign(0) = +1`; the Bi-Real/NAS-BNN PyTorch code
  keeps `torch.sign(0) = 0`).

  Surrogate gradient: `dy * (2 - 2|x|)` for `|x| <= 1` and `0` outside.

  Args:
    x: Input array.

  Returns:
    Array of +-1 with `x`'s shape and dtype.

  References:
    Liu et al., "Bi-Real Net: Enhancing the Performance of 1-bit CNNs ...", arXiv:1808.00278.
  """
  return _approx_sign(jnp.asarray(x))


@jax.custom_vjp
def _swish_sign(x: Array, beta: Array) -> Array:
  return _binary_sign(x)


def _swish_sign_fwd(x, beta):
  return _binary_sign(x), (x, beta)


def _swish_sign_bwd(res, dy):
  x, beta = (jnp.asarray(r) for r in res)  # may be Python-scalar literals under lax.scan
  ct = _compute_dtype(x.dtype, beta.dtype)
  xb = x.astype(ct) * beta.astype(ct)
  b = beta.astype(ct)
  # For large |beta*x| cosh overflows to inf while the numerator stays finite, so the slope
  # correctly goes to 0 instead of NaN.
  slope = b * (2 - xb * jnp.tanh(xb / 2)) / (1 + jnp.cosh(xb))
  dx = (dy.astype(ct) * slope).astype(dy.dtype)
  # The forward pass does not depend on beta, so its true gradient is zero.
  return dx, jnp.zeros_like(beta)


_swish_sign.defvjp(_swish_sign_fwd, _swish_sign_bwd)


def swish_sign(x: ArrayLike, beta: ArrayLike = 5.0) -> Array:
  """BNN+ SwishSign.

  Forward: `+1` where `x >= 0`, `-1` elsewhere (`sign(0) = +1`).

  Surrogate gradient: the derivative of `2*sigmoid(beta*x)*(1 + beta*x*(1 - sigmoid(beta*x))) - 1`,
  i.e. `dy * beta * (2 - beta*x*tanh(beta*x/2)) / (1 + cosh(beta*x))`; it peaks at `beta` at
  `x = 0`. No gradient flows to `beta` (the forward does not depend on it).

  Args:
    x: Input array.
    beta: Sharpness; a Python float or a (possibly traced) scalar array, so it can be annealed.

  Returns:
    Array of +-1 with `x`'s shape and dtype.

  References:
    Darabi et al., "BNN+: Improved Binary Network Training", arXiv:1812.11800.
  """
  x = jnp.asarray(x)
  beta = jnp.asarray(beta)
  if not jnp.issubdtype(beta.dtype, jnp.floating):
    # An integer primal would need a float0 cotangent; a float scalar keeps custom_vjp simple.
    beta = beta.astype(_compute_dtype(x.dtype))
  return _swish_sign(x, beta)


def magnitude_aware_sign(
  w: ArrayLike, clip_value: Optional[float] = 1.0, detach_scale: bool = True
) -> Array:
  """Per-output-channel scaled sign of a kernel.

  Forward: `alpha * sign(w)` with `alpha = mean(|w|)` over all axes but the last (one scale per
  output filter) and `sign(0) = +1`.

  Surrogate gradient: `ste_sign`'s clipped STE through the sign (`alpha * dy` where
  `|w| <= clip_value`). If `detach_scale` (Bi-Real Net, ReActNet, NAS-BNN), `alpha` is a
  constant. Otherwise autodiff also differentiates `alpha`, adding
  `sign(w_i)/n * sum_j(dy_j * sign(w_j))` over the `n` weights of the filter (the `bnn`
  library's XNOR binarizer); `d|w|/dw` is taken as 0 at `w = 0`.

  Args:
    w: Kernel, `(..., out)` (HWIO for convs, `(in, out)` for dense).
    clip_value: Static Python float (or None) for the sign STE.
    detach_scale: Whether to stop the gradient through `alpha`.

  Returns:
    Array with `w`'s shape and dtype.

  References:
    Liu et al., "Bi-Real Net", arXiv:1808.00278; Liu et al., "ReActNet", arXiv:2003.03488;
    Rastegari et al., "XNOR-Net", arXiv:1603.05279.
  """
  w = jnp.asarray(w)
  ct = _compute_dtype(w.dtype)
  scale = jnp.mean(jnp.abs(w.astype(ct)), axis=_filter_axes(w), keepdims=True)
  if detach_scale:
    scale = lax.stop_gradient(scale)
  return scale.astype(w.dtype) * ste_sign(w, clip_value)


def xnor_weight(w: ArrayLike) -> Array:
  """XNOR-Net weight binarization `beta * sign(w)`.

  Forward: `beta * sign(w)` with `beta = ||w||_1 / n` per output filter (`n` = elements of the
  filter, i.e. all axes but the last) and `sign(0) = +1`.

  Surrogate gradient: the XNOR-Net chain rule, through both `beta` and the clipped STE of sign:
  `beta * dy_i * 1{|w_i| <= 1} + sign(w_i)/n * sum_j(dy_j * sign(w_j))`. This is exactly
  `magnitude_aware_sign(w, clip_value=1.0, detach_scale=False)`. The paper prints the `beta`
  term as `dy_i / n` (a diagonal shorthand); we keep the full sum, which is also what the
  jiecaoyu XNOR-Net port computes before its extra `(1 - 1/C_in) * n` rescaling (not applied
  here).

  Args:
    w: Kernel, `(..., out)`.

  Returns:
    Array with `w`'s shape and dtype.

  References:
    Rastegari et al., "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural
    Networks", arXiv:1603.05279.
  """
  return magnitude_aware_sign(w, clip_value=1.0, detach_scale=False)


def xnor_activation_scale(
  x: ArrayLike,
  kernel_size: Union[int, Sequence[int]],
  strides: Union[int, Sequence[int]] = 1,
  padding: Union[str, Sequence[Tuple[int, int]]] = "SAME",
) -> Array:
  """XNOR-Net activation scale map `K = A * k`.

  Forward: `A = mean_c |x|` (channel mean, shape `(N, H, W, 1)`) convolved with a
  `kh x kw` box filter of value `1/(kh*kw)`, using the same strides and padding as the binary
  conv it scales, so the result `(N, H', W', 1)` broadcasts against that conv's output. With
  "SAME" padding, border windows count the zero padding (the divisor is always `kh*kw`), as a
  convolution with the paper's `k` does.

  Surrogate gradient: none; plain autodiff of the forward (including `d|x|/dx = sign(x)`).

  Args:
    x: Activations, NHWC.
    kernel_size: Static int or `(kh, kw)` of the binary conv.
    strides: Static int or `(sh, sw)` of the binary conv.
    padding: "SAME", "VALID" or explicit `((lo, hi), (lo, hi))`, as for `lax.conv_general_dilated`.

  Returns:
    Array `(N, H', W', 1)` in `x`'s dtype.

  References:
    Rastegari et al., "XNOR-Net", arXiv:1603.05279, Sec. 3.2 (Fig. 2).
  """
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"xnor_activation_scale expects NHWC input; got shape {x.shape}.")
  kh, kw = _pair(kernel_size, "kernel_size")
  sh, sw = _pair(strides, "strides")
  ct = _compute_dtype(x.dtype)
  a = jnp.mean(jnp.abs(x.astype(ct)), axis=-1, keepdims=True)
  box = jnp.full((kh, kw, 1, 1), 1.0 / (kh * kw), dtype=ct)
  if not isinstance(padding, str):
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  k = lax.conv_general_dilated(
    a,
    box,
    window_strides=(sh, sw),
    padding=padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=lax.Precision.HIGHEST,
  )
  return k.astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Weight normalisation
# --------------------------------------------------------------------------------------------


def channelwise_weight_norm(w: ArrayLike, eps: float = 1e-5) -> Array:
  """NAS-BNN channel-wise weight normalisation (Eq. 6).

  Forward: per output filter (all axes but the last), `(w - mean) / sqrt(var_unbiased + eps)`.
  The variance is the unbiased one (`ddof=1`), as in the public NAS-BNN code (`torch.std`),
  and `eps` sits inside the sqrt as in the paper's Eq. 6 (`sigma^2 + 1e-5`); the public code
  has no epsilon. Pass `eps=0.0` for the code's exact arithmetic.

  Surrogate gradient: none; plain autodiff of the forward (the gradient through the mean and
  the std is kept, as in the PyTorch reference).

  Args:
    w: Kernel `(..., out)`, at least 2 elements per filter.
    eps: Added to the variance.

  Returns:
    Array with `w`'s shape and dtype.

  References:
    Lin et al., "NAS-BNN: Neural Architecture Search for Binary Neural Networks",
    arXiv:2408.15484, Eq. 6.
  """
  w = jnp.asarray(w)
  axes = _filter_axes(w)
  n = int(np.prod([w.shape[a] for a in axes]))
  if n < 2:
    raise ValueError(f"An unbiased std needs >= 2 elements per output filter; got shape {w.shape}.")
  ct = _compute_dtype(w.dtype)
  wc = w.astype(ct)
  centred = wc - jnp.mean(wc, axis=axes, keepdims=True)
  var = jnp.sum(jnp.square(centred), axis=axes, keepdims=True) / (n - 1)
  return (centred / jnp.sqrt(var + eps)).astype(w.dtype)


def weight_standardization(w: ArrayLike, eps: float = 1e-5) -> Array:
  """Weight Standardization, as used by DMS for its binary weights.

  Forward: per output filter (all axes but the last), `(w - mean) / sqrt(var + eps)` with the
  biased variance (`ddof=0`).

  Surrogate gradient: none; plain autodiff of the forward.

  Args:
    w: Kernel `(..., out)`.
    eps: Added to the variance.

  Returns:
    Array with `w`'s shape and dtype.

  References:
    Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight
    Standardization", arXiv:1903.10520; Li et al., "DMS: Differentiable diMension Search for
    Binary Neural Networks", ICLR 2020 NAS workshop, App. B.2.3.
  """
  w = jnp.asarray(w)
  axes = _filter_axes(w)
  ct = _compute_dtype(w.dtype)
  wc = w.astype(ct)
  centred = wc - jnp.mean(wc, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
  return (centred / jnp.sqrt(var + eps)).astype(w.dtype)


# --------------------------------------------------------------------------------------------
# LSQ-style quantizers with learnable step size
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _lsq(x: Array, scale: Array, grad_scale: Array, qn: int, qp: int) -> Array:
  ct = _compute_dtype(x.dtype, scale.dtype)
  s = scale.astype(ct)
  # jnp.round is round-half-to-even, the same as torch.round used by the reference code.
  q = jnp.round(jnp.clip(x.astype(ct) / s, qn, qp))
  return (q * s).astype(x.dtype)


def _lsq_fwd(x, scale, grad_scale, qn, qp):
  return _lsq(x, scale, grad_scale, qn, qp), (x, scale, grad_scale)


def _lsq_bwd(qn, qp, res, dy):
  # Residuals may come back as Python-scalar literals (e.g. under lax.scan).
  x, scale, grad_scale = (jnp.asarray(r) for r in res)
  ct = _compute_dtype(x.dtype, scale.dtype, grad_scale.dtype)
  v = x.astype(ct) / scale.astype(ct)
  g = dy.astype(ct)
  inside = (v >= qn) & (v <= qp)
  dx = jnp.where(inside, g, jnp.zeros_like(g))
  # d(scale * round(clip(v)))/d scale with the STE round: round(v) - v inside, the clip bound
  # outside (Esser et al., Eq. 3).
  dv = jnp.where(
    v < qn, jnp.asarray(qn, ct), jnp.where(v > qp, jnp.asarray(qp, ct), jnp.round(v) - v)
  )
  dscale = _sum_to_shape(g * dv, scale.shape)
  dscale = dscale * grad_scale.astype(ct)
  # grad_scale only rescales the gradient; it has no forward effect to differentiate.
  return (dx.astype(x.dtype), dscale.astype(scale.dtype), jnp.zeros_like(grad_scale))


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def _as_float_param(p: ArrayLike, like: Array) -> Array:
  p = jnp.asarray(p)
  if not jnp.issubdtype(p.dtype, jnp.floating):
    p = p.astype(_compute_dtype(like.dtype))
  return p


def _check_broadcast(x: Array, p: Array, name: str) -> None:
  try:
    shape = jnp.broadcast_shapes(x.shape, p.shape)
  except ValueError:
    shape = None
  if shape != x.shape:
    raise ValueError(
      f"{name} of shape {p.shape} must broadcast to the input shape {x.shape} without enlarging it."
    )


def unsigned_activation_quantizer(
  x: ArrayLike, alpha: ArrayLike, grad_scale: ArrayLike = 1.0
) -> Array:
  """DMS 1-bit unsigned activation quantizer `alpha * round(clip(x/alpha, 0, 1))`.

  Forward: with `v = x/alpha`, `alpha * round(clip(v, 0, 1))`, so the output is `0` or `alpha`.
  Rounding is half-to-even (`jnp.round`, same as `torch.round`): `v = 0.5` gives `0`. `alpha`
  must be positive.

  Surrogate gradient: w.r.t. `x`, `dy` where `0 <= x <= alpha` (both ends pass) and `0`
  elsewhere. W.r.t. `alpha`, LSQ: `dy * (round(v) - v)` for `0 <= v <= 1`, `dy * 1` for
  `v > 1`, `0` for `v < 0`, times `grad_scale`, summed to `alpha`'s shape. No gradient flows to
  `grad_scale`.

  Args:
    x: Activations.
    alpha: Step size; a scalar or an array broadcastable to `x` (e.g. per-channel `(C,)` for
      NHWC), possibly traced.
    grad_scale: Multiplier of the `alpha` gradient (LSQ suggests `1/sqrt(x.size * 1)`); 1.0
      keeps the plain LSQ gradient.

  Returns:
    Array with `x`'s shape and dtype.

  References:
    Li et al., "DMS: Differentiable diMension Search for Binary Neural Networks", ICLR 2020 NAS
    workshop, Eq. 2; Esser et al., "Learned Step Size Quantization", arXiv:1902.08153.
  """
  x = jnp.asarray(x)
  alpha = _as_float_param(alpha, x)
  _check_broadcast(x, alpha, "alpha")
  grad_scale = _as_float_param(grad_scale, x)
  return _lsq(x, alpha, grad_scale, 0, 1)


def lsq_quantize(
  w: ArrayLike,
  scale: ArrayLike,
  bits: int = 8,
  grad_scale: Optional[ArrayLike] = None,
  min_scale: Optional[float] = None,
) -> Array:
  """LSQ signed fake quantization of weights (NAS-BNN's 8-bit stem).

  Forward: with `s = max(scale, min_scale)` (`s = scale` when `min_scale` is None),
  `v = w/s`, `Qn = -2**(bits-1)`, `Qp = 2**(bits-1) - 1`: `round(clip(v, Qn, Qp)) * s`,
  rounding half-to-even (`jnp.round`, as `torch.round`). `s` must be positive.

  Surrogate gradient: w.r.t. `w`, `dy` where `Qn <= v <= Qp` and `0` elsewhere. W.r.t.
  `scale`, LSQ: `dy * (round(v) - v)` inside, `dy * Qn` for `v < Qn`, `dy * Qp` for `v > Qp`,
  times `grad_scale`, summed to `scale`'s shape; the `min_scale` clamp passes this gradient
  through unchanged, as the NAS-BNN code's in-place `clamp_(eps)` of the step size before
  every forward does (its gradient is taken at the clamped value). No gradient flows to
  `grad_scale`.

  The default `grad_scale` is `1/sqrt(n * Qp)` with `n = w.size // scale.size`, the number of
  weights sharing one step size (LSQ's `N_W` per step size): the whole kernel for a scalar
  scale, one output filter for a per-channel scale. The NAS-BNN code uses the whole (sliced)
  kernel's size even with per-channel scales: `grad_scale=1/sqrt(w.size * Qp)`
  (`layers.QuantConv(lsq_grad_scale="whole_kernel")` passes it).

  Args:
    w: Kernel `(..., out)`.
    scale: Scalar or per-output-channel `(out,)` step size (any shape broadcastable to `w`
      works), possibly traced.
    bits: Static bit width, >= 2.
    grad_scale: Multiplier of the `scale` gradient; None for the default above.
    min_scale: Static floor of the step size applied in the forward pass (NAS-BNN's code:
      float32 eps), or None for no floor.

  Returns:
    Array with `w`'s shape and dtype.

  References:
    Esser et al., "Learned Step Size Quantization", arXiv:1902.08153; Lin et al., "NAS-BNN",
    arXiv:2408.15484 (stem quantization).
  """
  w = jnp.asarray(w)
  bits = int(bits)
  if bits < 2:
    raise ValueError(f"lsq_quantize needs bits >= 2 for a signed grid; got {bits}.")
  qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  scale = _as_float_param(scale, w)
  _check_broadcast(w, scale, "scale")
  if grad_scale is None:
    n = max(w.size // max(scale.size, 1), 1)
    grad_scale = 1.0 / float(np.sqrt(n * qp))
  grad_scale = _as_float_param(grad_scale, w)
  if min_scale is not None:
    # Straight through: forward max(scale, min_scale), gradient 1 w.r.t. scale.
    scale = scale + lax.stop_gradient(jnp.maximum(scale, min_scale) - scale)
  return _lsq(w, scale, grad_scale, qn, qp)


def lsq_init_scale(w: ArrayLike, bits: int = 8) -> Array:
  """NAS-BNN's initial per-output-channel LSQ step size.

  Forward: per output filter (all axes but the last), with the filter mean `mu` and unbiased
  std `sigma` (`torch.std`'s default), `max(|mu - 3 sigma|, |mu + 3 sigma|) / 2**(bits-1)`,
  floored at float32 eps (the reference clamps the step size there before first use).

  Surrogate gradient: none; this is an initializer (plain autodiff if differentiated).

  Args:
    w: Kernel `(..., out)`.
    bits: Static bit width.

  Returns:
    Array `(out,)` in `w`'s dtype.

  References:
    Lin et al., "NAS-BNN", arXiv:2408.15484 (public code, `DynamicQConv2d`); Esser et al.,
    "Learned Step Size Quantization", arXiv:1902.08153.
  """
  w = jnp.asarray(w)
  axes = _filter_axes(w)
  ct = _compute_dtype(w.dtype)
  wc = w.astype(ct)
  mu = jnp.mean(wc, axis=axes)
  sigma = jnp.std(wc, axis=axes, ddof=1)
  s = jnp.maximum(jnp.abs(mu - 3 * sigma), jnp.abs(mu + 3 * sigma)) / 2 ** (int(bits) - 1)
  return jnp.maximum(s, jnp.finfo(jnp.float32).eps).astype(w.dtype)


# --------------------------------------------------------------------------------------------
# ReActNet generalised activations
# --------------------------------------------------------------------------------------------


def rsign(
  x: ArrayLike, threshold: ArrayLike, sign_fn: Union[str, Quantizer] = approx_sign
) -> Array:
  """ReActNet RSign: a sign with a learnable per-channel threshold.

  Forward: `sign_fn(x + threshold)`, i.e. `+1` where `x >= -threshold`. `threshold` is a
  per-channel bias broadcast over the last axis (ReActNet's `LearnableBias`, init 0).

  Surrogate gradient: `sign_fn`'s surrogate (ApproxSign by default) evaluated at
  `x + threshold`; by autodiff the `threshold` gradient is its sum over broadcast axes.

  Args:
    x: Activations, channels last.
    threshold: Per-channel `(C,)` (or scalar) bias, possibly traced.
    sign_fn: Binarizer or registry name (see `get_quantizer`).

  Returns:
    Array with `x`'s shape and dtype.

  References:
    Liu et al., "ReActNet: Towards Precise Binary Neural Network with Generalized Activation
    Functions", arXiv:2003.03488, Eq. 3.
  """
  if isinstance(sign_fn, str):
    sign_fn = get_quantizer(sign_fn)
  x = jnp.asarray(x)
  return sign_fn(x + threshold).astype(x.dtype)


def rprelu(x: ArrayLike, bias_in: ArrayLike, slope: ArrayLike, bias_out: ArrayLike) -> Array:
  """ReActNet RPReLU.

  Forward: with `z = x + bias_in`, `where(z > 0, z, slope * z) + bias_out`; all parameters are
  per-channel `(C,)` (or scalars) broadcast over the last axis. ReActNet initialises the biases
  to 0 and the slope to 0.25 (PyTorch's PReLU default).

  Surrogate gradient: none; plain autodiff (at `z = 0` the slope branch is taken).

  Args:
    x: Activations, channels last.
    bias_in: Shift before the PReLU.
    slope: Negative-side slope.
    bias_out: Shift after the PReLU.

  Returns:
    Array with `x`'s shape and dtype.

  References:
    Liu et al., "ReActNet", arXiv:2003.03488, Eq. 4.
  """
  x = jnp.asarray(x)
  z = x + bias_in
  return (jnp.where(z > 0, z, slope * z) + bias_out).astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Kernel transforms (elastic kernel size, Bi-Transformation)
# --------------------------------------------------------------------------------------------


def _spatial_linear(kernel: Array, matrix: Array) -> Array:
  """Applies `out_vec = matrix @ in_vec` to every flattened k*k spatial vector of a kernel."""
  k = kernel.shape[0]
  if kernel.ndim != 4 or kernel.shape[1] != k:
    raise ValueError(f"Expected a square HWIO kernel (k, k, cin, cout); got {kernel.shape}.")
  if matrix.shape != (k * k, k * k):
    raise ValueError(
      f"Expected a ({k * k}, {k * k}) matrix for a {k}x{k} kernel; got {matrix.shape}."
    )
  ct = _compute_dtype(kernel.dtype, matrix.dtype)
  # Row-major (kh, kw) flattening, the same order as PyTorch's (out, in, kh, kw).view(-1, k*k),
  # so matrices learned by the reference code mean the same thing here.
  flat = kernel.astype(ct).reshape(k * k, -1)
  # HIGHEST: TPUs otherwise multiply float32 in bfloat16 passes, which would make even the
  # identity-initialised matrix perturb the weights.
  out = jnp.matmul(matrix.astype(ct), flat, precision=lax.Precision.HIGHEST)
  return out.reshape(kernel.shape).astype(kernel.dtype)


def ofa_kernel_transform(kernel: ArrayLike, kernel_size: int, matrix: ArrayLike) -> Array:
  """Once-for-All elastic kernel: a transformed centre crop of a larger kernel.

  Forward: take the centre `kernel_size x kernel_size` crop of the `(K, K, cin, cout)` kernel,
  flatten each `(cin, cout)` pair's `k*k` spatial values row-major over `(kh, kw)` into a column
  vector `v`, and return `matrix @ v` reshaped to `(k, k, cin, cout)`. This equals the reference
  code's `F.linear(v_row, matrix) = v_row @ matrix.T`, so its matrices load unchanged. An
  identity matrix gives the plain centre crop. For a chain (7 -> 5 -> 3) call it once per step.

  Surrogate gradient: none; plain autodiff into both `kernel` and `matrix`.

  Args:
    kernel: `(K, K, cin, cout)` kernel at the largest size.
    kernel_size: Static target size `k <= K` with the same parity as `K`.
    matrix: `(k*k, k*k)` learnable transform (identity-initialised), possibly traced.

  Returns:
    `(k, k, cin, cout)` array in `kernel`'s dtype.

  References:
    Cai et al., "Once-for-All: Train One Network and Specialize it for Efficient Deployment",
    arXiv:1908.09791, Sec. 3.2 (elastic kernel size); used by NAS-BNN, arXiv:2408.15484.
  """
  kernel = jnp.asarray(kernel)
  matrix = jnp.asarray(matrix)
  big = kernel.shape[0]
  k = int(kernel_size)
  if k < 1 or k > big or (big - k) % 2:
    raise ValueError(
      f"kernel_size {k} must be <= {big} with the same parity to centre-crop a {big}x{big} kernel."
    )
  start = (big - k) // 2
  crop = kernel[start : start + k, start : start + k]
  return _spatial_linear(crop, matrix)


def bi_transformation(kernel: ArrayLike, matrix: ArrayLike) -> Array:
  """NAS-BNN Bi-Transformation of shared weights into the binary domain (Eq. 5).

  Forward: Eq. 5 writes `W_b = Reshape_kxk(Flatten(W_r) . theta)` with one learnable
  `theta in R^{k^2 x k^2}` per layer, identity-initialised and shared by all `(cin, cout)`
  pairs. We apply it like `ofa_kernel_transform`: each pair's row-major `(kh, kw)` spatial
  vector `v` becomes `theta @ v`, which is what the public NAS-BNN code (`fp2bin_filter`,
  `F.linear`) computes. Read literally, Eq. 5 (row vector times `theta`) is `theta.T @ v`: the
  two differ only by which of `theta`/`theta.T` is stored, and since `theta` starts at the
  (symmetric) identity and optimizers act elementwise, training is the same. Identity `theta`
  returns `kernel` unchanged.

  Surrogate gradient: none; plain autodiff into both `kernel` and `matrix`.

  Args:
    kernel: `(k, k, cin, cout)` full-precision kernel.
    matrix: `(k*k, k*k)` learnable transform, possibly traced.

  Returns:
    Array with `kernel`'s shape and dtype.

  References:
    Lin et al., "NAS-BNN: Neural Architecture Search for Binary Neural Networks",
    arXiv:2408.15484, Sec. 3.3.2, Eq. 5.
  """
  return _spatial_linear(jnp.asarray(kernel), jnp.asarray(matrix))


# --------------------------------------------------------------------------------------------
# Registry (larq-style string names)
# --------------------------------------------------------------------------------------------

_QUANTIZERS = {
  "ste_sign": ste_sign,
  "approx_sign": approx_sign,
  "swish_sign": swish_sign,
  "identity_sign": identity_sign,
  "magnitude_aware_sign": magnitude_aware_sign,
  "xnor_weight": xnor_weight,
}


def _unknown(name) -> errors.UserInputError:
  valid = ", ".join(["None"] + [repr(n) for n in sorted(_QUANTIZERS)])
  return errors.UserInputError(f"Unknown quantizer {name!r}; valid names are {valid}.")


def get_quantizer(name: Union[None, str, Quantizer]) -> Optional[Quantizer]:
  """Looks up a quantizer by its larq-style name.

  Args:
    name: None (no quantization), one of "ste_sign", "approx_sign", "swish_sign",
      "identity_sign", "magnitude_aware_sign", "xnor_weight", or a callable (returned as is so
      layers can take either).

  Returns:
    The quantizer function, or None for None.

  Raises:
    errors.UserInputError: `name` is an unknown string or not a string/callable.
  """
  if name is None:
    return None
  if isinstance(name, str):
    if name in _QUANTIZERS:
      return _QUANTIZERS[name]
    raise _unknown(name)
  if callable(name):
    return name
  raise _unknown(name)


def precision(name: Optional[str]) -> int:
  """Bit width of a registered quantizer: 1 for every registered binarizer, 32 for None.

  Args:
    name: None or a registered name (see `get_quantizer`).

  Returns:
    1 or 32.

  Raises:
    errors.UserInputError: `name` is not None and not a registered name.
  """
  if name is None:
    return 32
  if isinstance(name, str) and name in _QUANTIZERS:
    return 1
  raise _unknown(name)
