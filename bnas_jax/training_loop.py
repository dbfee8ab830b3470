"""The step loop every trainer shares: resume, checkpoints, metrics, NaN guard.

`run_steps` drives a jitted `train_step(state, batch, *extra)` from the state's
step to `total_steps`: global batches from the process-local iterator, one
step in flight (each step's metrics are read one step late; queueing many
steps on XLA:CPU is no faster and can stall multi-device all-reduces), a
non-finite check on loss and gradient norm before anything is checkpointed,
periodic atomic checkpoints holding the iterator position, clu metrics, and a
stop on SIGTERM after a checkpoint of the last finished step (`preemption`).
"""

import os
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from bnas_jax import checkpointing
from bnas_jax import input_pipeline
from bnas_jax import nonfinite_guard
from bnas_jax import optimizers
from bnas_jax import preemption
from bnas_jax import reporting
from bnas_jax import sharding
from bnas_jax import train_state as train_state_lib


def restore_or_keep(ckpt: checkpointing.Checkpointer, state: Any, train_iter: Any) -> Any:
  """Restores the latest complete checkpoint into `state` and `train_iter`, if any."""
  restored = ckpt.restore(checkpointing.abstract_with_sharding(state))
  if restored is None:
    return state
  state, data_state, _ = restored
  train_iter.set_state(data_state)
  return state


