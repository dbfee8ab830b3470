"""A NAS-BNN architecture as a standalone network: the ReActNet template with its choices.

An architecture of the NAS-BNN space (Table 1) is a stem width plus, per block,
an output width, a kernel size and a group count. As a standalone network it is
exactly `reactnet.ReActNet` with one `(width, stride, kernel, groups)` entry per
active block (stride 2 on the first block of stages 2-5), the 8-bit LSQ stem and
channel-wise weight normalization (Eq. 6). The cost summary of an architecture
is therefore counted on the module that runs (`summary --arch=A`), and this is
the network of deployment pipeline 1 once the supernet's weights are sliced in.

`NasBnnFamily` is the family object (`models/families.py`) of `configs/nasbnn.py`: the
space, this standalone network, the supernet (`nasbnn_supernet.NasBnnSupernet`) and the
cost of a subnet.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import ml_collections

from bnas_jax import cost_model
from bnas_jax import layers
from bnas_jax.errors import UserInputError
from bnas_jax.models import nasbnn_supernet
from bnas_jax.models import reactnet
from bnas_jax.search_spaces import nasbnn


def space_from_config(config: Any) -> nasbnn.SearchSpace:
  """The config's search space: Table 1, or a width-scaled copy of it.

  `config.space.stages` (one `(depths, widths, kernels, groups, stride)` per
  stage) with `config.space.stem_widths` replaces Table 1 by a space of the
  user's own, e.g. a tiny one for tests; unset (None) means Table 1.
  """
  sc = config.space
  stages = sc.get("stages")
  if stages is None:
    base = nasbnn.SearchSpace.imagenet(nd_constraint=sc.nd_constraint)
  else:
    if not isinstance(stages, (list, tuple)) or not all(
      isinstance(st, (list, tuple)) and len(st) == 5 for st in stages
    ):
      raise UserInputError(
        f"config.space.stages={stages!r} must list one (depths, widths, kernels, groups, "
        "stride) tuple per stage."
      )
    base = nasbnn.SearchSpace(
      name="custom",
      stem_widths=sc.stem_widths,
      stages=tuple(nasbnn.StageSpec(*st) for st in stages),
      resolution=sc.resolution,
      nd_constraint=sc.nd_constraint,
    )
  if sc.width_divisor == 1 and sc.resolution == base.resolution:
    return base
  return nasbnn.SearchSpace.scaled(sc.width_divisor, sc.resolution, base=base)


def subnet_blocks(space: nasbnn.SearchSpace, arch: nasbnn.Architecture) -> tuple:
  """Per active block (width, stride, kernel, groups); stride on a stage's first block."""
  blocks = []
  for spec, stage in zip(space.stages, arch.stages):
    for j, block in enumerate(stage):
      blocks.append((block.width, spec.stride if j == 0 else 1, block.kernel, block.groups))
  return tuple(blocks)


def model_config(
  space: nasbnn.SearchSpace, arch: nasbnn.Architecture, base: Any = None
) -> ml_collections.ConfigDict:
  """The `config.model` of the standalone network of `arch` (validated)."""
  nasbnn.validate(space, arch)
  model = ml_collections.ConfigDict(
    dict(
      name="reactnet",
      kernel_norm="channelwise",
      stem_weight_bits=8,
      binary_weights=True,
      width_multiplier=1.0,
    )
  )
  if base is not None:
    model.update({k: v for k, v in base.items() if k in ("kernel_norm", "stem_weight_bits")})
  model.blocks = subnet_blocks(space, arch)
  model.stem_features = arch.stem_width
  return model


def resolve(config: Any, arch_spec: str) -> ml_collections.ConfigDict:
  """The `config.model` of a Table 6 name (A-F), biggest/smallest, or a string/JSON spec."""
  space = space_from_config(config)
  return model_config(space, nasbnn.resolve(space, arch_spec), config.get("model"))


@dataclasses.dataclass(frozen=True)
class NasBnnFamily:
  """NAS-BNN on one config: Table 1's space, the subnet network, the supernet, costs."""

  config: Any
  space: nasbnn.SearchSpace

  def check_config(self) -> None:
    """Nothing beyond the space: `space_from_config` already checked `config.space`."""

  def network(self, arch: nasbnn.Architecture, num_classes: int) -> nn.Module:
    """The standalone network of `arch` (ReActNet template, 8-bit LSQ stem)."""
    from bnas_jax.models import build_model  # pylint: disable=g-import-not-at-top

    return build_model(model_config(self.space, arch, self.config.get("model")), num_classes)

  def search_network(self, num_classes: int) -> nn.Module:
    """The weight-sharing supernet of `config.supernet` (every subnet in one program)."""
    s = self.config.supernet
    return nasbnn_supernet.NasBnnSupernet(
      self.space,
      num_classes,
      bi_transformation=s.bi_transformation,
      weight_norm=s.weight_norm,
      zero_init_classifier=s.zero_init_classifier,
    )

  def cost(
    self, arch: nasbnn.Architecture, num_classes: int, image_shape: tuple[int, ...] = ()
  ) -> dict[str, float]:
    """`subnet_cost` (the space fixes the input resolution; `image_shape` is not needed)."""
    del image_shape
    return subnet_cost(self.space, arch, num_classes)


def family(config: Any) -> NasBnnFamily:
  """The family of `configs/nasbnn.py`."""
  return NasBnnFamily(config, space_from_config(config))


@functools.lru_cache(maxsize=None)
def _part_cost(kind: str, *args) -> tuple[int, int, int, int]:
  """(flops, int8_ops, bops, params) of one network part, counted on its module."""
  if kind == "stem":
    width, res = args
    module, shape = reactnet.Stem(width), (1, res, res, 3)
  elif kind == "block":
    in_width, width, stride, kernel, groups, res = args
    module, shape = reactnet.ReActBlock(width, stride, kernel, groups), (1, res, res, in_width)
  else:
    in_width, classes = args
    module, shape = layers.QuantDense(classes), (1, in_width)
  r = cost_model.count_costs(module, shape, **({} if kind == "classifier" else {"train": False}))
  return r.flops, r.int8_ops, r.bops, r.params


def subnet_cost(
  space: nasbnn.SearchSpace, arch: nasbnn.Architecture, num_classes: int
) -> dict[str, float]:
  """Cost of `arch`'s standalone network, summed from per-part counts.

  Each distinct (stem | block | classifier) configuration is counted once on
  its own module with `cost_model.count_costs` and cached, so costing the
  thousands of candidates of an evolutionary search stays cheap while the
  numbers still come from the modules that run (equal to counting the whole
  network; tested).
  """
  res = space.resolution // space.stem_stride
  parts = [_part_cost("stem", arch.stem_width, space.resolution)]
  width = arch.stem_width
  for w, stride, k, g in subnet_blocks(space, arch):
    parts.append(_part_cost("block", width, w, stride, k, g, res))
    res //= stride
    width = w
  parts.append(_part_cost("classifier", width, num_classes))
  flops, int8_ops, bops, params = (sum(p[i] for p in parts) for i in range(4))
  return {
    "flops": flops,
    "int8_ops": int8_ops,
    "bops": bops,
    "params": params,
    "ops": flops + int8_ops / 8 + bops / 64,
  }
