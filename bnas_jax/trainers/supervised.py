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

import dataclasses
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

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


@dataclasses.dataclass(frozen=True)
class Phase:
  """What one supervised phase trains, and how: everything but the run's settings.

  The run config a phase is trained under supplies only run settings: seed, devices,
  checkpoint / log / evaluation intervals, evaluation batch size and example limit,
  progress bar, and the data source (`config.data`; `fold_holdout` adjusts its split).

  Attributes:
    name: label in logs, metrics and `results.json` ("train", "step1", "finetune_arch0").
    model: the `config.model` of the network (`models.build_model`).
    optimizer: the optimizer config (`optimizers.make_optimizer`), weight decay included.
    num_epochs: length in epochs of the phase's training split ...
    num_train_steps: ... unless this is > 0.
    batch_size: global training batch size.
    label_smoothing: of the cross-entropy loss.
    binary_weights: False trains binary activations with real weights (ReActNet step 1).
    fold_holdout: train on the whole training split, the held-out part included.
  """

  name: str
  model: ml_collections.ConfigDict
  optimizer: ml_collections.ConfigDict
  num_epochs: float
  num_train_steps: int = 0
  batch_size: int = 64
  label_smoothing: float = 0.0
  binary_weights: bool = True
  fold_holdout: bool = False

  @classmethod
  def from_config(
    cls,
    config: Any,
    *,
    name: str = "train",
    binary_weights: bool = True,
    weight_decay: Optional[float] = None,
  ) -> "Phase":
    """The phase a plain supervised config describes with its own fields.

    `config.model`, `config.optimizer` (its weight decay replaced by `weight_decay` if
    given), `config.num_epochs` / `num_train_steps`, `batch_size` and `label_smoothing`.
    """
    optimizer = config.optimizer.copy_and_resolve_references()
    if weight_decay is not None:
      with optimizer.unlocked():
        optimizer.weight_decay = weight_decay
    return cls(
      name=name,
      model=config.model.copy_and_resolve_references(),
      optimizer=optimizer,
      num_epochs=config.num_epochs,
      num_train_steps=config.get("num_train_steps") or 0,
      batch_size=config.batch_size,
      label_smoothing=config.get("label_smoothing", 0.0),
      binary_weights=binary_weights,
    )


def phase_data(config: Any, phase: Phase) -> ml_collections.ConfigDict:
  """The run's data config, with the held-out split folded into training if the phase says."""
  data = config.data.copy_and_resolve_references()
  if phase.fold_holdout:
    with data.unlocked():
      data.holdout_fraction = 0.0
      data.holdout_per_class = 0
  return data


def _non_negative(value: Any, name: str) -> None:
  if value is None or value < 0:
    raise UserInputError(f"{name}={value!r} must be a non-negative number.")


def validate_phase(
  config: Any, phase: Phase, mesh: jax.sharding.Mesh
) -> input_pipeline.DatasetInfo:
  """Checks everything a user can get wrong in a phase under a run config, before any compute."""
  _non_negative(phase.num_epochs, f"the {phase.name} phase's num_epochs")
  _non_negative(phase.batch_size, f"the {phase.name} phase's batch_size")
  _non_negative(config.get("eval_batch_size"), "config.eval_batch_size")
  sharding.check_batch_size(phase.batch_size, mesh, "config.batch_size")
  sharding.check_batch_size(config.eval_batch_size, mesh, "config.eval_batch_size")
  data = phase_data(config, phase)
  info = input_pipeline.get_dataset_info(data)
  if phase.batch_size > info.num_examples["train"]:
    raise UserInputError(
      f"config.batch_size={phase.batch_size} is larger than the training split of "
      f"{data.name} ({info.num_examples['train']} examples)."
    )
  model = build_model(phase.model, info.num_classes)
  try:
    jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *info.image_shape)), train=False)
    )
  except UserInputError:
    raise
  except Exception as e:  # shape errors of an impossible architecture/resolution
    raise UserInputError(
      f"The model of config.model cannot run on {info.image_shape} inputs of "
      f"{data.name}: {e}. Check the block layout, strides and image_size."
    ) from e
  return info


def validate(config: Any, mesh: jax.sharding.Mesh) -> input_pipeline.DatasetInfo:
  """Checks a plain supervised config (its phase from its own fields), before any compute."""
  _non_negative(config.get("num_epochs"), "config.num_epochs")
  _non_negative(config.get("batch_size"), "config.batch_size")
  return validate_phase(config, Phase.from_config(config), mesh)


