"""The DARTS-family binary cell spaces (BNAS, BATS) and their genotypes: data + pure functions.

A cell space (`CellSpace`) is data: candidate op names in alpha's column
order, which one is Zeroise, which ones have weights. Its modules (the ops,
preprocessing, the supernet and the derived network) are in
`models/darts_ops.py` and `models/darts_cells.py`.

BNAS (Kim, Singh, Choi, ECCV 2020, Sec. 4.1, Table 3): bin_conv_{3x3,5x5},
bin_dil_conv_{3x3,5x5}, max_pool_3x3, avg_pool_3x3 and none = Zeroise; no
separable convs and no skip op (identity paths come from the inter-cell skip
of the cell template, Fig. 5b).
BATS (Bulat, Martinez, Tzimiropoulos, ECCV 2020; supplement Fig. 2):
group_conv_{3x3,5x5}, dil_group_conv_{3x3,5x5}, skip_connect, max_pool_3x3,
avg_pool_3x3, none.

A genotype (DARTS `genotypes.py`, seed_methods_reference.md Sec. 1.1) lists,
for the normal and the reduction cell, 8 `(op, input)` pairs: pairs 2i and
2i+1 feed intermediate node i+2; input 0 is c_{k-2}, 1 is c_{k-1}, 2..5 are the
earlier intermediate nodes. The cell output concatenates `*_concat` (the four
intermediate nodes).

Derivation (`derive`): per intermediate node keep the two incoming edges with
the largest op weight, and on each the argmax op (DARTS `Network.genotype`).
DARTS excludes Zeroise from both; BNAS keeps it (Sec. 4.1.3) and divides the
Zeroise entry of softmax(alpha) on every edge by the transferability gamma
before ranking and selecting (Eq. 4). (The public BNAS code divides row 0, all
ops of one edge, instead of the Zeroise column, which makes gamma a no-op;
seed_methods_reference.md Sec. 3.4.)

Counting (`cell_choices`): each of the 4 intermediate nodes takes 2 of its
n = 2..5 inputs (an unordered pair) with one op each, so a cell has
prod_n C(n, 2) * |ops|^2 = 180 |ops|^8 choices (DARTS' "~10^9 per cell" for
its 7 ops) and a genotype the square of that (normal x reduction).
"""

import dataclasses
import json
import math
import os
from typing import Any, Optional

import numpy as np

from bnas_jax import atomic_files
from bnas_jax import user_files
from bnas_jax.errors import UserInputError
from bnas_jax.search_spaces import mbconv

ZEROISE = "none"


