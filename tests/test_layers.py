"""Binarized layers against hand-written NumPy convolutions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnas_jax import layers
from bnas_jax.errors import UserInputError


def _np_conv(x, w, stride, pad, groups):
  """Direct NHWC x HWIO grouped convolution with zero padding, in float64."""
  n, h, wd, c = x.shape
  k, _, cin_g, cout = w.shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
  out = np.zeros((n, ho, wo, cout))
  cout_g = cout // groups
  for o in range(cout):
    g = o // cout_g
    for i in range(ho):
      for j in range(wo):
        patch = xp[
          :, i * stride : i * stride + k, j * stride : j * stride + k, g * cin_g : (g + 1) * cin_g
        ]
        out[:, i, j, o] = np.sum(patch * w[..., o], axis=(1, 2, 3))
  return out


@pytest.mark.parametrize("stride,groups,k", [(1, 1, 3), (2, 2, 3), (1, 4, 5), (1, 1, 1)])
def test_binary_conv_matches_sign_convolution(stride, groups, k):
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 8))
  conv = layers.QuantConv(
    8,
    kernel_size=k,
    strides=stride,
    feature_group_count=groups,
    input_quantizer="ste_sign",
    kernel_quantizer="magnitude_aware_sign",
  )
  variables = conv.init(jax.random.key(1), x)
  w = np.asarray(variables["params"]["kernel"], np.float64)
  wb = np.where(w >= 0, 1.0, -1.0) * np.abs(w).mean(axis=(0, 1, 2))
  xb = np.where(np.asarray(x) >= 0, 1.0, -1.0)
  expected = _np_conv(xb, wb, stride, (k - 1) // 2, groups)
  np.testing.assert_allclose(conv.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,groups,k", [(1, 1, 3), (2, 2, 5)])
def test_dilated_xnor_conv_equals_conv_with_zero_inserted_kernel(stride, groups, k):
  # Dilation 2 is the plain conv of a (2k-1)^2 kernel with zeros between the
  # taps; padding 2 * (k - 1) // 2 keeps the size (PyTorch's dilated convs).
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
  conv = layers.QuantConv(
    4,
    kernel_size=k,
    strides=stride,
    feature_group_count=groups,
    kernel_dilation=2,
    input_quantizer="ste_sign",
    kernel_quantizer="xnor_weight",
  )
  variables = conv.init(jax.random.key(1), x)
  w = np.asarray(variables["params"]["kernel"], np.float64)
  wb = np.where(w >= 0, 1.0, -1.0) * np.abs(w).mean(axis=(0, 1, 2))
  dilated = np.zeros((2 * k - 1, 2 * k - 1) + w.shape[2:])
  dilated[::2, ::2] = wb
  xb = np.where(np.asarray(x) >= 0, 1.0, -1.0)
  expected = _np_conv(xb, dilated, stride, k - 1, groups)
  out = conv.apply(variables, x)
  assert out.shape == expected.shape
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_binary_conv_accumulates_in_float32_for_bfloat16_inputs():
  # 3x3x64 = 576 terms of +-1: beyond bfloat16's exact integer range (256).
  x = jnp.ones((1, 3, 3, 64), jnp.bfloat16)
  conv = layers.QuantConv(
    1,
    kernel_size=3,
    input_quantizer="ste_sign",
    kernel_quantizer="ste_sign",
    kernel_init=jax.nn.initializers.ones,
  )
  y = conv.apply(conv.init(jax.random.key(0), x), x)
  assert y.dtype == jnp.float32
  assert float(y[0, 1, 1, 0]) == 576.0


def test_learnable_threshold_shifts_the_sign():
  x = jnp.full((1, 1, 1, 2), -0.5)
  conv = layers.QuantConv(
    1,
    kernel_size=1,
    input_quantizer="ste_sign",
    learnable_threshold=True,
    kernel_init=jax.nn.initializers.ones,
  )
  variables = conv.init(jax.random.key(0), x)
  assert float(conv.apply(variables, x)[0, 0, 0, 0]) == -2.0
  variables["params"]["input_threshold"] = jnp.array([1.0, 0.0])
  assert float(conv.apply(variables, x)[0, 0, 0, 0]) == 0.0  # +1 - 1


def test_groups_must_divide_channels():
  conv = layers.QuantConv(8, feature_group_count=3)
  with pytest.raises(UserInputError, match="groups=3"):
    conv.init(jax.random.key(0), jnp.zeros((1, 4, 4, 6)))


def test_match_channels_repeats_and_truncates():
  x = jnp.arange(48.0).reshape(1, 1, 1, 48)
  y = layers.match_channels(x, 64)
  np.testing.assert_array_equal(y[0, 0, 0], np.concatenate([np.arange(48), np.arange(16)]))
  np.testing.assert_array_equal(layers.match_channels(x, 32)[0, 0, 0], np.arange(32))


def test_lsq_stem_conv_uses_8_bit_weights():
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 3))
  conv = layers.QuantConv(4, kernel_size=3, kernel_quantizer="lsq", kernel_bits=8)
  variables = conv.init(jax.random.key(1), x)
  w = np.asarray(variables["params"]["kernel"], np.float64)
  scale = np.asarray(variables["params"]["kernel_scale"], np.float64)
  assert scale.shape == (4,)
  wq = np.clip(np.round(w / scale), -128, 127) * scale
  np.testing.assert_allclose(
    conv.apply(variables, x), _np_conv(np.asarray(x), wq, 1, 1, 1), rtol=1e-4, atol=1e-5
  )
  assert conv.param_precision("kernel") == 8


def _stem_scale_grad(x, dy, **conv_kwargs):
  conv = layers.QuantConv(
    dy.shape[-1], kernel_size=3, strides=2, kernel_quantizer="lsq", kernel_bits=8, **conv_kwargs
  )
  variables = conv.init(jax.random.key(1), x)

  def loss(scale, active=None):
    params = dict(variables["params"], kernel_scale=scale)
    return jnp.sum(conv.apply({"params": params}, x, active_features=active) * dy)

  return variables["params"]["kernel_scale"], loss


def test_lsq_step_size_gradient_scale_whole_kernel_vs_per_filter():
  # NAS-BNN's public code scales the step-size gradient by 1/sqrt(numel(sliced kernel) * 127)
  # with one step size per output filter; the LSQ paper by 1/sqrt(numel(filter) * 127).
  # Same raw gradient, so whole_kernel / per_filter = sqrt(27 / (27 * C)) = 1/sqrt(C).
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  dy = jax.random.normal(jax.random.key(2), (2, 4, 4, 6))
  scale, whole = _stem_scale_grad(x, dy)
  _, per_filter = _stem_scale_grad(x, dy, lsq_grad_scale="per_filter")
  g_whole, g_filter = jax.grad(whole)(scale), jax.grad(per_filter)(scale)
  assert np.all(np.abs(np.asarray(g_filter)) > 0)
  np.testing.assert_allclose(g_whole, g_filter / np.sqrt(6), rtol=1e-5)
  # A caller that keeps only 2 of the 6 filters (the supernet's sliced stem) counts 2 filters,
  # also when the count is traced.
  g_sliced = jax.jit(jax.grad(whole))(scale, jnp.int32(2))
  np.testing.assert_allclose(g_sliced, g_filter / np.sqrt(2), rtol=1e-5)


def test_lsq_step_size_is_floored_at_float32_eps_in_every_forward():
  x = jax.random.normal(jax.random.key(0), (1, 6, 6, 3))
  conv = layers.QuantConv(4, kernel_size=3, kernel_quantizer="lsq", kernel_bits=8)
  variables = conv.init(jax.random.key(1), x)
  eps = float(np.finfo(np.float32).eps)
  w = np.asarray(variables["params"]["kernel"], np.float64)
  scale = np.array([0.02, -0.5, 0.0, eps / 8], np.float32)  # an optimizer step went too far
  y = conv.apply({"params": dict(variables["params"], kernel_scale=scale)}, x)
  s = np.maximum(scale.astype(np.float64), eps)
  wq = np.clip(np.round(w / s), -128, 127) * s
  np.testing.assert_allclose(y, _np_conv(np.asarray(x), wq, 1, 1, 1), rtol=1e-4, atol=1e-6)
  unfloored = layers.QuantConv(4, kernel_size=3, kernel_quantizer="lsq", lsq_min_scale=None)
  y_raw = unfloored.apply({"params": dict(variables["params"], kernel_scale=scale)}, x)
  assert not np.allclose(y_raw[..., 1], y[..., 1])  # -0.5 is not eps without the floor


def test_lsq_grad_scale_name_is_checked():
  conv = layers.QuantConv(4, kernel_quantizer="lsq", lsq_grad_scale="per_tensor")
  with pytest.raises(UserInputError, match="lsq_grad_scale"):
    conv.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
