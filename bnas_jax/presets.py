"""Shared pieces of config files: preset selection and the data block."""

from typing import Optional, Sequence

import ml_collections

from bnas_jax.errors import UserInputError


def select(arg: Optional[str], presets: Sequence[str], config_file: str) -> str:
  """The preset named by `arg` (the first preset if None); rejects unknown or empty names."""
  preset = presets[0] if arg is None else arg
  if preset not in presets:
    raise UserInputError(
      f"Unknown preset {preset!r} for {config_file}; known presets: {', '.join(presets)} "
      f"(use --config={config_file}:PRESET)."
    )
  return preset


def data_config(**overrides) -> ml_collections.ConfigDict:
  """`config.data` with every field `input_pipeline` reads (digits at 32x32 by default)."""
  data = ml_collections.ConfigDict(
    dict(
      name="digits",
      image_size=32,
      data_dir=ml_collections.FieldReference(None, str),
      holdout_per_class=0,
      holdout_fraction=0.0,
      split_seed=0,
      class_subset=ml_collections.FieldReference(None, tuple),
      cache_dir=ml_collections.FieldReference(None, str),
    )
  )
  data.update(overrides)
  return data
