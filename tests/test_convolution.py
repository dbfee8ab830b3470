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
