"""Model constructors selected by `config.model.name`."""

from typing import Any

from bnas_jax.errors import UserInputError


def build_model(model_config: Any, num_classes: int, *, binary_weights: bool = True):
  """Builds the linen module a config describes.

  Args:
    model_config: the config's `model` ConfigDict; `name` picks the family.
    num_classes: classifier outputs (from the dataset).
    binary_weights: False builds the binary-activation / real-weight variant
      (step 1 of two-step training).
  """
  name = model_config.name
  if name == "reactnet":
    from bnas_jax.models import reactnet

    layout = model_config.blocks
    if isinstance(layout, str):
      layouts = {"reactnet_a": reactnet.REACTNET_A}
      if layout not in layouts:
        raise UserInputError(
          f"model.blocks={layout!r} is not a known layout ({', '.join(layouts)}); pass a "
          "layout name or a tuple of (width, stride, kernel, groups) per block."
        )
      layout = layouts[layout]
    mult = model_config.get("width_multiplier", 1.0)
    blocks = []
    for spec in layout:
      if len(spec) != 4 or any(int(v) != v or v <= 0 for v in spec):
        raise UserInputError(
          f"model.blocks entry {tuple(spec)!r} is not (width, stride, kernel, groups) with "
          "positive integers."
        )
      width, stride, kernel, groups = (int(v) for v in spec)
      if stride not in (1, 2):
        raise UserInputError(f"model.blocks entry {tuple(spec)!r}: stride must be 1 or 2.")
      blocks.append((max(groups, int(round(width * mult))), stride, kernel, groups))
    return reactnet.ReActNet(
      num_classes=num_classes,
      stem_features=max(1, int(round(model_config.stem_features * mult))),
      blocks=tuple(blocks),
      binary_weights=binary_weights and model_config.get("binary_weights", True),
      kernel_norm=model_config.get("kernel_norm", "channelwise"),
      stem_weight_bits=model_config.get("stem_weight_bits", 8),
    )
  if name in ("dms_vgg11", "dms_resnet18"):
    from bnas_jax.models import dms_nets

    return dms_nets.build(model_config, num_classes, binary_weights=binary_weights)
  raise UserInputError(
    f"config.model.name={name!r} is not a known model family; known: 'reactnet'."
  )