def start_phase(
  config: Any,
  workdir: str,
  mesh: jax.sharding.Mesh,
  init_variables: Callable[[jax.Array], dict],
  opt_cfg: Any,
  total_steps: int,
  steps_per_epoch: int,
  *,
  data_config: Any,
  batch_size: int,
) -> tuple[Any, checkpointing.Checkpointer, Any, bool]:
  """A phase's train state (born replicated), checkpointer and train iterator.

  The phase trains on the "train" split of `data_config` in global batches of
  `batch_size`; `config` gives the run settings (seed, checkpoints kept).
  Resumes state and iterator from the latest readable checkpoint in
  `workdir/checkpoints` if there is one; the last element says whether it did.
  Checks the disk can hold a checkpoint before training (the CLI has recorded
  the run's config in the run directory once validation passed).
  """

  def init_state(key):
    variables = init_variables(key)
    tx = optimizers.make_optimizer(opt_cfg, variables["params"], total_steps, steps_per_epoch)
    return train_state_lib.TrainState.create(
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      tx=tx,
      rng=jax.random.key_data(jax.random.fold_in(key, 1)),
    )

  train_iter = input_pipeline.make_train_iterator(
    data_config,
    "train",
    batch_size,
    config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  state, ckpt, resumed = open_phase(config, workdir, mesh, init_state, train_iter)
  return state, ckpt, train_iter, resumed


def open_phase(
  config: Any,
  workdir: str,
  mesh: jax.sharding.Mesh,
  init_state: Callable[[jax.Array], Any],
  train_iter: Any,
) -> tuple[Any, checkpointing.Checkpointer, bool]:
  """Any phase's state: born replicated, disk space checked, resumed with its iterator.

  `init_state(key)` builds the phase's state (a `TrainState`, the DARTS
  search's two-optimizer state, ...) from `key = jax.random.key(config.seed)`;
  the latest readable checkpoint in `workdir/checkpoints`, if any, replaces
  it and `train_iter`'s position. The last element says whether it resumed.
  """
  state = sharding.init_replicated(init_state, mesh, jax.random.key(config.seed))
  ckpt = checkpointing.Checkpointer(
    os.path.join(workdir, "checkpoints"), max_to_keep=config.get("keep_checkpoints", 3)
  )
  ckpt.check_free_space(state)
  state = restore_or_keep(ckpt, state, train_iter)
  return state, ckpt, ckpt.latest_step() is not None


def evaluate(
  eval_step: Callable[[dict, dict], dict],
  variables: dict,
  data_config: Any,
  split: str,
  batch_size: int,
  mesh: jax.sharding.Mesh,
  max_examples: int = 0,
) -> dict[str, float]:
  """Accuracy, mean loss and example count of `variables` on a split, every process's rows.

  `eval_step` is a jitted `train_state.make_classification_eval_step` (or any
  step returning the sums "correct", "loss", "count" of a masked batch).
  """
  totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
  for local in input_pipeline.make_eval_batches(
    data_config,
    split,
    batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    max_examples=max_examples or None,
  ):
    out = eval_step(variables, sharding.global_batch(local, mesh))
    for k in totals:
      totals[k] += float(out[k])
  n = max(totals["count"], 1.0)
  return {
    "accuracy": totals["correct"] / n,
    "loss": totals["loss"] / n,
    "count": int(totals["count"]),
  }


def intervals(config: Any, steps_per_epoch: int) -> dict[str, int]:
  """`run_steps`' log/checkpoint intervals from the config (0 = once per epoch)."""
  return {
    "log_every": max(1, config.get("log_every_steps", 50)),
    "checkpoint_every": config.get("checkpoint_every_steps") or steps_per_epoch,
  }


def run_steps(
  *,
  state: Any,
  train_step: Callable[..., tuple[Any, dict]],
  train_iter: Any,
  mesh: jax.sharding.Mesh,
  ckpt: checkpointing.Checkpointer,
  reporter: reporting.Reporter,
  total_steps: int,
  log_every: int,
  checkpoint_every: int,
  phase_name: str,
  step_inputs: Callable[[int], Sequence[Any]] = lambda step: (),
  schedule: Optional[Callable[[int], Any]] = None,
  after_step: Optional[Callable[[int, Any], None]] = None,
) -> Any:
  """Runs steps `state.step + 1 .. total_steps`; returns the final state.

  Args:
    state: the (restored) train state; its `step` says where to start.
    train_step: jitted `(state, batch, *step_inputs(step)) -> (state, metrics)`.
    train_iter: process-local batch iterator with get_state/set_state.
    mesh: the data-parallel mesh.
    ckpt: checkpointer of this phase.
    reporter: metrics writer and progress bar.
    total_steps, log_every, checkpoint_every: loop lengths in steps.
    phase_name: label for checkpoints' metadata.
    step_inputs: extra per-step arguments (e.g. the sampled subnets), a
      deterministic function of the step so a resumed run repeats them.
    schedule: learning-rate schedule to log.
    after_step: called as after_step(step, state) (e.g. periodic evaluation).

  Raises:
    preemption.Preempted: after a stop request (SIGTERM), once the checkpoint
      of the step that was running is complete.
    nonfinite_guard.NonFiniteError: on a NaN/inf loss or gradient norm.
  """
  initial_step = int(state.step)
  last_good = ckpt.path(ckpt.latest_step()) if ckpt.latest_step() is not None else None
  pending: Optional[tuple[int, dict]] = None
  window: list[dict[str, float]] = []

  def drain(step: int, metrics: dict) -> None:
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    nonfinite_guard.check_finite(step, host, last_good)
    window.append(host)
    if step % log_every == 0 or step == total_steps:
      means = {f"train_{k}": float(np.mean([m[k] for m in window])) for k in host}
      if schedule is not None:
        means["learning_rate"] = float(schedule(step - 1))
      reporter.scalars(step, means)
      window.clear()

  try:
    for step in range(initial_step + 1, total_steps + 1):
      batch = sharding.global_batch(next(train_iter), mesh)
      state, metrics = train_step(state, batch, *step_inputs(step))
      if pending is not None:
        drain(*pending)
      pending = (step, metrics)
      reporter.advance()
      stop = preemption.should_stop()
      if stop or step % checkpoint_every == 0 or step == total_steps:
        drain(*pending)  # never checkpoint a non-finite state
        pending = None
        if ckpt.save(step, state, train_iter.get_state(), {"phase": phase_name}, force=True):
          last_good = ckpt.path(step)
      if stop:
        ckpt.wait()
        reporter.message(f"[{phase_name}] stopping after step {step}: termination requested")
        reporter.writer.flush()
        raise preemption.Preempted(step, ckpt.path(step))
      if after_step is not None:
        after_step(step, state)
    if pending is not None:
      drain(*pending)
  finally:
    # Whatever stops the loop (an error, an interrupt), a checkpoint whose
    # save has started is completed: finished work is never lost.
    ckpt.wait()
  return state
