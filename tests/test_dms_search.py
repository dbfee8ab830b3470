"""DMS search math (search/dms.py) against numpy re-derivations and the cost model."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnas_jax import cost_model
from bnas_jax import quantizers
from bnas_jax.models import dms_nets
from bnas_jax.search_spaces import dms_widths
from bnas_jax.search import dms


def _np_cdf(x, mu, s):
  return 1.0 / (1.0 + np.exp(-(x - mu) / s))


def test_candidate_probabilities_are_eq_4_5():
  mu = np.array([1.5, 0.9, 2.2])
  sigma = 0.7
  ratios = np.array([[1.0, 1.5, 2.1], [0.3, 0.8, 1.4], [1.7, 2.0, 2.9]])
  d = 0.4 * sigma
  mass = _np_cdf(ratios + d, mu[:, None], sigma) - _np_cdf(ratios - d, mu[:, None], sigma)
  total = _np_cdf(ratios.max(1, keepdims=True) + d, mu[:, None], sigma) - _np_cdf(
    ratios.min(1, keepdims=True) - d, mu[:, None], sigma
  )
  expected = mass / total
  expected /= expected.sum(1, keepdims=True)
  got = dms.candidate_probabilities(mu, sigma, ratios)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)


def test_centred_candidates_have_the_standard_logistic_bin_masses():
  # Candidates at mu + {-0.8, 0, 0.8} sigma with Delta = 0.4 sigma: three adjacent bins,
  # whose masses do not depend on mu or sigma.
  F = lambda z: 1 / (1 + np.exp(-z))
  masses = np.array([F(-0.4) - F(-1.2), F(0.4) - F(-0.4), F(1.2) - F(0.4)]) / (F(1.2) - F(-1.2))
  for mu, sigma in ((1.5, 1.0), (2.7, 0.3)):
    ratios = dms.candidate_ratios(np.array([mu]), sigma)
    np.testing.assert_allclose(ratios[0], [mu - 0.8 * sigma, mu, mu + 0.8 * sigma], rtol=1e-6)
    np.testing.assert_allclose(
      dms.candidate_probabilities(np.array([mu]), sigma, ratios)[0], masses, rtol=1e-5
    )


def test_gradient_reaches_mu_through_the_cdf():
  # With the block's candidates fixed, raising mu moves mass to the widest candidate.
  ratios = np.array([[0.7, 1.5, 2.3]])
  jac = jax.jacobian(lambda m: dms.candidate_probabilities(m, 1.0, ratios)[0])(jnp.array([1.5]))
  assert jac[0, 0] < 0 < jac[2, 0]
  eps = 1e-3
  numeric = (
    dms.candidate_probabilities(np.array([1.5 + eps]), 1.0, ratios)
    - dms.candidate_probabilities(np.array([1.5 - eps]), 1.0, ratios)
  )[0] / (2 * eps)
  np.testing.assert_allclose(jac[:, 0], numeric, rtol=2e-2, atol=1e-4)


def test_bounds_min_ratio_and_mu_minus_delta():
  ratios = dms.candidate_ratios(np.array([0.5]), 1.0)
  np.testing.assert_allclose(ratios[0], [0.3, 0.5, 1.3], rtol=1e-6)
  # mu - 0.4 sigma >= 0.25; no upper bound.
  np.testing.assert_allclose(
    dms.project_mu(jnp.array([0.1, 0.7, 9.0]), 1.0), [0.65, 0.7, 9.0], rtol=1e-6
  )
  np.testing.assert_allclose(dms.project_mu(jnp.array([0.1]), 0.3), [0.37], rtol=1e-6)


def test_sigma_deflation_reaches_the_final_value():
  beta = dms.deflation_factor(50, 1.0, 0.3)
  assert beta == pytest.approx(0.3 ** (1 / 50))
  assert dms.sigma_for_block(0, 50, 1.0, 0.3) == 1.0
  assert dms.sigma_for_block(50, 50, 1.0, 0.3) == pytest.approx(0.3)
  assert dms.sigma_for_block(25, 50, 1.0, 0.3) == pytest.approx(0.3**0.5)


def test_gumbel_softmax_samples_the_categorical_and_has_no_straight_through():
  p = jnp.array([0.2, 0.5, 0.3])
  pi = jax.vmap(lambda k: dms.gumbel_softmax(k, jnp.log(p)))(
    jax.random.split(jax.random.key(0), 20000)
  )
  np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=1e-5)
  # Gumbel-max: the argmax of log p + g is distributed as p.
  freq = np.bincount(np.asarray(jnp.argmax(pi, -1)), minlength=3) / pi.shape[0]
  np.testing.assert_allclose(freq, p, atol=0.015)
  # Soft weights (no ST one-hot): strictly between 0 and 1.
  assert 0.0 < float(pi.min()) and float(pi.max()) < 1.0


def _conv(x, w):
  return jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def test_linearity_trick_equals_the_sum_of_three_convolutions():
  keys = jax.random.split(jax.random.key(1), 5)
  x = jax.random.normal(keys[0], (2, 6, 6, 5))
  kernels = [jax.random.normal(keys[i + 1], (3, 3, 5, c)) for i, c in enumerate((3, 6, 8))]
  pi = jax.nn.softmax(jax.random.normal(keys[4], (3,)))
  one_conv = _conv(x, dms.mixed_kernel(kernels, pi))
  three_convs = sum(
    pi[i] * jnp.pad(_conv(x, k), ((0, 0), (0, 0), (0, 0), (0, 8 - k.shape[-1])))
    for i, k in enumerate(kernels)
  )
  np.testing.assert_allclose(one_conv, three_convs, rtol=1e-5, atol=1e-5)


def test_nested_candidates_equal_a_channel_mask_also_after_binarization_and_bn():
  keys = jax.random.split(jax.random.key(2), 3)
  x = jax.random.normal(keys[0], (4, 5, 5, 6))
  kernel = jax.random.normal(keys[1], (3, 3, 6, 10))
  widths, pi = (4, 7, 10), jax.nn.softmax(jax.random.normal(keys[2], (3,)))
  binarize = lambda k: quantizers.xnor_weight(quantizers.weight_standardization(k))

  def bn(y):  # batch-statistics normalisation, per channel
    return (y - y.mean((0, 1, 2))) / jnp.sqrt(y.var((0, 1, 2)) + 1e-5)

  mask = dms.channel_mask(widths, pi, 10)
  np.testing.assert_allclose(
    mask, [1, 1, 1, 1, pi[1] + pi[2], pi[1] + pi[2], pi[1] + pi[2], pi[2], pi[2], pi[2]], rtol=1e-6
  )

  @jax.jit
  def both_sides(x, kernel, pi):
    # Each candidate binarizes its own filters; per-filter WS and XNOR make that a slice.
    paths = [
      jnp.pad(bn(_conv(x, binarize(kernel[..., :c]))), ((0, 0),) * 3 + ((0, 10 - c),))
      for c in widths
    ]
    mixture = sum(pi[i] * p for i, p in enumerate(paths))
    sliced = [binarize(kernel[..., :c]) for c in widths]
    return (
      bn(_conv(x, binarize(kernel))) * mask,
      mixture,
      dms.mixed_kernel(sliced, pi),
      binarize(kernel) * mask,
    )

  masked, mixture, mixed, masked_kernel = both_sides(x, kernel, pi)
  np.testing.assert_allclose(masked, mixture, rtol=1e-4, atol=1e-4)
  # Eq. 11 on the kernels (before BN) is the same mask on the kernel.
  np.testing.assert_allclose(mixed, masked_kernel, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "family,widths",
  [
    ("dms_vgg11", [(3, 9, 5, 17, 2, 40, 7, 11), (16, 32, 64, 64, 128, 128, 128, 128)]),
    ("dms_resnet18", [(5, 7, 3, 9, 4, 6, 11, 2, 8, 13, 3, 10)]),
  ],
)
def test_size_polynomial_equals_the_cost_model(family, widths):
  poly = dms_nets.size_polynomial(family, 10)
  for w in widths:
    model = dms_nets.make_net(family, w, 10)
    counted = cost_model.count_costs(model, (1, 32, 32, 3), train=False).model_size_bytes
    assert float(dms.memory_at(poly, np.asarray(w, float))) == pytest.approx(counted, rel=1e-6)


def test_expected_memory_is_the_memory_at_expected_widths():
  # Exhaustive expectation over all 3^8 candidate combinations of VGG-11.
  poly = dms_nets.size_polynomial("dms_vgg11", 10)
  rng = np.random.default_rng(0)
  widths = rng.integers(2, 60, size=(8, 3))
  probs = rng.dirichlet(np.ones(3), size=8)
  combos = np.array(list(itertools.product(range(3), repeat=8)))  # (6561, 8)
  w = widths[np.arange(8), combos]
  pr = probs[np.arange(8), combos].prod(1)
  sizes = poly["const"] + w @ poly["linear"] + np.einsum("bi,ij,bj->b", w, poly["pairwise"], w)
  exact = float(np.sum(pr * sizes))
  got = float(dms.memory_at(poly, dms.expected_widths(jnp.asarray(probs), widths)))
  assert got == pytest.approx(exact, rel=1e-5)


_ADAM = optax.adam(0.05)


def _synthetic_valid_loss(mu, sigma, ratios, widths, lam, target_mb, poly):
  p = dms.candidate_probabilities(mu, sigma, ratios)
  ew = dms.expected_widths(p, widths)
  memory_mb = dms.memory_at(poly, ew) / 2**20
  return -0.02 * jnp.sum(jnp.log(ew)) + dms.memory_penalty(memory_mb, target_mb, lam)


@jax.jit
def _mu_block(mu, opt, sigma, ratios, widths, lam, target_mb, poly):
  def one(carry, _):
    mu, opt = carry
    grad = jax.grad(_synthetic_valid_loss)(mu, sigma, ratios, widths, lam, target_mb, poly)
    upd, opt = _ADAM.update(grad, opt, mu)
    return (dms.project_mu(optax.apply_updates(mu, upd), sigma), opt), None

  return jax.lax.scan(one, (mu, opt), None, length=40)[0]


def _search_sizes(lam: float, target_mb: float, blocks: int = 6) -> float:
  """The mu loop of Alg. 1 with a synthetic validation loss that prefers wide layers.

  L_valid = -0.02 * sum_j log E[c_j] (diminishing returns of width) stands in for the
  network; the rest is the real search math: clustering, CDF probabilities, E[Memory],
  the hinge penalty of Eq. 7, Adam, projection and sigma deflation. Returns the final
  model size in MB counted by the cost model at round(mu * base).
  """
  base = dms_widths.VGG11_BASE_WIDTHS
  poly = {
    k: jnp.asarray(v, jnp.float32) for k, v in dms_nets.size_polynomial("dms_vgg11", 10).items()
  }
  mu = jnp.full((8,), 1.5)
  opt = _ADAM.init(mu)
  sigma = 1.0
  for _ in range(blocks):
    ratios = dms.candidate_ratios(mu, sigma)
    widths = dms.candidate_widths(ratios, base)
    mu, opt = _mu_block(
      mu,
      opt,
      jnp.float32(sigma),
      ratios,
      jnp.asarray(widths, jnp.int32),
      jnp.float32(lam),
      jnp.float32(target_mb),
      poly,
    )
    sigma *= dms.deflation_factor(blocks, 1.0, 0.3)
  model = dms_nets.make_net("dms_vgg11", dms.final_widths(mu, base), 10)
  return cost_model.count_costs(model, (1, 32, 32, 3), train=False).model_size_bytes / 2**20


def test_larger_lambda_or_smaller_target_gives_a_smaller_model_that_meets_the_target():
  weak, strong = _search_sizes(0.01, 0.12), _search_sizes(10.0, 0.12)
  assert strong < weak
  # Tolerance: 10% of the target (rounding to integer widths and the candidates' spread).
  assert strong <= 0.12 * 1.10
  big_target = _search_sizes(10.0, 0.3)
  assert strong < big_target <= 0.3 * 1.10


def test_best_effort_init_copies_leading_slices_both_ways():
  old = {"a": {"kernel": jnp.arange(24.0).reshape(4, 6)}, "b": jnp.ones((3,))}
  fresh = {"a": {"kernel": -jnp.ones((3, 8))}, "b": jnp.zeros((5,)), "c": jnp.zeros((2,))}
  out = dms.best_effort_init(old, fresh)
  k = np.asarray(out["a"]["kernel"])
  np.testing.assert_array_equal(k[:, :6], np.arange(24.0).reshape(4, 6)[:3])  # Eq. 9 (rows)
  np.testing.assert_array_equal(k[:, 6:], -1.0)  # Eq. 10: the rest stays fresh
  np.testing.assert_array_equal(out["b"], [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(out["c"], [0, 0])


def test_final_widths_round_mu_times_base():
  assert dms.final_widths([1.5, 0.31, 2.26], (16, 32, 128)) == (24, 10, 289)
