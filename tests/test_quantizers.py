"""Tests for bnas_jax.quantizers.

Every expected value is written independently of the code under test: numpy formulas, hand
computed numbers, or finite differences of a smooth function. Boundary points use values that
are exact in float32 (powers of two) so that `|x| == clip` really is equality.
"""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from bnas_jax import errors
from bnas_jax import quantizers as q

F32 = np.float32


def _next_up(v):
  """The next float32 above v: "just outside" a closed interval."""
  return np.nextafter(F32(v), F32(np.inf))


def _next_down(v):
  return np.nextafter(F32(v), F32(-np.inf))


def _vjp(fn, *args, cotangent):
  """Gradient of sum(fn(*args) * cotangent) w.r.t. every argument (jitted: see _jit)."""
  loss = lambda *a: jnp.sum(fn(*a) * cotangent)
  return _grad(loss, argnums=tuple(range(len(args))))(*args)


def _jit(fn):
  """jax.jit, used throughout to keep the file fast.

  Eager JAX compiles every primitive separately on first use; one jitted program per check is
  several times cheaper, and it also exercises every function under jit.
  """
  return jax.jit(fn)


def _grad(fn, argnums=0):
  """Jitted jax.grad."""
  return _jit(jax.grad(fn, argnums=argnums))


def _np_sign(x):
  return np.where(x >= 0, 1.0, -1.0)


# ------------------------------------------------------------------------------------------
# Sign binarizers
# ------------------------------------------------------------------------------------------


class TestSteSign:
  def test_forward_sign_zero_is_plus_one(self):
    x = jnp.array([-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.0], F32)
    np.testing.assert_array_equal(_jit(q.ste_sign)(x), [-1, -1, -1, 1, 1, 1, 1, 1])

  @pytest.mark.parametrize("use_jit", [False, True])
  def test_gradient_clip_boundaries(self, use_jit):
    x = jnp.array([-2.0, _next_down(-1.0), -1.0, -0.25, 0.0, 0.5, 1.0, _next_up(1.0)], F32)
    dy = jnp.arange(1.0, 9.0, dtype=F32)
    fn = lambda x: jnp.sum(q.ste_sign(x, 1.0) * dy)
    # The eager branch keeps one check of the custom_vjp outside jit.
    grad = _grad(fn) if use_jit else jax.grad(fn)
    # |x| == 1 passes, the next float outside is blocked.
    np.testing.assert_array_equal(grad(x), [0, 0, 3, 4, 5, 6, 7, 0])

  def test_custom_clip_value(self):
    x = jnp.array([-0.5, _next_down(-0.5), 0.25, 0.5, _next_up(0.5)], F32)
    g = _grad(lambda x: jnp.sum(q.ste_sign(x, clip_value=0.5)))(x)
    np.testing.assert_array_equal(g, [1, 0, 1, 1, 0])

  def test_no_clip_and_identity_sign(self):
    x = jnp.array([-100.0, -1.5, 0.0, 3.0], F32)
    dy = jnp.array([1.0, 2.0, 3.0, 4.0], F32)
    for fn in (lambda x: q.ste_sign(x, None), q.identity_sign):
      np.testing.assert_array_equal(_grad(lambda x: jnp.sum(fn(x) * dy))(x), dy)
      np.testing.assert_array_equal(fn(x), [-1, -1, 1, 1])

  def test_vmap_of_grad(self):
    x = jnp.array([[0.5, 2.0], [-1.0, -1.5]], F32)
    g = jax.vmap(_grad(lambda r: jnp.sum(q.ste_sign(r))))(x)
    np.testing.assert_array_equal(g, [[1, 0], [1, 0]])

  def test_traced_clip_value_is_rejected(self):
    with pytest.raises(Exception):
      jax.jit(q.ste_sign)(jnp.ones(3), 1.0)


# Fixed shape so the jitted function compiles once for all examples.
_STE_FWD_GRAD = jax.jit(lambda x: (q.ste_sign(x), jax.grad(lambda x: jnp.sum(q.ste_sign(x)))(x)))


