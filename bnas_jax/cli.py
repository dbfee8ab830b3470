"""What the command-line tools print: bad input as one paragraph (exit 2), and
library log lines kept off the console.

`LibraryLogs` implements the console policy of `bnas_jax.main`: until the run
has been validated, every library log line (Python logging: absl, JAX, orbax,
TF; and whatever C++ code writes to file descriptor 2, e.g. XLA's "Very slow
compile?" banner) is held back, so a rejected run prints only its paragraph.
Once validated, the held lines and all later ones go to `<workdir>/log.txt`
(`log.process_<i>.txt` on other processes); the console keeps the run's own
lines, progress bars, Python warnings at ERROR level and above, and
tracebacks. `--verbose` keeps everything on the console as before.
"""

import contextlib
import io
import logging
import logging.handlers
import os
import sys
import tempfile
import textwrap
from typing import Callable, NoReturn, Optional

from absl import app
from absl import flags
from absl import logging as absl_logging

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
      specs.append(arg[len("--config=") :])
    elif arg == "--config" and i + 1 < len(argv):
      specs.append(argv[i + 1])
  return specs


def _parse_flags(argv: list[str], flag_values: Optional[flags.FlagValues] = None) -> list[str]:
  # The config file is a user file: load it once through the guarded reader so
  # a missing/unreadable/broken one is one paragraph (ml_collections would defer
  # or wrap the error into a traceback).
  with user_errors_exit():
    for spec in _config_specs(argv):
      user_files.load_config(spec)
  try:
    return (flags.FLAGS if flag_values is None else flag_values)(argv)
  except flags.Error as e:
    # Config files raise UserInputError (a ValueError) for unknown presets;
    # absl wraps it together with the config loader's traceback.
    fail(f"{_last_error_line(str(e)).rstrip('. ')}; see --helpfull for the accepted flags.")
  except IndexError as e:
    # `--config.model.blocks[0]=...`: ml_collections cannot set one item of a tuple.
    fail(
      f"Bad config override: {_last_error_line(str(e))}. Tuple fields are overridden "
      "whole, e.g. --config.model.blocks='((16, 1, 3, 1), (32, 2, 3, 1))'."
    )
  except (AttributeError, LookupError, TypeError, ValueError, ArithmeticError) as e:
    # ml_collections raises these for --config.KEY overrides naming no field
    # or giving a value of the wrong type.
    fail(
      f"Bad config override: {_last_error_line(str(e)).strip(chr(34) + chr(39))} is not a "
      "field of the config or has the wrong type; --config.KEY=VALUE must name an existing "
      "field (see the config file) with a value of that field's type."
    )


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run` with bad flags reported as one paragraph and exit status 2."""
  app.run(main, flags_parser=_parse_flags)


class LibraryLogs:
  """Holds library log lines until validation, then sends them to a file (module docstring)."""

  def __init__(self, verbose: bool):
    self.verbose = verbose
    self._held: Optional[logging.handlers.MemoryHandler] = None
    self._held_fd2: Optional[io.BufferedRandom] = None
    self.path: Optional[str] = None
    if verbose:
      return
    # Python logging: nothing reaches the console; records wait in memory.
    self._absl = absl_logging.get_absl_handler()
    self._absl.setLevel(logging.CRITICAL + 1)
    self._held = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
    logging.getLogger().addHandler(self._held)
    logging.captureWarnings(True)
    # C++ output: fd 2 goes to a temporary file; Python's sys.stderr keeps the terminal.
    sys.stderr.flush()
    console = os.dup(2)
    self._held_fd2 = tempfile.TemporaryFile()
    os.dup2(self._held_fd2.fileno(), 2)
    sys.stderr = os.fdopen(console, "w", buffering=1, errors="backslashreplace")
    self._absl.python_handler.stream = sys.stderr

  def to_file(self, workdir: str, process_index: int) -> None:
    """Validation passed: held and future library lines go to the run's log file."""
    if self.verbose:
      return
    name = "log.txt" if process_index == 0 else f"log.process_{process_index}.txt"
    local = "://" not in workdir  # fd 2 needs a local file; gs:// runs log to /tmp
    self.path = os.path.join(workdir if local else tempfile.gettempdir(), name)
    log_file = logging.FileHandler(self.path, mode="a", encoding="utf-8")
    log_file.setFormatter(absl_logging.PythonFormatter())
    root = logging.getLogger()
    root.addHandler(log_file)
    self._held.setTarget(log_file)
    self._held.flush()
    root.removeHandler(self._held)
    self._held.close()
    log_file.flush()
    with open(self.path, "ab") as f:  # C++ lines written so far, then fd 2 itself
      self._held_fd2.seek(0)
      f.write(self._held_fd2.read())
    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    self._held_fd2.close()
    self._absl.setLevel(logging.ERROR)
    if not local:
      print(f"library log lines go to {self.path} (--verbose shows them here)", flush=True)
