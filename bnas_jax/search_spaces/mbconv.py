r"""The binary MBConv search space of the bimodal-perturbation paper, as data + pure functions.

Ahn et al., "Searching for Robust Binary Neural Networks via Bimodal Parameter
Perturbation" (WACV 2023). Only the supplement is available (Sec. 1, Sec. 4,
Fig. 6/7 captions, Table 3; seed_methods_reference.md Sec. 6), so the space
below is RECONSTRUCTED wherever the supplement is silent:

* A network is a real-valued stem conv, a sequence of stages of binary MBConv
  blocks and a real-valued classifier. A stage is (repeats, stride, candidate
  output widths); its first layer carries the stride and the width change.
  (Supplement: "MBConv block in front of each gray line is a downsampling layer
  with stride=2"; the number of stages and layers per stage is not given.)
* Per layer the search picks a kernel size k of the binary k x k group conv
  (g = 2, supp. Fig. 6 caption; candidates {3, 5}: the only two sizes the
  supplement names) and an expansion ratio e (hidden width = e * C_in, as in
  MobileNetV2; candidates {1, 3, 6} by default, MobileNetV2/FBNet's values).
  The Fig. 6 caption says "e expanded channels"; we read e as the ratio.
* Per STAGE the search picks the output width C (RECONSTRUCTED: per stage, not
  per layer, so that only a stage's first block changes the width and all
  other blocks keep an identity shortcut; supp. Sec. 4 reports "larger channel
  dimension of latter layers", which a per-stage width expresses).
* Every width (and the stem width) must be divisible by the group count, so
  e * C is divisible too.

One `MBConvSpace` drives sampling (`sample`), validation (`ChoiceList`
parsing), counting (`space_size`), the architecture parameters of the search
network (`arch_shapes`, `derive`) and the networks themselves
(`models/binary_mbconv.py`).

Choice list: the chosen network. Readable string form (paper's 'MBk(e)'
notation, one bracket per stage with its width)::

    c16[MB3(6)] c24[MB5(3) MB3(1)] c32[MB3(6) MB3(6)]

JSON form::

    {"space": "mbconv", "stages": [{"width": 16, "layers": [[3, 6]]},
                                   {"width": 24, "layers": [[5, 3], [3, 1]]}, ...]}

Both round-trip; a bad entry raises `UserInputError` naming the stage and the
layer (1-based, as in the strings).
"""

import dataclasses
import json
import math
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from bnas_jax import atomic_files
from bnas_jax import user_files
from bnas_jax.errors import UserInputError

NAME = "mbconv"
SHORTCUTS = ("partially_duplicate", "zero", "global_average")
OPS_KEY = "ops"


