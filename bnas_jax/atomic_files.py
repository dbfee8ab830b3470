"""Every result file is written whole or not at all: JSON, NPZ, PNG, text.

`write_bytes` writes a temporary file in the target's directory, fsyncs it
and renames it over the target (atomic on POSIX and Windows within one file
system), then fsyncs the directory where supported so the rename survives a
power cut: a reader or a resumed run sees the old file or the new one, never
a truncated one. On object stores (`gs://...`) one object write is already
atomic, so the bytes are written directly (through etils' epath).
The other writers serialise and call it.
"""

import io
import json
import os
from typing import Any

from etils import epath
import numpy as np


def write_bytes(path: Any, data: bytes) -> None:
  """Writes `data` to `path` atomically (see the module docstring)."""
  path = os.fspath(path)
  if "://" in path:
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(path).write_bytes(data)
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    # Includes KeyboardInterrupt: never leave the temporary file behind.
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:  # e.g. Windows: directories cannot be opened
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_text(path: Any, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: Any, value: Any, indent: int = 1) -> None:
  """`value` as JSON text with a final newline."""
  write_text(path, json.dumps(value, indent=indent) + "\n")


def write_npz(path: Any, arrays: dict[str, np.ndarray]) -> None:
  """An uncompressed .npz of `arrays` (np.load reads it back)."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes(path, buf.getvalue())


def write_figure(path: Any, fig: Any, **savefig_kwargs) -> None:
  """A matplotlib figure as PNG (`savefig_kwargs`: dpi, ...)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", **savefig_kwargs)
  write_bytes(path, buf.getvalue())
