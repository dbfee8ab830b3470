"""The surface every search space offers, written down as `typing.Protocol`s (no JAX).

A space is data (choice sets, shapes) plus the few functions a search, a trainer or the
`summary` CLI calls on it; an architecture is an immutable value of the space's own type.
The four spaces implement it:

| space | module | architecture | `Evolvable` | `Differentiable` |
|---|---|---|---|---|
| NAS-BNN (Table 1) | `nasbnn.SearchSpace` | `nasbnn.Architecture` | yes | no |
| BNAS / BATS cells | `darts.CellSpace` | `darts.Genotype` | no | yes |
| bimodal binary MBConv | `mbconv.MBConvSpace` | `mbconv.ChoiceList` | no | yes |
| DMS per-layer widths | `dms_widths.WidthSpace` | `dms_widths.Widths` | no | no |

Optional parts, and why a space leaves them out:

* `Evolvable` (mutate, crossover, encode, decode): the NAS-BNN search is evolutionary
  (Sec. 3.4) and its supernet takes a fixed-shape numeric encoding of a subnet. The cell
  and MBConv searches move alpha by gradient and DMS moves mu, so none of them mutates,
  crosses or encodes an architecture.
* `Differentiable` (derive, learnable_share): the DARTS-family searches derive the
  architecture from the supernet's alpha (argmax rules of each paper). DMS derives its
  widths from mu with `search/dms.final_widths` (Sec. 2.4), which needs the search's
  state, not the space.
* Costs (`cost`) are counted on the modules that run (`cost_model.count_costs`), so they
  live with the networks: each family object in `bnas_jax/models/` (`families.Family`)
  offers `cost(arch, ...)` next to `network(arch, ...)`.

Every reader of user text (`parse`, `load`, `resolve`) goes through
`bnas_jax/user_files.py` and raises `errors.UserInputError` with a short message that
quotes the input only through `user_files.quote`.
"""

from typing import Any, Mapping, Optional, Protocol, TypeVar, runtime_checkable

import numpy as np

Arch = TypeVar("Arch")


@runtime_checkable
class SearchSpace(Protocol[Arch]):
  """What every space offers.

  Attributes:
    name: the space's name, used in messages, files and `count()`.
  """

  name: str

  def sample(self, rng: np.random.Generator) -> Arch:
    """A random architecture of the space, drawn with the host-side `rng` only."""

  def validate(self, arch: Arch) -> Arch:
    """`arch` if it belongs to the space; else `UserInputError` naming what is wrong."""

  def count(self) -> dict[str, Any]:
    """The exact size of the space: at least {"space": name, "architectures": int}."""

  def to_string(self, arch: Arch) -> str:
    """The text form that `parse` reads back to an equal architecture."""

  def parse(self, text: str) -> Arch:
    """The validated architecture of a text form (`to_string`'s output and friends)."""

  def save(self, arch: Arch, path: str) -> None:
    """Writes `arch` atomically as a file that `load` reads back."""

  def load(self, path: str) -> Arch:
    """The validated architecture in a file written by `save` (or by a search)."""

  def resolve(self, spec: str) -> Arch:
    """What the CLI's `--arch` (and a config's architecture field) accepts.

    Names the space defines (NAS-BNN's Table 6 models, DMS's Table 1 baselines), the
    text form and files; anything else raises `UserInputError` with a short message.
    """

  def draw(self, arch: Arch, path: str, title: Optional[str] = None) -> None:
    """A PNG picture of `arch` (matplotlib, written atomically)."""


@runtime_checkable
class Evolvable(Protocol[Arch]):
  """The operators of an evolutionary search and the supernet's fixed-shape encoding."""

  def mutate(self, arch: Arch, rng: np.random.Generator) -> Arch:
    """A valid child of one parent."""

  def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
    """A valid child of two parents."""

  def encode(self, arch: Arch) -> dict[str, np.ndarray]:
    """Integer arrays whose shapes depend only on the space (traced by a jitted supernet)."""

  def decode(self, encoding: Mapping[str, Any]) -> Arch:
    """The inverse of `encode` (validated)."""


@runtime_checkable
class Differentiable(Protocol[Arch]):
  """A space whose search relaxes the choices into architecture parameters (alpha)."""

  def derive(self, arch_params: dict[str, Any]) -> Arch:
    """The architecture the search network's parameters select."""

  def learnable_share(self, arch: Arch) -> float:
    """Share of the chosen ops that have weights (BNAS Sec. 4.3)."""
