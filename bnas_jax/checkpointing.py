"""Atomic, resumable checkpoints with orbax's `CheckpointManager`.

One checkpoint holds the train state (array pytree), the data iterator's state
and a small JSON record (e.g. phase, search state). Orbax writes each step to a
temporary location and marks it complete only when every file is written, so a
run killed mid-save resumes from the previous complete checkpoint (leftover
temporary directories are removed at the next start). A complete checkpoint
that cannot be read back (truncated or corrupted files) is reported, moved to
`<directory>_unreadable/<step>` and the previous one is used. All processes
must call `save`/`restore` (orbax coordinates multi-host writes); the workdir
must be on storage every host sees (e.g. GCS) for multi-host runs.
"""

import json
import logging
import os
import shutil
import zlib
from typing import Any, Optional

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from bnas_jax.errors import UserInputError


class ChecksumMismatch(ValueError):
  """A restored checkpoint differs from the checksums saved with it."""


def _crc(data: bytes) -> str:
  return f"{zlib.crc32(data):08x}"


def json_checksum(value: Any) -> str:
  """CRC-32 of a JSON value's canonical text (sorted keys), as saved and as parsed back."""
  return _crc(json.dumps(value, sort_keys=True).encode())


def checksums(state: Any, data_state: dict, meta: dict) -> dict:
  """CRC-32 per array leaf of `state` (dtype, shape and bytes), and of the two JSON items.

  A leaf whose value this process cannot see whole (sharded across hosts)
  gets None and is not verified; the replicated states of this project's
  trainers have none.
  """

  def leaf(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return None
    a = np.ascontiguousarray(jax.device_get(x))
    return _crc(f"{a.dtype.str}{a.shape}".encode() + a.tobytes())

  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {
    "state": {jax.tree_util.keystr(path): leaf(x) for path, x in leaves},
    "data": json_checksum(data_state),
    "meta": json_checksum(meta),
  }


def verify(expected: dict, state: Any, data_state: dict, meta: dict) -> None:
  """Raises `ChecksumMismatch` naming the first item or array that differs from `expected`."""
  got = checksums(state, data_state, meta)
  for item in ("data", "meta"):
    if got[item] != expected.get(item):
      raise ChecksumMismatch(f"the {item} item does not match its saved checksum")
  if got["state"].keys() != expected.get("state", {}).keys():
    raise ChecksumMismatch("the state's arrays are not the ones whose checksums were saved")
  for name, crc in got["state"].items():
    if crc is not None and expected["state"][name] is not None and crc != expected["state"][name]:
      raise ChecksumMismatch(f"array state{name} does not match its saved checksum")


class Checkpointer:
  """Periodic, keep-N checkpoints of (state, data iterator state, JSON extras)."""

  def __init__(
    self,
    directory: str,
    *,
    max_to_keep: int = 3,
    save_interval_steps: int = 1,
    async_save: bool = True,
  ):
    self.directory = os.path.abspath(directory) if "://" not in directory else directory
    options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_interval_steps,
      preservation_policy=checkpoint_managers.LatestN(max_to_keep),
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
      create=True,
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "data", "meta", "checksums")
    )

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(
    self, step: int, state: Any, data_state: dict, meta: dict, *, force: bool = False
  ) -> bool:
    """Saves if the interval policy (or `force`) says so; returns whether it saved.

    The checksums of the three items are computed from the values handed in
    (before the asynchronous write) and saved as a fourth item.
    """
    if not (force or self._manager.should_save(step)):
      return False
    return self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta),
        checksums=ocp.args.JsonSave(checksums(state, data_state, meta)),
      ),
      force=force,
    )

  def _restore_step(self, abstract_state: Any, step: int) -> tuple[Any, dict, dict]:
    """Restores `step` and verifies its checksums (checkpoints written before they existed: none)."""
    items = dict(
      state=ocp.args.StandardRestore(abstract_state),
      data=ocp.args.JsonRestore(),
      meta=ocp.args.JsonRestore(),
    )
    has_checksums = (epath.Path(self.path(step)) / "checksums").exists()
    if has_checksums:
      items["checksums"] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if not isinstance(restored["data"], dict) or not isinstance(restored["meta"], dict):
      raise ValueError("the iterator state or metadata JSON is not an object")
    if has_checksums:
      if not isinstance(restored["checksums"], dict):
        raise ChecksumMismatch("the checksums item is not a JSON object")
      verify(restored["checksums"], restored["state"], restored["data"], restored["meta"])
    return restored["state"], restored["data"], restored["meta"]

  def restore(
    self, abstract_state: Any, step: Optional[int] = None
  ) -> Optional[tuple[Any, dict, dict]]:
    """(state, data_state, meta) of `step` (default: latest readable), or None.

    `abstract_state` carries shapes, dtypes and shardings (e.g. from
    `jax.eval_shape` plus the mesh shardings) so arrays come back sharded.
    Without `step`, checkpoints that fail to load (truncated or corrupt files)
    are tried newest first; once an older one loads, the unreadable newer ones
    are reported and moved aside so training continues from the older one.

    Raises:
      UserInputError: no checkpoint loads (e.g. the model changed under
        --force_resume, or every checkpoint is damaged); nothing is moved.
    """
    if step is not None:
      return self._restore_step(abstract_state, step)
    failed: list[tuple[int, str]] = []
    for candidate in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._restore_step(abstract_state, candidate)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax/TensorStore/JSON raise many types for damaged files.
        failed.append((candidate, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"))
        continue
      if failed:
        self._set_aside(failed, candidate)
      return restored
    if failed:
      raise UserInputError(
        f"No checkpoint in {self.directory} can be restored into this run's train state "
        f"(tried steps {[s for s, _ in failed]}; newest error: {failed[0][1]}). If the model "
        "or optimizer config changed, use a new --workdir; if the files are damaged, move "
        "the step directories away to start from scratch."
      )
    return None

  def _set_aside(self, failed: list[tuple[int, str]], used: int) -> None:
    """Reports unreadable checkpoints and moves them out of the manager's way."""
    aside = epath.Path(str(self.directory).rstrip("/") + "_unreadable")
    for step, error in failed:
      logging.warning(
        "Checkpoint %s is unreadable (%s); moved to %s, resuming from step %d.",
        self.path(step),
        error,
        aside / str(step),
        used,
      )
      if jax.process_index() == 0:
        print(
          f"warning: checkpoint {self.path(step)} is unreadable ({error}); it was moved to "
          f"{aside / str(step)} and training resumes from step {used}.",
          flush=True,
        )
        aside.mkdir(parents=True, exist_ok=True)
        target = aside / str(step)
        if target.exists():
          target.rmtree()
        try:
          epath.Path(self.path(step)).rename(target)
        except Exception as e:  # e.g. object stores without directory renames
          raise UserInputError(
            f"Checkpoint {self.path(step)} is unreadable ({error}) and could not be moved to "
            f"{target} ({e}); move or delete it by hand (e.g. `gcloud storage mv`) and "
            f"launch again to resume from step {used}."
          ) from None
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("bnas_checkpoint_set_aside")
    self._manager.reload()

  def check_free_space(self, state: Any, metadata_bytes: int = 1 << 20) -> None:
    """Raises `UserInputError` if the disk cannot hold one more checkpoint of `state`.

    The bound is the state's uncompressed size plus `metadata_bytes`; orbax
    compresses, so this errs on the safe side. Object stores (gs://) are not
    checked.
    """
    if "://" in self.directory:
      return
    needed = metadata_bytes + sum(
      int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)
    )
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise UserInputError(
        f"The disk of {self.directory} has {free / 2**20:.1f} MiB free but a checkpoint of this "
        f"run needs up to {needed / 2**20:.1f} MiB; free space or choose another --workdir."
      )

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_sharding(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, for `restore`."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
  )
