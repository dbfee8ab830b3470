"""Preemption: on SIGTERM finish the current step, checkpoint, exit 0.

Schedulers announce an eviction with SIGTERM and send SIGKILL after a grace
period (Cloud TPU spot/preemptible VMs, GKE, SLURM with `--signal`, Kubernetes:
tens of seconds). `install_handler()` (called by `bnas_jax.main`) makes a
SIGTERM only set a flag; the training loop polls `should_stop()` once per step,
saves a checkpoint of the step it just finished, waits for the save and raises
`Preempted`, which `main` turns into exit status 0. The next launch resumes.

Every process must stop after the same step or the others block in the next
collective. With several processes the decision comes from JAX's preemption
sync manager (started by `jax.distributed.initialize`, on by default via
`jax_enable_preemption_service`): it installs its own SIGTERM notifier, shares
the notice between processes and names one common step, max(current steps)+1,
at which `multihost_utils.reached_preemption_sync_point` is true on all of
them. For that, every process calls `should_stop()` the same number of times;
the counter here is process-wide, so it keeps increasing across phases.
"""

import logging
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

_requested = threading.Event()
_calls = [0]


class Preempted(Exception):
  """Raised after the checkpoint of a stop request is on disk; exit 0 and resume later."""

  def __init__(self, step: int, checkpoint: str):
    super().__init__(
      f"Stopped after step {step} on a termination request (SIGTERM); the checkpoint "
      f"{checkpoint} is complete and the next launch with the same --workdir resumes from it."
    )
    self.step = step
    self.checkpoint = checkpoint


def _sync_manager_active() -> bool:
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  state = getattr(distributed, "global_state", None)
  return getattr(state, "preemption_sync_manager", None) is not None


def _on_signal(signum, frame) -> None:
  del frame
  _requested.set()
  # No `logging` here: the handler may interrupt the main thread inside it.
  os.write(
    2,
    f"Received signal {signum}: finishing the current step, then "
    "checkpointing and exiting.\n".encode(),
  )


def install_handler() -> bool:
  """Routes SIGTERM to `should_stop()`; returns whether a handler is in place.

  Call from the main thread after `jax.distributed.initialize` (if any). In a
  multi-process run JAX's own notifier already handles SIGTERM and is left in
  place; without it (preemption service disabled) SIGTERM keeps its default
  action, since one process stopping alone would hang the others.
  """
  if jax.process_count() > 1:
    if not _sync_manager_active():
      logging.warning(
        "JAX's preemption service is off (jax_enable_preemption_service): SIGTERM "
        "stops this run without a final checkpoint; it resumes from the last "
        "periodic one."
      )
    return _sync_manager_active()
  signal.signal(signal.SIGTERM, _on_signal)
  return True


def should_stop() -> bool:
  """Whether to checkpoint and stop now; every process gets the same answer.

  Call exactly once per training step (or search generation) on every process.
  """
  _calls[0] += 1
  if jax.process_count() > 1:
    return _sync_manager_active() and multihost_utils.reached_preemption_sync_point(_calls[0])
  return _requested.is_set()