@settings(max_examples=30, deadline=None)
@given(
  hnp.arrays(
    np.float32,
    (16,),
    elements=st.one_of(
      st.sampled_from([-1.0, 1.0, 0.0, -0.0]), st.floats(-4, 4, width=32, allow_subnormal=False)
    ),
  )
)
def test_ste_sign_property(x):
  out, g = _STE_FWD_GRAD(jnp.asarray(x))
  np.testing.assert_array_equal(out, np.where(x >= 0, 1.0, -1.0))
  np.testing.assert_array_equal(g, (np.abs(x) <= 1.0).astype(F32))


class TestApproxSign:
  def test_forward(self):
    x = jnp.array([-3.0, -0.1, 0.0, 0.1, 3.0], F32)
    np.testing.assert_array_equal(q.approx_sign(x), [-1, -1, 1, 1, 1])

  def test_gradient_values(self):
    x = jnp.array([-1.5, -1.0, -0.5, 0.0, 0.25, 0.75, 1.0, _next_up(1.0)], F32)
    # 2 - 2|x| by hand.
    expected = [0.0, 0.0, 1.0, 2.0, 1.5, 0.5, 0.0, 0.0]
    g = _grad(lambda x: jnp.sum(q.approx_sign(x)))(x)
    np.testing.assert_allclose(g, expected, atol=1e-7)

  def test_gradient_scales_cotangent(self):
    x = jnp.array([0.5, -0.25], F32)
    dy = jnp.array([3.0, -2.0], F32)
    (g,) = _vjp(q.approx_sign, x, cotangent=dy)
    np.testing.assert_allclose(g, [3.0 * 1.0, -2.0 * 1.5])


class TestSwishSign:
  @staticmethod
  def _smooth(x, beta):
    """BNN+ SwishSign 2*s*(1 + b*x*(1 - s)) - 1, s = sigmoid(b*x), in float64."""
    s = 1.0 / (1.0 + np.exp(-beta * x))
    return 2.0 * s * (1.0 + beta * x * (1.0 - s)) - 1.0

  @pytest.mark.parametrize("beta", [1.0, 5.0, 10.0])
  def test_gradient_matches_derivative_of_smooth_swishsign(self, beta):
    xs = np.linspace(-2.0, 2.0, 41)
    h = 1e-6
    fd = (self._smooth(xs + h, beta) - self._smooth(xs - h, beta)) / (2 * h)
    g = _grad(lambda x: jnp.sum(q.swish_sign(x, beta)))(jnp.asarray(xs, F32))
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-5)

  def test_forward_and_peak(self):
    x = jnp.array([-1.0, 0.0, 1.0], F32)
    np.testing.assert_array_equal(q.swish_sign(x), [-1, 1, 1])
    g = _grad(lambda x: jnp.sum(q.swish_sign(x, 5.0)))(jnp.zeros(1, F32))
    np.testing.assert_allclose(g, [5.0])  # beta*(2 - 0)/(1 + 1)

  def test_large_inputs_give_zero_not_nan(self):
    g = _grad(lambda x: jnp.sum(q.swish_sign(x, 5.0)))(jnp.array([-1e4, 1e4], F32))
    np.testing.assert_array_equal(g, [0.0, 0.0])

  def test_traced_beta_under_jit(self):
    f = _grad(lambda x, b: jnp.sum(q.swish_sign(x, b)), argnums=(0, 1))
    gx, gb = f(jnp.zeros(2, F32), jnp.asarray(3.0, F32))
    np.testing.assert_allclose(gx, [3.0, 3.0])
    assert gb.shape == () and float(gb) == 0.0


# ------------------------------------------------------------------------------------------
# Weight binarizers
# ------------------------------------------------------------------------------------------


def _kernel(shape, seed=0, scale=0.6):
  return np.random.default_rng(seed).normal(0.0, scale, size=shape).astype(F32)


