"""The DMS family: the width space of a config and the networks of its width vectors.

The space, its architectures (`Widths`) and what `--arch` accepts are in
`search_spaces/dms_widths.py`; here a width vector becomes a network
(`models/dms_nets.py`), a `config.model` for the supervised trainer, and a cost.
`DmsFamily` is the family object (`models/families.py`) of `configs/dms.py`.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import ml_collections

from bnas_jax import cost_model
from bnas_jax.models import dms_nets
from bnas_jax.search_spaces import dms_widths


@dataclasses.dataclass(frozen=True)
class DmsFamily:
  """DMS on one config: the width space of `config.model`'s family and its networks."""

  config: Any
  space: dms_widths.WidthSpace

  def check_config(self) -> None:
    """`config.model.name` and `base_widths` were checked when the space was built."""

  def model_config(self, arch: dms_widths.Widths) -> ml_collections.ConfigDict:
    """The `config.model` of `arch` (what `models.build_model` and the trainers take)."""
    self.space.validate(arch)
    return ml_collections.ConfigDict(
      dict(
        name=self.space.family,
        widths=tuple(arch.widths),
        binary=arch.binary,
        binary_weights=True,
      )
    )

  def network(self, arch: dms_widths.Widths, num_classes: int) -> nn.Module:
    """The binary (or Table 1's full-precision) network at `arch`'s widths."""
    self.space.validate(arch)
    return dms_nets.make_net(self.space.family, arch.widths, num_classes, binary=arch.binary)

  def search_network(self, num_classes: int) -> nn.Module:
    """None: every search block runs `network` at its buffer widths with channel masks."""
    raise NotImplementedError(
      "DMS has no supernet: each search block builds `network` at buffer widths (trainers/dms.py)."
    )

  def cost(
    self, arch: dms_widths.Widths, num_classes: int, image_shape: tuple[int, ...]
  ) -> dict[str, Any]:
    """Table 1's counting (binary weights 1 bit, the rest 32) of `arch`'s network."""
    report = cost_model.count_costs(self.network(arch, num_classes), (1, *image_shape), train=False)
    return {
      "ops": report.ops,
      "flops": report.flops,
      "bops": report.bops,
      "params": report.params,
      "binary_params": report.binary_params,
      "model_size_bytes": report.model_size_bytes,
    }


def family(config: Any) -> DmsFamily:
  """The family of `configs/dms.py` (`config.model.name` picks VGG-11 or ResNet-18)."""
  return DmsFamily(config, dms_widths.space_from_config(config))


def resolve(config: Any, arch: str) -> ml_collections.ConfigDict:
  """The `config.model` of an architecture spec (`dms_widths.WidthSpace.resolve`)."""
  fam = family(config)
  return fam.model_config(fam.space.resolve(arch))
