"""The train state every trainer carries, and the classification losses/steps on it."""

from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """Parameters, BN statistics, optimizer state, step and RNG key data.

  `rng` holds raw uint32 key data (checkpointable as a plain array); the key
  of step s is `fold_in(wrap(rng), s)`, so a resumed run draws the same numbers.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, params, batch_stats, tx, rng) -> "TrainState":
    return cls(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      rng=rng,
      tx=tx,
    )

  def step_key(self) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

  def apply_gradients(self, grads: Any, batch_stats: Any) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(
      step=self.step + 1,
      params=optax.apply_updates(self.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
    )


def cross_entropy(
  logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example cross-entropy with optional label smoothing."""
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def make_classification_loss(
  model: Any, num_classes: int, label_smoothing: float = 0.0
) -> Callable[..., tuple[jax.Array, tuple[jax.Array, Any]]]:
  """loss(params, batch_stats, batch, **apply_kwargs) -> (mean loss, (logits, new batch_stats))."""

  def loss_fn(params, batch_stats, batch, **apply_kwargs):
    logits, updates = model.apply(
      {"params": params, "batch_stats": batch_stats},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
      **apply_kwargs,
    )
    loss = cross_entropy(logits, batch["label"], num_classes, label_smoothing).mean()
    return loss, (logits, updates["batch_stats"])

  return loss_fn


def make_classification_train_step(
  model: Any,
  num_classes: int,
  label_smoothing: float = 0.0,
  apply_kwargs: Optional[Callable[..., dict]] = None,
) -> Callable[..., tuple[TrainState, dict]]:
  """One optimizer step of supervised classification; metrics are global-batch means.

  `train_step(state, batch, *extra)`; `apply_kwargs(state, *extra)` gives extra
  keyword arguments of `model.apply` (e.g. a drop-path rate, rngs, channel masks).
  """
  loss_fn = make_classification_loss(model, num_classes, label_smoothing)

  def train_step(state: TrainState, batch: dict, *extra: Any) -> tuple[TrainState, dict]:
    kwargs = apply_kwargs(state, *extra) if apply_kwargs is not None else {}
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.batch_stats, batch, **kwargs
    )
    new_state = state.apply_gradients(grads, batch_stats)
    metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
      "grad_norm": optax.tree.norm(grads),
    }
    return new_state, metrics

  return train_step


def make_classification_eval_step(model: Any, num_classes: int) -> Callable[..., dict]:
  """`(variables, batch) ->` sums of correct predictions, loss and examples over a masked batch.

  `variables` holds every collection the model reads (params, batch_stats, and
  e.g. a supernet's "arch").
  """

  def eval_step(variables: dict, batch: dict) -> dict:
    logits = model.apply(variables, batch["image"], train=False)
    mask = batch["mask"]
    loss = cross_entropy(logits, batch["label"], num_classes)
    return {
      "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
      "loss": jnp.sum(loss * mask),
      "count": jnp.sum(mask),
    }

  return eval_step
