"""Optimizers and learning-rate schedules built from a config.

`make_optimizer` builds one optax transformation per parameter label (see
`param_policies.py`) and joins them with `optax.partition`, so weight decay
applies only where the papers apply it and architecture parameters can get an
optimizer of their own.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from bnas_jax import param_policies
from bnas_jax.errors import UserInputError

SCHEDULES = (
  "constant",
  "cosine",
  "linear",
  "warmup_cosine",
  "cosine_restarts",
  "multistep",
  "one_cycle",
)
OPTIMIZERS = ("adam", "adamw", "sgd")
LSQ_STEP_SIZE = "kernel_scale"  # the name `layers.QuantConv` gives an LSQ step size


def make_schedule(cfg: Any, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Learning-rate schedule `cfg.schedule` over `total_steps` optimizer steps.

  cosine: to 0 (NAS-BNN, PyTorch CosineAnnealingLR with eta_min 0); linear: to 0
  (ReActNet); warmup_cosine: `warmup_epochs` of linear warm-up;
  cosine_restarts: cosine cycles of `restart_epochs` (BNAS ImageNet);
  multistep: times `decay_factor` at each of `boundaries_epochs` (DMS App. B.2.2);
  one_cycle: BNAS's CIFAR recipe, as its code's `OneCycleLR` stepped per
  iteration: linear lr/div_factor -> lr over the first 45% of the steps, back
  by 90%, then to lr/(div_factor * final_div_factor); its momentum cycling
  (0.95/0.85) is not reproduced (constant `momentum`).
  """
  lr = cfg.learning_rate
  name = cfg.get("schedule", "cosine")
  total_steps = max(1, total_steps)
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, total_steps)
  if name == "linear":
    return optax.linear_schedule(lr, 0.0, total_steps)
  if name == "warmup_cosine":
    warmup = int(cfg.get("warmup_epochs", 0) * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(1, warmup), total_steps)
  if name == "cosine_restarts":
    cycle = max(1, int(cfg.restart_epochs * steps_per_epoch))
    n = -(-total_steps // cycle)
    return optax.join_schedules(
      [optax.cosine_decay_schedule(lr, cycle, alpha=cfg.get("min_lr", 0.0) / lr)] * n,
      [cycle * (i + 1) for i in range(n - 1)],
    )
  if name == "one_cycle":
    return optax.linear_onecycle_schedule(
      total_steps,
      lr,
      pct_start=0.45,
      pct_final=0.9,
      div_factor=cfg.div_factor,
      final_div_factor=cfg.final_div_factor,
    )
  if name == "multistep":
    boundaries = {
      int(e * steps_per_epoch): cfg.get("decay_factor", 0.1) for e in cfg.boundaries_epochs
    }
    return optax.piecewise_constant_schedule(lr, boundaries)
  raise UserInputError(f"optimizer.schedule={name!r} is not one of {SCHEDULES}.")


def _base(cfg: Any, schedule: optax.Schedule, weight_decay: float) -> optax.GradientTransformation:
  name = cfg.get("name", "adam")
  if name == "adam":
    # Adam with L2 weight decay added to the gradient, as torch.optim.Adam
    # (NAS-BNN, ReActNet), not decoupled AdamW.
    return optax.chain(
      optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
      optax.scale_by_adam(b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999)),
      optax.scale_by_learning_rate(schedule),
    )
  if name == "adamw":
    return optax.adamw(
      schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999), weight_decay=weight_decay
    )
  if name == "sgd":
    return optax.chain(
      optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
      optax.sgd(
        schedule, momentum=cfg.get("momentum", 0.9) or None, nesterov=cfg.get("nesterov", False)
      ),
    )
  raise UserInputError(f"optimizer.name={name!r} is not one of {OPTIMIZERS}.")


def make_optimizer(
  cfg: Any,
  params: Any,
  total_steps: int,
  steps_per_epoch: int,
  rules: param_policies.Rules = param_policies.WEIGHT_DECAY_ON_KERNELS,
  extra: Mapping[str, optax.GradientTransformation] = (),
) -> optax.GradientTransformation:
  """The weight optimizer: `cfg.weight_decay` on "decay" params, none on "no_decay".

  Args:
    cfg: optimizer config (name, learning_rate, schedule, weight_decay, ...).
    params: the parameter pytree (or its shapes), to label.
    total_steps, steps_per_epoch: schedule length.
    rules: parameter rules; labels other than decay/no_decay need `extra`.
    extra: transformations for further labels (e.g. "arch").
  """
  schedule = make_schedule(cfg, total_steps, steps_per_epoch)
  transforms = {
    "decay": _base(cfg, schedule, cfg.get("weight_decay", 0.0)),
    "no_decay": _base(cfg, schedule, 0.0),
    **dict(extra),
  }
  tx = optax.partition(transforms, param_policies.label_params(params, rules))
  step_sizes = jax.tree_util.tree_map_with_path(
    lambda path, _: param_policies.param_name(path).endswith(LSQ_STEP_SIZE), params
  )
  if any(jax.tree.leaves(step_sizes)):
    # NAS-BNN's public code clamps every LSQ step size to eps before each
    # forward, i.e. after each update (`layers.QuantConv.lsq_min_scale` floors
    # it inside the forward as well).
    tx = floor_params(tx, float(jnp.finfo(jnp.float32).eps), step_sizes)
  clip = cfg.get("grad_clip_norm", None)
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx


def floor_params(
  tx: optax.GradientTransformation, minimum: float, mask: Any
) -> optax.GradientTransformation:
  """`tx` whose updates leave the `mask`ed parameters at >= `minimum` once applied.

  The optimizer state is `tx`'s own (no extra chain element), so checkpoints
  of a run started before the floor existed still restore.
  """

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("floor_params needs the params to floor them.")
    updates, state = tx.update(updates, state, params)
    floor = lambda u, p, m: jnp.where(p + u < minimum, minimum - p, u) if m else u
    return jax.tree.map(floor, updates, params, mask), state

  return optax.GradientTransformation(tx.init, update)