class TestMagnitudeAwareSign:
  def test_forward_hand_values(self):
    # Two output channels of a (1, 1, 2, 2) kernel: column 0 = [0.5, -1.5], column 1 = [0, 2].
    w = np.array([[0.5, 0.0], [-1.5, 2.0]], F32).reshape(1, 1, 2, 2)
    out = np.asarray(_jit(q.magnitude_aware_sign)(w)).reshape(2, 2)
    np.testing.assert_allclose(out, [[1.0, 1.0], [-1.0, 1.0]])

  def test_forward_per_output_channel(self):
    w = _kernel((3, 3, 4, 5))
    alpha = np.abs(w).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(_jit(q.magnitude_aware_sign)(w), alpha * _np_sign(w), rtol=1e-6)

  def test_detached_gradient(self):
    w = _kernel((3, 3, 2, 3), scale=1.0)
    dy = _kernel((3, 3, 2, 3), seed=1)
    alpha = np.abs(w).mean(axis=(0, 1, 2))
    expected = alpha * dy * (np.abs(w) <= 1.0)
    (g,) = _vjp(q.magnitude_aware_sign, jnp.asarray(w), cotangent=dy)
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)

  def test_xnor_chain_rule_gradient(self):
    w = _kernel((3, 3, 2, 3), scale=1.0)
    dy = _kernel((3, 3, 2, 3), seed=2)
    n = 3 * 3 * 2
    alpha = np.abs(w).mean(axis=(0, 1, 2))
    s = _np_sign(w)
    # d/dw_i of alpha*sign(w): alpha * STE + sign(w_i)/n * sum_j dy_j sign(w_j).
    expected = alpha * dy * (np.abs(w) <= 1.0) + s / n * (dy * s).sum(axis=(0, 1, 2))
    for fn in (q.xnor_weight, lambda w: q.magnitude_aware_sign(w, 1.0, detach_scale=False)):
      (g,) = _vjp(fn, jnp.asarray(w), cotangent=dy)
      np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)

  def test_dense_kernel(self):
    w = _kernel((6, 4))
    np.testing.assert_allclose(_jit(q.xnor_weight)(w), np.abs(w).mean(0) * _np_sign(w), rtol=1e-6)


class TestXnorActivationScale:
  @staticmethod
  def _reference(x, k, stride, pad):
    """Channel mean of |x| averaged over k x k windows, zero padded, in numpy loops."""
    a = np.abs(x).mean(-1)
    a = np.pad(a, ((0, 0), pad[0], pad[1]))
    n, h, w = a.shape
    rows = range(0, h - k + 1, stride)
    cols = range(0, w - k + 1, stride)
    out = np.array(
      [[[a[b, i : i + k, j : j + k].sum() / (k * k) for j in cols] for i in rows] for b in range(n)]
    )
    return out[..., None]

  @pytest.mark.parametrize(
    "k,stride,padding,pad",
    [
      (3, 1, "SAME", ((1, 1), (1, 1))),
      (3, 2, "SAME", ((0, 1), (0, 1))),  # SAME with stride 2 on even size pads (0, 1).
      (3, 1, "VALID", ((0, 0), (0, 0))),
      (1, 1, "SAME", ((0, 0), (0, 0))),
    ],
  )
  def test_matches_numpy(self, k, stride, padding, pad):
    x = _kernel((2, 6, 6, 3), seed=3)
    out = _jit(lambda x: q.xnor_activation_scale(x, k, stride, padding))(x)
    expected = self._reference(x, k, stride, pad)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)

  def test_shape_matches_conv_output(self):
    x = jnp.ones((1, 7, 7, 4), F32)
    w = jnp.ones((3, 3, 4, 8), F32)
    y = lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    k = _jit(lambda x: q.xnor_activation_scale(x, 3, 2, "SAME"))(x)
    assert k.shape == y.shape[:3] + (1,)
    assert k.dtype == x.dtype
    assert float(k[0, 1, 1, 0]) == pytest.approx(1.0)  # an interior window of ones


# ------------------------------------------------------------------------------------------
# Weight normalisation
# ------------------------------------------------------------------------------------------