def width_key(stage: int) -> str:
  """Name of stage `stage`'s width logits in the "arch" collection."""
  return f"width_stage{stage}"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: `repeats` layers, the first with `stride`, all at one chosen width."""

  repeats: int
  stride: int
  widths: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LayerSlot:
  """Where a layer sits: global index, stage, position in the stage, stride."""

  index: int
  stage: int
  position: int
  stride: int


@dataclasses.dataclass(frozen=True)
class MBConvSpace:
  """The binary MBConv space (see module docstring).

  Attributes:
    stem_width: output width of the real-valued stem conv.
    stem_stride: its stride (1 on CIFAR-size inputs, 2 on ImageNet).
    stages: the stages in order.
    kernel_sizes: candidate k of the group conv.
    expansions: candidate expansion ratios e.
    groups: groups of the k x k conv (2 in the paper).
  """

  stem_width: int
  stem_stride: int
  stages: tuple[Stage, ...]
  kernel_sizes: tuple[int, ...] = (3, 5)
  expansions: tuple[int, ...] = (1, 3, 6)
  groups: int = 2
  name: str = NAME

  @property
  def ops(self) -> tuple[tuple[int, int], ...]:
    """(kernel, expansion) candidates; the order is the column order of alpha."""
    return tuple((k, e) for k in self.kernel_sizes for e in self.expansions)

  @property
  def op_names(self) -> tuple[str, ...]:
    return tuple(op_name(k, e) for k, e in self.ops)

  @property
  def layers(self) -> tuple[LayerSlot, ...]:
    out = []
    for s, stage in enumerate(self.stages):
      for r in range(stage.repeats):
        out.append(LayerSlot(len(out), s, r, stage.stride if r == 0 else 1))
    return tuple(out)

  @property
  def num_layers(self) -> int:
    return sum(s.repeats for s in self.stages)

  # The common space interface (`search_spaces/interface.py`: `SearchSpace` and
  # `Differentiable`), shared with `search_spaces/darts.py`'s `CellSpace`.

  def sample(self, rng: np.random.Generator) -> "ChoiceList":
    return sample(self, rng)

  def validate(self, choice: "ChoiceList") -> "ChoiceList":
    if not isinstance(choice, ChoiceList):
      raise UserInputError(f"Expected a ChoiceList, got {type(choice).__name__}.")
    return validate(choice, self)

  def to_string(self, choice: "ChoiceList") -> str:
    """The readable form, e.g. 'c16[MB3(6)] c24[MB5(3) MB3(1)]'."""
    return str(choice)

  def parse(self, text: str) -> "ChoiceList":
    """The readable form or the JSON form."""
    if isinstance(text, str) and text.lstrip().startswith("{"):
      return from_json(text, self)
    return from_string(text, self)

  def save(self, choice: "ChoiceList", path: str) -> None:
    """The JSON form, atomically."""
    atomic_files.write_json(path, self.validate(choice).to_dict())

  def load(self, path_or_string: str) -> "ChoiceList":
    return load(path_or_string, self)

  def resolve(self, spec: str) -> "ChoiceList":
    """`--arch` / `config.genotype_file`: a JSON or string file, or the string form."""
    return load(spec, self)

  def derive(self, arch: dict[str, Any]) -> "ChoiceList":
    return derive(arch, self)

  def learnable_share(self, choice: "ChoiceList") -> float:
    """BNAS Sec. 4.3's share of learnable ops: every MBConv candidate has weights."""
    del choice
    return 1.0

  def draw(self, choice: "ChoiceList", path: str, title: Optional[str] = None) -> None:
    draw(choice, path, title)

  def count(self) -> dict[str, Any]:
    return {"space": self.name, "architectures": space_size(self)}


def op_name(kernel: int, expansion: int) -> str:
  """The paper's notation: 'MBk(e)'."""
  return f"MB{kernel}({expansion})"


def _positive_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0


def _int_tuple(v: Any, what: str) -> tuple[int, ...]:
  if not isinstance(v, (list, tuple)) or not v or not all(_positive_int(i) for i in v):
    raise UserInputError(f"{what}={v!r} must be a non-empty list of positive integers.")
  if len(set(v)) != len(v):
    raise UserInputError(f"{what}={v!r} lists a value twice.")
  return tuple(int(i) for i in v)


def make_space(
  stem_width: int,
  stem_stride: int,
  stages: Sequence[Any],
  kernel_sizes: Sequence[int] = (3, 5),
  expansions: Sequence[int] = (1, 3, 6),
  groups: int = 2,
  where: str = "config.model",
) -> MBConvSpace:
  """A validated space; `stages` holds (repeats, stride, widths) per stage.

  Raises:
    UserInputError: a non-positive or non-integer value, a stride other than
      1/2, an even kernel size, or a width the group count does not divide.
  """
  if not _positive_int(groups):
    raise UserInputError(f"{where}.groups={groups!r} must be a positive integer.")
  if not _positive_int(stem_width) or stem_width % groups:
    raise UserInputError(
      f"{where}.stem_width={stem_width!r} must be a positive multiple of "
      f"groups={groups} (the first block's group conv splits e * stem_width "
      "channels into groups)."
    )
  if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
    raise UserInputError(f"{where}.stem_stride={stem_stride!r} must be 1 or 2.")
  kernels = _int_tuple(kernel_sizes, f"{where}.kernel_sizes")
  if any(k % 2 == 0 for k in kernels):
    raise UserInputError(f"{where}.kernel_sizes={kernels!r} must be odd (symmetric padding).")
  exps = _int_tuple(expansions, f"{where}.expansions")
  if not isinstance(stages, (list, tuple)) or not stages:
    raise UserInputError(
      f"{where}.stages must be a non-empty list of (repeats, stride, "
      f"widths) entries, got {stages!r}."
    )
  out = []
  for s, st in enumerate(stages):
    name = f"{where}.stages[{s}]"
    if not isinstance(st, (list, tuple)) or len(st) != 3:
      raise UserInputError(f"{name}={st!r} is not (repeats, stride, widths).")
    repeats, stride, widths = st
    if not _positive_int(repeats):
      raise UserInputError(f"{name}: repeats={repeats!r} must be a positive integer.")
    if stride not in (1, 2) or isinstance(stride, bool):
      raise UserInputError(f"{name}: stride={stride!r} must be 1 or 2.")
    widths = _int_tuple(widths, f"{name} widths")
    bad = [w for w in widths if w % groups]
    if bad:
      raise UserInputError(
        f"{name}: widths {bad} are not multiples of groups={groups}; the "
        "binary group conv needs every width divisible by the group count."
      )
    out.append(Stage(int(repeats), int(stride), widths))
  return MBConvSpace(int(stem_width), int(stem_stride), tuple(out), kernels, exps, int(groups))


