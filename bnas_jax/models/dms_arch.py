"""DMS architectures by name or width list: `summary --arch` and evaluation runs.

An architecture of `configs/dms.py` is a width vector of the config's family
(`models/dms_nets.py`, one width per slot). `--arch` accepts

* `fp`: the full-precision network at base (1x) widths (Table 1, "Full Prec."),
* `uniform1x` ... `uniform4x`: the binary network with every base width times k
  (Table 1, "BNN kx"); base widths are the CIFAR ones unless `config.model.base_widths`
  overrides them,
* a JSON list of integer widths, e.g. `[24, 48, 30, 12, 160, 64, 120, 96]`,
* a path to a JSON file holding such a list or an object with a `widths` list (the
  `dms_widths.json` a search writes).

Used as `config.arch_resolver` by `configs/dms.py`.
"""

import os
from typing import Any

import ml_collections

from bnas_jax import user_files
from bnas_jax.errors import UserInputError
from bnas_jax.models import dms_nets

UNIFORM = {f"uniform{k}x": float(k) for k in (1, 2, 3, 4)}
NAMES = ("fp", *UNIFORM)


def _family(config: Any) -> str:
  family = config.model.name
  if family not in dms_nets.FAMILIES:
    raise UserInputError(
      f"config.model.name={family!r} is not a DMS family ({', '.join(dms_nets.FAMILIES)})."
    )
  return family


def _parse_widths(family: str, arch: str) -> tuple[int, ...]:
  text = arch
  if not arch.lstrip().startswith("[") and os.path.isfile(arch):
    text = user_files.read_text(arch, "--arch file", ascii_only=True)
  try:
    value = user_files.parse_json(text, f"--arch={user_files.quote(arch)}")
  except UserInputError:
    raise UserInputError(
      f"--arch={user_files.quote(arch)} is neither a known architecture ({', '.join(NAMES)}), "
      f"nor a JSON list of {len(dms_nets.base_widths(family))} integer widths, nor a file holding one."
    )
  if isinstance(value, dict):
    value = value.get("widths")
  n = len(dms_nets.base_widths(family))
  if (
    not isinstance(value, list)
    or len(value) != n
    or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 16 for v in value)
  ):
    raise UserInputError(
      f"--arch={user_files.quote(arch)}: {family} needs a list of {n} positive integer "
      f"widths, one per slot ({', '.join(dms_nets.slot_names(family))}); "
      f"got {user_files.quote(value)}."
    )
  return tuple(value)


def resolve(config: Any, arch: str) -> ml_collections.ConfigDict:
  """The `config.model` of architecture `arch` (see the module docstring)."""
  family = _family(config)
  if not isinstance(arch, str) or not arch.strip():
    raise UserInputError(
      f"--arch={user_files.quote(arch)} is empty; use one of "
      f"{', '.join(NAMES)} or a JSON width list."
    )
  arch = arch.strip()
  base = dms_nets.base_widths_of(config.model)
  if arch == "fp":
    widths, binary = base, False
  elif arch in UNIFORM:
    widths, binary = dms_nets.uniform_widths(family, UNIFORM[arch], base), True
  else:
    widths, binary = _parse_widths(family, arch), True
  return ml_collections.ConfigDict(
    dict(name=family, widths=tuple(widths), binary=binary, binary_weights=True)
  )


def build_model(config: Any, arch: str, num_classes: int) -> Any:
  """`summary --arch`: the network of architecture `arch`."""
  from bnas_jax.models import build_model as build  # pylint: disable=g-import-not-at-top

  return build(resolve(config, arch), num_classes)


def space_counts(config: Any) -> dict[str, Any]:
  """`summary --space`: the DMS space per slot is every width >= ceil(0.3 c); unbounded."""
  family = _family(config)
  return {
    "family": family,
    "slots": len(dms_nets.base_widths(family)),
    "slot_names": list(dms_nets.slot_names(family)),
    "base_widths": list(dms_nets.base_widths_of(config.model)),
    "min_ratio": 0.3,
    "max_ratio": None,
    "architectures": "unbounded (no upper bound on the expansion ratio, App. B.2.1)",
  }
