"""JAX's persistent compilation cache, on by default for every run.

A compiled XLA program is written to disk keyed by the program, the devices
and the compile options, so a relaunch of the same config (a resume after
preemption, a second run, a search after training) loads it instead of
compiling again: the NAS-BNN sandwich step takes minutes to compile on a CPU
(issue 12; first launch vs relaunch measured in benchmarks/README.md).

Location, first that applies:

1. the `location` argument (e.g. a config field), if given;
2. the environment variable `BNAS_JAX_COMPILE_CACHE`;
3. JAX's own `JAX_COMPILATION_CACHE_DIR` / `jax_compilation_cache_dir`, if set;
4. `$XDG_CACHE_HOME/bnas_jax/xla`, else `~/.cache/bnas_jax/xla` (per user).

"off" (also "none", "0", "false" or an empty string) as the argument or the
variable turns the cache off. Programs that compile in under a second are not
stored (JAX's default threshold), so the cache holds the few expensive ones.
Stale entries are never read back (the key covers the JAX/XLA version); the
directory can be deleted at any time.
"""

import logging
import os
from typing import Optional

import jax

from bnas_jax.errors import UserInputError

ENV = "BNAS_JAX_COMPILE_CACHE"
_OFF = ("off", "none", "0", "false", "")


def default_location() -> str:
  """The per-user cache directory: `$XDG_CACHE_HOME` or `~/.cache`, then bnas_jax/xla."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "bnas_jax", "xla")


def configure(location: Optional[str] = None) -> Optional[str]:
  """Points JAX's persistent compilation cache at a directory; returns it (None = off).

  Call once before the first `jax.jit` compiles. An explicitly requested
  directory (argument or `BNAS_JAX_COMPILE_CACHE`) that cannot be created is a
  `UserInputError`; an unusable default only logs a warning (a cache must
  never stop a run).
  """
  explicit = location if location is not None else os.environ.get(ENV)
  if explicit is not None and explicit.strip().lower() in _OFF:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  path = explicit or jax.config.jax_compilation_cache_dir or default_location()
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK):
      raise PermissionError(f"{path} is not writable")
  except OSError as e:
    if explicit:
      raise UserInputError(
        f"The compilation cache directory {path!r} cannot be used ({e}). Point "
        f"{ENV} (or the config's cache location) at a writable directory, or set it to "
        "'off' to compile every program afresh."
      ) from e
    logging.warning("Compilation cache off: %s (%s).", path, e)
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  return path
