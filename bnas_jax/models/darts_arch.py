"""Cell genotypes and MBConv choice lists for `summary --arch` / `--space`.

Used as `config.arch_resolver` by `configs/bnas.py`, `bats.py` and `bimodal.py`:

* `--arch=FILE` (a genotype JSON the search wrote, e.g. `genotype_best.json`;
  for the MBConv space also a choice-list string such as
  `'c16[MB5(6)] c24[MB3(1)] c32[MB3(3)]'`) builds the final network the config
  would train from it (`trainers/darts.py:final_model`), so its costs are
  counted on the module that trains.
* `--space` counts the derivable architectures exactly: per DARTS cell, each of
  the 4 intermediate nodes takes 2 of its n = 2..5 inputs (an unordered pair)
  with one op each, so a cell has prod_n C(n, 2) * |ops|^2 = 180 |ops|^8
  choices (DARTS' "~10^9 per cell" for its 7 ops) and a genotype the square of
  that (normal x reduction); Zeroise counts as an op only when the derivation
  keeps it (`config.derive.keep_zeroise`, BNAS). The MBConv count is
  `search_spaces/mbconv.py:space_size`.
"""

import math
from typing import Any

from bnas_jax.search import genotype as genotype_lib
from bnas_jax.search_spaces import darts_ops
from bnas_jax.search_spaces import mbconv
from bnas_jax.trainers import darts


def build_model(config: Any, arch_spec: str, num_classes: int) -> Any:
  """The final network of the genotype or choice list `arch_spec` names."""
  return darts.final_model(config, darts.load_genotype(config, arch_spec), num_classes)


def cell_choices(num_ops: int) -> int:
  """Derivable DARTS cells with `num_ops` candidate ops per edge."""
  nodes = range(2, 2 + genotype_lib.NUM_NODES)
  return math.prod(math.comb(n, 2) for n in nodes) * num_ops ** (2 * len(nodes))


def space_counts(config: Any) -> dict[str, Any]:
  space = darts.get_space(config)
  if isinstance(space, mbconv.MBConvSpace):
    return {"space": space.name, "architectures": mbconv.space_size(space)}
  ops = [op for op in space.ops
         if op != darts_ops.ZEROISE or config.derive.keep_zeroise]
  cell = cell_choices(len(ops))
  return {"space": space.name, "ops_per_edge": len(ops), "cells": cell,
          "architectures": cell * cell}
