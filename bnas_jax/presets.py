"""Choosing a config file's preset (`--config=configs/x.py:PRESET`)."""

from typing import Optional, Sequence

from bnas_jax.errors import UserInputError


def select(arg: Optional[str], presets: Sequence[str], config_file: str) -> str:
  """The preset named by `arg` (the first preset if empty); rejects unknown names."""
  preset = arg or presets[0]
  if preset not in presets:
    raise UserInputError(
        f"Unknown preset {preset!r} for {config_file}; known presets: {', '.join(presets)} "
        f"(use --config={config_file}:PRESET).")
  return preset