@dataclasses.dataclass(frozen=True)
class CellSpace:
  """A DARTS-style cell space: candidate op names and their roles.

  Attributes:
    name: "bnas" or "bats".
    ops: candidate op names; the order is the column order of alpha.
    learnable_ops: the ops that have weights (for the learnable-op share that
      BNAS Sec. 4.3 reports).
    inter_cell_skip: whether the space's cell template has BNAS's inter-cell
      skip connections (Fig. 5b) by default.
    keep_zeroise: whether derivation and sampling may pick Zeroise (BNAS
      Sec. 4.1.3: yes; DARTS and BATS: no).
    gamma: BNAS's transferability divisor of Zeroise's score (Eq. 4).
    temperature: T of softmax(alpha / T) in the supernet and derivation.

  The methods below are the common space interface (`search_spaces/interface.py`:
  `SearchSpace` and `Differentiable`), which `search_spaces/mbconv.py`'s
  `MBConvSpace` shares: the DARTS-family trainer and `summary` call them on
  whichever space the config names (`space_from_config`).
  """

  name: str
  ops: tuple[str, ...]
  learnable_ops: frozenset
  inter_cell_skip: bool
  keep_zeroise: bool = True
  gamma: float = 1.0
  temperature: float = 1.0

  @property
  def zero_index(self) -> int:
    return self.ops.index(ZEROISE)

  def sample(self, rng: np.random.Generator) -> "Genotype":
    """A uniformly random genotype (Zeroise only if `keep_zeroise`)."""
    return random_genotype(self, rng, self.keep_zeroise)

  def validate(self, genotype: "Genotype") -> "Genotype":
    """`genotype` if it is a genotype of this space (its ops among `ops`)."""
    if not isinstance(genotype, Genotype):
      raise UserInputError(
        f"Expected a Genotype of the {self.name} space, got {type(genotype).__name__}."
      )
    return from_dict(genotype.to_dict(), space=self)

  def to_string(self, genotype: "Genotype") -> str:
    """The JSON form (what `save` writes and `parse` reads)."""
    return genotype.to_json()

  def parse(self, text: str) -> "Genotype":
    return from_json(text, space=self)

  def save(self, genotype: "Genotype", path: str) -> None:
    save(self.validate(genotype), path)

  def load(self, path: str) -> "Genotype":
    """A genotype JSON file of this space; another space's -> `UserInputError`."""
    return load(path, space=self)

  def resolve(self, spec: str) -> "Genotype":
    """`--arch` / `config.genotype_file`: a genotype JSON file, or the JSON text itself."""
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
      return self.parse(spec)
    return self.load(spec)

  def derive(self, arch: dict[str, Any]) -> "Genotype":
    """The genotype of the supernet's {"normal", "reduce"} alpha (`derive`)."""
    return derive(
      np.asarray(arch["normal"]),
      np.asarray(arch["reduce"]),
      self,
      temperature=self.temperature,
      gamma=self.gamma,
      keep_zeroise=self.keep_zeroise,
    )

  def learnable_share(self, genotype: "Genotype") -> float:
    """Share of the 16 picked edges that are learnable (conv) ops (BNAS Sec. 4.3)."""
    picked = [op for op, _ in genotype.normal + genotype.reduce]
    return sum(op in self.learnable_ops for op in picked) / len(picked)

  def draw(self, genotype: "Genotype", path: str, title: Optional[str] = None) -> None:
    draw(genotype, path, title)

  def count(self) -> dict[str, Any]:
    """Exact size: ops per edge (Zeroise only if derivation keeps it), cells, genotypes."""
    num_ops = sum(op != ZEROISE or self.keep_zeroise for op in self.ops)
    cells = cell_choices(num_ops)
    return {
      "space": self.name,
      "ops_per_edge": num_ops,
      "cells": cells,
      "architectures": cells * cells,
    }

  def op_index(self, op: str) -> int:
    return self.ops.index(op)


BNAS = CellSpace(
  name="bnas",
  ops=(
    ZEROISE,
    "max_pool_3x3",
    "avg_pool_3x3",
    "bin_conv_3x3",
    "bin_conv_5x5",
    "bin_dil_conv_3x3",
    "bin_dil_conv_5x5",
  ),
  learnable_ops=frozenset({"bin_conv_3x3", "bin_conv_5x5", "bin_dil_conv_3x3", "bin_dil_conv_5x5"}),
  inter_cell_skip=True,
)

BATS = CellSpace(
  name="bats",
  ops=(
    ZEROISE,
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "group_conv_3x3",
    "group_conv_5x5",
    "dil_group_conv_3x3",
    "dil_group_conv_5x5",
  ),
  learnable_ops=frozenset(
    {"group_conv_3x3", "group_conv_5x5", "dil_group_conv_3x3", "dil_group_conv_5x5"}
  ),
  inter_cell_skip=False,
)

SPACES = {"bnas": BNAS, "bats": BATS}


def get_space(name: str) -> CellSpace:
  if not isinstance(name, str) or name not in SPACES:
    raise UserInputError(f"Unknown cell space {name!r}; known spaces: {', '.join(SPACES)}.")
  return SPACES[name]


def space_from_config(config: Any) -> Any:
  """The space `config.space` names for the DARTS-family trainer, as configured.

  A cell space takes `config.derive` (keep_zeroise, gamma) and the search's
  temperature; "mbconv" is the bimodal paper's space of `config.model`
  (`search_spaces/mbconv.py`). Both have the methods of `CellSpace`'s
  interface.
  """
  if config.space == mbconv.NAME:
    return mbconv.space_from_config(config.model)
  if config.space not in SPACES:
    raise UserInputError(
      f"config.space={config.space!r} is not a known space; known: "
      f"{', '.join(SPACES)}, {mbconv.NAME}."
    )
  return dataclasses.replace(
    SPACES[config.space],
    keep_zeroise=bool(config.derive.keep_zeroise),
    gamma=float(config.derive.gamma),
    temperature=float(config.search.temperature),
  )