def _evaluate(eval_step, variables: dict, config: Any, data: Any, split: str, mesh) -> dict:
  return training_loop.evaluate(
    eval_step,
    variables,
    data,
    split,
    config.eval_batch_size,
    mesh,
    config.get("max_eval_examples") or 0,
  )


def evaluate_variables(
  config: Any, phase: Phase, variables: dict, mesh, info, split: str
) -> dict[str, float]:
  """Accuracy/loss of `phase.model` with the given variables on a split of the phase's data."""
  model = build_model(phase.model, info.num_classes)
  eval_step = jax.jit(train_state_lib.make_classification_eval_step(model, info.num_classes))
  return _evaluate(eval_step, variables, config, phase_data(config, phase), split, mesh)


def _hparams(config: Any, phase: Phase, data: Any) -> dict[str, Any]:
  """The run's settings with the phase's recipe in the places a plain config has them."""
  recipe = ("model.", "optimizer.", "data.")
  out = {k: v for k, v in reporting.hparams_from_config(config).items() if not k.startswith(recipe)}
  out.update(reporting.hparams_from_config(phase.model, "model."))
  out.update(reporting.hparams_from_config(phase.optimizer, "optimizer."))
  out.update(reporting.hparams_from_config(data, "data."))
  out.update(
    phase=phase.name,
    num_epochs=phase.num_epochs,
    num_train_steps=phase.num_train_steps,
    batch_size=phase.batch_size,
    label_smoothing=phase.label_smoothing,
    binary_weights=phase.binary_weights,
  )
  return out


def train_phase(
  config: Any,
  phase: Phase,
  workdir: str,
  *,
  init_from: Optional[str] = None,
  init_variables: Optional[dict] = None,
) -> dict[str, float]:
  """Trains one phase to completion (resuming if `workdir` has checkpoints).

  Args:
    config: the run's ConfigDict; only its run settings are read (see `Phase`).
    phase: what to train and how.
    workdir: directory for checkpoints, metrics and results of this phase.
    init_from: a finished phase's workdir whose final params/BN stats start
      this phase (ReActNet step 2 from step 1).
    init_variables: {"params", "batch_stats"} to start from (e.g. a subnet
      extracted from a supernet, NAS-BNN pipeline 2).

  Returns:
    Final metrics of the phase (test accuracy among them).
  """
  phase_name = phase.name
  mesh = sharding.make_mesh(config.get("num_devices", 0))
  info = validate_phase(config, phase, mesh)
  data = phase_data(config, phase)
  model = build_model(phase.model, info.num_classes, binary_weights=phase.binary_weights)
  steps_per_epoch = input_pipeline.num_batches_per_epoch(data, "train", phase.batch_size)
  total_steps = phase.num_train_steps or int(phase.num_epochs * steps_per_epoch)
  opt_cfg = phase.optimizer.copy_and_resolve_references()

  state, ckpt, train_iter, resumed = training_loop.start_phase(
    config,
    workdir,
    mesh,
    lambda key: model.init(key, jnp.zeros((1, *info.image_shape)), train=False),
    opt_cfg,
    total_steps,
    steps_per_epoch,
    data_config=data,
    batch_size=phase.batch_size,
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
    train_state_lib.make_classification_train_step(model, info.num_classes, phase.label_smoothing),
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
    reporter.writer.write_hparams(_hparams(config, phase, data))
  elif initial_step < total_steps:
    reporter.message(f"[{phase_name}] resumed from step {initial_step} of {total_steps}")
  eval_every = int(config.get("eval_every_epochs", 0) * steps_per_epoch)

  def periodic_eval(step, state):
    if eval_every and step % eval_every == 0 and step != total_steps:
      split = "holdout" if info.num_examples.get("holdout") else "test"
      variables = {"params": state.params, "batch_stats": state.batch_stats}
      ev = _evaluate(eval_step, variables, config, data, split, mesh)
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

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  test = _evaluate(eval_step, variables, config, data, "test", mesh)
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
    return train_phase(config, Phase.from_config(config), workdir)
  step1_dir = os.path.join(workdir, "step1_binary_activations")
  step1 = Phase.from_config(
    config,
    name="step1",
    binary_weights=False,
    weight_decay=config.get("step1_weight_decay", config.optimizer.weight_decay),
  )
  train_phase(config, step1, step1_dir)
  step2 = Phase.from_config(config, name="step2")
  return train_phase(config, step2, os.path.join(workdir, "step2_binary"), init_from=step1_dir)
