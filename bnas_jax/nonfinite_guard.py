"""Stop a run on NaN/inf in the loss or gradient norm, naming the last good checkpoint."""

import math
from typing import Mapping, Optional


class NonFiniteError(RuntimeError):
  """Raised when a training metric becomes NaN or infinite."""


def check_finite(
  step: int,
  metrics: Mapping[str, float],
  last_good_checkpoint: Optional[str],
  keys: tuple[str, ...] = ("loss", "grad_norm"),
) -> None:
  """Raises `NonFiniteError` if any of `keys` in `metrics` is not finite."""
  bad = {
    k: float(metrics[k]) for k in keys if k in metrics and not math.isfinite(float(metrics[k]))
  }
  if bad:
    where = last_good_checkpoint or "none (no checkpoint was written yet)"
    raise NonFiniteError(
      f"Training stopped at step {step}: non-finite {', '.join(f'{k}={v}' for k, v in bad.items())}. "
      f"The last good checkpoint is {where}; lower the learning rate or check the data, then "
      "resume from it (checkpoints after it were not written)."
    )