NUM_NODES = 4
NUM_EDGES = sum(2 + i for i in range(NUM_NODES))  # 14
DEFAULT_CONCAT = tuple(range(2, 2 + NUM_NODES))

Pairs = tuple[tuple[str, int], ...]


def edge_index(node: int, source: int) -> int:
  """Row of alpha for the edge `source -> node` (node 0..3; source 0..node+1)."""
  return sum(2 + i for i in range(node)) + source


@dataclasses.dataclass(frozen=True)
class Genotype:
  """A derived normal + reduction cell of a cell space."""

  space: str
  normal: Pairs
  reduce: Pairs
  normal_concat: tuple[int, ...] = DEFAULT_CONCAT
  reduce_concat: tuple[int, ...] = DEFAULT_CONCAT

  def to_dict(self) -> dict[str, Any]:
    return {
      "space": self.space,
      "normal": [[op, int(i)] for op, i in self.normal],
      "normal_concat": list(self.normal_concat),
      "reduce": [[op, int(i)] for op, i in self.reduce],
      "reduce_concat": list(self.reduce_concat),
    }

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  def __str__(self) -> str:
    def cell(pairs):
      return ", ".join(f"{op}<-{i}" for op, i in pairs)

    return f"Genotype[{self.space}](normal: {cell(self.normal)} | reduce: {cell(self.reduce)})"


def _check_cell(
  kind: str, pairs: Any, concat: Any, space: CellSpace, where: str
) -> tuple[Pairs, tuple[int, ...]]:
  if not isinstance(pairs, (list, tuple)) or len(pairs) != 2 * NUM_NODES:
    raise UserInputError(
      f"{where}: '{kind}' must list {2 * NUM_NODES} [op, input] pairs (two per intermediate "
      f"node), got {user_files.quote(pairs)}."
    )
  out = []
  for j, pair in enumerate(pairs):
    node = j // 2
    if (
      not isinstance(pair, (list, tuple))
      or len(pair) != 2
      or not isinstance(pair[0], str)
      or isinstance(pair[1], bool)
      or not isinstance(pair[1], (int, np.integer))
    ):
      raise UserInputError(
        f"{where}: '{kind}' entry {j} is {user_files.quote(pair)}, not an "
        "[op name, input index] pair."
      )
    op, src = pair[0], int(pair[1])
    if op not in space.ops:
      raise UserInputError(
        f"{where}: '{kind}' entry {j} uses op {user_files.quote(op)}, which "
        f"is not in the {space.name} space ({', '.join(space.ops)})."
      )
    if not 0 <= src < node + 2:
      raise UserInputError(
        f"{where}: '{kind}' entry {j} feeds node {node + 2} from input {src}; node {node + 2} "
        f"can only take inputs 0..{node + 1} (the two cell inputs and earlier nodes)."
      )
    out.append((op, src))
  for node in range(NUM_NODES):
    if out[2 * node][1] == out[2 * node + 1][1]:
      raise UserInputError(
        f"{where}: '{kind}' node {node + 2} takes both of its edges from "
        f"input {out[2 * node][1]}; the two edges must come from different "
        "inputs."
      )
  if (
    not isinstance(concat, (list, tuple))
    or not concat
    or any(
      isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 2 <= c < 2 + NUM_NODES
      for c in concat
    )
    or len(set(concat)) != len(concat)
  ):
    raise UserInputError(
      f"{where}: '{kind}_concat' must be distinct node indices in 2..5, got {concat!r}."
    )
  return tuple(out), tuple(int(c) for c in concat)