def space_from_config(model_config: Any) -> MBConvSpace:
  """The space a config's `model` block describes (fields of `make_space`)."""
  m = model_config
  return make_space(m.stem_width, m.stem_stride, m.stages, m.kernel_sizes, m.expansions, m.groups)


def space_size(space: MBConvSpace) -> int:
  """Number of distinct choice lists: |ops|^layers * prod of |widths| per stage."""
  return len(space.ops) ** space.num_layers * math.prod(len(s.widths) for s in space.stages)


# ----------------------------------------------------------------------------
# Choice lists.


@dataclasses.dataclass(frozen=True)
class ChoiceList:
  """A chosen network: per stage its width, per layer its (kernel, expansion)."""

  widths: tuple[int, ...]
  layers: tuple[tuple[tuple[int, int], ...], ...]  # per stage, per layer
  space: str = NAME

  def to_dict(self) -> dict[str, Any]:
    return {
      "space": self.space,
      "stages": [
        {"width": int(w), "layers": [[int(k), int(e)] for k, e in ls]}
        for w, ls in zip(self.widths, self.layers)
      ],
    }

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  def __str__(self) -> str:
    return " ".join(
      f"c{w}[{' '.join(op_name(k, e) for k, e in ls)}]" for w, ls in zip(self.widths, self.layers)
    )

  def blocks(self, space: MBConvSpace) -> list[tuple[int, int, int, int]]:
    """(output width, stride, kernel, expansion) per layer, in order."""
    flat = [op for ls in self.layers for op in ls]
    return [(self.widths[slot.stage], slot.stride, *flat[slot.index]) for slot in space.layers]


def _layer_name(space: MBConvSpace, stage: int, position: int) -> str:
  index = next(l.index for l in space.layers if (l.stage, l.position) == (stage, position))
  return f"stage {stage + 1} layer {position + 1} (layer {index + 1} of {space.num_layers})"


def validate(choice: ChoiceList, space: MBConvSpace, where: str = "choice list") -> ChoiceList:
  """`choice` if it fits `space`; else `UserInputError` naming the stage/layer."""
  if choice.space != NAME:
    raise UserInputError(f"{where}: space {choice.space!r} is not {NAME!r}.")
  if len(choice.widths) != len(space.stages) or len(choice.layers) != len(space.stages):
    raise UserInputError(
      f"{where}: has {len(choice.layers)} stages; the space has "
      f"{len(space.stages)} (config.model.stages)."
    )
  for s, (stage, w, ls) in enumerate(zip(space.stages, choice.widths, choice.layers)):
    if w not in stage.widths:
      raise UserInputError(
        f"{where}: stage {s + 1} has width {w!r}, not one of its candidate "
        f"widths {list(stage.widths)}."
      )
    if len(ls) != stage.repeats:
      raise UserInputError(
        f"{where}: stage {s + 1} has {len(ls)} layers; the space has {stage.repeats}."
      )
    for r, op in enumerate(ls):
      if tuple(op) not in space.ops:
        raise UserInputError(
          f"{where}: {_layer_name(space, s, r)} is {op!r}, not a candidate (kernel, "
          f"expansion); kernels {list(space.kernel_sizes)}, expansions "
          f"{list(space.expansions)}."
        )
  return choice


