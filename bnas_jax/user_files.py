"""The one guarded way to read a file a user hands in.

Config files, architecture strings and files, genotypes and DMS width files
come from users, so reading them must fail as one short paragraph
(`UserInputError`), never as a traceback, a hang or an echo of the whole file:

* `read_text`: a regular file, at most `max_bytes`, strict UTF-8, no NUL or
  other control characters except tab/newline (optionally ASCII only);
* `parse_json` / `read_json`: the above, then JSON with bounded nesting depth,
  integers of at most `MAX_INT_DIGITS` digits and no NaN/Infinity, checked
  before `json` recurses or converts anything;
* `load_config`: a config file (`path.py[:preset]`) loaded as Python and its
  `get_config(preset)` called, with every failure (missing, a directory, not
  Python, raising, returning something other than a ConfigDict) reported.

Every message quotes at most `MAX_QUOTE` characters of the input.
"""

import json
import os
import types
from typing import Any, Optional

import ml_collections

from bnas_jax.errors import UserInputError

MAX_QUOTE = 200
MAX_TEXT_BYTES = 1 << 20  # architectures, genotypes, widths: a few KB in practice
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_INT_DIGITS = 18  # < 2**63: every count, width and OPs value fits
MAX_FRACTION_DIGITS = 40  # digits after a decimal point (float reprs need <= 17)


def quote(value: Any, limit: int = MAX_QUOTE) -> str:
  """`repr(value)`, cut to `limit` characters with its total length noted."""
  r = repr(value)
  if len(r) <= limit:
    return r
  return f"{r[:limit]}... ({len(r):,} characters)"


def _check_characters(text: str, what: str, ascii_only: bool) -> None:
  for i, ch in enumerate(text):
    code = ord(ch)
    if (code < 32 and ch not in "\t\n\r") or code == 127 or (ascii_only and code > 126):
      kind = "non-ASCII" if code > 126 else "control"
      raise UserInputError(
        f"{what} contains the {kind} character {ch!r} (U+{code:04X}) at position {i}: "
        f"{quote(text[max(0, i - 40) : i + 40])}. Use plain ASCII (digits 0-9, letters, "
        "punctuation)."
      )


def read_text(
  path: str, what: str, *, max_bytes: int = MAX_TEXT_BYTES, ascii_only: bool = False
) -> str:
  """The UTF-8 text of the regular file `path` (see the module docstring).

  Args:
    path: the file.
    what: how the message names it ("the genotype file --config.genotype_file").
    max_bytes: size limit.
    ascii_only: also reject non-ASCII characters (architecture grammars).
  """
  if not isinstance(path, str) or not path.strip():
    raise UserInputError(f"{what}: the path is empty; give the file's path.")
  try:
    if not os.path.exists(path):
      raise UserInputError(f"{what}: {quote(path)} does not exist.")
    if os.path.isdir(path):
      raise UserInputError(f"{what}: {quote(path)} is a directory, not a file.")
    size = os.path.getsize(path)
    if size > max_bytes:
      raise UserInputError(
        f"{what}: {quote(path)} has {size:,} bytes, more than the {max_bytes:,} such a file "
        "can reasonably need; is it the right file?"
      )
    with open(path, "rb") as f:
      data = f.read(max_bytes + 1)
  except OSError as e:
    raise UserInputError(f"{what}: {quote(path)} cannot be read ({e.strerror or e}).") from None
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserInputError(
      f"{what}: {quote(path)} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
      f"{e.start}); is it the right file?"
    ) from None
  _check_characters(text, f"{what} ({quote(path)})", ascii_only)
  return text


def _check_json_shape(text: str, what: str, max_depth: int) -> None:
  """Nesting depth and integer length, scanned without recursion."""
  depth, in_string, escaped, run, fraction = 0, False, False, 0, False
  for i, ch in enumerate(text):
    if in_string:
      if escaped:
        escaped = False
      elif ch == "\\":
        escaped = True
      elif ch == '"':
        in_string = False
      continue
    if "0" <= ch <= "9":
      if run == 0:
        fraction = i > 0 and text[i - 1] == "."
      run += 1
      if run > (MAX_FRACTION_DIGITS if fraction else MAX_INT_DIGITS):
        start = i - run + 1
        raise UserInputError(
          f"{what} holds a number of more than {run - 1} digits at position {start}: "
          f"{quote(text[start : start + 40])}; no count, width or cost is that long."
        )
      continue
    run = 0
    if ch == '"':
      in_string = True
    elif ch in "[{":
      depth += 1
      if depth > max_depth:
        raise UserInputError(
          f"{what} nests JSON deeper than {max_depth} levels (at position {i}: "
          f"{quote(text[max(0, i - 40) : i + 20])}); such files are never that deep."
        )
    elif ch in "]}":
      depth -= 1


def _reject_constant(name: str) -> Any:
  raise ValueError(f"{name} is not a finite number")


