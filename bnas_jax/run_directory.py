"""The run directory (`--workdir`): writable, and holding the run of one config.

Before any compute, `bnas_jax.main` calls `check(config, workdir)`:

- the directory must be creatable and writable by every process: nothing is
  created yet (a rejected run leaves nothing on disk); a probe file is written
  to and removed from the directory, or its nearest existing ancestor (local
  paths and gs:// through etils);
- if it already holds a run (`config.json`), the config must be the same up to
  `HARMLESS_FIELDS` (logging, checkpoint cadence, device count, data location)
  and values that compare equal only as "the same number" (NaN == NaN);
  otherwise resuming is refused unless `force_resume` (the `--force_resume`
  flag) is set.

`check` returns the snapshot to write (or None), and `main` passes it to
`record()` once every validation has passed: a first launch that fails on bad
input leaves no snapshot to be compared against.
"""

import dataclasses
import json
import math
import os
import time
from typing import Any, Optional

from etils import epath
import jax
from jax.experimental import multihost_utils

from bnas_jax import atomic_files
from bnas_jax.errors import UserInputError

CONFIG_FILE = "config.json"

# Fields that change how a run is watched or where it runs, not what it computes.
HARMLESS_FIELDS = (
  "progress_bar",
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "num_devices",
  "eval_every_epochs",
  "data.data_dir",
  "data.cache_dir",
)


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """The config snapshot `record` writes: where, what, and whether it replaces one."""

  path: epath.Path
  config: dict
  replace: bool


def config_as_dict(config: Any) -> dict:
  """The config as plain JSON data (tuples become lists), as it is stored."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def differences(saved: dict, current: dict, ignore=HARMLESS_FIELDS, prefix: str = "") -> list[str]:
  """Human-readable `field: saved -> current` lines for fields that differ."""
  out = []
  for key in sorted(set(saved) | set(current)):
    name = f"{prefix}{key}"
    if name in ignore:
      continue
    a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out.extend(differences(a, b, ignore, name + "."))
    elif not same_value(a, b):
      out.append(f"{name}: {json.dumps(a)} -> {json.dumps(b)}")
  return out


def same_value(a: Any, b: Any) -> bool:
  """Equality of JSON values in which NaN equals NaN (identical commands give NaN twice)."""
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
  return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _existing_ancestor(path: epath.Path) -> epath.Path:
  while not path.exists() and path.parent != path:
    path = path.parent
  return path


def _check_writable(path: epath.Path) -> None:
  """Probes that `path` (or, if absent, its nearest existing ancestor) takes files."""
  try:
    target = _existing_ancestor(path)
    if not target.is_dir():
      raise NotADirectoryError(20, "Not a directory", str(target))
    probe = target / f".bnas_write_probe.{jax.process_index()}.{os.getpid()}"
    probe.write_text("bnas_jax write probe\n")
    probe.unlink()
  except OSError as e:
    raise UserInputError(
      f"--workdir={path} is not usable: {type(e).__name__}: {e.strerror or e}. Checkpoints, "
      "metrics and results are written there, so it must be a writable directory with free "
      "space (on multi-host runs: shared storage such as gs://bucket/path)."
    ) from None


def check(config: Any, workdir: str, *, force_resume: bool = False) -> Optional[Snapshot]:
  """Validates `workdir` for `config` before any compute; see the module docstring.

  Returns:
    The snapshot for `record` (a new run, or a replaced config), or None when
    the directory already holds this config's run.

  Raises:
    UserInputError: unwritable/unusable directory, or a run of another config
      there (without `force_resume`).
  """
  if not str(workdir).strip():
    raise UserInputError(
      "--workdir is empty; give the directory for this run's checkpoints, metrics and "
      "results (it is created if absent), e.g. --workdir=/tmp/run1."
    )
  path = epath.Path(workdir)
  _check_writable(path)
  current = config_as_dict(config)
  snapshot = path / CONFIG_FILE
  saved: Optional[dict] = None
  if snapshot.exists():
    try:
      saved = json.loads(snapshot.read_text())
    except (OSError, ValueError) as e:
      raise UserInputError(
        f"{snapshot} (the config of the run in --workdir) cannot be read ({e}); restore it, "
        "remove it to adopt this launch's config, or use a new --workdir."
      ) from None
  changed = differences(saved, current) if saved is not None else []
  if jax.process_count() > 1:
    # Everyone has read the snapshot before process 0 may replace it.
    multihost_utils.sync_global_devices("bnas_run_directory_read")
  if changed and not force_resume:
    raise UserInputError(
      f"--workdir={workdir} holds a run of a different config ({'; '.join(changed)}). Use a "
      "new --workdir for a new experiment, or pass --force_resume to continue this run with "
      f"the new config (the old one is kept as {CONFIG_FILE}.replaced-<time>)."
    )
  if saved is None or changed:
    return Snapshot(path=path, config=current, replace=bool(changed))
  return None


def create(workdir: str) -> None:
  """Creates the run directory (every process; after validation has passed)."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)


def record(pending: Optional[Snapshot]) -> None:
  """Writes the snapshot `check` returned (process 0); no-op for None."""
  if pending is None or jax.process_index() != 0:
    return
  path, current, replace = pending.path, pending.config, pending.replace
  path.mkdir(parents=True, exist_ok=True)
  snapshot = path / CONFIG_FILE
  if replace and snapshot.exists():
    snapshot.rename(path / f"{CONFIG_FILE}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
  atomic_files.write_text(snapshot, json.dumps(current, indent=2, sort_keys=True) + "\n")