class TestWeightNorms:
  def test_channelwise_weight_norm_stats(self):
    w = _kernel((3, 3, 4, 6)) * 3.0 + 0.7
    out = np.asarray(_jit(q.channelwise_weight_norm)(w), np.float64)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2), ddof=1), 1.0, atol=1e-5)

  def test_channelwise_weight_norm_formula(self):
    w = _kernel((3, 3, 2, 4))
    mu = w.mean(axis=(0, 1, 2))
    var = ((w - mu) ** 2).sum(axis=(0, 1, 2)) / (3 * 3 * 2 - 1)
    np.testing.assert_allclose(
      _jit(q.channelwise_weight_norm)(w, eps=1e-5),
      (w - mu) / np.sqrt(var + 1e-5),
      rtol=1e-5,
      atol=1e-6,
    )
    np.testing.assert_allclose(
      _jit(q.channelwise_weight_norm)(w, eps=0.0), (w - mu) / np.sqrt(var), rtol=1e-5, atol=1e-6
    )

  def test_channelwise_weight_norm_hand_values(self):
    # One filter [1, 3]: mean 2, unbiased var 2.
    w = np.array([[1.0], [3.0]], F32)
    np.testing.assert_allclose(
      q.channelwise_weight_norm(w, eps=0.0), [[-1 / np.sqrt(2)], [1 / np.sqrt(2)]], rtol=1e-6
    )

  def test_weight_standardization_stats_and_formula(self):
    w = _kernel((3, 3, 4, 6)) * 2.0 - 0.3
    out = np.asarray(_jit(q.weight_standardization)(w), np.float64)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(out.var(axis=(0, 1, 2)), 1.0, atol=1e-4)
    mu = w.mean(axis=(0, 1, 2))
    var = ((w - mu) ** 2).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(out, (w - mu) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-6)

  def test_weight_norm_gradients_are_finite_and_orthogonal_to_shift(self):
    # Normalised outputs do not change when a constant is added to a filter, so the gradient of
    # any loss sums to zero over each filter.
    w = jnp.asarray(_kernel((3, 3, 2, 4)))
    dy = jnp.asarray(_kernel((3, 3, 2, 4), seed=5))
    for fn in (q.channelwise_weight_norm, q.weight_standardization):
      (g,) = _vjp(fn, w, cotangent=dy)
      assert np.all(np.isfinite(g))
      np.testing.assert_allclose(np.asarray(g).sum(axis=(0, 1, 2)), 0.0, atol=1e-5)


# ------------------------------------------------------------------------------------------
# LSQ-style quantizers
# ------------------------------------------------------------------------------------------


def _np_lsq_scale_grad(v, qn, qp):
  return np.where(v < qn, qn, np.where(v > qp, qp, np.round(v) - v))


class TestUnsignedActivationQuantizer:
  def test_forward_hand_values(self):
    alpha = 2.0
    x = jnp.array([-1.0, 0.0, 0.5, 1.0, 1.25, 2.0, 3.0], F32)
    # v = [-0.5, 0, 0.25, 0.5, 0.625, 1, 1.5]; v = 0.5 rounds half-to-even to 0.
    np.testing.assert_array_equal(
      _jit(q.unsigned_activation_quantizer)(x, alpha), [0, 0, 0, 0, 2, 2, 2]
    )

  def test_x_gradient_boundaries(self):
    alpha = 0.5
    # A normal tiny negative: XLA flushes denormals (nextafter(0, -inf)) to zero.
    x = jnp.array([-1e-7, 0.0, 0.25, 0.5, _next_up(0.5)], F32)
    g = _grad(lambda x: jnp.sum(q.unsigned_activation_quantizer(x, alpha)))(x)
    np.testing.assert_array_equal(g, [0, 1, 1, 1, 0])

  def test_scalar_alpha_gradient(self):
    x = jnp.array([-1.0, 0.0, 0.25, 0.75, 1.0, 3.0], F32)
    alpha = jnp.asarray(1.0, F32)
    # Per element: v<0 -> 0; inside round(v)-v = [0, -0.25, 0.25, 0]; v>1 -> 1.
    g = _grad(lambda a: jnp.sum(q.unsigned_activation_quantizer(x, a)))(alpha)
    assert g.shape == () and g.dtype == jnp.float32
    np.testing.assert_allclose(g, 0 - 0.25 + 0.25 + 0 + 1, atol=1e-7)

  @pytest.mark.parametrize("alpha_shape", [(4,), (1, 1, 4), ()])
  def test_per_channel_alpha_gradient(self, alpha_shape):
    rng = np.random.default_rng(7)
    x = rng.uniform(-0.5, 2.0, size=(2, 3, 4)).astype(F32)
    alpha = rng.uniform(0.5, 1.5, size=alpha_shape).astype(F32)
    dy = rng.normal(size=x.shape).astype(F32)
    gs = 0.3
    gx, ga = _vjp(
      lambda x, a: q.unsigned_activation_quantizer(x, a, grad_scale=gs),
      jnp.asarray(x),
      jnp.asarray(alpha),
      cotangent=dy,
    )
    v = x / alpha
    expected_a = dy * _np_lsq_scale_grad(v, 0, 1) * gs
    expected_a = expected_a.reshape(-1, 4).sum(0) if alpha_shape else expected_a.sum()
    assert ga.shape == alpha_shape and ga.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ga).reshape(-1), np.reshape(expected_a, -1), rtol=1e-5)
    np.testing.assert_allclose(gx, dy * ((v >= 0) & (v <= 1)), rtol=1e-6)

  def test_alpha_gradient_matches_finite_difference_where_smooth(self):
    # Outside the rounding region the forward is smooth in alpha (0 below, alpha above), so the
    # LSQ gradient there equals the true derivative.
    x = jnp.array([[-1.0, 5.0, 7.0]], F32)
    alpha = jnp.array([1.0, 1.0, 2.0], F32)
    f = lambda a: jnp.sum(q.unsigned_activation_quantizer(x, a) * jnp.array([1.0, 2.0, 3.0]))
    h = 1e-2
    fd = [(f(alpha.at[i].add(h)) - f(alpha.at[i].add(-h))) / (2 * h) for i in range(3)]
    np.testing.assert_allclose(_grad(f)(alpha), fd, rtol=1e-4)

  def test_rejects_alpha_that_enlarges_input(self):
    with pytest.raises(ValueError):
      q.unsigned_activation_quantizer(jnp.ones((2, 3)), jnp.ones((4, 2, 3)))