def from_dict(d: Any, space: MBConvSpace, where: str = "choice list") -> ChoiceList:
  """A validated `ChoiceList` from its JSON dict."""
  if not isinstance(d, dict) or set(d) - {"space", "stages"} or "stages" not in d:
    raise UserInputError(
      f"{where}: expected a JSON object with keys 'space' and 'stages' "
      f"(one {{'width', 'layers'}} object per stage), got {d!r:.200}."
    )
  if d.get("space", NAME) != NAME:
    raise UserInputError(
      f"{where}: space {d.get('space')!r} is not {NAME!r} (a cell genotype "
      "needs config.space='bnas' or 'bats')."
    )
  stages = d["stages"]
  if not isinstance(stages, list):
    raise UserInputError(f"{where}: 'stages' must be a list, got {stages!r:.200}.")
  widths, layers = [], []
  for s, st in enumerate(stages):
    if not isinstance(st, dict) or set(st) != {"width", "layers"}:
      raise UserInputError(
        f"{where}: stage {s + 1} must be an object with 'width' and 'layers', got {st!r:.200}."
      )
    if not _positive_int(st["width"]):
      raise UserInputError(
        f"{where}: stage {s + 1} width {st['width']!r} is not a positive integer."
      )
    if not isinstance(st["layers"], list):
      raise UserInputError(
        f"{where}: stage {s + 1} 'layers' must be a list of [kernel, expansion] pairs."
      )
    ops = []
    for r, op in enumerate(st["layers"]):
      if not isinstance(op, (list, tuple)) or len(op) != 2 or not all(_positive_int(v) for v in op):
        layer = (
          _layer_name(space, s, r)
          if s < len(space.stages) and r < space.stages[s].repeats
          else f"stage {s + 1} layer {r + 1}"
        )
        raise UserInputError(
          f"{where}: {layer} is {op!r}, not a [kernel, expansion] pair of positive integers."
        )
      ops.append((int(op[0]), int(op[1])))
    widths.append(int(st["width"]))
    layers.append(tuple(ops))
  return validate(ChoiceList(tuple(widths), tuple(layers)), space, where)


_STAGE_RE = re.compile(r"c(\d+)\[([^\]]*)\]", re.ASCII)
_OP_RE = re.compile(r"MB(\d+)\((\d+)\)", re.ASCII)


def from_string(text: str, space: MBConvSpace, where: str = "choice list") -> ChoiceList:
  """Parses the readable form, e.g. 'c16[MB3(6)] c24[MB5(3) MB3(1)]'."""
  if not isinstance(text, str):
    raise UserInputError(f"{where}: expected a string, got {type(text).__name__}.")
  compact = text.strip()
  stages = list(_STAGE_RE.finditer(compact))
  if not stages or _STAGE_RE.sub("", compact).strip():
    raise UserInputError(
      f"{where}: {user_files.quote(text)} is not of the form "
      "'c16[MB3(6) MB5(3)] c24[...]' "
      "(one cWIDTH[...] per stage, layers as MBkernel(expansion))."
    )
  widths, layers = [], []
  for s, m in enumerate(stages):
    body = m.group(2).split()
    ops = []
    for r, tok in enumerate(body):
      op = _OP_RE.fullmatch(tok)
      if op is None:
        raise UserInputError(
          f"{where}: stage {s + 1} layer {r + 1} is {user_files.quote(tok)}, "
          "not "
          "'MBkernel(expansion)' such as 'MB3(6)'."
        )
      ops.append((int(op.group(1)), int(op.group(2))))
    widths.append(int(m.group(1)))
    layers.append(tuple(ops))
  return validate(ChoiceList(tuple(widths), tuple(layers)), space, where)


def from_json(text: str, space: MBConvSpace, where: str = "choice list") -> ChoiceList:
  return from_dict(user_files.parse_json(text, where), space, where)


