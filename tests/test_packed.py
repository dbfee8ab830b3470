"""Packed XNOR-popcount layers equal the float +-1 layers exactly (integers)."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from bnas_jax import packed


def _float_conv(signs, w, groups, stride, dilation):
  """The float path: zero-padded +-1 conv, PyTorch padding dilation * (k - 1) // 2."""
  pad = dilation * (w.shape[0] - 1) // 2
  return lax.conv_general_dilated(
    signs,
    w,
    (stride, stride),
    ((pad, pad), (pad, pad)),
    rhs_dilation=(dilation, dilation),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
    precision=lax.Precision.HIGHEST,
  )


def _random_case(rng):
  k = int(rng.choice([1, 3, 5]))
  groups = int(rng.choice([1, 2, 3, 4]))
  cg = int(rng.choice([1, 5, 31, 32, 33, 48, 70]))
  og = int(rng.integers(1, 9))
  stride = int(rng.choice([1, 2]))
  dilation = int(rng.choice([1, 2])) if k > 1 else 1
  size = int(rng.integers(max(1, dilation * (k - 1) // 2), 9))
  return (
    k,
    groups,
    cg,
    og,
    stride,
    dilation,
    (int(rng.integers(1, 3)), size, int(rng.integers(1, 9))),
  )


@pytest.mark.parametrize("seed", range(24))
def test_packed_conv_equals_float_pm1_conv(seed):
  rng = np.random.default_rng(seed)
  k, groups, cg, og, stride, dilation, (n, h, w) = _random_case(rng)
  c, out = groups * cg, groups * og
  x = rng.standard_normal((n, h, w, c)).astype(np.float32)
  x[rng.random(x.shape) < 0.1] = 0.0  # sign(0) = +1
  threshold = rng.standard_normal(c).astype(np.float32) * 0.3
  kernel = np.where(rng.standard_normal((k, k, cg, out)) >= 0, 1.0, -1.0).astype(np.float32)
  signs = np.where(x + threshold >= 0, 1.0, -1.0).astype(np.float32)
  want = np.asarray(_float_conv(signs, kernel, groups, stride, dilation))
  conv = jax.jit(
    lambda x, w: packed.binary_conv(
      packed.pack_signs(x, groups, threshold),
      w,
      channels_per_group=cg,
      kernel_size=k,
      stride=stride,
      dilation=dilation,
    )
  )
  got = conv(jnp.asarray(x), jnp.asarray(packed.pack_conv_weight(kernel, groups)))
  assert got.shape == want.shape
  np.testing.assert_array_equal(np.asarray(got), want)


def test_brute_force_border_values():
  """A 3x3 conv of all +1 signs with all +1 weights counts the in-image taps:
  4 at the corners, 6 on the edges, 9 inside (times the channels)."""
  c = 37
  x = jnp.ones((1, 4, 5, c))
  w = np.ones((3, 3, c, 2), np.float32)
  conv = jax.jit(
    lambda x, w: packed.binary_conv(packed.pack_signs(x), w, channels_per_group=c, kernel_size=3)
  )
  y = conv(x, jnp.asarray(packed.pack_conv_weight(w, 1)))
  taps = np.array([[4, 6, 6, 6, 4], [6, 9, 9, 9, 6], [6, 9, 9, 9, 6], [4, 6, 6, 6, 4]])
  np.testing.assert_array_equal(np.asarray(y)[0, :, :, 0], taps * c)
  np.testing.assert_array_equal(np.asarray(y)[0, :, :, 1], taps * c)


@pytest.mark.parametrize("in_features", [1, 31, 32, 65, 200])
def test_packed_dense_equals_matmul(in_features):
  rng = np.random.default_rng(in_features)
  x = rng.standard_normal((3, in_features)).astype(np.float32)
  w = np.where(rng.standard_normal((in_features, 7)) >= 0, 1.0, -1.0).astype(np.float32)
  want = np.where(x >= 0, 1, -1).astype(np.int64) @ w.astype(np.int64)
  got = packed.binary_dense(
    packed.pack_signs(jnp.asarray(x)),
    jnp.asarray(packed.pack_dense_weight(w)),
    in_features=in_features,
  )
  np.testing.assert_array_equal(np.asarray(got), want)


def test_pack_layout_and_sign_of_zero():
  x = jnp.asarray([[0.0, -1.0, 2.0, -0.5] + [1.0] * 30 + [-3.0]])  # 35 channels
  words = np.asarray(packed.pack_signs(x))
  # bit i = channel i is negative; bit 2 of the second word is channel 34.
  assert words.shape == (1, 1, 2)
  assert words[0, 0, 0] == (1 << 1) | (1 << 3) and words[0, 0, 1] == 1 << 2
  np.testing.assert_array_equal(
    np.asarray(packed.unpack_signs(jnp.asarray(words), 35)), np.where(np.asarray(x) >= 0, 1.0, -1.0)
  )


def test_sign_conv_fuses_threshold_and_affine_like_the_float_twin():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 40)), jnp.float32)
  w = np.where(rng.standard_normal((3, 3, 20, 16)) >= 0, 1.0, -1.0).astype(np.float32)
  t, s, b = (jnp.asarray(rng.standard_normal(n), jnp.float32) for n in (40, 16, 16))
  got = jax.jit(
    lambda x: packed.sign_conv(
      x,
      jnp.asarray(packed.pack_conv_weight(w, 2)),
      threshold=t,
      scale=s,
      shift=b,
      in_channels=40,
      groups=2,
      kernel_size=3,
      stride=2,
    )
  )(x)
  want = packed.float_sign_conv(
    x, jnp.asarray(w), threshold=t, scale=s, shift=b, groups=2, stride=2
  )
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-5)
