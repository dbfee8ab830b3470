"""The run directory (`--workdir`): writable, and holding the run of one config.

Before any compute, `bnas_jax.main` calls `check(config, workdir)`:

- the directory must be creatable and writable by every process (a probe file
  is written and removed; works for local paths and gs:// through etils);
- if it already holds a run (`config.json`, recorded when training first
  starts), the config must be the same up to `HARMLESS_FIELDS` (logging,
  checkpoint cadence, device count, data location); otherwise resuming is
  refused unless `force_resume` (the `--force_resume` flag) is set.

The snapshot is recorded by `record()`, which `training_loop.start_phase`
calls, i.e. only once the trainer has validated the config: a first launch
that fails on bad input leaves no snapshot to be compared against.
"""

import json
import os
import time
from typing import Any, Optional

from etils import epath
import jax
from jax.experimental import multihost_utils

from bnas_jax.errors import UserInputError

CONFIG_FILE = "config.json"

# Fields that change how a run is watched or where it runs, not what it computes.
HARMLESS_FIELDS = ("progress_bar", "log_every_steps", "checkpoint_every_steps",
                   "keep_checkpoints", "num_devices", "eval_every_epochs",
                   "data.data_dir", "data.cache_dir")

_pending: dict[str, Any] = {}


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
    elif a != b:
      out.append(f"{name}: {json.dumps(a)} -> {json.dumps(b)}")
  return out


def _check_writable(path: epath.Path) -> None:
  probe = path / f".write_probe.{jax.process_index()}.{os.getpid()}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("bnas_jax write probe\n")
    probe.unlink()
  except OSError as e:
    raise UserInputError(
        f"--workdir={path} is not usable: {type(e).__name__}: {e.strerror or e}. Checkpoints, "
        "metrics and results are written there, so it must be a writable directory with free "
        "space (on multi-host runs: shared storage such as gs://bucket/path).") from None


def check(config: Any, workdir: str, *, force_resume: bool = False) -> None:
  """Validates `workdir` for `config` before any compute; see the module docstring.

  Raises:
    UserInputError: unwritable/unusable directory, or a run of another config
      there (without `force_resume`).
  """
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
          "remove it to adopt this launch's config, or use a new --workdir.") from None
  changed = differences(saved, current) if saved is not None else []
  if jax.process_count() > 1:
    # Everyone has read the snapshot before process 0 may replace it.
    multihost_utils.sync_global_devices("bnas_run_directory_read")
  if changed and not force_resume:
    raise UserInputError(
        f"--workdir={workdir} holds a run of a different config ({'; '.join(changed)}). Use a "
        "new --workdir for a new experiment, or pass --force_resume to continue this run with "
        f"the new config (the old one is kept as {CONFIG_FILE}.replaced-<time>).")
  _pending.clear()
  if saved is None or changed:
    _pending.update(path=path, config=current, replace=bool(changed))


def record() -> None:
  """Writes the snapshot `check` prepared (process 0, once); no-op otherwise."""
  if not _pending:
    return
  path, current, replace = _pending["path"], _pending["config"], _pending["replace"]
  _pending.clear()
  if jax.process_index() != 0:
    return
  snapshot = path / CONFIG_FILE
  if replace and snapshot.exists():
    snapshot.rename(path / f"{CONFIG_FILE}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
  tmp = path / f".{CONFIG_FILE}.tmp"
  tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
  tmp.rename(snapshot)
