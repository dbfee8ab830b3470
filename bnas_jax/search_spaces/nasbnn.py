"""The NAS-BNN search space as data plus pure functions (no JAX, no model code).

Lin et al., "NAS-BNN: Neural Architecture Search for Binary Neural Networks"
(2024), Sec. 3.2. A network is a stem conv followed by five stages of
MobileNetV1-style blocks; each block is a binary k x k conv with g groups that
keeps its input width, then a binary 1 x 1 conv to the block's output width
(Table 1). Everything here is host-side Python/numpy so that every process of a
multi-host job, seeded identically, makes identical choices.

Conventions
-----------
* Stages and blocks are numbered from 1 in strings and messages, as in the
  paper's Table 6 ("S4-L2" = stage 4, block/layer 2). Python tuples are 0-based.
* A block's `width` is its OUTPUT width (the 1 x 1 conv's), like the paper's
  "c" in Table 6 and the reference code's `channels`. Its `kernel` and `groups`
  describe the k x k conv, which runs at the block's INPUT width (the previous
  layer's width); that is why group counts must divide the previous stage's
  widths as well as the stage's own (checked by `SearchSpace`).
* Only ACTIVE blocks are stored. A stage of depth d is its first d blocks (the
  first one carries the stride, so depth never removes a downsampling step).
  Inactive blocks carry no values, so two architectures with the same active
  structure are equal and hash equal, and inactive blocks never multiply counts.
  The fixed-shape numeric encoding (`encode`) fills inactive slots for the model.
* Non-Decreasing constraint (Eq. 3): c^{i+1} >= c^{i} over ALL L layers in
  order: stem, then every active block of stage 1, ..., stage 5, including the
  pairs that straddle a stage boundary. In Table 1 adjacent width lists meet
  exactly at the boundaries (48, 96, 192, 384, 768), so there the constraint
  only binds inside stages; the code stays exact for spaces whose lists overlap.

Architecture string grammar
---------------------------
Whitespace anywhere and letter case are ignored::

    arch   := stem ( "|" stage )+
    stem   := "stem" [":"] INT
    stage  := "s" INT ":" block ( "," block )*     # stage INT = 1, 2, ... in order
    block  := ["c"] INT ["_"] "k" INT ["_"] "g" INT [ "*" REPEAT ]

INT is the width / kernel size / group count; `*n` (1 <= n <= 99) repeats the
block n times. Example (NAS-BNN-A, Table 6)::

    stem24|s1:48k3g1*2|s2:96k3g2*2|s3:192k3g4*2|s4:384k3g8*8|s5:768k3g16*2

`Architecture.to_string` writes this canonical form (lower case, no spaces,
runs of identical blocks folded with `*n`). The optional "c" and "_" accept
Table 6's own cell notation, e.g. "s1:c48_k3_g1,c64_k3_g1".

JSON form (`Architecture.to_json`)::

    {"stages": [[{"groups": 1, "kernel": 3, "width": 48}, ...], ...],
     "stem_width": 24}

Counts (`count_architectures`, exact Python ints, computed by dynamic
programming over active blocks; the stem's 3 widths are counted):

* imagenet, ND:     332,353,674,695,147,520     (~3.32e17; paper: ~3.3e17)
* imagenet, no ND:  3,960,359,488,725,851,308,032 (~3.96e21; paper: ~4.0e21)

Both of the paper's numbers match only when the stem width counts (x3) and
inactive blocks do not; the ND share is 0.0084% ("0.01%" in Sec. 3.2).

Sampling distributions (`sample_uniform`)
-----------------------------------------
* "uniform" (default): exactly uniform over the valid architectures (ND-valid
  when the space has the constraint), by backward counting. Depth follows the
  counts, so deep stages dominate: P(depth 3) = 640/736 in stages 2, 3 and 5,
  and P(depth 9) ~ 0.83 in stage 4.
* "uniform_depths": each stage's depth uniform (as in the reference code), then
  uniform over the valid architectures with those depths.
* "reference": the public code's sampler (reference notes Sec. 2): depth
  uniform, each width uniform over the stage's widths >= the previous layer's,
  kernel and groups uniform. This skews towards wide late blocks.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import re
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from bnas_jax import atomic_files
from bnas_jax import user_files
from bnas_jax.errors import InfeasibleRangeError
from bnas_jax.errors import UserInputError

__all__ = [
  "Architecture",
  "Block",
  "ENCODING_KEYS",
  "InfeasibleRangeError",
  "NAMED",
  "SearchSpace",
  "Slot",
  "StageSpec",
  "biggest",
  "block_slots",
  "count_architectures",
  "crossover",
  "crossover_in_range",
  "decode",
  "draw",
  "encode",
  "is_valid",
  "load",
  "mutate",
  "mutate_in_range",
  "resolve",
  "sample_in_range",
  "sample_uniform",
  "save",
  "smallest",
  "validate",
]

CostFn = Callable[["Architecture"], float]
AcceptFn = Callable[["Architecture"], bool]

_MAX_REPEAT = 99
_DISTRIBUTIONS = ("uniform", "uniform_depths", "reference")


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #


def _fmt_set(values: Sequence[int]) -> str:
  return "{" + ", ".join(str(v) for v in values) + "}"


def _as_int(value: Any, what: str) -> int:
  """Converts an integral value (Python or numpy int) to int; rejects bools."""
  if isinstance(value, (bool, np.bool_)):
    raise UserInputError(f"{what} must be an integer, got the boolean {value!r}.")
  try:
    return int(value.__index__())
  except (AttributeError, TypeError):
    raise UserInputError(
      f"{what} must be an integer, got {value!r} of type {type(value).__name__}."
    ) from None


def _int_tuple(values: Any, what: str, *, min_value: int = 1) -> tuple[int, ...]:
  """Normalises a non-empty, duplicate-free collection of ints to a sorted tuple."""
  if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
    raise UserInputError(f"{what} must be a list of integers, got {values!r}.")
  out = tuple(sorted(_as_int(v, what) for v in values))
  if not out:
    raise UserInputError(f"{what} must list at least one value, got an empty list.")
  if len(set(out)) != len(out):
    raise UserInputError(f"{what} lists a value twice: {list(values)!r}.")
  if out[0] < min_value:
    raise UserInputError(f"{what} must all be >= {min_value}, got {list(values)!r}.")
  return out


def _layer_name(stage: int, block: int) -> str:
  """1-based Table 6 name of 0-based (stage, block); stage -1 is the stem."""
  return "the stem" if stage < 0 else f"S{stage + 1}-L{block + 1}"


# --------------------------------------------------------------------------- #
# Search space
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """Choices of one searchable stage (one row of Table 1).

  Attributes:
    depths: allowed numbers of active blocks; the first `depth` blocks are active.
    widths: allowed output widths of every block (each block chooses its own).
    kernels: allowed kernel sizes of each block's k x k conv.
    groups: allowed group counts of each block's k x k conv.
    stride: stride of the stage's first block (the others use 1).
  """

  depths: tuple[int, ...]
  widths: tuple[int, ...]
  kernels: tuple[int, ...]
  groups: tuple[int, ...]
  stride: int

  def __post_init__(self):
    # Normalise lists to sorted tuples so specs built from configs hash and compare.
    object.__setattr__(self, "depths", _int_tuple(self.depths, "stage depths"))
    object.__setattr__(self, "widths", _int_tuple(self.widths, "stage widths"))
    object.__setattr__(self, "kernels", _int_tuple(self.kernels, "stage kernels"))
    object.__setattr__(self, "groups", _int_tuple(self.groups, "stage groups"))
    object.__setattr__(self, "stride", _as_int(self.stride, "stage stride"))
    bad = [k for k in self.kernels if k % 2 == 0]
    if bad:
      raise UserInputError(
        f"Stage kernel sizes must be odd so 'same' padding keeps the resolution, "
        f"got {list(self.kernels)}."
      )
    if self.stride not in (1, 2):
      raise UserInputError(
        f"Stage stride must be 1 or 2 (the shortcut halves with a 2x2 average "
        f"pool), got {self.stride}."
      )

  @property
  def max_depth(self) -> int:
    return self.depths[-1]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """A NAS-BNN style search space (Table 1) plus its input/output sizes.

  Build the paper's space with `SearchSpace.imagenet()` and a structurally
  identical small copy with `SearchSpace.scaled(width_divisor=8)`.

  Attributes:
    name: label used in messages and logs.
    stem_widths: allowed output widths of the stem conv.
    stem_kernel: stem conv kernel size (3 in Table 1).
    stem_stride: stem conv stride (2 in Table 1).
    stages: the searchable stages in order.
    resolution: input image side (224 for ImageNet).
    num_classes: classifier outputs.
    nd_constraint: whether the Non-Decreasing constraint (Eq. 3) applies.
    width_divisor: every width is Table 1's divided by this (1 for imagenet);
      lets `resolve` scale Table 6's named models to a scaled copy.
  """

  name: str
  stem_widths: tuple[int, ...]
  stages: tuple[StageSpec, ...]
  stem_kernel: int = 3
  stem_stride: int = 2
  resolution: int = 224
  num_classes: int = 1000
  nd_constraint: bool = True
  width_divisor: int = 1

  def __post_init__(self):
    object.__setattr__(self, "stem_widths", _int_tuple(self.stem_widths, "stem widths"))
    stages = tuple(self.stages)
    if not stages or not all(isinstance(s, StageSpec) for s in stages):
      raise UserInputError(
        f"Search space {self.name!r} needs a non-empty list of StageSpec stages, "
        f"got {self.stages!r}."
      )
    object.__setattr__(self, "stages", stages)
    for field in ("stem_kernel", "stem_stride", "resolution", "num_classes", "width_divisor"):
      value = _as_int(getattr(self, field), field)
      if value < 1:
        raise UserInputError(f"Search space {field} must be >= 1, got {value}.")
      object.__setattr__(self, field, value)
    object.__setattr__(self, "nd_constraint", bool(self.nd_constraint))
    self._check_group_divisibility()
    self._check_resolution()
    if self.nd_constraint and count_architectures(self) == 0:
      raise UserInputError(
        f"Search space {self.name!r} has no architecture satisfying the "
        f"Non-Decreasing constraint (Eq. 3): some stage's widths are all below "
        f"every width reachable before it. Make each stage's widths reach at "
        f"least the previous stage's smallest width, or set nd_constraint=False."
      )

  def _check_group_divisibility(self):
    # A grouped conv needs its input width divisible by the group count. The
    # k x k conv of block 1 sees the previous stage's (or the stem's) widths,
    # later blocks see the stage's own; every pairing can occur, so all must work.
    prev_widths = self.stem_widths
    for s, spec in enumerate(self.stages):
      inputs = set(prev_widths) | (set(spec.widths) if spec.max_depth > 1 else set())
      for w in sorted(inputs):
        for g in spec.groups:
          if w % g:
            raise UserInputError(
              f"Search space {self.name!r}: stage {s + 1} allows groups {g}, but "
              f"width {w} can feed its k x k conv and is not divisible by {g}. "
              f"Every width entering stage {s + 1} (its own widths and those of "
              f"the layer before it) must be divisible by every group count "
              f"{_fmt_set(spec.groups)}; if this came from scaled(), choose a "
              f"smaller width_divisor."
            )
      prev_widths = spec.widths

  def _check_resolution(self):
    # Each stride-2 step must halve exactly: the strided conv and the 2x2
    # average-pool shortcut only agree on even sizes.
    total = self.total_stride
    if self.resolution % total:
      raise UserInputError(
        f"Search space {self.name!r}: resolution {self.resolution} is not "
        f"divisible by the network's total stride {total}, so a stride-2 layer "
        f"would see an odd feature map. Use a multiple of {total}, e.g. "
        f"{max(total, self.resolution // total * total)}."
      )

  @property
  def total_stride(self) -> int:
    return self.stem_stride * math.prod(s.stride for s in self.stages)

  @property
  def num_stages(self) -> int:
    return len(self.stages)

  @property
  def max_depths(self) -> tuple[int, ...]:
    return tuple(s.max_depth for s in self.stages)

  @property
  def num_slots(self) -> int:
    """Block slots of the supernet: the sum of the stages' maximum depths."""
    return sum(self.max_depths)

  @classmethod
  def imagenet(cls, num_classes: int = 1000, nd_constraint: bool = True) -> "SearchSpace":
    """The space of Table 1 at 224 x 224 input."""
    ks = (3, 5)
    return cls(
      name="imagenet",
      stem_widths=(24, 32, 48),
      stem_kernel=3,
      stem_stride=2,
      stages=(
        StageSpec((2, 3), (48, 64, 96), (3,), (1,), stride=1),
        StageSpec((2, 3), (96, 128, 192), ks, (1, 2), stride=2),
        StageSpec((2, 3), (192, 256, 384), ks, (2, 4), stride=2),
        StageSpec((8, 9), (384, 512, 768), ks, (4, 8), stride=2),
        StageSpec((2, 3), (768, 1024, 1536), ks, (8, 16), stride=2),
      ),
      resolution=224,
      num_classes=num_classes,
      nd_constraint=nd_constraint,
    )

  @classmethod
  def scaled(
    cls,
    width_divisor: int = 8,
    resolution: int = 32,
    num_classes: Optional[int] = None,
    nd_constraint: Optional[bool] = None,
    base: Optional["SearchSpace"] = None,
  ) -> "SearchSpace":
    """A copy of `base` (default: imagenet) with every width divided.

    Stages, depth/kernel/group choice sets and the ND setting are kept, so the
    copy has the same number of architectures as `base` and the same structure;
    only widths, input resolution and (optionally) classes change. Meant for
    tiny CPU runs, e.g. `SearchSpace.scaled(width_divisor=8)`.

    Args:
      width_divisor: positive integer dividing every width of `base`; every
        scaled width must stay divisible by the group counts it meets.
      resolution: input side; must be a multiple of the total stride (32).
      num_classes: classifier outputs; defaults to `base`'s.
      nd_constraint: defaults to `base`'s.
      base: the space to scale; defaults to `SearchSpace.imagenet()`.

    Raises:
      UserInputError: the divisor does not divide a width, breaks a group
        divisibility, or the resolution is not a multiple of the total stride.
    """
    base = cls.imagenet() if base is None else base
    d = _as_int(width_divisor, "width_divisor")
    all_widths = sorted(set(base.stem_widths).union(*(s.widths for s in base.stages)))
    if d < 1 or any(w % d for w in all_widths):
      raise UserInputError(
        f"width_divisor {width_divisor!r} cannot scale search space {base.name!r}: "
        f"it must be a positive integer dividing every width {all_widths}. "
        f"Divisors of all of them: {_common_divisors(all_widths)}."
      )
    return cls(
      name=f"{base.name}-w{d}-r{resolution}",
      stem_widths=tuple(w // d for w in base.stem_widths),
      stages=tuple(
        dataclasses.replace(s, widths=tuple(w // d for w in s.widths)) for s in base.stages
      ),
      stem_kernel=base.stem_kernel,
      stem_stride=base.stem_stride,
      resolution=resolution,
      num_classes=base.num_classes if num_classes is None else num_classes,
      nd_constraint=base.nd_constraint if nd_constraint is None else nd_constraint,
      width_divisor=base.width_divisor * d,
    )

  # The common space interface (`search_spaces/interface.py`: `SearchSpace` and
  # `Evolvable`) and the evolutionary search's (`search/evolution.py`): the module
  # functions of the same names, on this space.

  def sample(self, rng: np.random.Generator) -> "Architecture":
    """Exactly uniform over the valid architectures (`sample_uniform`)."""
    return sample_uniform(self, rng)

  def validate(self, arch: "Architecture") -> "Architecture":
    validate(self, arch)
    return arch

  def count(self) -> dict[str, Any]:
    """Exact sizes (Sec. 3.2): "architectures" under this space's ND setting, and both."""
    nd, no_nd = count_architectures(self, nd=True), count_architectures(self, nd=False)
    return {
      "space": self.name,
      "architectures": nd if self.nd_constraint else no_nd,
      "architectures_nd": nd,
      "architectures_no_nd": no_nd,
      "nd_constraint": self.nd_constraint,
    }

  def to_string(self, arch: "Architecture") -> str:
    return arch.to_string()

  def save(self, arch: "Architecture", path: str) -> None:
    save(self, arch, path)

  def load(self, path: str) -> "Architecture":
    return load(self, path)

  def resolve(self, spec: Any) -> "Architecture":
    return resolve(self, spec)

  def draw(self, arch: "Architecture", path: str, title: Optional[str] = None) -> None:
    draw(self, arch, path, title)

  def mutate(
    self, arch: "Architecture", rng: np.random.Generator, prob: float = 0.2
  ) -> "Architecture":
    return mutate(self, arch, rng, prob)

  def crossover(
    self, a: "Architecture", b: "Architecture", rng: np.random.Generator
  ) -> "Architecture":
    return crossover(self, a, b, rng)

  def encode(self, arch: "Architecture") -> dict[str, np.ndarray]:
    return encode(self, arch)

  def decode(self, encoding: Mapping[str, Any]) -> "Architecture":
    return decode(self, encoding)

  def smallest(self) -> "Architecture":
    return smallest(self)

  def biggest(self) -> "Architecture":
    return biggest(self)

  def parse(self, text: str) -> "Architecture":
    return Architecture.from_string(text, self)

  def sample_in_range(
    self, rng: np.random.Generator, cost_fn: "CostFn", lo: float, hi: float, **kwargs
  ) -> "Architecture":
    return sample_in_range(self, rng, cost_fn, lo, hi, **kwargs)

  def mutate_in_range(
    self, parents: Any, rng: np.random.Generator, cost_fn: "CostFn", lo: float, hi: float, **kwargs
  ) -> "Architecture":
    return mutate_in_range(self, parents, rng, cost_fn, lo, hi, **kwargs)

  def crossover_in_range(
    self,
    parents: Sequence["Architecture"],
    rng: np.random.Generator,
    cost_fn: "CostFn",
    lo: float,
    hi: float,
    **kwargs,
  ) -> "Architecture":
    return crossover_in_range(self, parents, rng, cost_fn, lo, hi, **kwargs)


def _common_divisors(values: Sequence[int]) -> list[int]:
  g = functools.reduce(math.gcd, values)
  return [d for d in range(1, g + 1) if g % d == 0]


# --------------------------------------------------------------------------- #
# Architectures
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Block:
  """One active block: output width, and kernel/groups of its k x k conv."""

  width: int
  kernel: int
  groups: int

  def __post_init__(self):
    for field in ("width", "kernel", "groups"):
      object.__setattr__(self, field, _as_int(getattr(self, field), f"block {field}"))

  def to_string(self) -> str:
    return f"{self.width}k{self.kernel}g{self.groups}"


class Slot(NamedTuple):
  """Static description of one encoding slot (see `block_slots`)."""

  stage: int  # 0-based stage index
  block: int  # 0-based block index within the stage
  stride: int  # stride of this block's k x k conv


@dataclasses.dataclass(frozen=True)
class Architecture:
  """One subnet: the stem width plus the ACTIVE blocks of every stage.

  Only active blocks are stored (depth = number of blocks), so equality and
  hashing compare exactly the active structure. Lists and (width, kernel,
  groups) triples are accepted and normalised to tuples of `Block`.
  """

  stem_width: int
  stages: tuple[tuple[Block, ...], ...]

  def __post_init__(self):
    object.__setattr__(self, "stem_width", _as_int(self.stem_width, "stem width"))
    if isinstance(self.stages, (str, bytes)) or not hasattr(self.stages, "__iter__"):
      raise UserInputError(
        f"Architecture stages must be a list of block lists, got {self.stages!r}."
      )
    stages = []
    for s, blocks in enumerate(self.stages):
      if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__iter__"):
        raise UserInputError(
          f"Architecture stage {s + 1} must be a list of blocks, got {blocks!r}."
        )
      norm = []
      for b in blocks:
        if isinstance(b, Block):
          norm.append(b)
        elif isinstance(b, (tuple, list)) and len(b) == 3:
          norm.append(Block(*b))
        else:
          raise UserInputError(
            f"Architecture stage {s + 1} block {len(norm) + 1} must be a Block or "
            f"a (width, kernel, groups) triple, got {b!r}."
          )
      stages.append(tuple(norm))
    object.__setattr__(self, "stages", tuple(stages))

  @property
  def depths(self) -> tuple[int, ...]:
    return tuple(len(s) for s in self.stages)

  def layers(self) -> Iterator[tuple[int, int, Block]]:
    """Yields (stage, block, Block) for every active block, 0-based, in order."""
    for s, blocks in enumerate(self.stages):
      for j, b in enumerate(blocks):
        yield s, j, b

  def to_string(self) -> str:
    """Canonical string form (module docstring grammar), runs folded with `*n`."""
    parts = [f"stem{self.stem_width}"]
    for s, blocks in enumerate(self.stages):
      runs = []
      for b, group in itertools.groupby(blocks):
        n = len(list(group))
        while n > 0:  # Keep each repeat within the parser's bound.
          take = min(n, _MAX_REPEAT)
          runs.append(b.to_string() + (f"*{take}" if take > 1 else ""))
          n -= take
      parts.append(f"s{s + 1}:" + ",".join(runs))
    return "|".join(parts)

  def to_dict(self) -> dict[str, Any]:
    return {
      "stem_width": self.stem_width,
      "stages": [[dataclasses.asdict(b) for b in blocks] for blocks in self.stages],
    }

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_string(cls, text: str, space: Optional[SearchSpace] = None) -> "Architecture":
    """Parses the string grammar; also validates against `space` if given."""
    arch = _parse_string(text)
    if space is not None:
      validate(space, arch)
    return arch

  @classmethod
  def from_json(
    cls, data: Union[str, bytes, Mapping[str, Any]], space: Optional[SearchSpace] = None
  ) -> "Architecture":
    """Parses `to_json` output (text or the decoded dict); validates if `space`."""
    arch = _parse_json(data)
    if space is not None:
      validate(space, arch)
    return arch

  def __str__(self) -> str:
    return self.to_string()

  def __repr__(self) -> str:
    return f"Architecture({self.to_string()!r})"


_WS_RE = re.compile(r"\s+")
_STEM_RE = re.compile(r"stem:?(\d{1,9})", re.ASCII)
_STAGE_RE = re.compile(r"s(\d{1,9}):(.*)", re.ASCII)
_BLOCK_RE = re.compile(r"c?(\d{1,9})_?k(\d{1,9})_?g(\d{1,9})(?:\*(\d{1,9}))?", re.ASCII)
_GRAMMAR_HINT = (
  "Expected e.g. 'stem24|s1:48k3g1*2|s2:96k3g2,128k5g2|...': 'stem' and the stem "
  "width, then one '|s<i>:' part per stage (i = 1, 2, ... in order) holding "
  "comma-separated blocks '<width>k<kernel>g<groups>', each optionally followed "
  f"by '*<n>' (1 <= n <= {_MAX_REPEAT}) to repeat it."
)


def _parse_string(text: Any) -> Architecture:
  if not isinstance(text, str):
    raise UserInputError(f"An architecture string must be a str, got {text!r}.")

  def fail(detail: str):
    raise UserInputError(
      f"Cannot parse architecture string {user_files.quote(text)}: {detail}. {_GRAMMAR_HINT}"
    )

  parts = _WS_RE.sub("", text).lower().split("|")
  m = _STEM_RE.fullmatch(parts[0])
  if not m:
    # The whole text is quoted already; its first part only needs its start.
    fail(f"it must start with the stem width like 'stem24', found {user_files.quote(parts[0], 60)}")
  stem = int(m.group(1))
  if len(parts) == 1:
    fail("it has no stages after the stem")
  stages = []
  for i, part in enumerate(parts[1:], start=1):
    m = _STAGE_RE.fullmatch(part)
    if not m:
      fail(f"part {i + 1} ({user_files.quote(part)}) is not a stage like 's{i}:48k3g1,64k3g1'")
    if int(m.group(1)) != i:
      fail(
        f"stages must be numbered s1, s2, ... in order, but part {i + 1} is "
        f"'s{m.group(1)}' where 's{i}' was expected"
      )
    if not m.group(2):
      fail(f"stage s{i} has no blocks")
    blocks = []
    for token in m.group(2).split(","):
      bm = _BLOCK_RE.fullmatch(token)
      if not bm:
        fail(
          f"stage s{i} block {user_files.quote(token)} is not of the form "
          f"'<width>k<kernel>g<groups>' such as '48k3g1' (or '48k3g1*2')"
        )
      repeat = int(bm.group(4)) if bm.group(4) else 1
      if not 1 <= repeat <= _MAX_REPEAT:
        fail(f"stage s{i} block {token!r} repeats {repeat} times; use 1 to {_MAX_REPEAT}")
      blocks.extend([Block(int(bm.group(1)), int(bm.group(2)), int(bm.group(3)))] * repeat)
    stages.append(tuple(blocks))
  return Architecture(stem, tuple(stages))


def _parse_json(data: Any) -> Architecture:
  example = '{"stem_width": 24, "stages": [[{"width": 48, "kernel": 3, "groups": 1}, ...], ...]}'
  if isinstance(data, (str, bytes, bytearray)):
    text = data if isinstance(data, str) else bytes(data).decode("utf-8", "replace")
    obj = user_files.parse_json(text, f"Architecture JSON (expected an object like {example})")
  else:
    obj = data

  def fail(detail: str):
    raise UserInputError(
      f"Architecture JSON is malformed: {detail}. Expected an object like {example}."
    )

  if not isinstance(obj, Mapping):
    fail(f"the top level must be an object, got {type(obj).__name__}")
  if set(obj) != {"stem_width", "stages"}:
    fail(
      f"the object must have exactly the keys 'stem_width' and 'stages', "
      f"got {sorted(map(str, obj))}"
    )
  if not isinstance(obj["stages"], list) or not obj["stages"]:
    fail("'stages' must be a non-empty list of stages")
  stages = []
  for s, blocks in enumerate(obj["stages"]):
    if not isinstance(blocks, list) or not blocks:
      fail(f"stage {s + 1} must be a non-empty list of blocks")
    norm = []
    for j, b in enumerate(blocks):
      if not isinstance(b, Mapping) or set(b) != {"width", "kernel", "groups"}:
        fail(
          f"stage {s + 1} block {j + 1} must be an object with exactly the keys "
          f"'width', 'kernel', 'groups', got {user_files.quote(b)}"
        )
      for key in ("width", "kernel", "groups"):
        if isinstance(b[key], bool) or not isinstance(b[key], int):
          fail(f"stage {s + 1} block {j + 1} {key} must be an integer, got {b[key]!r}")
      norm.append(Block(b["width"], b["kernel"], b["groups"]))
    stages.append(tuple(norm))
  if isinstance(obj["stem_width"], bool) or not isinstance(obj["stem_width"], int):
    fail(f"'stem_width' must be an integer, got {obj['stem_width']!r}")
  return Architecture(obj["stem_width"], tuple(stages))


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


def _problems(space: SearchSpace, arch: Architecture) -> list[str]:
  """Every way `arch` falls outside `space`, as message fragments."""
  out = []
  if arch.stem_width not in space.stem_widths:
    out.append(f"the stem has width {arch.stem_width}, allowed {_fmt_set(space.stem_widths)}")
  if len(arch.stages) != space.num_stages:
    out.append(
      f"it has {len(arch.stages)} stages but the space has "
      f"{space.num_stages} (S1-S{space.num_stages})"
    )
    return out  # Per-stage checks would compare the wrong stages.
  for s, (spec, blocks) in enumerate(zip(space.stages, arch.stages)):
    if len(blocks) not in spec.depths:
      out.append(f"stage {s + 1} has depth {len(blocks)}, allowed {_fmt_set(spec.depths)}")
    for j, b in enumerate(blocks):
      name = _layer_name(s, j)
      if b.width not in spec.widths:
        out.append(f"{name} has width {b.width}, stage {s + 1} allows {_fmt_set(spec.widths)}")
      if b.kernel not in spec.kernels:
        out.append(f"{name} has kernel {b.kernel}, stage {s + 1} allows {_fmt_set(spec.kernels)}")
      if b.groups not in spec.groups:
        out.append(f"{name} has groups {b.groups}, stage {s + 1} allows {_fmt_set(spec.groups)}")
  if space.nd_constraint:
    prev_name, prev_w = _layer_name(-1, 0), arch.stem_width
    for s, j, b in arch.layers():
      if b.width < prev_w:
        out.append(
          f"{_layer_name(s, j)} has width {b.width} after {prev_name} with width "
          f"{prev_w}, but the Non-Decreasing constraint (Eq. 3) needs each layer at "
          f"least as wide as the one before"
        )
      prev_name, prev_w = _layer_name(s, j), b.width
  return out


def validate(space: SearchSpace, arch: Architecture) -> None:
  """Raises UserInputError naming every offending layer, field and allowed values.

  Checks the number of stages, stem width, each stage's depth and every active
  block's width/kernel/groups against Table 1's choice sets, and (if
  `space.nd_constraint`) Eq. 3 over the whole layer sequence, naming the pair
  of layers that decreases.
  """
  if not isinstance(arch, Architecture):
    raise UserInputError(
      f"Expected an Architecture, got {type(arch).__name__} {user_files.quote(arch)}; "
      f"use resolve(space, spec) to turn names, strings and JSON into one."
    )
  problems = _problems(space, arch)
  if problems:
    shown = problems[:6] + ([f"and {len(problems) - 6} more"] if len(problems) > 6 else [])
    raise UserInputError(
      f"Architecture {user_files.quote(arch.to_string())} is not in search space "
      f"{space.name!r} (Table 1): " + "; ".join(shown) + "."
    )


def is_valid(space: SearchSpace, arch: Architecture) -> bool:
  return isinstance(arch, Architecture) and not _problems(space, arch)


# --------------------------------------------------------------------------- #
# Exact counting and sampling over a "lattice" of per-position choices
# --------------------------------------------------------------------------- #
# The whole space, a depth-restricted slice of it, and the set of children of
# two parents are all the same shape: per stage a set of depths and, for each
# block position, sets of widths/kernels/groups. One backward count over that
# shape gives exact sizes and exactly uniform sampling for all three.


@dataclasses.dataclass(frozen=True)
class _Position:
  widths: tuple[int, ...]
  kernels: tuple[int, ...]
  groups: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _Lattice:
  stem_widths: tuple[int, ...]
  stages: tuple[tuple[tuple[int, ...], tuple[_Position, ...]], ...]  # (depths, positions)
  nd: bool


def _space_lattice(
  space: SearchSpace, nd: bool, depths: Optional[Sequence[int]] = None
) -> _Lattice:
  stages = []
  for s, spec in enumerate(space.stages):
    pos = _Position(spec.widths, spec.kernels, spec.groups)
    ds = spec.depths if depths is None else (depths[s],)
    stages.append((ds, (pos,) * max(ds)))
  return _Lattice(space.stem_widths, tuple(stages), nd)


def _compute_tables(lat: _Lattice):
  """Backward completion counts.

  Returns (stem_counts, tabs): stem_counts[w] = architectures whose stem has
  width w; tabs[s][d][j][w] = ways to fill blocks j.. of stage s (depth d) and
  all later stages when the layer before block j has width w. Exact ints.
  """
  universe = sorted(
    set(lat.stem_widths).union(*(p.widths for _, positions in lat.stages for p in positions))
  )
  after = {w: 1 for w in universe}  # Completions after the last stage: one.
  tabs = [None] * len(lat.stages)
  for s in reversed(range(len(lat.stages))):
    depths, positions = lat.stages[s]
    per_depth = {}
    for d in depths:
      g = [None] * (d + 1)
      g[d] = after
      for j in reversed(range(d)):
        p = positions[j]
        mult = len(p.kernels) * len(p.groups)  # Independent of the width (checked).
        g[j] = {
          w: mult * sum(g[j + 1][v] for v in p.widths if not lat.nd or v >= w) for w in universe
        }
      per_depth[d] = g
    tabs[s] = per_depth
    after = {w: sum(per_depth[d][0][w] for d in depths) for w in universe}
  return {w: after[w] for w in lat.stem_widths}, tabs


# Whole-space lattices recur on every draw, so their tables are cached; the
# one-off lattices of crossover call `_compute_tables` and never evict them.
_tables = functools.lru_cache(maxsize=128)(_compute_tables)


def _lattice_size(lat: _Lattice, tables=None) -> int:
  return sum((tables or _tables(lat))[0].values())


def _randbelow(rng: np.random.Generator, n: int) -> int:
  """Exactly uniform int in [0, n) for Python ints beyond int64."""
  if n < 2**62:
    return int(rng.integers(n))
  bits = (n - 1).bit_length()
  words = -(-bits // 32)
  for _ in range(256):  # Each round accepts with probability > 1/2.
    r = 0
    for x in rng.integers(0, 2**32, size=words, dtype=np.uint64):
      r = (r << 32) | int(x)
    r >>= words * 32 - bits
    if r < n:
      return r
  raise RuntimeError("random integer rejection failed 256 times")  # p < 2**-256.


def _weighted_choice(rng: np.random.Generator, items: Sequence[int], weights: Sequence[int]) -> int:
  r = _randbelow(rng, sum(weights))
  for item, w in zip(items, weights):
    if r < w:
      return item
    r -= w
  raise AssertionError("weights changed during sampling")


def _uniform_choice(rng: np.random.Generator, items: Sequence[int]) -> int:
  return items[int(rng.integers(len(items)))]


def _sample_lattice(lat: _Lattice, rng: np.random.Generator, tables=None) -> Architecture:
  stem_counts, tabs = tables or _tables(lat)
  stem = _weighted_choice(rng, lat.stem_widths, [stem_counts[w] for w in lat.stem_widths])
  prev, stages = stem, []
  for s, (depths, positions) in enumerate(lat.stages):
    d = _weighted_choice(rng, depths, [tabs[s][d][0][prev] for d in depths])
    g = tabs[s][d]
    blocks = []
    for j in range(d):
      p = positions[j]
      options = [v for v in p.widths if not lat.nd or v >= prev]
      w = _weighted_choice(rng, options, [g[j + 1][v] for v in options])
      blocks.append(Block(w, _uniform_choice(rng, p.kernels), _uniform_choice(rng, p.groups)))
      prev = w
    stages.append(tuple(blocks))
  return Architecture(stem, tuple(stages))


def count_architectures(space: SearchSpace, nd: Optional[bool] = None) -> int:
  """Exact number of architectures in `space` (Sec. 3.2), as a Python int.

  Counts distinct ACTIVE structures: the stem width times, per stage, every
  depth's choices of (width, kernel, groups) for its active blocks; inactive
  blocks do not multiply. With ND, only sequences satisfying Eq. 3 over all
  layers (stem included, stage boundaries included) count. For imagenet:
  332353674695147520 with ND (paper ~3.3e17) and 3960359488725851308032
  without (paper ~4.0e21).

  Args:
    space: the search space.
    nd: apply the Non-Decreasing constraint; defaults to `space.nd_constraint`.
  """
  return _lattice_size(_space_lattice(space, space.nd_constraint if nd is None else nd))


def sample_uniform(
  space: SearchSpace, rng: np.random.Generator, *, distribution: str = "uniform"
) -> Architecture:
  """Draws one valid architecture with the host-side generator `rng`.

  Args:
    space: the search space (ND-valid results when `space.nd_constraint`).
    rng: explicit numpy Generator; the same seed gives the same architecture.
    distribution: "uniform" (exactly uniform over all valid architectures;
      deep stages dominate), "uniform_depths" (each stage's depth uniform, then
      uniform over valid architectures with those depths) or "reference" (the
      public code's sequential sampler; skews wide). See the module docstring.

  Raises:
    UserInputError: unknown `distribution`.
  """
  nd = space.nd_constraint
  if distribution == "uniform":
    return _sample_lattice(_space_lattice(space, nd), rng)
  if distribution == "uniform_depths":
    # Rejection over depth combinations is exactly uniform over the feasible
    # ones; in Table 1 every combination is feasible, so it never repeats.
    for _ in range(1000):
      depths = tuple(_uniform_choice(rng, spec.depths) for spec in space.stages)
      lat = _space_lattice(space, nd, depths)
      if _lattice_size(lat):
        return _sample_lattice(lat, rng)
    raise UserInputError(
      f"Search space {space.name!r} has almost no depth combination with an "
      f"architecture satisfying the Non-Decreasing constraint; use "
      f"distribution='uniform' for it."
    )
  if distribution == "reference":
    stem = _uniform_choice(rng, space.stem_widths)
    prev, stages = stem, []
    for s, spec in enumerate(space.stages):
      d = _uniform_choice(rng, spec.depths)
      blocks = []
      for j in range(d):
        options = [w for w in spec.widths if not nd or w >= prev]
        if not options:
          raise UserInputError(
            f"distribution='reference' reached {_layer_name(s, j)} after width "
            f"{prev}, above all of stage {s + 1}'s widths {_fmt_set(spec.widths)}; "
            f"use distribution='uniform' for this space."
          )
        prev = _uniform_choice(rng, options)
        blocks.append(
          Block(prev, _uniform_choice(rng, spec.kernels), _uniform_choice(rng, spec.groups))
        )
      stages.append(tuple(blocks))
    return Architecture(stem, tuple(stages))
  raise UserInputError(
    f"Unknown sampling distribution {distribution!r}; use one of {list(_DISTRIBUTIONS)}."
  )


def biggest(space: SearchSpace) -> Architecture:
  """Max depth, width and kernel with MIN groups everywhere (reference Sec. 2)."""
  return Architecture(
    max(space.stem_widths),
    tuple(
      (Block(max(s.widths), max(s.kernels), min(s.groups)),) * s.max_depth for s in space.stages
    ),
  )


def smallest(space: SearchSpace) -> Architecture:
  """Min depth, width and kernel with MAX groups everywhere (reference Sec. 2)."""
  return Architecture(
    min(space.stem_widths),
    tuple(
      (Block(min(s.widths), min(s.kernels), max(s.groups)),) * min(s.depths) for s in space.stages
    ),
  )


# --------------------------------------------------------------------------- #
# Evolution operators
# --------------------------------------------------------------------------- #


def _check_prob(prob: Any) -> float:
  try:
    p = float(prob)
  except (TypeError, ValueError):
    p = float("nan")
  if not 0.0 <= p <= 1.0:
    raise UserInputError(f"Mutation probability must be a number in [0, 1], got {prob!r}.")
  return p


def mutate(
  space: SearchSpace, arch: Architecture, rng: np.random.Generator, prob: float = 0.2
) -> Architecture:
  """Mutates `arch` like the reference search (Sec. 7), but always ND-valid.

  1. Per stage, with probability `prob`, the depth is redrawn uniformly from
     the stage's depths (possibly unchanged). Dropped blocks vanish; new blocks
     are appended and drawn fresh.
  2. Left to right over the stem and every active block: new blocks always, and
     existing ones with probability `prob` (one coin for all three genes),
     redraw kernel and groups uniformly and the width uniformly among the
     stage's widths in [previous layer's width, next layer's width] when ND
     applies. The current width always lies in that window, so it is never
     empty, and every choice keeps Eq. 3 (the reference checked only the
     previous row, so its children could decrease).

  Raises:
    UserInputError: `arch` is not in `space` or `prob` is not in [0, 1].
  """
  validate(space, arch)
  prob = _check_prob(prob)
  nd = space.nd_constraint
  # None marks a freshly added block whose genes are still to be drawn.
  stages: list[list[Optional[Block]]] = [list(b) for b in arch.stages]
  for s, spec in enumerate(space.stages):
    if rng.random() < prob:
      d = _uniform_choice(rng, spec.depths)
      stages[s] = stages[s][:d] + [None] * (d - len(stages[s]))

  flat = [(s, j) for s in range(len(stages)) for j in range(len(stages[s]))]

  def next_width(k: int) -> float:
    for s, j in flat[k + 1 :]:
      if stages[s][j] is not None:
        return stages[s][j].width
    return math.inf

  stem = arch.stem_width
  if rng.random() < prob:
    hi = next_width(-1) if nd else math.inf
    stem = _uniform_choice(rng, [w for w in space.stem_widths if w <= hi])
  prev = stem
  for k, (s, j) in enumerate(flat):
    spec, cur = space.stages[s], stages[s][j]
    if cur is None or rng.random() < prob:
      lo, hi = (prev, next_width(k)) if nd else (-math.inf, math.inf)
      width = _uniform_choice(rng, [w for w in spec.widths if lo <= w <= hi])
      cur = Block(width, _uniform_choice(rng, spec.kernels), _uniform_choice(rng, spec.groups))
      stages[s][j] = cur
    prev = cur.width
  return Architecture(stem, tuple(tuple(b) for b in stages))


def crossover(
  space: SearchSpace, a: Architecture, b: Architecture, rng: np.random.Generator
) -> Architecture:
  """Uniform crossover of two parents that only returns valid children.

  As in the reference (Sec. 7): each stage takes its depth from a random
  parent, then every gene (stem width; each block's width, kernel, groups) is
  taken from either parent at that position (from the only parent that has the
  position when depths differ). Instead of rejecting children whose widths
  decrease in an unbounded loop, the child is drawn exactly uniformly from the
  ND-valid gene mixes by counting, which is the distribution the reference's
  rejection loop targets. If no ND-valid mix exists for the chosen depths
  (impossible in Table 1, whose width lists only touch at stage boundaries),
  depths are drawn too, from mixes that always include both parents.

  Raises:
    UserInputError: a parent is not in `space`.
  """
  validate(space, a)
  validate(space, b)

  def lattice(depth_sets: Sequence[tuple[int, ...]]) -> _Lattice:
    stages = []
    for s, ds in enumerate(depth_sets):
      pa, pb = a.stages[s], b.stages[s]
      positions = []
      for j in range(max(ds)):
        genes = [p[j] for p in (pa, pb) if j < len(p)]
        positions.append(
          _Position(
            tuple(sorted({g.width for g in genes})),
            tuple(sorted({g.kernel for g in genes})),
            tuple(sorted({g.groups for g in genes})),
          )
        )
      stages.append((ds, tuple(positions)))
    return _Lattice(tuple(sorted({a.stem_width, b.stem_width})), tuple(stages), space.nd_constraint)

  # One coin per stage picks the parent whose depth the child takes.
  chosen = [(len((a, b)[int(rng.integers(2))].stages[s]),) for s in range(space.num_stages)]
  lat = lattice(chosen)
  tables = _compute_tables(lat)
  if not _lattice_size(lat, tables):
    lat = lattice(
      [tuple(sorted({len(a.stages[s]), len(b.stages[s])})) for s in range(space.num_stages)]
    )
    tables = _compute_tables(lat)
  return _sample_lattice(lat, rng, tables)


# --------------------------------------------------------------------------- #
# Bounded constrained draws (the reference's loops are unbounded, Sec. 7)
# --------------------------------------------------------------------------- #


def _check_range(lo: Any, hi: Any, max_tries: Any, cost_name: str) -> tuple[float, float, int]:
  try:
    lo_f, hi_f = float(lo), float(hi)
  except (TypeError, ValueError):
    raise UserInputError(
      f"The {cost_name} range bounds must be numbers, got lo={lo!r}, hi={hi!r}."
    ) from None
  if math.isnan(lo_f) or math.isnan(hi_f) or lo_f > hi_f:
    raise UserInputError(
      f"The {cost_name} range [{lo!r}, {hi!r}] is empty: lo must be "
      f"<= hi (use inf for no upper bound)."
    )
  tries = _as_int(max_tries, "max_tries")
  if tries < 1:
    raise UserInputError(f"max_tries must be >= 1, got {max_tries!r}.")
  return lo_f, hi_f, tries


def _draw_in_range(
  space: SearchSpace,
  draw: Callable[[], Architecture],
  cost_fn: CostFn,
  lo: float,
  hi: float,
  accept: Optional[AcceptFn],
  max_tries: int,
  what: str,
  cost_name: str,
) -> Architecture:
  outside = refused = 0
  seen_lo, seen_hi = math.inf, -math.inf
  for _ in range(max_tries):
    arch = draw()
    cost = float(cost_fn(arch))
    if not lo <= cost <= hi:
      outside += 1
      seen_lo, seen_hi = min(seen_lo, cost), max(seen_hi, cost)
      continue
    if accept is not None and not accept(arch):
      refused += 1
      continue
    return arch
  # Only now pay for the two extra cost evaluations that explain the failure.
  c_small, c_big = float(cost_fn(smallest(space))), float(cost_fn(biggest(space)))
  seen = f", seen {seen_lo:g} to {seen_hi:g}" if outside else ""
  if refused and not outside:
    hint = (
      "every draw in range was refused by the accept predicate (e.g. already "
      "seen), so this neighbourhood looks exhausted; use other parents or a "
      "wider range"
    )
  else:
    hint = (
      f"the {cost_name} range is likely infeasible or too narrow for this "
      f"space, whose smallest architecture costs {c_small:g} and biggest "
      f"{c_big:g} {cost_name}; choose a range overlapping [{c_small:g}, "
      f"{c_big:g}] and wide enough to hit, or raise max_tries"
    )
  raise InfeasibleRangeError(
    f"{what} found no architecture of search space {space.name!r} with {cost_name} in "
    f"[{lo:g}, {hi:g}] after {max_tries} tries ({outside} outside the range{seen}; "
    f"{refused} refused by the accept predicate): {hint}."
  )


def sample_in_range(
  space: SearchSpace,
  rng: np.random.Generator,
  cost_fn: CostFn,
  lo: float,
  hi: float,
  *,
  accept: Optional[AcceptFn] = None,
  max_tries: int = 1000,
  distribution: str = "uniform",
  cost_name: str = "OPs",
) -> Architecture:
  """`sample_uniform` until lo <= cost_fn(arch) <= hi and accept(arch).

  Raises:
    InfeasibleRangeError: nothing acceptable within `max_tries` draws; the
      message gives the cost of `smallest` and `biggest`.
    UserInputError: lo > hi, bad max_tries or distribution.
  """
  lo, hi, max_tries = _check_range(lo, hi, max_tries, cost_name)
  return _draw_in_range(
    space,
    lambda: sample_uniform(space, rng, distribution=distribution),
    cost_fn,
    lo,
    hi,
    accept,
    max_tries,
    "Random sampling",
    cost_name,
  )


def _parent_pool(space: SearchSpace, parents: Any) -> list[Architecture]:
  pool = [parents] if isinstance(parents, Architecture) else list(parents)
  if not pool:
    raise UserInputError("The parent pool is empty; pass at least one Architecture.")
  for p in pool:
    validate(space, p)
  return pool


def mutate_in_range(
  space: SearchSpace,
  parents: Union[Architecture, Sequence[Architecture]],
  rng: np.random.Generator,
  cost_fn: CostFn,
  lo: float,
  hi: float,
  *,
  prob: float = 0.2,
  accept: Optional[AcceptFn] = None,
  max_tries: int = 1000,
  cost_name: str = "OPs",
) -> Architecture:
  """Mutates a parent drawn uniformly from `parents` each try until in range.

  Raises:
    InfeasibleRangeError: nothing acceptable within `max_tries` mutations.
  """
  lo, hi, max_tries = _check_range(lo, hi, max_tries, cost_name)
  pool = _parent_pool(space, parents)
  prob = _check_prob(prob)
  return _draw_in_range(
    space,
    lambda: mutate(space, _uniform_choice(rng, pool), rng, prob),
    cost_fn,
    lo,
    hi,
    accept,
    max_tries,
    "Mutation",
    cost_name,
  )


def crossover_in_range(
  space: SearchSpace,
  parents: Sequence[Architecture],
  rng: np.random.Generator,
  cost_fn: CostFn,
  lo: float,
  hi: float,
  *,
  accept: Optional[AcceptFn] = None,
  max_tries: int = 1000,
  cost_name: str = "OPs",
) -> Architecture:
  """Crosses two distinct parents drawn from `parents` each try until in range.

  Pass `[a, b]` for a fixed pair. A single parent crosses with itself.

  Raises:
    InfeasibleRangeError: nothing acceptable within `max_tries` children.
  """
  lo, hi, max_tries = _check_range(lo, hi, max_tries, cost_name)
  pool = _parent_pool(space, parents)

  def draw() -> Architecture:
    if len(pool) == 1:
      return crossover(space, pool[0], pool[0], rng)
    i, j = rng.choice(len(pool), size=2, replace=False)
    return crossover(space, pool[int(i)], pool[int(j)], rng)

  return _draw_in_range(space, draw, cost_fn, lo, hi, accept, max_tries, "Crossover", cost_name)


# --------------------------------------------------------------------------- #
# Fixed-shape numeric encoding for jitted supernets
# --------------------------------------------------------------------------- #

ENCODING_KEYS = ("stem_width", "depth", "active", "width", "kernel", "groups")


def block_slots(space: SearchSpace) -> tuple[Slot, ...]:
  """The static slot layout of `encode`: stage-major, every block up to max depth."""
  return tuple(
    Slot(s, j, spec.stride if j == 0 else 1)
    for s, spec in enumerate(space.stages)
    for j in range(spec.max_depth)
  )


def encode(space: SearchSpace, arch: Architecture) -> dict[str, np.ndarray]:
  """Encodes `arch` as int32 arrays whose shapes depend only on `space`.

  A jitted supernet can take the result as traced data, so changing the
  architecture never recompiles. With B = `space.num_slots` (21 for imagenet)
  and S = `space.num_stages`, slots ordered as `block_slots(space)`:

    stem_width: ()   the stem's width.
    depth:      (S,) active blocks per stage.
    active:     (B,) 1 for the first depth[s] slots of stage s, else 0.
    width, kernel, groups: (B,) the block's values (not indices).

  Inactive slots repeat their stage's last active block, so every slot holds a
  legal (width, kernel, groups) for its stage and, for ND-valid architectures,
  the width column stays non-decreasing; `decode` ignores them.
  """
  validate(space, arch)
  fields = {k: [] for k in ("active", "width", "kernel", "groups")}
  for spec, blocks in zip(space.stages, arch.stages):
    for j in range(spec.max_depth):
      b = blocks[min(j, len(blocks) - 1)]
      fields["active"].append(int(j < len(blocks)))
      fields["width"].append(b.width)
      fields["kernel"].append(b.kernel)
      fields["groups"].append(b.groups)
  out = {
    "stem_width": np.asarray(arch.stem_width, np.int32),
    "depth": np.asarray(arch.depths, np.int32),
  }
  out.update({k: np.asarray(v, np.int32) for k, v in fields.items()})
  return out


def decode(space: SearchSpace, encoding: Mapping[str, Any]) -> Architecture:
  """Inverse of `encode` (accepts numpy or JAX arrays); validates the result.

  Raises:
    UserInputError: missing keys, wrong shapes, non-integers, `active` not
      matching `depth`, or a decoded architecture outside `space`.
  """
  if not isinstance(encoding, Mapping) or set(encoding) != set(ENCODING_KEYS):
    got = sorted(encoding) if isinstance(encoding, Mapping) else type(encoding).__name__
    raise UserInputError(
      f"An architecture encoding must be a dict with exactly the keys "
      f"{list(ENCODING_KEYS)}, got {got}."
    )
  n, S = space.num_slots, space.num_stages
  shapes = {"stem_width": (), "depth": (S,)}
  arrays = {}
  for k in ENCODING_KEYS:
    a = np.asarray(encoding[k])
    want = shapes.get(k, (n,))
    if a.shape != want or not np.issubdtype(a.dtype, np.integer):
      raise UserInputError(
        f"Encoding field {k!r} must be an integer array of shape {want} "
        f"for search space {space.name!r}, got dtype {a.dtype} and "
        f"shape {a.shape}."
      )
    arrays[k] = a.astype(np.int64)
  stages, start = [], 0
  for s, spec in enumerate(space.stages):
    d = int(arrays["depth"][s])
    sl = slice(start, start + spec.max_depth)
    want = (np.arange(spec.max_depth) < d).astype(np.int64)
    if not 1 <= d <= spec.max_depth or not np.array_equal(arrays["active"][sl], want):
      raise UserInputError(
        f"Encoding of stage {s + 1} is inconsistent: depth {d} (allowed "
        f"{_fmt_set(spec.depths)}) with active flags {arrays['active'][sl].tolist()}; "
        f"the first depth slots must be 1 and the rest 0."
      )
    stages.append(
      tuple(
        Block(int(arrays["width"][i]), int(arrays["kernel"][i]), int(arrays["groups"][i]))
        for i in range(start, start + d)
      )
    )
    start += spec.max_depth
  arch = Architecture(int(arrays["stem_width"]), tuple(stages))
  validate(space, arch)
  return arch


# --------------------------------------------------------------------------- #
# Table 6 models and name resolution
# --------------------------------------------------------------------------- #

# Table 6 of our copy, read column by column: each "S*-L*" row prints six cells
# (A..F) with "-" for an inactive block, so depths are read from where the "-"
# cells fall (e.g. only F has S1-L3; S2-L3 is "-" for all; A and B lack S3-L3
# and S4-L9; only A lacks S5-L3). Check of this reading: the reference code's
# OPs formula (reference notes Sec. 8) gives A 20.77, B 56.83, C 86.97,
# D 124.31 and F 179.83 M OPs against the paper's 21, 57, 87, 124 and 180 M,
# and A is exactly `smallest(imagenet)`. In our copy the E column prints the
# same cells as D (124.31 M, while the paper gives E 160 M OPs); E is kept as
# printed, so NAMED["E"] == NAMED["D"] until a correct copy of Table 6 is read.
NAMED: dict[str, str] = {
  "A": ("stem24|s1:48k3g1*2|s2:96k3g2*2|s3:192k3g4*2|s4:384k3g8*8|s5:768k3g16*2"),
  "B": (
    "stem24|s1:48k3g1*2|s2:96k3g2,192k3g2|s3:192k3g2,384k3g2|"
    "s4:384k5g8,768k3g8*4,768k3g4*2,768k3g8|s5:1536k5g16*2,1536k3g16"
  ),
  "C": (
    "stem24|s1:48k3g1,64k3g1|s2:96k5g2,192k3g1|s3:384k3g2,384k3g4*2|"
    "s4:768k5g4,768k3g4,768k3g8,768k3g4*2,768k3g8,768k5g8,768k3g8,768k3g4|"
    "s5:1536k3g8,1536k5g16,1536k3g8"
  ),
  "D": (
    "stem48|s1:48k3g1,96k3g1|s2:192k5g2,192k3g2|s3:384k3g2,384k3g4*2|"
    "s4:768k3g4*3,768k5g8,768k5g4,768k3g4,768k5g4,768k5g8,768k3g4|"
    "s5:1536k5g8*2,1536k3g8"
  ),
  "E": (
    "stem48|s1:48k3g1,96k3g1|s2:192k5g2,192k3g2|s3:384k3g2,384k3g4*2|"
    "s4:768k3g4*3,768k5g8,768k5g4,768k3g4,768k5g4,768k5g8,768k3g4|"
    "s5:1536k5g8*2,1536k3g8"
  ),
  "F": (
    "stem48|s1:48k3g1,96k3g1*2|s2:192k3g1*2|s3:384k5g2,384k3g2*2|"
    "s4:768k5g4*3,768k3g4*3,768k5g4*3|s5:1536k3g16,1536k5g8,1536k3g8"
  ),
}


def _named(space: SearchSpace, name: str) -> Architecture:
  arch = _parse_string(NAMED[name])
  d = space.width_divisor
  if d != 1:  # Scaled copies keep Table 6's structure with widths divided.
    arch = Architecture(
      arch.stem_width // d,
      tuple(
        tuple(Block(b.width // d, b.kernel, b.groups) for b in blocks) for blocks in arch.stages
      ),
    )
  return arch


def resolve(space: SearchSpace, spec: Union[str, Architecture, Mapping[str, Any]]) -> Architecture:
  """Turns a user's architecture spec into a validated Architecture.

  Accepts a Table 6 name ("A".."F", also "NAS-BNN-A"; widths divided by
  `space.width_divisor` on scaled copies), "biggest", "smallest", the path of a
  file written by `save` (or holding the string form), a string in the module
  grammar, a JSON object (text starting with "{" or a dict), or an
  Architecture. Names are case-insensitive.

  Raises:
    UserInputError: unknown name, unparsable spec, or not in `space`.
  """
  if isinstance(spec, Architecture):
    arch = spec
  elif isinstance(spec, Mapping):
    arch = _parse_json(spec)
  elif isinstance(spec, str):
    text = spec.strip()
    key = re.sub(r"^nas-?bnn-?", "", text.lower()).upper()
    if key in NAMED:
      arch = _named(space, key)
      if key == "E":
        logging.warning(
          "NAS-BNN-E: our copy of Table 6 prints E's cells identical to D's, so this is D's "
          "network (124.31 M OPs at 224x224; the paper gives E 160 M OPs)."
        )
    elif text.lower() in ("biggest", "smallest"):
      arch = biggest(space) if text.lower() == "biggest" else smallest(space)
    elif os.path.isfile(text):
      return load(space, text)
    elif text.startswith("{"):
      arch = _parse_json(text)
    elif text.lower().startswith("stem"):
      arch = _parse_string(text)
    else:
      raise UserInputError(
        f"Unknown architecture {user_files.quote(spec)}: use a Table 6 name "
        f"({', '.join(NAMED)}), 'biggest', 'smallest', an architecture string like "
        f"{NAMED['A']!r}, or a JSON object."
      )
  else:
    raise UserInputError(
      f"An architecture spec must be a name, string, JSON object or "
      f"Architecture, got {type(spec).__name__}."
    )
  validate(space, arch)
  return arch


# --------------------------------------------------------------------------- #
# Files and pictures
# --------------------------------------------------------------------------- #


def save(space: SearchSpace, arch: Architecture, path: str) -> None:
  """Writes `arch` (validated) as its JSON form, atomically."""
  validate(space, arch)
  atomic_files.write_json(path, arch.to_dict())


def load(space: SearchSpace, path: str) -> Architecture:
  """The architecture in a file: the JSON form (`save`) or the string form.

  Raises:
    UserInputError: no such file, unreadable or malformed text, or not in `space`.
  """
  if not isinstance(path, str) or not os.path.isfile(path):
    raise UserInputError(
      f"Architecture file {user_files.quote(path)} does not exist; pass a file written by "
      "a search or `save` (JSON), or a file holding an architecture string."
    )
  text = user_files.read_text(path, "architecture file", ascii_only=True).strip()
  arch = _parse_json(text) if text.startswith("{") else _parse_string(text)
  validate(space, arch)
  return arch


def draw(space: SearchSpace, arch: Architecture, path: str, title: Optional[str] = None) -> None:
  """PNG of `arch` in the order of Table 6: one bar per layer (output width), k and g on it."""
  validate(space, arch)
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  names, widths, labels, stages = ["stem"], [arch.stem_width], [""], [0]
  for s, j, b in arch.layers():
    names.append(f"S{s + 1}-L{j + 1}")
    widths.append(b.width)
    labels.append(f"k{b.kernel}g{b.groups}")
    stages.append(s + 1)
  fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names)), 3.5))
  colors = plt.get_cmap("tab10")
  x = np.arange(len(names))
  ax.bar(x, widths, 0.7, color=[colors(s % 10) for s in stages])
  for i, (w, label) in enumerate(zip(widths, labels)):
    ax.text(i, w, label, ha="center", va="bottom", fontsize=6, rotation=90)
  ax.set_xticks(x)
  ax.set_xticklabels(names, rotation=90, fontsize=7)
  ax.set_ylabel("output width")
  ax.set_title(title or arch.to_string()[:90], fontsize=8)
  fig.tight_layout()
  atomic_files.write_figure(path, fig, dpi=100)
  plt.close(fig)
