"""Supervised training of a fixed network: `train_and_evaluate(config, workdir)`.

Used by `configs/reactnet.py` (and for training any fixed architecture). With
`config.two_step` it runs ReActNet's two-step recipe: step 1 trains binary
activations with real-valued weights, step 2 binarizes the weights and starts
from step 1's parameters (ReActNet Sec. 4.1; seed_methods_reference §2.3).

The loop: data-parallel `jax.jit` steps over a ("data",) mesh, periodic orbax
checkpoints with the data iterator's position (a resumed run sees exactly the
batches an uninterrupted one would), clu metrics, a progress bar, and a guard
that stops on a non-finite loss or gradient norm.
"""

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp

from bnas_jax import checkpointing
from bnas_jax import cost_model
from bnas_jax import input_pipeline
from bnas_jax import optimizers
from bnas_jax import reporting
from bnas_jax import sharding
from bnas_jax import train_state as train_state_lib
from bnas_jax import training_loop
from bnas_jax.errors import UserInputError
from bnas_jax.models import build_model


def _positive(config: Any, *names: str) -> None:
  for name in names:
    value = config.get(name)
    if value is None or value < 0:
      raise UserInputError(f"config.{name}={value!r} must be a non-negative number.")


def validate(config: Any, mesh: jax.sharding.Mesh) -> input_pipeline.DatasetInfo:
  """Checks everything a user can get wrong, before any compute."""
  _positive(config, "num_epochs", "batch_size", "eval_batch_size")
  sharding.check_batch_size(config.batch_size, mesh, "config.batch_size")
  sharding.check_batch_size(config.eval_batch_size, mesh, "config.eval_batch_size")
  info = input_pipeline.get_dataset_info(config.data)
  if config.batch_size > info.num_examples["train"]:
    raise UserInputError(
      f"config.batch_size={config.batch_size} is larger than the training split of "
      f"{config.data.name} ({info.num_examples['train']} examples)."
    )
  model = build_model(config.model, info.num_classes)
  try:
    jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *info.image_shape)), train=False)
    )
  except UserInputError:
    raise
  except Exception as e:  # shape errors of an impossible architecture/resolution
    raise UserInputError(
      f"The model of config.model cannot run on {info.image_shape} inputs of "
      f"{config.data.name}: {e}. Check the block layout, strides and image_size."
    ) from e
  return info


def _evaluate(eval_step, variables: dict, config: Any, split: str, mesh) -> dict[str, float]:
  return training_loop.evaluate(
    eval_step,
    variables,
    config.data,
    split,
    config.eval_batch_size,
    mesh,
    config.get("max_eval_examples") or 0,
  )


def evaluate_variables(config: Any, variables: dict, mesh, info, split: str) -> dict[str, float]:
  """Accuracy/loss of `config.model` with the given variables on a split."""
  model = build_model(config.model, info.num_classes)
  eval_step = jax.jit(train_state_lib.make_classification_eval_step(model, info.num_classes))
  return _evaluate(eval_step, variables, config, split, mesh)