class TestLsqQuantize:
  def test_forward_and_gradients_hand_values_4bit(self):
    s = 0.5  # power of two, so w/s is exact and the clip boundaries are hit exactly
    v = np.array([-9.0, -8.0, -7.5, 0.25, 2.5, 7.0, 7.25, 8.0], F32)
    w = jnp.asarray(v * s)
    scale = jnp.asarray(s, F32)
    # Qn = -8, Qp = 7; half-to-even: -7.5 -> -8, 2.5 -> 2.
    np.testing.assert_allclose(
      _jit(lambda w, s: q.lsq_quantize(w, s, bits=4))(w, scale),
      np.array([-8, -8, -8, 0, 2, 7, 7, 7]) * s,
    )
    gw, gs = _grad(
      lambda w, s: jnp.sum(q.lsq_quantize(w, s, bits=4, grad_scale=1.0)), argnums=(0, 1)
    )(w, scale)
    np.testing.assert_array_equal(gw, [0, 1, 1, 1, 1, 1, 0, 0])
    # Qn | 0 | -0.5 | -0.25 | -0.5 | 0 | Qp | Qp
    np.testing.assert_allclose(gs, -8 + 0 - 0.5 - 0.25 - 0.5 + 0 + 7 + 7)

  def test_per_channel_scale_gradient_and_default_grad_scale(self):
    rng = np.random.default_rng(11)
    w = rng.normal(0, 1.0, size=(3, 3, 2, 4)).astype(F32)
    scale = np.array([0.01, 0.02, 0.005, 0.05], F32)
    dy = rng.normal(size=w.shape).astype(F32)
    gw, gs = _vjp(q.lsq_quantize, jnp.asarray(w), jnp.asarray(scale), cotangent=dy)
    qn, qp = -128, 127
    v = w / scale
    expected = (dy * _np_lsq_scale_grad(v, qn, qp)).sum(axis=(0, 1, 2)) / np.sqrt(18 * qp)
    assert gs.shape == (4,) and gs.dtype == jnp.float32
    np.testing.assert_allclose(gs, expected, rtol=1e-4)
    np.testing.assert_allclose(gw, dy * ((v >= qn) & (v <= qp)))
    np.testing.assert_allclose(
      _jit(q.lsq_quantize)(w, scale), np.round(np.clip(v, qn, qp)) * scale, rtol=1e-6, atol=1e-7
    )

  def test_scalar_scale_default_grad_scale_uses_whole_kernel(self):
    w = jnp.asarray(_kernel((3, 3, 2, 4), seed=12))
    scale = jnp.asarray(0.01, F32)
    g_default = _grad(lambda s: jnp.sum(q.lsq_quantize(w, s)))(scale)
    g_one = _grad(lambda s: jnp.sum(q.lsq_quantize(w, s, grad_scale=1.0)))(scale)
    np.testing.assert_allclose(g_default, g_one / np.sqrt(72 * 127), rtol=1e-5)

  def test_under_jit_with_traced_scale(self):
    w = jnp.asarray(_kernel((3, 3, 1, 2), seed=13))
    f = _grad(lambda w, s: jnp.sum(q.lsq_quantize(w, s, bits=8)), argnums=1)
    assert f(w, jnp.array([0.01, 0.02], F32)).shape == (2,)

  def test_init_scale(self):
    w = _kernel((3, 3, 2, 5), seed=14) + np.linspace(-1, 1, 5, dtype=F32)
    mu = w.mean(axis=(0, 1, 2))
    sd = w.std(axis=(0, 1, 2), ddof=1)
    expected = np.maximum(np.abs(mu - 3 * sd), np.abs(mu + 3 * sd)) / 128
    out = _jit(q.lsq_init_scale)(w)
    assert out.shape == (5,)
    np.testing.assert_allclose(out, expected, rtol=1e-5)

  def test_min_scale_floors_the_forward_and_passes_the_gradient(self):
    # NAS-BNN's code clamps the step size in place to float32 eps before every forward and
    # differentiates at the clamped value: a step size pushed below eps quantizes with eps.
    eps = float(np.finfo(np.float32).eps)
    w = jnp.asarray(np.array([-2e-5, -1e-6, 3e-7, 5e-5], F32))
    dy = np.array([1.0, -2.0, 0.5, 3.0], F32)
    floored = lambda w, s: q.lsq_quantize(w, s, bits=8, grad_scale=1.0, min_scale=eps)
    for below in (-0.3, 0.0, eps / 4):
      y = _jit(floored)(w, jnp.asarray(below, F32))
      np.testing.assert_allclose(
        y, np.round(np.clip(np.asarray(w) / eps, -128, 127)) * eps, rtol=1e-6
      )
      gs = _vjp(floored, w, jnp.asarray(below, F32), cotangent=dy)[1]
      v = np.asarray(w, np.float64) / eps
      np.testing.assert_allclose(gs, (dy * _np_lsq_scale_grad(v, -128, 127)).sum(), rtol=1e-5)
    # Above the floor nothing changes.
    s = jnp.asarray(1e-6, F32)
    np.testing.assert_array_equal(
      _jit(floored)(w, s), _jit(lambda w, s: q.lsq_quantize(w, s, grad_scale=1.0))(w, s)
    )

  def test_bits_validation(self):
    with pytest.raises(ValueError):
      q.lsq_quantize(jnp.ones((2, 2)), 1.0, bits=1)