def load(path_or_string: str, space: MBConvSpace) -> ChoiceList:
  """A choice list from a JSON file, a file holding the string form, or the string itself."""
  if isinstance(path_or_string, str) and os.path.isfile(path_or_string):
    text = user_files.read_text(path_or_string, "choice-list file", ascii_only=True)
    where = f"choice-list file {user_files.quote(path_or_string)}"
    if text.lstrip().startswith("{"):
      return from_json(text, space, where)
    return from_string(text, space, where)
  if isinstance(path_or_string, str) and "[" in path_or_string:
    return from_string(path_or_string, space, "config.genotype_file (a choice-list string)")
  raise UserInputError(
    f"config.genotype_file={user_files.quote(path_or_string)} is neither an existing file nor "
    "a choice-list "
    "string; pass a JSON file written by a search (WORKDIR/genotype.json) or a string such "
    "as 'c16[MB3(6)] c24[MB5(3) MB3(1)]'."
  )


def sample(space: MBConvSpace, rng: np.random.Generator) -> ChoiceList:
  """A uniformly random choice list (the random baseline of issue 4, Sec. 7)."""
  ops = space.ops
  widths = tuple(int(rng.choice(s.widths)) for s in space.stages)
  layers = tuple(
    tuple(ops[int(rng.integers(len(ops)))] for _ in range(s.repeats)) for s in space.stages
  )
  return ChoiceList(widths, layers)


# ----------------------------------------------------------------------------
# Architecture parameters of the search network and derivation.


def arch_shapes(space: MBConvSpace) -> dict[str, tuple[int, int]]:
  """Shapes of the "arch" collection: op logits per layer, width logits per stage.

  Every entry is 2-D (rows = decisions) so `bilevel.mean_entropy` averages the
  entropy of every decision, layers and stages alike.
  """
  shapes = {OPS_KEY: (space.num_layers, len(space.ops))}
  for s, stage in enumerate(space.stages):
    shapes[width_key(s)] = (1, len(stage.widths))
  return shapes


def derive(arch: dict[str, Any], space: MBConvSpace) -> ChoiceList:
  """Argmax per layer over (kernel, expansion) and per stage over widths.

  softmax(alpha / T) is monotone in alpha, so the temperature does not matter;
  ties go to the first candidate (np.argmax).
  """
  ops = np.asarray(arch[OPS_KEY])
  if ops.shape != (space.num_layers, len(space.ops)):
    raise ValueError(
      f"arch[{OPS_KEY!r}] has shape {ops.shape}, expected {(space.num_layers, len(space.ops))}."
    )
  picks = [space.ops[int(i)] for i in np.argmax(ops, axis=-1)]
  widths = tuple(
    stage.widths[int(np.argmax(np.asarray(arch[width_key(s)])[0]))]
    for s, stage in enumerate(space.stages)
  )
  layers = tuple(
    tuple(picks[l.index] for l in space.layers if l.stage == s) for s in range(len(space.stages))
  )
  return ChoiceList(widths, layers)


def draw(choice: ChoiceList, path: str, title: Optional[str] = None) -> None:
  """PNG of the block sequence in the style of supp. Fig. 6 (matplotlib)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  boxes = [("stem (real)", True)]
  for w, ls in zip(choice.widths, choice.layers):
    boxes += [(f"{op_name(k, e)}\nC={w}", False) for k, e in ls]
  boxes.append(("classifier (real)", True))
  fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(boxes)), 2.2))
  for i, (label, real) in enumerate(boxes):
    ax.text(
      i,
      0.5,
      label,
      ha="center",
      va="center",
      fontsize=8,
      bbox=dict(boxstyle="round", fc="white" if real else "wheat", ls=":" if real else "-"),
    )
    if i:
      ax.annotate("", xy=(i - 0.38, 0.5), xytext=(i - 0.62, 0.5), arrowprops=dict(arrowstyle="->"))
  ax.set_xlim(-0.7, len(boxes) - 0.3)
  ax.set_ylim(0, 1)
  ax.axis("off")
  if title:
    ax.set_title(title)
  fig.tight_layout()
  atomic_files.write_figure(path, fig, dpi=100)
  plt.close(fig)
