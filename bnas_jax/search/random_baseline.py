"""The random-architecture baseline at a searched architecture's cost.

A search is only worth its compute if its result beats a random architecture
of the same space at the same cost trained the same way (Li & Talwalkar,
"Random search and reproducibility for NAS", 2019; Yu et al., "Evaluating the
search phase of NAS", ICLR 2020). `sample_at_cost` draws uniform samples of a
space and keeps the one whose cost is the closest at or under the target, so
the baseline never gets more compute than the searched architecture; with no
sample under the target it keeps the cheapest one (and says so through the
returned cost).
"""

from typing import Any, Callable

import numpy as np


def sample_at_cost(
  sample: Callable[[np.random.Generator], Any],
  cost: Callable[[Any], float],
  target: float,
  rng: np.random.Generator,
  *,
  num_samples: int = 64,
  tolerance: float = 0.02,
) -> tuple[Any, float]:
  """(architecture, its cost): the closest to `target` from below among `num_samples` draws.

  Stops early once a draw is within `tolerance` (relative) under the target.
  `sample(rng)` draws one architecture, `cost(arch)` prices it; both are the
  space's own, so the baseline is a uniform draw conditioned on its cost.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples={num_samples} must be >= 1")
  best, best_cost = None, None
  for _ in range(num_samples):
    arch = sample(rng)
    c = float(cost(arch))
    under, best_under = c <= target, best_cost is not None and best_cost <= target
    if (
      best is None
      or (under and (not best_under or c > best_cost))
      or (not under and not best_under and c < best_cost)
    ):
      best, best_cost = arch, c
    if best_cost <= target and best_cost >= target * (1.0 - tolerance):
      break
  return best, best_cost
