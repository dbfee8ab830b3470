"""`summary --arch` / `--space` for the cell and MBConv search configs (models/darts_arch.py)."""

import itertools

import numpy as np
import pytest

from bnas_jax import summary
from bnas_jax.errors import UserInputError
from bnas_jax.models import darts_arch
from bnas_jax.search_spaces import darts as darts_space
from configs import bats as bats_config
from configs import bimodal as bimodal_config
from configs import bnas as bnas_config


@pytest.mark.parametrize("num_ops", [1, 2, 3])
def test_cell_count_equals_brute_force_enumeration(num_ops):
  # Every cell the validator accepts, up to the order of a node's two edges.
  cells = set()
  per_node = []
  for node in range(darts_space.NUM_NODES):
    edges = [(op, src) for op in range(num_ops) for src in range(node + 2)]
    per_node.append({frozenset(p) for p in itertools.combinations(edges, 2) if p[0][1] != p[1][1]})
  for choice in itertools.product(*per_node):
    cells.add(choice)
  assert darts_space.cell_choices(num_ops) == len(cells)


def test_space_counts_match_darts_paper_order_and_zeroise_switch():
  c = bnas_config.get_config()
  counts = darts_arch.space_counts(c)
  assert counts["ops_per_edge"] == len(darts_space.BNAS.ops)  # Zeroise kept (BNAS)
  assert counts["cells"] == 180 * 7**8  # DARTS: "about 10^9" cells for 7 ops
  c.derive.keep_zeroise = False
  assert darts_arch.space_counts(c)["ops_per_edge"] == len(darts_space.BNAS.ops) - 1
  assert darts_arch.space_counts(bats_config.get_config())["architectures"] == (
    darts_space.cell_choices(len(darts_space.BATS.ops) - 1) ** 2
  )


def test_summary_of_a_genotype_file_and_of_a_choice_list(tmp_path):
  c = bnas_config.get_config()
  path = str(tmp_path / "g.json")
  darts_space.save(
    darts_space.random_genotype(darts_space.BNAS, np.random.default_rng(0), True), path
  )
  report = summary.summarize(c, path)
  assert report.bops > 0 and report.flops > 0
  with pytest.raises(UserInputError, match="is a bnas architecture"):
    summary.summarize(bats_config.get_config(), path)  # other space
  m = bimodal_config.get_config("mbconv")
  small = summary.summarize(m, "c8[MB3(1)] c16[MB3(1)] c24[MB3(1)]")
  big = summary.summarize(m, "c16[MB5(6)] c24[MB5(6)] c32[MB5(6)]")
  assert 0 < small.bops < big.bops
