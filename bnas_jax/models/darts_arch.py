"""The networks of the DARTS-family trainer's spaces: the family objects, built from a config.

For the cell spaces (BNAS, BATS: `search_spaces/darts.py`) the supernet is
`darts_cells.SearchNetwork` and a genotype's network `darts_cells.GenotypeNetwork`
(`CellFamily`); for the bimodal paper's MBConv space (`search_spaces/mbconv.py`) they are
`binary_mbconv`'s (`binary_mbconv.MBConvFamily`). `family(config)` picks one by
`config.space`, once; the trainer and `summary` only call the family's methods
(`models/families.py`).
"""

import dataclasses
from typing import Any

import flax.linen as nn

from bnas_jax import cost_model
from bnas_jax.models import binary_mbconv
from bnas_jax.models import darts_cells
from bnas_jax.models import darts_ops
from bnas_jax.search_spaces import darts as darts_space
from bnas_jax.search_spaces import mbconv

SHORTCUT_LAYER = "res_conv"  # the real 2x2 projections of BNAS's inter-cell skips


def op_options(model_config: Any, binary_weights: bool) -> darts_ops.OpOptions:
  return darts_ops.OpOptions(
    binary_weights=binary_weights,
    groups=model_config.groups,
    shuffle_groups=model_config.shuffle_groups,
  )


def cell_cost_summary(model: Any, image_shape: tuple[int, ...]) -> dict[str, Any]:
  """Costs of a cell network with the real-valued shortcut projections counted separately."""
  report = cost_model.count_costs(model, (1, *image_shape), train=False)
  shortcut = [l for l in report.layers if SHORTCUT_LAYER in l.name]
  shortcut_flops = sum(l.macs.get(32, 0) for l in shortcut)
  shortcut_params = sum(sum(l.params.values()) for l in shortcut)
  return {
    "flops": report.flops,
    "bops": report.bops,
    "ops": report.ops,
    "params": report.params,
    "binary_params": report.binary_params,
    "model_size_bytes": report.model_size_bytes,
    "shortcut_flops": shortcut_flops,
    "shortcut_params": shortcut_params,
    "flops_without_shortcuts": report.flops - shortcut_flops,
    "ops_without_shortcuts": report.ops - shortcut_flops,
  }


@dataclasses.dataclass(frozen=True)
class CellFamily:
  """A cell space (BNAS, BATS) on one config: its supernet, genotype networks and costs."""

  config: Any
  space: darts_space.CellSpace

  def check_config(self) -> None:
    """The cell networks take every `config.model` / `config.final` field as configured."""

  def search_network(self, num_classes: int) -> nn.Module:
    """The supernet the bilevel search trains (`config.model`, `config.search`)."""
    m = self.config.model
    return darts_cells.SearchNetwork(
      self.space,
      num_classes,
      channels=m.channels,
      num_cells=m.num_cells,
      stem_multiplier=m.stem_multiplier,
      inter_cell_skip=m.inter_cell_skip,
      temperature=self.space.temperature,
      options=op_options(m, self.config.search.binary_weights),
      stem=m.stem,
      fused=m.get("fused", True),
    )

  def network(self, genotype: darts_space.Genotype, num_classes: int) -> nn.Module:
    """The network of `genotype` trained from scratch (`config.final`, `config.model`)."""
    f, m = self.config.final, self.config.model
    return darts_cells.GenotypeNetwork(
      genotype,
      num_classes,
      channels=f.channels,
      num_cells=f.num_cells,
      stem_multiplier=m.stem_multiplier,
      inter_cell_skip=m.inter_cell_skip,
      options=op_options(m, m.binary_weights),
      stem=f.stem,
      drop_path=f.drop_path_prob > 0,
    )

  def cost(
    self, genotype: darts_space.Genotype, num_classes: int, image_shape: tuple[int, ...]
  ) -> dict[str, Any]:
    """`cell_cost_summary` of the genotype's network."""
    return cell_cost_summary(self.network(genotype, num_classes), image_shape)


def family(config: Any) -> Any:
  """The family of the space `config.space` names (`darts.space_from_config`)."""
  space = darts_space.space_from_config(config)
  if config.space == mbconv.NAME:
    return binary_mbconv.MBConvFamily(config, space)
  return CellFamily(config, space)


def space_counts(config: Any) -> dict[str, Any]:
  """`summary --space`: the exact size of the config's space."""
  return family(config).space.count()