def parse_json(text: str, what: str, *, max_depth: int = MAX_DEPTH) -> Any:
  """JSON from `text` with bounded depth/integers and no NaN/Infinity."""
  _check_json_shape(text, what, max_depth)
  try:
    return json.loads(text, parse_constant=_reject_constant)
  except ValueError as e:  # JSONDecodeError is a ValueError
    pos = getattr(e, "pos", None)
    where = f" near {quote(text[max(0, pos - 40) : pos + 40])}" if pos is not None else ""
    msg = getattr(e, "msg", str(e))
    raise UserInputError(f"{what} is not valid JSON ({msg}){where}.") from None


def read_json(
  path: str, what: str, *, max_bytes: int = MAX_TEXT_BYTES, max_depth: int = MAX_DEPTH
) -> Any:
  """`parse_json` of `read_text(path)`."""
  return parse_json(
    read_text(path, what, max_bytes=max_bytes), f"{what} ({quote(path)})", max_depth=max_depth
  )


MAX_SPEC_CHARS = 1 << 16  # an inline architecture string or JSON
MAX_ARCH_INT = 1 << 16  # widths, kernels, groups, node indices of any architecture


def check_spec(spec: str, what: str) -> None:
  """Guards an architecture/genotype/widths spec: an inline string or a file's path.

  A file is read with `read_text` (ASCII only), an inline string must be short
  ASCII; either, if it looks like JSON, must pass `parse_json`'s depth and
  integer limits. The owner's parser (search space, resolver) then reads the
  spec's schema; this only keeps hostile input from reaching it.
  """
  if not isinstance(spec, str):
    raise UserInputError(f"{what} must be a string, got {type(spec).__name__}.")
  if os.path.isfile(spec) or os.path.isdir(spec):
    text = read_text(spec, what, ascii_only=True)
    where = f"{what} ({quote(spec)})"
  else:
    if len(spec) > MAX_SPEC_CHARS:
      raise UserInputError(
        f"{what} is {len(spec):,} characters long ({quote(spec, 60)}); an architecture "
        f"string has at most {MAX_SPEC_CHARS:,}: pass a file instead."
      )
    _check_characters(spec, what, ascii_only=True)
    text, where = spec, what
  if text.lstrip()[:1] in ("{", "["):
    too_large = _first_int_above(parse_json(text, where), MAX_ARCH_INT)
    if too_large is not None:
      raise UserInputError(
        f"{where} holds the number {too_large:,}; no width, kernel, group count or index "
        f"of an architecture exceeds {MAX_ARCH_INT:,}."
      )


def _first_int_above(value: Any, limit: int) -> Optional[int]:
  """The first integer in nested JSON data whose magnitude exceeds `limit` (iteratively)."""
  stack = [value]
  while stack:
    v = stack.pop()
    if isinstance(v, dict):
      stack.extend(v.values())
    elif isinstance(v, list):
      stack.extend(v)
    elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > limit:
      return v
  return None


def split_config_spec(spec: str) -> tuple[str, Optional[str]]:
  """`path.py[:preset]` -> (path, preset or None); an empty preset after ':' is an error."""
  path, sep, preset = str(spec).partition(":")
  if sep and not preset.strip():
    raise UserInputError(
      f"--config={quote(spec)} ends with ':' but names no preset; drop the ':' for the "
      "default or write --config=FILE.py:PRESET."
    )
  return path, (preset if sep else None)


def load_config_module(spec: str) -> types.ModuleType:
  """The config file of `--config=path.py[:preset]` executed as a module (not registered)."""
  path, _ = split_config_spec(spec)
  what = "--config"
  if not path.endswith(".py"):
    raise UserInputError(
      f"--config={quote(spec)} is not a Python config file (*.py[:preset]); e.g. "
      "--config=configs/reactnet.py or --config=configs/nasbnn.py:imagenet."
    )
  source = read_text(path, what, max_bytes=MAX_CONFIG_BYTES)
  try:
    code = compile(source, path, "exec")
  except (SyntaxError, ValueError) as e:
    line = getattr(e, "lineno", None)
    raise UserInputError(
      f"--config={quote(path)} is not valid Python ({getattr(e, 'msg', e)}"
      f"{f' on line {line}' if line else ''})."
    ) from None
  module = types.ModuleType(os.path.splitext(os.path.basename(path))[0] + "_user_config")
  module.__file__ = path
  try:
    exec(code, module.__dict__)  # pylint: disable=exec-used
  except UserInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserInputError(
      f"--config={quote(path)} fails while loading: {type(e).__name__}: {quote(str(e), 160)}."
    ) from None
  if not callable(module.__dict__.get("get_config")):
    raise UserInputError(f"--config={quote(path)} defines no get_config() function.")
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`get_config(preset)` of the config file `spec`, checked to be a ConfigDict."""
  module = load_config_module(spec)
  _, preset = split_config_spec(spec)
  try:
    config = module.get_config(*(() if preset is None else (preset,)))
  except UserInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserInputError(
      f"--config={quote(spec)}: get_config() raised {type(e).__name__}: {quote(str(e), 160)}."
    ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserInputError(
      f"--config={quote(spec)}: get_config() returned a {type(config).__name__}, not an "
      "ml_collections.ConfigDict."
    )
  return config
