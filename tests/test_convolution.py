"""conv2d: every forward form, with im2col gradients, is the same function as lax's conv."""

import jax
import numpy as np
import pytest

from bnas_jax import convolution


@pytest.mark.parametrize("forward", ["lax", "im2col", "split", "auto"])
@pytest.mark.parametrize(
  "k,groups,stride", [(1, 1, 1), (3, 2, 1), (5, 4, 2), (3, 8, 2), (7, 2, 1)]
)  # "auto": split for k < 6, lax for k = 7
def test_conv2d_value_and_gradients_equal_lax_autodiff(forward, k, groups, stride):
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
  w = jax.random.normal(jax.random.key(1), (k, k, 8 // groups, 16))
  cot = jax.random.normal(jax.random.key(2), (2, -(-6 // stride), -(-6 // stride), 16))

  def reference(x, w):  # PyTorch padding (k-1)//2, grouped, NHWC/HWIO
    pad = (k - 1) // 2
    return jax.lax.conv_general_dilated(
      x,
      w,
      (stride, stride),
      ((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
    )

  conv = lambda a, b: convolution.conv2d(a, b, groups, stride, forward)
  y, vjp = jax.vjp(conv, x, w)
  y_ref, vjp_ref = jax.vjp(reference, x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
  for got, want in zip(vjp(cot), vjp_ref(cot)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k,groups,stride,dilation", [(3, 4, 1, 2), (5, 2, 2, 2), (3, 2, 1, 1)])
def test_split_form_with_dilation_and_padding_equals_one_grouped_conv(k, groups, stride, dilation):
  """BATS/BNAS dilated grouped convs: per-group plain convs, values and gradients."""
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 8))
  w = jax.random.normal(jax.random.key(1), (k, k, 8 // groups, 12))
  for padding in (None, "VALID", ((0, 2), (1, 0))):
    split = lambda a, b: convolution.conv_split(
      a, b, groups, stride, dilation=dilation, padding=padding
    )
    pad = dilation * (k - 1) // 2
    explicit = ((pad, pad), (pad, pad)) if padding is None else padding
    reference = lambda a, b: jax.lax.conv_general_dilated(
      a,
      b,
      (stride, stride),
      explicit,
      rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
    )
    y, vjp = jax.vjp(split, x, w)
    y_ref, vjp_ref = jax.vjp(reference, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
    cot = jax.random.normal(jax.random.key(2), y.shape)
    for got, want in zip(vjp(cot), vjp_ref(cot)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
