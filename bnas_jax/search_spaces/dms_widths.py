"""The DMS width space: one output width per layer slot of a VGG-11 or ResNet-18 (no JAX).

DMS (Li et al., ICLR 2020 NAS workshop) searches the channel number of every layer.
Sec. 2.1: a layer's width is its base width c_out times an expansion ratio r, and the
search space holds every r for which r * c_out is a positive integer. App. B.2.1: the
search keeps its candidate ratios >= 0.3 and sets no upper bound ("our search space is
infinite"). Here a width is any integer in 1..`max_width` (65,536 by default, the largest
width an architecture file may hold, `user_files.MAX_ARCH_INT`), so the space is finite
and counted exactly; the ratio bound 0.3 belongs to the search (`search/dms.py`) and to
`sample`, not to validity (Table 1's baselines and a user's width vectors are valid at
any positive width).

Slots (`slot_names`): VGG-11 has one per conv. ResNet-18 (App. A.3) has one per residual
block for its inner width, one per stage for the residual stream width (the stem for
stage 1; for stages 2-4 the output "r2" of the block with the downsample shortcut); see
`models/dms_nets.py`, whose networks build any width vector of this space.

An architecture (`Widths`) is a width vector plus whether the network is binary; the one
full-precision network is Table 1's "Full Prec." row at the base widths. Text forms:

* a JSON list of widths, e.g. `[24, 48, 30, 12, 160, 64, 120, 96]` (binary),
* a JSON object with a "widths" list (the `dms_widths.json` a search writes; other keys
  are ignored, "family" must match, "binary": false only at the base widths),
* names (`resolve`): `fp`, the full-precision network at base (1x) widths, and
  `uniform1x` ... `uniform4x`, every base width times k (Table 1, "BNN kx").
"""

import dataclasses
import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from bnas_jax import atomic_files
from bnas_jax import user_files
from bnas_jax.errors import UserInputError

NAME = "dms_widths"
FAMILIES = ("dms_vgg11", "dms_resnet18")

# VGG-11 (configuration "A") at CIFAR widths: 64-128-256-256-512-512-512-512 / 4 (Sec. 3.1).
VGG11_BASE_WIDTHS = (16, 32, 64, 64, 128, 128, 128, 128)
VGG11_SLOT_NAMES = tuple(f"conv{i + 1}" for i in range(len(VGG11_BASE_WIDTHS)))

# ResNet-18 (CIFAR form: 3x3 stem, stages of 2 BasicBlocks) at 1/4 of ImageNet's widths.
RESNET18_STAGE_WIDTHS = (16, 32, 64, 128)


def _resnet18_slots() -> tuple[tuple[str, ...], tuple[int, ...]]:
  names, widths = ["stem"], [RESNET18_STAGE_WIDTHS[0]]
  for s, w in enumerate(RESNET18_STAGE_WIDTHS):
    for b in range(2):
      names.append(f"layer{s + 1}.{b}")
      widths.append(w)
      if b == 0 and s > 0:
        names.append(f"layer{s + 1}.0.r2")
        widths.append(w)
  return tuple(names), tuple(widths)


RESNET18_SLOT_NAMES, RESNET18_BASE_WIDTHS = _resnet18_slots()

UNIFORM = {f"uniform{k}x": float(k) for k in (1, 2, 3, 4)}  # Table 1's BNN 1x-4x
NAMES = ("fp", *UNIFORM)


def _check_family(family: Any) -> str:
  if family not in FAMILIES:
    raise UserInputError(
      f"config.model.name={user_files.quote(family)} is not a DMS family ({', '.join(FAMILIES)})."
    )
  return family


def base_widths(family: str) -> tuple[int, ...]:
  """The 1x (CIFAR) widths of every slot of `family`."""
  return {"dms_vgg11": VGG11_BASE_WIDTHS, "dms_resnet18": RESNET18_BASE_WIDTHS}[family]


def slot_names(family: str) -> tuple[str, ...]:
  """Readable names of the width slots, in width-vector order."""
  return {"dms_vgg11": VGG11_SLOT_NAMES, "dms_resnet18": RESNET18_SLOT_NAMES}[family]


def check_widths(family: str, widths: Sequence[Any]) -> None:
  """`UserInputError` unless `widths` holds one positive integer per slot of `family`."""
  n = len(base_widths(family))
  if len(widths) != n or any(int(w) != w or w < 1 for w in widths):
    raise UserInputError(
      f"{family} needs {n} positive integer widths, one per slot "
      f"({', '.join(slot_names(family))}); got {user_files.quote(tuple(widths))}."
    )


def base_widths_of(model_config: Any) -> tuple[int, ...]:
  """`model_config.base_widths` if set (shrunken test/digits variants), else the family's."""
  family = model_config.name
  override = model_config.get("base_widths", None)
  if override is None:
    return base_widths(family)
  check_widths(family, tuple(override))
  return tuple(int(w) for w in override)