# ------------------------------------------------------------------------------------------
# ReActNet
# ------------------------------------------------------------------------------------------


class TestReAct:
  def test_rsign_forward_and_threshold_gradient(self):
    x = np.array([[-0.5, 0.0], [0.3, -0.2], [-1.0, 0.4]], F32)
    t = np.array([0.5, -0.1], F32)
    # x + t = [[0, -0.1], [0.8, -0.3], [-0.5, 0.3]]; 0 maps to +1.
    np.testing.assert_array_equal(_jit(q.rsign)(x, t), [[1, -1], [1, -1], [-1, 1]])
    g = _grad(lambda t: jnp.sum(q.rsign(jnp.asarray(x), t)))(jnp.asarray(t))
    z = x + t
    expected = np.where(np.abs(z) <= 1, 2 - 2 * np.abs(z), 0).sum(0)
    np.testing.assert_allclose(g, expected, rtol=1e-5)

  def test_rsign_with_named_sign_fn(self):
    x = jnp.array([[2.0, -2.0]], F32)
    g = _grad(lambda x: jnp.sum(q.rsign(x, jnp.zeros(2), "identity_sign")))(x)
    np.testing.assert_array_equal(g, [[1, 1]])

  def test_rprelu(self):
    x = np.array([[-2.0, 1.0, 0.5], [3.0, -1.0, -0.5]], F32)
    b_in = np.array([0.5, 0.0, -1.0], F32)
    slope = np.array([0.25, 0.1, 2.0], F32)
    b_out = np.array([1.0, -1.0, 0.0], F32)
    z = x + b_in
    expected = np.where(z > 0, z, slope * z) + b_out
    np.testing.assert_allclose(_jit(q.rprelu)(x, b_in, slope, b_out), expected, rtol=1e-6)
    g_slope = _grad(lambda s: jnp.sum(q.rprelu(x, b_in, s, b_out)))(jnp.asarray(slope))
    np.testing.assert_allclose(g_slope, np.where(z > 0, 0, z).sum(0), rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Kernel transforms
# ------------------------------------------------------------------------------------------


class TestKernelTransforms:
  def test_ofa_identity_is_centre_crop(self):
    k5 = _kernel((5, 5, 3, 4), seed=20)
    ofa = jax.jit(q.ofa_kernel_transform, static_argnums=1)
    out = ofa(k5, 3, jnp.eye(9))
    np.testing.assert_array_equal(out, k5[1:4, 1:4])
    out7 = _kernel((7, 7, 1, 2), seed=21)
    np.testing.assert_array_equal(ofa(out7, 3, jnp.eye(9)), out7[2:5, 2:5])

  def test_ofa_permutation_matrix_permutes_positions(self):
    k5 = _kernel((5, 5, 2, 3), seed=22)
    crop = k5[1:4, 1:4].reshape(9, 2, 3)  # row-major (kh, kw) positions
    perm = np.random.default_rng(0).permutation(9)
    m = np.zeros((9, 9), F32)
    m[np.arange(9), perm] = 1.0  # (M @ v)[p] = v[perm[p]]
    out = jax.jit(q.ofa_kernel_transform, static_argnums=1)(k5, 3, m)
    np.testing.assert_array_equal(np.asarray(out).reshape(9, 2, 3), crop[perm])

  def test_ofa_general_matrix_convention_and_grads(self):
    k5 = _kernel((5, 5, 2, 3), seed=23)
    m = _kernel((9, 9), seed=24)
    crop = k5[1:4, 1:4].reshape(9, 6)
    expected = (m @ crop).reshape(3, 3, 2, 3)
    out = jax.jit(q.ofa_kernel_transform, static_argnums=1)(k5, 3, m)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    gk, gm = _grad(lambda k, m: jnp.sum(q.ofa_kernel_transform(k, 3, m)), argnums=(0, 1))(
      jnp.asarray(k5), jnp.asarray(m)
    )
    assert gk.shape == k5.shape and gm.shape == (9, 9)
    # d sum(M @ C)/dM[p, r] = sum over pairs of C[r].
    np.testing.assert_allclose(gm, np.tile(crop.sum(1), (9, 1)), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(gk)[0] == 0)  # the ring outside the crop gets no gradient

  @pytest.mark.parametrize("ks", [4, 7])
  def test_ofa_rejects_bad_kernel_size(self, ks):
    with pytest.raises(ValueError):
      q.ofa_kernel_transform(jnp.ones((5, 5, 1, 1)), ks, jnp.eye(ks * ks))

  def test_bi_transformation(self):
    k = _kernel((3, 3, 4, 2), seed=25)
    np.testing.assert_array_equal(_jit(q.bi_transformation)(k, jnp.eye(9)), k)
    m = _kernel((9, 9), seed=26)
    expected = (m @ k.reshape(9, 8)).reshape(k.shape)
    np.testing.assert_allclose(_jit(q.bi_transformation)(k, m), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
      q.bi_transformation(k, jnp.eye(4))


# ------------------------------------------------------------------------------------------
# dtypes
# ------------------------------------------------------------------------------------------

_X_FNS = {
  "ste_sign": q.ste_sign,
  "identity_sign": q.identity_sign,
  "approx_sign": q.approx_sign,
  "swish_sign": q.swish_sign,
  "magnitude_aware_sign": q.magnitude_aware_sign,
  "xnor_weight": q.xnor_weight,
  "channelwise_weight_norm": q.channelwise_weight_norm,
  "weight_standardization": q.weight_standardization,
  "unsigned_activation_quantizer": lambda x: q.unsigned_activation_quantizer(x, 0.5),
  "lsq_quantize": lambda x: q.lsq_quantize(x, jnp.full((4,), 0.01, F32)),
  "rsign": lambda x: q.rsign(x, jnp.zeros(4, F32)),
  "rprelu": lambda x: q.rprelu(x, jnp.zeros(4), jnp.full(4, 0.25), jnp.zeros(4)),
  "bi_transformation": lambda x: q.bi_transformation(x, jnp.eye(9)),
  "ofa_kernel_transform": lambda x: q.ofa_kernel_transform(x, 1, jnp.eye(1)),
  "xnor_activation_scale": lambda x: q.xnor_activation_scale(x, 3),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", sorted(_X_FNS))
def test_dtype_preserved_in_output_and_gradient(name, dtype):
  x = jnp.asarray(_kernel((3, 3, 2, 4), seed=30), dtype)
  fn = _X_FNS[name]
  out = jax.jit(fn)(x)
  assert out.dtype == dtype
  g = _grad(lambda x: jnp.sum(fn(x).astype(jnp.float32)))(x)
  assert g.dtype == dtype and g.shape == x.shape
  assert np.all(np.isfinite(np.asarray(g, np.float32)))


def test_bf16_input_with_f32_params_keeps_param_dtypes():
  x = jnp.asarray(_kernel((2, 3, 4), seed=31), jnp.bfloat16)
  alpha = jnp.full((4,), 0.5, F32)
  gx, ga = _grad(
    lambda x, a: jnp.sum(q.unsigned_activation_quantizer(x, a).astype(F32)), argnums=(0, 1)
  )(x, alpha)
  assert gx.dtype == jnp.bfloat16 and ga.dtype == jnp.float32 and ga.shape == (4,)


def test_bf16_params_get_bf16_gradients():
  # JAX accepts a wrong-dtype cotangent from a custom_vjp silently, so check it explicitly.
  w = jnp.asarray(_kernel((3, 3, 2, 4), seed=32))
  s = jnp.full((4,), 0.01, jnp.bfloat16)
  gs = _grad(lambda s: jnp.sum(q.lsq_quantize(w, s)))(s)
  ga = _grad(lambda a: jnp.sum(q.unsigned_activation_quantizer(w, a)))(s)
  assert gs.dtype == ga.dtype == jnp.bfloat16 and gs.shape == ga.shape == (4,)


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------


class TestRegistry:
  def test_names(self):
    assert q.get_quantizer(None) is None
    assert q.get_quantizer("ste_sign") is q.ste_sign
    assert q.get_quantizer("approx_sign") is q.approx_sign
    assert q.get_quantizer("swish_sign") is q.swish_sign
    assert q.get_quantizer("identity_sign") is q.identity_sign
    assert q.get_quantizer("magnitude_aware_sign") is q.magnitude_aware_sign
    assert q.get_quantizer("xnor_weight") is q.xnor_weight
    assert q.get_quantizer(q.approx_sign) is q.approx_sign

  def test_precision(self):
    assert q.precision(None) == 32
    for name in (
      "ste_sign",
      "approx_sign",
      "swish_sign",
      "identity_sign",
      "magnitude_aware_sign",
      "xnor_weight",
    ):
      assert q.precision(name) == 1

  @pytest.mark.parametrize("bad", ["sign", "STE_SIGN", 3])
  def test_unknown_raises_user_input_error(self, bad):
    with pytest.raises(errors.UserInputError, match="approx_sign") as info:
      q.get_quantizer(bad)
    assert "ste_sign" in str(info.value) and repr(bad) in str(info.value)
    with pytest.raises(errors.UserInputError):
      q.precision(bad)


def test_lsq_and_swish_gradients_inside_scan():
  # Regression: under lax.scan, JAX hands constant residuals back as Python
  # scalar literals; the backward rules must accept them.
  w = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)

  def loss(scale):
    def body(carry, _):
      y = q.lsq_quantize(w, scale, bits=4) + q.swish_sign(w)
      return carry + jnp.sum(y), None

    return jax.lax.scan(body, 0.0, None, length=2)[0]

  g = jax.grad(loss)(jnp.full((4,), 0.2))
  assert g.shape == (4,) and bool(jnp.all(jnp.isfinite(g)))
