"""DMS search math: logistic width distributions, clustered candidates, relaxation.

DMS (Li et al., "DMS: Differentiable diMension Search for Binary Neural Networks",
ICLR 2020 NAS workshop) gives every searched layer an expansion ratio
r ~ Logistic(mu, sigma) and searches mu by gradient descent. Everything here is a
small pure function of arrays; the trainer (`trainers/dms.py`) strings them together.

* Three clustered candidates {mu - 0.8 sigma, mu, mu + 0.8 sigma} (Sec. 2.3), each owning
  a bin of half-width Delta = 0.4 sigma; their probabilities are the logistic CDF mass of
  the bins, renormalised over the candidates (Eq. 4-5).
* Gumbel-softmax weights pi over the candidates with tau = 1 and no straight-through
  (Eq. 6, App. B.2.1).
* The linearity of convolution (Eq. 11): the three candidate kernels, zero-padded to the
  largest width and scaled by pi, are summed so one convolution computes the mixture.
  With nested candidates (candidate i uses the first c_i output channels of one shared
  kernel, the weight sharing that best-effort initialization presumes) the sum equals the
  shared kernel times a per-channel mask, `channel_mask`.
* The expected memory: a network's model size is multilinear in its layer widths (every
  weight tensor is k*k*c_in*c_out, every BN/bias vector is c), so its expectation under
  independent candidate distributions is the size at the expected widths
  E[c_j] = sum_i p_i c_ij. `memory_at` evaluates the size polynomial extracted from the
  cost model (`models/dms_nets.size_polynomial`) at those widths; d E[Memory] / d mu flows
  through the CDF.
* Bounds (App. B.2.1): candidate ratios >= 0.3; mu - Delta >= 0.25; no upper bound.
* sigma deflation: sigma_0 = 1 multiplied by beta after every mu update, reaching 0.3 after
  the last one (beta = 0.3 ** (1 / blocks), derived).
* Best-effort initialization (Eq. 9-10): the leading slice of every weight of the last
  trained network is copied into the new network, whatever the shapes.

Where the gradient to mu comes from: with candidates at mu + k sigma exactly, the bin
masses do not depend on mu. Alg. 1 builds the architecture of a block from the candidates
at the block's start; while mu is optimized on the validation data the candidates stay
fixed (they are the network's widths), so p_i(mu) = CDF-mass of the fixed bins under
Logistic(mu, sigma) moves with mu, which is the path the paper describes (App. A.2).

References:
  Li et al., DMS, ICLR 2020 NAS workshop, Eq. 4-7, 9-11, Alg. 1, App. A-B.
  Jang et al., "Categorical Reparameterization with Gumbel-Softmax", arXiv:1611.01144.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

CANDIDATE_OFFSETS = (-0.8, 0.0, 0.8)  # candidates at mu + offset * sigma (Sec. 2.3)
HALF_BIN = 0.4  # Delta = 0.4 sigma (Sec. 2.3)
MIN_RATIO = 0.3  # smallest expansion ratio (App. B.2.1)
MIN_MU_MINUS_DELTA = 0.25  # smallest mu - Delta (App. B.2.1)


def logistic_cdf(x: Array, mu: Array, sigma: Array) -> Array:
  """CDF of Logistic(mu, sigma): 1 / (1 + exp(-(x - mu) / sigma)).

  Eq. 4 prints the exponent without the minus sign (that is the survival function, which
  would make the printed differences negative); the bin mass is the same either way.
  """
  return jax.nn.sigmoid((x - mu) / sigma)


def candidate_ratios(mu: Array, sigma: Array, min_ratio: float = MIN_RATIO) -> Array:
  """The clustered candidates {mu - 0.8 sigma, mu, mu + 0.8 sigma}, at least `min_ratio`.

  Args:
    mu: (n,) ratio means.
    sigma: scalar or (n,) scales.
    min_ratio: the lower bound of an expansion ratio (0.3 in App. B.2.1).

  Returns:
    (n, 3) candidate ratios, ascending.
  """
  mu = jnp.asarray(mu, jnp.float32)
  offsets = jnp.asarray(CANDIDATE_OFFSETS, jnp.float32)
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), mu.shape)
  return jnp.maximum(mu[:, None] + offsets[None, :] * sigma[:, None], min_ratio)


def candidate_widths(ratios: Any, base_widths: Sequence[int]) -> np.ndarray:
  """Integer channel counts round(r * c_base) (at least 1) of candidate ratios (n, 3)."""
  ratios = np.asarray(ratios, np.float64)
  base = np.asarray(base_widths, np.float64)[:, None]
  return np.maximum(1, np.round(ratios * base)).astype(np.int64)


def candidate_probabilities(mu: Array, sigma: Array, ratios: Array) -> Array:
  """Eq. 4-5: CDF mass of each candidate's bin, renormalised over the candidates.

  p_i = CDF(r_i + Delta) - CDF(r_i - Delta) with Delta = 0.4 sigma, divided by
  CDF(r_max + Delta) - CDF(r_min - Delta). When bounds clip candidates together the
  bins overlap and the numerators no longer sum to the denominator; the probabilities
  are then divided by their sum so they stay a distribution.

  Args:
    mu: (n,) means (the variable differentiated in the architecture step).
    sigma: scalar or (n,) scales.
    ratios: (n, 3) candidate ratios the network was built with (held fixed).

  Returns:
    (n, 3) probabilities summing to 1 per row.
  """
  mu = jnp.asarray(mu, jnp.float32)[:, None]
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), mu.shape[:1])[:, None]
  ratios = jnp.asarray(ratios, jnp.float32)
  delta = HALF_BIN * sigma
  mass = logistic_cdf(ratios + delta, mu, sigma) - logistic_cdf(ratios - delta, mu, sigma)
  total = logistic_cdf(jnp.max(ratios, -1, keepdims=True) + delta, mu, sigma) - logistic_cdf(
    jnp.min(ratios, -1, keepdims=True) - delta, mu, sigma
  )
  p = mass / total
  return p / jnp.sum(p, -1, keepdims=True)


def gumbel_softmax(key: Array, log_probs: Array, tau: float = 1.0) -> Array:
  """Eq. 6 weights softmax((log p + g) / tau), g ~ Gumbel(0, 1); no straight-through.

  Args:
    key: PRNG key; one Gumbel draw per entry of `log_probs`.
    log_probs: (..., 3) log-probabilities of the candidates.
    tau: temperature (1, constant, in App. B.2.1).
  """
  g = jax.random.gumbel(key, log_probs.shape, jnp.float32)
  return jax.nn.softmax((log_probs + g) / tau, axis=-1)


def channel_mask(widths: Sequence[int], weights: Array, max_width: int) -> Array:
  """m[c] = sum_i pi_i [c < c_i]: the nested candidates' mixture as a channel scale.

  Output channel c of the mixture sum_i pi_i pad(W[..., :c_i] * X) is m[c] times channel c
  of the full-width output (Eq. 11 with shared, nested candidate weights).

  Args:
    widths: the candidates' channel counts (ints or a traced int array), each <= max_width;
      channels from the largest candidate up to max_width get weight 0.
    weights: (len(widths),) mixture weights pi.
    max_width: channels of the full-width tensor (static).

  Returns:
    (max_width,) float32 mask.
  """
  channels = jnp.arange(max_width)[None, :]
  member = (channels < jnp.asarray(widths)[:, None]).astype(jnp.float32)  # (3, max_width)
  return jnp.asarray(weights, jnp.float32) @ member


def zero_pad_out(kernel: Array, width: int) -> Array:
  """A (..., c) kernel zero-padded along its last (output) axis to `width` channels."""
  pad = [(0, 0)] * (kernel.ndim - 1) + [(0, width - kernel.shape[-1])]
  return jnp.pad(kernel, pad)


def mixed_kernel(kernels: Sequence[Array], weights: Array) -> Array:
  """Eq. 11: sum_i pi_i * zero_pad(W_i), so one convolution computes the mixture.

  Args:
    kernels: the candidates' HWIO kernels, same input channels, any output widths.
    weights: (len(kernels),) mixture weights pi.

  Returns:
    The summed kernel at the largest output width.
  """
  width = max(k.shape[-1] for k in kernels)
  return sum(weights[i] * zero_pad_out(k, width) for i, k in enumerate(kernels))


def expected_widths(probs: Array, widths: Any) -> Array:
  """E[c_j] = sum_i p_ij c_ij for (n, 3) probabilities and candidate widths."""
  return jnp.sum(probs * jnp.asarray(widths, jnp.float32), axis=-1)


def memory_at(polynomial: dict, widths: Array) -> Array:
  """A model size polynomial (bytes) evaluated at real-valued widths.

  `polynomial` holds `const` (scalar), `linear` (n,) and `pairwise` (n, n, strictly upper
  triangular): size(w) = const + linear . w + w^T pairwise w, exact for every integer width
  vector (see `models/dms_nets.size_polynomial`). Because the size is multilinear, its
  value at the expected widths is the expected size under independent layer distributions.
  """
  w = jnp.asarray(widths, jnp.float32)
  return (
    jnp.asarray(polynomial["const"], jnp.float32)
    + jnp.dot(jnp.asarray(polynomial["linear"], jnp.float32), w)
    + w @ jnp.asarray(polynomial["pairwise"], jnp.float32) @ w
  )


def memory_penalty(memory: Array, target: float, lam: float) -> Array:
  """The hardware term of Eq. 7: lambda * max(0, Memory - Memory_target)."""
  return lam * jnp.maximum(0.0, memory - target)


def project_mu(mu: Array, sigma: Array, min_mu_minus_delta: float = MIN_MU_MINUS_DELTA) -> Array:
  """The bound mu - Delta >= 0.25 (Delta = 0.4 sigma; App. B.2.1). No upper bound."""
  return jnp.maximum(mu, min_mu_minus_delta + HALF_BIN * jnp.asarray(sigma, jnp.float32))


def deflation_factor(num_blocks: int, sigma_initial: float, sigma_final: float) -> float:
  """beta with sigma_initial * beta**num_blocks = sigma_final (Alg. 1 line 12)."""
  return (sigma_final / sigma_initial) ** (1.0 / max(1, num_blocks))


def sigma_for_block(block: int, num_blocks: int, sigma_initial: float, sigma_final: float) -> float:
  """sigma during block `block` (0-based): deflated by beta after each earlier block."""
  return sigma_initial * deflation_factor(num_blocks, sigma_initial, sigma_final) ** block


def final_widths(mu: Any, base_widths: Sequence[int]) -> tuple[int, ...]:
  """The evaluated network's widths: r = mu (Sec. 2.4), round(mu * c_base), at least 1."""
  return tuple(int(w) for w in candidate_widths(np.asarray(mu)[:, None], base_widths)[:, 0])


def best_effort_init(previous: Any, fresh: Any) -> Any:
  """Eq. 9-10: copy the leading slice of every previous leaf into the fresh leaf.

  Per axis the first min(old, new) entries are taken from `previous` (Eq. 9 when the new
  tensor is smaller, Eq. 10 when it is larger); the rest keeps its fresh initialization.
  Leaves are matched by their path; leaves missing from `previous` stay fresh.

  Args:
    previous: pytree of arrays of the last trained network (e.g. {"params", "batch_stats"}).
    fresh: pytree of the new network's freshly initialized arrays.

  Returns:
    A pytree shaped like `fresh`.
  """
  old = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(previous)[0]}

  def carry(path, new):
    prev = old.get(jax.tree_util.keystr(path))
    if prev is None or jnp.ndim(prev) != jnp.ndim(new):
      return new
    index = tuple(slice(0, min(a, b)) for a, b in zip(jnp.shape(prev), jnp.shape(new)))
    return jnp.asarray(new).at[index].set(jnp.asarray(prev)[index].astype(jnp.asarray(new).dtype))

  return jax.tree_util.tree_map_with_path(carry, fresh)
