"""The networks of the DARTS-family trainer's spaces, built from a config, and the CLI resolver.

For the cell spaces (BNAS, BATS: `search_spaces/darts.py`) the supernet is
`darts_cells.SearchNetwork` and a genotype's network `darts_cells.GenotypeNetwork`;
for the bimodal paper's MBConv space (`search_spaces/mbconv.py`) they are
`binary_mbconv`'s. `search_network`, `final_network` and `cost_summary` pick
by the space they are given, so the trainer never asks which family it runs.

Used as `config.arch_resolver` by `configs/bnas.py`, `bats.py` and `bimodal.py`:

* `--arch=FILE` (a genotype JSON the search wrote, e.g. `genotype_best.json`;
  for the MBConv space also a choice-list string such as
  `'c16[MB5(6)] c24[MB3(1)] c32[MB3(3)]'`) builds the final network the config
  would train from it, so its costs are counted on the module that trains.
* `--space` counts the derivable architectures exactly (the space's `count()`).
"""

from typing import Any

from bnas_jax import cost_model
from bnas_jax.errors import UserInputError
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


def check_network_config(config: Any, space: Any) -> None:
  """The network fields of `config.model` / `config.final` the space family uses."""
  if isinstance(space, mbconv.MBConvSpace):
    binary_mbconv.check_shortcut(config.model.shortcut)
    if config.final.drop_path_prob:
      raise UserInputError(
        "config.final.drop_path_prob must be 0 for config.space='mbconv' "
        "(the MBConv network has no drop-path)."
      )


def search_network(config: Any, space: Any, num_classes: int) -> Any:
  """The supernet the bilevel search trains (`config.model`, `config.search`)."""
  if isinstance(space, mbconv.MBConvSpace):
    return binary_mbconv.search_network(config, space, num_classes)
  m = config.model
  return darts_cells.SearchNetwork(
    space,
    num_classes,
    channels=m.channels,
    num_cells=m.num_cells,
    stem_multiplier=m.stem_multiplier,
    inter_cell_skip=m.inter_cell_skip,
    temperature=space.temperature,
    options=op_options(m, config.search.binary_weights),
    stem=m.stem,
    fused=m.get("fused", True),
  )


def final_network(config: Any, space: Any, genotype: Any, num_classes: int) -> Any:
  """The network of `genotype` trained from scratch (`config.final`, `config.model`)."""
  if isinstance(space, mbconv.MBConvSpace):
    return binary_mbconv.final_network(config, space, genotype, num_classes)
  f, m = config.final, config.model
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


def cost_summary(space: Any, model: Any, image_shape: tuple[int, ...]) -> dict[str, Any]:
  """The space family's cost summary of one of its final networks."""
  if isinstance(space, mbconv.MBConvSpace):
    return binary_mbconv.cost_summary(model, image_shape)
  return cell_cost_summary(model, image_shape)


def build_model(config: Any, arch_spec: str, num_classes: int) -> Any:
  """The final network of the genotype or choice list `arch_spec` names (`summary --arch`)."""
  space = darts_space.space_from_config(config)
  return final_network(config, space, space.load(arch_spec), num_classes)


def space_counts(config: Any) -> dict[str, Any]:
  """`summary --space`: the exact size of the config's space."""
  return darts_space.space_from_config(config).count()