def train_phase(
  config: Any,
  workdir: str,
  *,
  binary_weights: bool,
  weight_decay: float,
  init_from: Optional[str] = None,
  init_variables: Optional[dict] = None,
  phase_name: str = "train",
) -> dict[str, float]:
  """Trains one phase to completion (resuming if `workdir` has checkpoints).

  Args:
    config: the run's ConfigDict.
    workdir: directory for checkpoints, metrics and results of this phase.
    binary_weights: False for binary activations with real weights.
    weight_decay: the phase's weight decay on conv/classifier kernels.
    init_from: a finished phase's workdir whose final params/BN stats start
      this phase (ReActNet step 2 from step 1).
    init_variables: {"params", "batch_stats"} to start from (e.g. a subnet
      extracted from a supernet, NAS-BNN pipeline 2).
    phase_name: label in logs.

  Returns:
    Final metrics of the phase (test accuracy among them).
  """
  mesh = sharding.make_mesh(config.get("num_devices", 0))
  info = validate(config, mesh)
  model = build_model(config.model, info.num_classes, binary_weights=binary_weights)
  steps_per_epoch = input_pipeline.num_batches_per_epoch(config.data, "train", config.batch_size)
  total_steps = config.get("num_train_steps") or int(config.num_epochs * steps_per_epoch)
  opt_cfg = config.optimizer.copy_and_resolve_references()
  with opt_cfg.unlocked():
    opt_cfg.weight_decay = weight_decay

  state, ckpt, train_iter, resumed = training_loop.start_phase(
    config,
    workdir,
    mesh,
    lambda key: model.init(key, jnp.zeros((1, *info.image_shape)), train=False),
    opt_cfg,
    total_steps,
    steps_per_epoch,
  )
  if not resumed and init_variables is not None:
    # The step donates its state: own copies, so the caller's arrays (e.g. a
    # supernet's, which full-width slices alias) survive.
    owned = jax.device_put(jax.tree.map(jnp.copy, dict(init_variables)), sharding.replicated(mesh))
    state = state.replace(params=owned["params"], batch_stats=owned["batch_stats"])
  elif not resumed and init_from is not None:
    start = checkpointing.Checkpointer(os.path.join(init_from, "checkpoints"))
    prev = start.restore(checkpointing.abstract_with_sharding(state))
    if prev is None:
      raise UserInputError(f"Cannot initialise {phase_name} from {init_from}: no checkpoint there.")
    state = state.replace(params=prev[0].params, batch_stats=prev[0].batch_stats)
    start.close()

  train_step = jax.jit(
    train_state_lib.make_classification_train_step(
      model, info.num_classes, config.get("label_smoothing", 0.0)
    ),
    donate_argnums=(0,),
  )
  eval_step = jax.jit(train_state_lib.make_classification_eval_step(model, info.num_classes))
  initial_step = int(state.step)
  reporter = reporting.Reporter(
    workdir,
    total_steps,
    initial_step,
    progress_bar=config.get("progress_bar", True),
    desc=phase_name,
  )
  if initial_step == 0:
    reporter.writer.write_hparams(reporting.hparams_from_config(config))
  elif initial_step < total_steps:
    reporter.message(f"[{phase_name}] resumed from step {initial_step} of {total_steps}")
  eval_every = int(config.get("eval_every_epochs", 0) * steps_per_epoch)

  def periodic_eval(step, state):
    if eval_every and step % eval_every == 0 and step != total_steps:
      split = "holdout" if info.num_examples.get("holdout") else "test"
      variables = {"params": state.params, "batch_stats": state.batch_stats}
      ev = _evaluate(eval_step, variables, config, split, mesh)
      reporter.scalars(step, {f"{split}_accuracy": ev["accuracy"], f"{split}_loss": ev["loss"]})

  state = training_loop.run_steps(
    state=state,
    train_step=train_step,
    train_iter=train_iter,
    mesh=mesh,
    ckpt=ckpt,
    reporter=reporter,
    total_steps=total_steps,
    **training_loop.intervals(config, steps_per_epoch),
    phase_name=phase_name,
    schedule=optimizers.make_schedule(opt_cfg, total_steps, steps_per_epoch),
    after_step=periodic_eval,
  )

  test = _evaluate(
    eval_step, {"params": state.params, "batch_stats": state.batch_stats}, config, "test", mesh
  )
  reporter.scalars(total_steps, {"test_accuracy": test["accuracy"], "test_loss": test["loss"]})
  cost = cost_model.count_costs(model, (1, *info.image_shape), train=False)
  results = {
    "phase": phase_name,
    "steps": total_steps,
    "test_accuracy": test["accuracy"],
    "test_loss": test["loss"],
    "test_examples": int(test["count"]),
    "ops": cost.ops,
    "params": cost.params,
    "model_size_bytes": cost.model_size_bytes,
  }
  reporter.message(
    f"[{phase_name}] test accuracy {test['accuracy']:.4f} on {int(test['count'])} "
    f"examples after {total_steps} steps (OPs {cost.ops / 1e6:.3f} M)"
  )
  reporter.close()
  ckpt.close()
  reporting.write_json(os.path.join(workdir, "results.json"), results, indent=2)
  return results


def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
  """Trains the config's network (one step, or ReActNet's two steps) and tests it."""
  if not config.get("two_step", False):
    return train_phase(
      config, workdir, binary_weights=True, weight_decay=config.optimizer.weight_decay
    )
  step1_dir = os.path.join(workdir, "step1_binary_activations")
  train_phase(
    config,
    step1_dir,
    binary_weights=False,
    weight_decay=config.get("step1_weight_decay", config.optimizer.weight_decay),
    phase_name="step1",
  )
  return train_phase(
    config,
    os.path.join(workdir, "step2_binary"),
    binary_weights=True,
    weight_decay=config.optimizer.weight_decay,
    init_from=step1_dir,
    phase_name="step2",
  )
