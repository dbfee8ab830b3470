"""Name-pattern rules that give every parameter a label, in one place.

A rule list is `((regex, label), ...)`; a parameter's name is its path joined by
"/" (e.g. "block3/conv_1x1/kernel") and the first regex that `re.fullmatch`es
gives its label. Labels decide optimizer groups (weight decay or not,
architecture vs. weights) through `optax.partition`.
"""

import re
from typing import Any, Sequence

import jax

from bnas_jax.errors import UserInputError

Rules = Sequence[tuple[str, str]]


def param_name(path: tuple[Any, ...]) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def label_params(params: Any, rules: Rules) -> Any:
  """A pytree like `params` whose leaves are the labels of the first matching rule."""
  try:
    compiled = [(re.compile(pattern), label) for pattern, label in rules]
  except re.error as e:
    raise UserInputError(f"Bad regex in parameter rules {list(rules)!r}: {e}.") from e

  def label(path, _):
    name = param_name(path)
    for pattern, lab in compiled:
      if pattern.fullmatch(name):
        return lab
    raise UserInputError(
      f"Parameter {name!r} matches none of the parameter rules {[p for p, _ in rules]!r}; "
      "end the rule list with a catch-all ('.*', label)."
    )

  return jax.tree_util.tree_map_with_path(label, params)


# NAS-BNN / ReActNet: weight decay on conv and classifier kernels only; never on
# BN, PReLU slopes, learnable biases/thresholds, LSQ scales or kernel transforms.
WEIGHT_DECAY_ON_KERNELS: Rules = (
  (r".*(conv[^/]*|classifier)/kernel", "decay"),
  (r".*", "no_decay"),
)