def uniform_widths(
  family: str, multiplier: float, base: Optional[Sequence[int]] = None
) -> tuple[int, ...]:
  """Table 1's uniform baselines: every base width (default: CIFAR's) times `multiplier`."""
  base = base_widths(family) if base is None else base
  return tuple(max(1, int(round(w * multiplier))) for w in base)


@dataclasses.dataclass(frozen=True)
class Widths:
  """A DMS architecture: one output width per slot, and whether the network is binary."""

  widths: tuple[int, ...]
  binary: bool = True

  def __str__(self) -> str:
    """The text form: a JSON list, or for the full-precision network an object."""
    widths = [int(w) for w in self.widths]
    return json.dumps(widths if self.binary else {"widths": widths, "binary": False})


@dataclasses.dataclass(frozen=True)
class WidthSpace:
  """The width vectors of one DMS family (see the module docstring).

  Attributes:
    family: "dms_vgg11" or "dms_resnet18" (`config.model.name`).
    base_widths: the 1x width of every slot (`config.model.base_widths` or CIFAR's).
    max_width: the largest width of a slot.
    mu: location of the expansion-ratio distribution `sample` draws from (the search's
      mu_0: 1.5 for DMS-A, 2.5 for DMS-B, App. B.2.1).
    sigma: its scale (the search's sigma_0 = 1).
    min_ratio: the smallest ratio `sample` draws (App. B.2.1: 0.3).
    name: the space's name.
  """

  family: str
  base_widths: tuple[int, ...]
  max_width: int = user_files.MAX_ARCH_INT
  mu: float = 1.5
  sigma: float = 1.0
  min_ratio: float = 0.3
  name: str = NAME

  def __post_init__(self):
    _check_family(self.family)
    check_widths(self.family, self.base_widths)
    object.__setattr__(self, "base_widths", tuple(int(w) for w in self.base_widths))
    if (
      isinstance(self.max_width, bool) or not isinstance(self.max_width, int) or self.max_width < 1
    ):
      raise UserInputError(f"max_width={self.max_width!r} must be a positive integer.")
    if not (self.sigma > 0 and self.min_ratio > 0):
      raise UserInputError(
        f"sigma={self.sigma!r} and min_ratio={self.min_ratio!r} must be positive."
      )

  @property
  def slot_names(self) -> tuple[str, ...]:
    return slot_names(self.family)

  @property
  def num_slots(self) -> int:
    return len(self.base_widths)

  def sample(self, rng: np.random.Generator) -> Widths:
    """Per slot r ~ Logistic(mu, sigma) truncated to r >= min_ratio; width round(r c), clipped.

    The distribution a DMS search starts from (Sec. 2.2, Alg. 1 with mu_0 and sigma_0),
    drawn exactly by inverting the logistic CDF above the bound; widths are clipped to
    1..max_width.
    """
    lo = 1.0 / (1.0 + math.exp(-(self.min_ratio - self.mu) / self.sigma))
    u = rng.uniform(lo, 1.0, size=self.num_slots)
    u = np.minimum(u, np.nextafter(1.0, 0.0))  # keep log(u / (1 - u)) finite
    ratios = self.mu + self.sigma * np.log(u / (1.0 - u))
    widths = np.clip(np.round(ratios * np.asarray(self.base_widths)), 1, self.max_width)
    return Widths(tuple(int(w) for w in widths))

  def validate(self, arch: Widths, where: str = "widths") -> Widths:
    """`arch` if it has one width in 1..max_width per slot (FP only at the base widths)."""
    if not isinstance(arch, Widths):
      raise UserInputError(f"{where}: expected DMS Widths, got {type(arch).__name__}.")
    w = arch.widths
    if (
      not isinstance(w, tuple)
      or len(w) != self.num_slots
      or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= self.max_width
        for v in w
      )
    ):
      raise UserInputError(
        f"{where}: {self.family} needs a list of {self.num_slots} integer widths in "
        f"1..{self.max_width}, one per slot ({', '.join(self.slot_names)}); got "
        f"{user_files.quote(list(w) if isinstance(w, tuple) else w)}."
      )
    if not isinstance(arch.binary, bool):
      raise UserInputError(f"{where}: 'binary' must be true or false, got {arch.binary!r}.")
    if not arch.binary and w != self.base_widths:
      raise UserInputError(
        f"{where}: the full-precision network is Table 1's, at the base widths "
        f"{list(self.base_widths)}; got {user_files.quote(list(w))}."
      )
    return arch

  def count(self) -> dict[str, Any]:
    """Exact size: every binary width vector, plus the full-precision network."""
    return {
      "space": self.name,
      "family": self.family,
      "slots": self.num_slots,
      "slot_names": list(self.slot_names),
      "base_widths": list(self.base_widths),
      "max_width": self.max_width,
      "architectures": self.max_width**self.num_slots + 1,
    }

  def to_string(self, arch: Widths) -> str:
    """A JSON list of the widths; the full-precision network as an object with "binary"."""
    return str(self.validate(arch))

  def parse(self, text: str, where: str = "widths") -> Widths:
    """A JSON list of widths, or an object with a "widths" list (see the module docstring)."""
    return self._from_json(user_files.parse_json(text, where), where)

  def save(self, arch: Widths, path: str) -> None:
    """The JSON object form, atomically."""
    self.validate(arch)
    atomic_files.write_json(
      path,
      {
        "space": self.name,
        "family": self.family,
        "slot_names": list(self.slot_names),
        "widths": [int(w) for w in arch.widths],
        "binary": arch.binary,
      },
    )

  def load(self, path: str) -> Widths:
    """A file holding a JSON width list or object (`save`, or a search's dms_widths.json)."""
    if not isinstance(path, str) or not os.path.isfile(path):
      raise UserInputError(f"Widths file {user_files.quote(path)} does not exist.")
    where = f"widths file {user_files.quote(path)}"
    return self.parse(user_files.read_text(path, "widths file", ascii_only=True), where)

  def resolve(self, spec: str, what: str = "--arch") -> Widths:
    """A name (`fp`, `uniform1x` ... `uniform4x`), a JSON width list, or a file holding one."""
    where = f"{what}={user_files.quote(spec)}"
    if not isinstance(spec, str) or not spec.strip():
      raise UserInputError(f"{where} is empty; use one of {', '.join(NAMES)} or a JSON width list.")
    spec = spec.strip()
    if spec == "fp":
      return Widths(self.base_widths, binary=False)
    if spec in UNIFORM:
      return self.validate(Widths(uniform_widths(self.family, UNIFORM[spec], self.base_widths)))
    text = spec
    if not spec.startswith("[") and os.path.isfile(spec):
      text = user_files.read_text(spec, f"{what} file", ascii_only=True)
    try:
      value = user_files.parse_json(text, where)
    except UserInputError:
      raise UserInputError(
        f"{where} is neither a known architecture ({', '.join(NAMES)}), nor a JSON list of "
        f"{self.num_slots} integer widths, nor a file holding one."
      ) from None
    return self._from_json(value, where)

  def draw(self, arch: Widths, path: str, title: Optional[str] = None) -> None:
    draw(self, arch, path, title)

  def _from_json(self, value: Any, where: str) -> Widths:
    binary = True
    if isinstance(value, dict):
      family = value.get("family", self.family)
      if family != self.family:
        raise UserInputError(
          f"{where}: widths of {user_files.quote(family)}, but config.model.name={self.family!r}."
        )
      binary = value.get("binary", True)
      value = value.get("widths")
    if not isinstance(value, list):
      raise UserInputError(
        f"{where}: {self.family} needs a list of {self.num_slots} integer widths, one per "
        f"slot ({', '.join(self.slot_names)}); got {user_files.quote(value)}."
      )
    return self.validate(Widths(tuple(value), binary), where)


