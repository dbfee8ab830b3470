"""The random baseline at a searched architecture's cost (issue 13 §2)."""

import numpy as np
import pytest

from bnas_jax.search import random_baseline


def _uniform(rng):
  return int(rng.integers(0, 1000))  # an "architecture" whose cost is itself


def test_keeps_the_closest_draw_at_or_under_the_target():
  rng = np.random.default_rng(0)
  draws = np.random.default_rng(0).integers(0, 1000, size=20)
  arch, cost = random_baseline.sample_at_cost(
    _uniform, float, 500.0, rng, num_samples=20, tolerance=0.0
  )
  assert cost == arch == max(d for d in draws if d <= 500)


def test_stops_at_a_draw_within_the_tolerance():
  calls = []

  def sample(rng):
    calls.append(1)
    return [100, 480, 495, 499][len(calls) - 1]

  arch, _ = random_baseline.sample_at_cost(
    sample, float, 500.0, None, num_samples=4, tolerance=0.02
  )
  assert arch == 495 and len(calls) == 3


def test_without_a_draw_under_the_target_keeps_the_cheapest():
  seq = iter([900, 700, 800])
  arch, cost = random_baseline.sample_at_cost(
    lambda rng: next(seq), float, 10.0, None, num_samples=3
  )
  assert (arch, cost) == (700, 700.0)


def test_rejects_no_samples():
  with pytest.raises(ValueError):
    random_baseline.sample_at_cost(_uniform, float, 1.0, np.random.default_rng(0), num_samples=0)
