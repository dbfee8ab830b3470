"""Atomic, resumable checkpoints with orbax's `CheckpointManager`.

One checkpoint holds the train state (array pytree), the data iterator's state
and a small JSON record (e.g. phase, search state). Orbax writes each step to a
temporary location and marks it complete only when every file is written, so a
run killed mid-save resumes from the previous complete checkpoint. All
processes must call `save`/`restore` (orbax coordinates multi-host writes); the
workdir must be on storage every host sees (e.g. GCS) for multi-host runs.
"""

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


class Checkpointer:
  """Periodic, keep-N checkpoints of (state, data iterator state, JSON extras)."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, save_interval_steps: int = 1,
               async_save: bool = True):
    self.directory = os.path.abspath(directory) if "://" not in directory else directory
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval_steps,
        preservation_policy=checkpoint_managers.LatestN(max_to_keep),
        enable_async_checkpointing=async_save,
        create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, data_state: dict, meta: dict, *, force: bool = False) -> bool:
    """Saves if the interval policy (or `force`) says so; returns whether it saved."""
    return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=ocp.args.JsonSave(data_state),
                                meta=ocp.args.JsonSave(meta)),
        force=force)

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Optional[tuple[Any, dict, dict]]:
    """(state, data_state, meta) of `step` (default: latest complete), or None.

    `abstract_state` carries shapes, dtypes and shardings (e.g. from
    `jax.eval_shape` plus the mesh shardings) so arrays come back sharded.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=ocp.args.JsonRestore(),
                                      meta=ocp.args.JsonRestore()))
    return restored["state"], restored["data"], restored["meta"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_sharding(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, for `restore`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