def space_from_config(config: Any) -> WidthSpace:
  """The space of `configs/dms.py`'s family; `sample`'s distribution is the search's start."""
  family = _check_family(config.model.name)
  s = config.get("search", {})
  return WidthSpace(
    family,
    base_widths_of(config.model),
    mu=float(s.get("mu_initial", 1.5)),
    sigma=float(s.get("sigma_initial", 1.0)),
    min_ratio=float(s.get("min_ratio", 0.3)),
  )


def draw(
  space: WidthSpace,
  arch: Widths,
  path: str,
  title: Optional[str] = None,
  *,
  label: str = "widths",
  sizes_mb: Optional[dict[str, float]] = None,
) -> None:
  """Fig. 4: channels per layer (bars) against the uniform 1x-4x BNNs (steps).

  Args:
    space: the space (base widths and slot names).
    arch: the widths to draw.
    path: the PNG to write (atomically).
    title: the figure's title (default: the family).
    label: legend label of the bars.
    sizes_mb: model sizes in MB for the legend, keyed "widths" and "uniform1x".."uniform4x".
  """
  space.validate(arch)
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  sizes_mb = sizes_mb or {}
  suffix = lambda key: f" ({sizes_mb[key]:.3f} MB)" if key in sizes_mb else ""
  names = space.slot_names
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 3.5))
  ax.bar(x, arch.widths, 0.6, color="tab:red", label=label + suffix("widths"))
  for k, style in zip((1, 2, 3, 4), ("-", "--", "-.", ":")):
    u = uniform_widths(space.family, k, space.base_widths)
    ax.step(
      np.append(x, x[-1] + 1) - 0.5,
      np.append(u, u[-1]),
      where="post",
      color="k",
      linestyle=style,
      linewidth=1,
      label=f"BNN {k}x" + suffix(f"uniform{k}x"),
    )
  ax.set_xticks(x)
  ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
  ax.set_ylabel("channels")
  ax.set_title(title or space.family)
  ax.legend(fontsize=7)
  fig.tight_layout()
  atomic_files.write_figure(path, fig, dpi=120)
  plt.close(fig)
