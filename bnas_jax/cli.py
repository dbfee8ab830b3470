"""How the command-line tools report bad input: one paragraph, exit status 2."""

import contextlib
import sys
import textwrap
from typing import Callable, NoReturn

from absl import app
from absl import flags

from bnas_jax import errors
from bnas_jax import nonfinite_guard
from bnas_jax import user_files


MAX_MESSAGE = 1600  # characters of a printed error; longer ones lose their middle


def fail(message: str, status: int = errors.EXIT_BAD_INPUT) -> NoReturn:
  """Prints `message` as one wrapped paragraph on stderr and exits.

  A message that quotes too much user input (a whole file) is cut in the middle:
  the paragraph still says what was wrong and what would be accepted.
  """
  text = " ".join(str(message).split())
  if len(text) > MAX_MESSAGE:
    half = MAX_MESSAGE // 2
    text = f"{text[:half]} [... {len(text) - 2 * half:,} characters omitted ...] {text[-half:]}"
  print(textwrap.fill(f"error: {text}", width=100), file=sys.stderr)
  sys.exit(status)


@contextlib.contextmanager
def user_errors_exit():
  """Turns `UserInputError` into exit 2 and a non-finite stop into exit 1."""
  try:
    yield
  except errors.UserInputError as e:
    fail(str(e))
  except nonfinite_guard.NonFiniteError as e:
    fail(str(e), status=1)


def _last_error_line(message: str) -> str:
  """The final `SomeError: text` line of a message that embeds a traceback."""
  lines = [l.strip() for l in str(message).splitlines() if l.strip()]
  if not any(l.startswith("Traceback") for l in lines):
    return " ".join(lines)
  last = lines[-1]
  head, sep, tail = last.partition(": ")
  return tail if sep and head.replace(".", "").replace("_", "").isalnum() else last


def _config_specs(argv: list[str]) -> list[str]:
  """The values of `--config=...` / `--config ...` in `argv`."""
  specs = []
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith("--config="):
      specs.append(arg[len("--config="):])
    elif arg == "--config" and i + 1 < len(argv):
      specs.append(argv[i + 1])
  return specs


def _parse_flags(argv: list[str]) -> list[str]:
  # The config file is a user file: load it once through the guarded reader so
  # a missing/unreadable/broken one is one paragraph (ml_collections would defer
  # or wrap the error into a traceback).
  with user_errors_exit():
    for spec in _config_specs(argv):
      user_files.load_config(spec)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    # Config files raise UserInputError (a ValueError) for unknown presets;
    # absl wraps it together with the config loader's traceback.
    fail(f"{_last_error_line(str(e)).rstrip('. ')}; see --helpfull for the accepted flags.")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for --config.KEY overrides naming no field
    # or giving a value of the wrong type.
    fail(f"Bad config override: {_last_error_line(str(e)).strip(chr(34) + chr(39))} is not a "
         "field of the config or has the wrong type; --config.KEY=VALUE must name an existing "
         "field (see the config file) with a value of that field's type.")


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run` with bad flags reported as one paragraph and exit status 2."""
  app.run(main, flags_parser=_parse_flags)