def from_dict(d: Any, where: str = "genotype", space: Optional[CellSpace] = None) -> Genotype:
  """A validated `Genotype` from its dict form; bad input -> `UserInputError`.

  Without `space` the dict's "space" key picks a known space (default "bnas");
  with it, the dict must name that space and use its ops.
  """
  if not isinstance(d, dict):
    raise UserInputError(
      f"{where}: expected a JSON object with keys space, normal, "
      f"normal_concat, reduce, reduce_concat; got {type(d).__name__}."
    )
  unknown = set(d) - {"space", "normal", "normal_concat", "reduce", "reduce_concat"}
  if unknown:
    raise UserInputError(
      f"{where}: unknown keys {sorted(unknown)}; expected space, normal, "
      "normal_concat, reduce, reduce_concat."
    )
  if space is None:
    space = get_space(d.get("space", "bnas"))
  elif d.get("space", "bnas") != space.name:
    other = d.get("space", "bnas")
    other = other if other in SPACES else user_files.quote(other)
    raise UserInputError(f"{where} is a {other} architecture but config.space={space.name!r}.")
  normal, normal_concat = _check_cell(
    "normal", d.get("normal"), d.get("normal_concat", list(DEFAULT_CONCAT)), space, where
  )
  reduce, reduce_concat = _check_cell(
    "reduce", d.get("reduce"), d.get("reduce_concat", list(DEFAULT_CONCAT)), space, where
  )
  return Genotype(space.name, normal, reduce, normal_concat, reduce_concat)


def validate(genotype: Genotype) -> Genotype:
  return from_dict(genotype.to_dict())


def from_json(text: str, where: str = "genotype", space: Optional[CellSpace] = None) -> Genotype:
  return from_dict(user_files.parse_json(text, where), where, space)


def load(path: str, space: Optional[CellSpace] = None) -> Genotype:
  """Reads a genotype JSON file (as written by `save`); of `space` if given (see `from_dict`)."""
  if not os.path.isfile(path):
    raise UserInputError(
      f"Genotype file {user_files.quote(path)} does not exist; pass a JSON "
      "file written by a search (e.g. WORKDIR/search/genotype_best.json)."
    )
  return from_json(
    user_files.read_text(path, "genotype file", ascii_only=True),
    where=f"genotype file {user_files.quote(path)}",
    space=space,
  )


def save(genotype: Genotype, path: str) -> None:
  atomic_files.write_json(path, genotype.to_dict())


