"""A method family's space together with the networks it builds, chosen once from a config.

A search space (`search_spaces/interface.py`) is data without JAX; its networks are Flax
modules. A `Family` joins them for one run's config: the space, the standalone network of
an architecture (what a deployment, an evaluation or `summary --arch` runs), the search
network (supernet) where the method trains one, and the cost of an architecture counted
on the module that runs. Trainers, `summary` and the searches hold a family (or its
space) and never ask which family it is.

| family | config | space | object |
|---|---|---|---|
| NAS-BNN | `configs/nasbnn.py` | `nasbnn.SearchSpace` | `nasbnn_subnet.NasBnnFamily` |
| BNAS / BATS cells | `configs/bnas.py`, `bats.py`, `bimodal.py` | `darts.CellSpace` | `darts_arch.CellFamily` |
| bimodal MBConv | `configs/bimodal.py:mbconv` | `mbconv.MBConvSpace` | `binary_mbconv.MBConvFamily` |
| DMS widths | `configs/dms.py` | `dms_widths.WidthSpace` | `dms_arch.DmsFamily` |
"""

from typing import Any, Protocol, runtime_checkable

import flax.linen as nn

from bnas_jax.errors import UserInputError
from bnas_jax.models import darts_arch
from bnas_jax.models import dms_arch
from bnas_jax.models import nasbnn_subnet
from bnas_jax.search_spaces import interface


@runtime_checkable
class Family(Protocol):
  """One method family on one config.

  Attributes:
    space: the family's search space (`interface.SearchSpace`).
  """

  space: interface.SearchSpace

  def check_config(self) -> None:
    """`UserInputError` for network fields of the config this family cannot build."""

  def network(self, arch: Any, num_classes: int) -> nn.Module:
    """The standalone network of `arch`, as the config trains and deploys it."""

  def search_network(self, num_classes: int) -> nn.Module:
    """The network the search trains (supernet); every architecture of the space runs on it.

    DMS has none of its own: each search block runs `network` at buffer widths with
    channel masks (`trainers/dms.py`), so its family raises `NotImplementedError`.
    """

  def cost(self, arch: Any, num_classes: int, image_shape: tuple[int, ...]) -> dict[str, Any]:
    """Costs of `network(arch)` counted by `cost_model` ("ops", "params", ... raw counts)."""


# The trainer a config names decides its family; the DARTS trainer runs two spaces.
_BY_TRAINER = {
  "nasbnn": nasbnn_subnet.family,
  "darts": darts_arch.family,
  "dms": dms_arch.family,
}


def from_config(config: Any, flag: str = "--arch") -> Family:
  """The family of a search config; a fixed-network config -> `UserInputError` naming `flag`."""
  make = _BY_TRAINER.get(config.get("trainer"))
  if make is None:
    raise UserInputError(
      f"{flag} was given but this config describes one fixed network "
      f"(config.model.name={config.model.get('name')!r}) and has no search space; drop {flag}."
    )
  family = make(config)
  family.check_config()
  return family