def softmax(alpha: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  a = np.asarray(alpha, np.float64) / temperature
  e = np.exp(a - a.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def selection_scores(
  alpha: np.ndarray,
  space: CellSpace,
  *,
  temperature: float = 1.0,
  gamma: float = 1.0,
  keep_zeroise: bool = True,
) -> np.ndarray:
  """Per edge and op, the score derivation compares (BNAS Eq. 4).

  softmax(alpha / T) over ops with the Zeroise column divided by `gamma`
  (applied to probabilities: raw alpha may be negative, and dividing a
  negative number by gamma would raise it). With `keep_zeroise=False`
  (DARTS, and BNAS's "No Zeroise" ablation) Zeroise scores -inf.
  """
  if gamma <= 0:
    raise UserInputError(f"The transferability gamma must be positive, got {gamma}.")
  scores = softmax(alpha, temperature)
  z = space.zero_index
  if keep_zeroise:
    scores[:, z] = scores[:, z] / gamma
  else:
    scores[:, z] = -np.inf
  return scores


def derive_cell(alpha: np.ndarray, space: CellSpace, **kwargs) -> Pairs:
  """Top-2 incoming edges per node by their best op score, argmax op on each."""
  alpha = np.asarray(alpha)
  if alpha.shape != (NUM_EDGES, len(space.ops)):
    raise ValueError(f"alpha has shape {alpha.shape}, expected {(NUM_EDGES, len(space.ops))}.")
  scores = selection_scores(alpha, space, **kwargs)
  pairs = []
  for node in range(NUM_NODES):
    rows = [edge_index(node, s) for s in range(node + 2)]
    best = [scores[r].max() for r in rows]
    # Stable: ties keep the lower input index (as sorted() in DARTS).
    keep = sorted(range(node + 2), key=lambda s: -best[s])[:2]
    for s in sorted(keep):
      pairs.append((space.ops[int(np.argmax(scores[rows[s]]))], s))
  return tuple(pairs)


def derive(
  alpha_normal: np.ndarray,
  alpha_reduce: np.ndarray,
  space: CellSpace,
  *,
  temperature: float = 1.0,
  gamma: float = 1.0,
  keep_zeroise: bool = True,
) -> Genotype:
  """The genotype of the supernet's alpha (DARTS derivation with BNAS's rules)."""
  kw = dict(temperature=temperature, gamma=gamma, keep_zeroise=keep_zeroise)
  return Genotype(
    space.name, derive_cell(alpha_normal, space, **kw), derive_cell(alpha_reduce, space, **kw)
  )


def learnable_share(genotype: Genotype) -> float:
  """Share of the 16 picked edges that are learnable (conv) ops (BNAS Sec. 4.3)."""
  space = get_space(genotype.space)
  picked = [op for op, _ in genotype.normal + genotype.reduce]
  return sum(op in space.learnable_ops for op in picked) / len(picked)


def random_genotype(
  space: CellSpace, rng: np.random.Generator, keep_zeroise: bool = True
) -> Genotype:
  """A uniformly random genotype of the space (the baseline of issue 4, Sec. 7)."""
  ops = [o for o in space.ops if keep_zeroise or o != ZEROISE]

  def cell():
    pairs = []
    for node in range(NUM_NODES):
      for s in sorted(rng.choice(node + 2, size=2, replace=False)):
        pairs.append((str(rng.choice(ops)), int(s)))
    return tuple(pairs)

  return Genotype(space.name, cell(), cell())


def draw(genotype: Genotype, path: str, title: Optional[str] = None) -> None:
  """PNG of the normal and reduction cells (matplotlib, no graphviz)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
  for ax, (kind, pairs, concat) in zip(
    axes,
    (
      ("normal", genotype.normal, genotype.normal_concat),
      ("reduction", genotype.reduce, genotype.reduce_concat),
    ),
  ):
    pos = {0: (0.0, 0.8), 1: (0.0, 0.2)}
    for node in range(NUM_NODES):  # zigzag, so edges between nodes do not overlap
      pos[node + 2] = (1.2 + node, 0.85 if node % 2 == 0 else 0.3)
    pos["out"] = (5.3, 0.5)
    names = {0: "c_{k-2}", 1: "c_{k-1}", "out": "c_{k}"}
    for key, (x, y) in pos.items():
      ax.text(
        x,
        y,
        names.get(key, str(key)),
        ha="center",
        va="center",
        fontsize=10,
        bbox=dict(boxstyle="round", fc="lightblue" if key in (0, 1, "out") else "wheat"),
      )
    for j, (op, src) in enumerate(pairs):
      dst = j // 2 + 2
      (x0, y0), (x1, y1) = pos[src], pos[dst]
      zero = op == ZEROISE
      ax.annotate(
        "",
        xy=(x1, y1),
        xytext=(x0, y0),
        arrowprops=dict(
          arrowstyle="->",
          color="grey" if zero else "black",
          linestyle=":" if zero else "-",
          shrinkA=12,
          shrinkB=12,
          connectionstyle="arc3,rad=0.12",
        ),
      )
      ax.text(
        x0 + 0.55 * (x1 - x0),
        y0 + 0.55 * (y1 - y0) + 0.02 * (j % 2 * 2 - 1),
        op,
        fontsize=7,
        ha="center",
        color="grey" if zero else "darkred",
      )
    for node in concat:
      ax.annotate(
        "",
        xy=pos["out"],
        xytext=pos[node],
        arrowprops=dict(arrowstyle="->", color="lightgrey", shrinkA=12, shrinkB=12),
      )
    ax.set_xlim(-0.5, 5.8)
    ax.set_ylim(-0.05, 1.05)
    ax.axis("off")
    ax.set_title(f"{kind} cell ({genotype.space})")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  atomic_files.write_figure(path, fig, dpi=100)
  plt.close(fig)


def cell_choices(num_ops: int) -> int:
  """Derivable DARTS cells with `num_ops` candidate ops per edge (see the module docstring)."""
  nodes = range(2, 2 + NUM_NODES)
  return math.prod(math.comb(n, 2) for n in nodes) * num_ops ** (2 * len(nodes))
