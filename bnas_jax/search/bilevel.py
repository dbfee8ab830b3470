"""The DARTS bilevel search step: alpha on the held-out half, weights on the train half.

One jitted step (DARTS Alg. 1; BNAS `search.py` / `architect.py`,
seed_methods_reference.md Sec. 1.2, 3.3):

1. Architecture step on a batch of the held-out ("validation") half:
   alpha <- Adam(3e-4, betas (0.5, 0.999), L2 weight decay 1e-3) of
   L_val(w, alpha) - lambda * H(alpha) * exp(-t / tau)
   (BNAS Eq. 5, the diversity regularizer: H is the entropy of softmax(alpha / T)
   averaged over all 28 edges of the normal and reduction cells, t the epoch,
   lambda = 1, tau = 7.7; lambda = 0 switches it off). First order by default
   (gradient at the current w); `second_order=True` differentiates through one
   virtual SGD step w' = w - xi * (grad_w L_train(w, alpha) + wd * w) with xi the
   current weight learning rate (DARTS Eq. 6-7). The Hessian-vector product is
   exact here (autodiff through the virtual step) where DARTS uses a finite
   difference, and the virtual step leaves out the momentum buffer.
2. Weight step on a batch of the train half with the updated alpha:
   SGD with momentum, cosine learning rate, weight decay on kernels.

Both updates are `optax.partition`s over one parameter tree
{"weights": ..., "arch": ...}: the weight transformation sets the "arch" part's
update to zero and the architecture transformation the "weights" part's, so
neither step can move the other group (not even through momentum).

Bimodal parameter perturbation (Ahn et al., WACV 2023; supplement only, so the
form is RECONSTRUCTED, see `NoiseConfig`): random noise on alpha (epsilon_A) and on the
latent conv kernels (epsilon_W) in the forward passes of the chosen steps; the
gradient taken at the perturbed point updates the clean parameters (random
smoothing, as SDARTS-RS which the supplement cites).
"""

import dataclasses
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from bnas_jax import optimizers
from bnas_jax import param_policies
from bnas_jax import train_state as train_state_lib
from bnas_jax.errors import UserInputError

# Parameter rules of the search: alpha is its own group; weight decay only on
# conv and classifier kernels, as everywhere in bnas_jax.
SEARCH_RULES: param_policies.Rules = (
  (r"arch/.*", "arch"),
  (r".*(conv[^/]*|classifier)/kernel", "decay"),
  (r".*", "no_decay"),
)

DISTRIBUTIONS = ("uniform", "gaussian")
NOISE_STEPS = ("weights", "arch")
ARCH_PLACEMENTS = ("alpha", "softmax")


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
  """Bimodal perturbation settings (defaults: off).

  Attributes:
    arch_scale: epsilon_A (0 = off). The supplement's operating point is 0.2.
    weight_scale: epsilon_W (0 = off). The supplement's operating point is 0.25.
    distribution: "uniform" (U(-eps, eps), SDARTS-RS) or "gaussian" (eps * N(0, 1)).
    arch_relative / weight_relative: scale eps by mean|p| of each tensor
      (relative) instead of using it as is (absolute).
    arch_placement: "alpha" (added to alpha before the softmax) or "softmax"
      (added to the op weights softmax(alpha / T)).
    steps: in which forward passes noise is applied: "weights" (the weight
      step, as SDARTS-RS) and/or "arch" (the architecture step).
  """

  arch_scale: float = 0.0
  weight_scale: float = 0.0
  distribution: str = "uniform"
  arch_relative: bool = False
  weight_relative: bool = True
  arch_placement: str = "alpha"
  steps: tuple[str, ...] = ("weights",)

  def validate(self) -> "NoiseConfig":
    if self.distribution not in DISTRIBUTIONS:
      raise UserInputError(
        f"noise.distribution={self.distribution!r} is not one of {DISTRIBUTIONS}."
      )
    if self.arch_placement not in ARCH_PLACEMENTS:
      raise UserInputError(
        f"noise.arch_placement={self.arch_placement!r} is not one of {ARCH_PLACEMENTS}."
      )
    if not set(self.steps) <= set(NOISE_STEPS):
      raise UserInputError(f"noise.steps={self.steps!r} must be a subset of {NOISE_STEPS}.")
    if self.arch_scale < 0 or self.weight_scale < 0:
      raise UserInputError("noise.arch_scale and noise.weight_scale must be >= 0.")
    return self


@dataclasses.dataclass(frozen=True)
class SearchStepConfig:
  """What the step needs beyond the model (hashable, closed over by jit).

  Attributes:
    num_classes: classifier outputs.
    steps_per_epoch: to turn the step into the epoch t of Eq. 5.
    diversity_lambda, diversity_tau: BNAS Eq. 5 (lambda = 0 disables).
    temperature: T of softmax(alpha / T) in the entropy (BATS; the model uses
      the same T).
    second_order: unrolled DARTS architecture gradient.
    weight_decay: of the weight optimizer, for the virtual step.
    noise: bimodal perturbation.
  """

  num_classes: int
  steps_per_epoch: int
  diversity_lambda: float = 1.0
  diversity_tau: float = 7.7
  temperature: float = 1.0
  second_order: bool = False
  weight_decay: float = 3e-4
  noise: NoiseConfig = NoiseConfig()


class SearchState(flax.struct.PyTreeNode):
  """params = {"weights": ..., "arch": ...}, BN statistics, the two optimizer states."""

  step: jax.Array
  params: Any
  batch_stats: Any
  weight_opt_state: Any
  arch_opt_state: Any
  rng: jax.Array
  weight_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  arch_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, params, batch_stats, weight_tx, arch_tx, rng) -> "SearchState":
    return cls(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      weight_opt_state=weight_tx.init(params),
      arch_opt_state=arch_tx.init(params),
      rng=rng,
      weight_tx=weight_tx,
      arch_tx=arch_tx,
    )

  def step_key(self) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def make_optimizers(
  weight_cfg: Any, arch_cfg: Any, params: Any, total_steps: int, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.GradientTransformation, optax.Schedule]:
  """(weight tx, arch tx, weight lr schedule) as partitions of {"weights", "arch"}.

  Args:
    weight_cfg: optimizer config of the weights (bnas_jax.optimizers fields).
    arch_cfg: learning_rate, b1, b2, weight_decay of the alpha Adam.
    params: the combined parameter tree (or its shapes).
    total_steps, steps_per_epoch: weight schedule length.
  """
  weight_tx = optimizers.make_optimizer(
    weight_cfg,
    params,
    total_steps,
    steps_per_epoch,
    rules=SEARCH_RULES,
    extra={"arch": optax.set_to_zero()},
  )
  labels = param_policies.label_params(params, SEARCH_RULES)
  adam = optax.chain(
    optax.add_decayed_weights(arch_cfg.weight_decay)
    if arch_cfg.weight_decay
    else optax.identity(),  # L2 added to the gradient, as torch.optim.Adam
    optax.scale_by_adam(b1=arch_cfg.b1, b2=arch_cfg.b2),
    optax.scale_by_learning_rate(arch_cfg.learning_rate),
  )
  arch_tx = optax.partition(
    {"arch": adam, "decay": optax.set_to_zero(), "no_decay": optax.set_to_zero()}, labels
  )
  return weight_tx, arch_tx, optimizers.make_schedule(weight_cfg, total_steps, steps_per_epoch)


def edge_entropy(alpha: jax.Array, temperature: float = 1.0) -> jax.Array:
  """Entropy of softmax(alpha / T) per row (edge), natural log."""
  logp = jax.nn.log_softmax(alpha / temperature, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def mean_entropy(arch: dict, temperature: float = 1.0) -> jax.Array:
  """H(alpha) of BNAS Eq. 5: the per-edge entropy averaged over all edges of both cells.

  (The public code's reduce loop indexes a stale row; here every reduce edge counts.)
  """
  rows = jnp.concatenate([edge_entropy(arch[k], temperature) for k in sorted(arch)])
  return jnp.mean(rows)


def diversity_regularizer(
  arch: dict, epoch: jax.Array, lam: float, tau: float, temperature: float = 1.0
) -> jax.Array:
  """lambda * H(alpha) * exp(-t / tau), the term BNAS Eq. 5 subtracts from the alpha loss."""
  return lam * mean_entropy(arch, temperature) * jnp.exp(-epoch / tau)


def sample_noise(
  key: jax.Array,
  tree: Any,
  scale: float,
  distribution: str,
  relative: bool,
  select: Callable[[str], bool] = lambda name: True,
) -> Any:
  """Noise like `tree` (zeros where `select(name)` is False), stop-gradient."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  keys = jax.random.split(key, max(1, len(leaves)))
  out = []
  for k, (path, leaf) in zip(keys, leaves):
    if not select(param_policies.param_name(path)) or scale == 0:
      out.append(jnp.zeros_like(leaf))
      continue
    if distribution == "uniform":
      u = jax.random.uniform(k, leaf.shape, leaf.dtype, -1.0, 1.0)
    else:
      u = jax.random.normal(k, leaf.shape, leaf.dtype)
    size = scale * jnp.mean(jnp.abs(leaf)) if relative else scale
    out.append(jax.lax.stop_gradient(size * u))
  return jax.tree_util.tree_unflatten(treedef, out)


def is_conv_kernel(name: str) -> bool:
  """Latent conv kernels: the weights epsilon_W perturbs (not BN, biases, classifier)."""
  return name.endswith("kernel") and "classifier" not in name


def unrolled_arch_grad(
  train_loss: Callable[[Any, Any], jax.Array],
  val_loss: Callable[[Any, Any], jax.Array],
  weights: Any,
  arch: Any,
  xi: jax.Array,
  weight_decay: float,
) -> Any:
  """d/d alpha of L_val(w - xi * (grad_w L_train(w, alpha) + wd * w), alpha) (DARTS Eq. 7).

  Exact: autodiff through the virtual step (DARTS approximates the Hessian-vector
  product by finite differences).
  """

  def unrolled(a):
    g = jax.grad(train_loss)(weights, a)
    w_virtual = jax.tree.map(lambda w, gw: w - xi * (gw + weight_decay * w), weights, g)
    return val_loss(w_virtual, a)

  return jax.grad(unrolled)(arch)


def make_search_step(
  model: Any, cfg: SearchStepConfig, weight_schedule: Optional[optax.Schedule] = None
) -> Callable[[SearchState, dict], tuple[SearchState, dict]]:
  """The bilevel step `(state, batch) -> (state, metrics)`.

  `batch` holds the train half's "image"/"label" and the held-out half's
  "val_image"/"val_label" (see `trainers/darts.py`'s paired iterator).
  """
  noise = cfg.noise.validate()
  if cfg.second_order and weight_schedule is None:
    raise ValueError("second_order needs the weight learning-rate schedule.")

  def forward(weights, arch, batch_stats, images, op_weight_noise=None):
    logits, upd = model.apply(
      {"params": weights, "arch": arch, "batch_stats": batch_stats},
      images,
      train=True,
      op_weight_noise=op_weight_noise,
      mutable=["batch_stats"],
    )
    return logits, upd["batch_stats"]

  def ce(logits, labels):
    return train_state_lib.cross_entropy(logits, labels, cfg.num_classes).mean()

  def perturb(key, weights, arch, where: str):
    """(weights, arch, softmax-weight noise) with this step's noise applied."""
    if where not in noise.steps:
      return weights, arch, None
    k_w, k_a = jax.random.split(key)
    if noise.weight_scale:
      weights = jax.tree.map(
        jnp.add,
        weights,
        sample_noise(
          k_w,
          weights,
          noise.weight_scale,
          noise.distribution,
          noise.weight_relative,
          is_conv_kernel,
        ),
      )
    soft_noise = None
    if noise.arch_scale:
      eps = sample_noise(k_a, arch, noise.arch_scale, noise.distribution, noise.arch_relative)
      if noise.arch_placement == "alpha":
        arch = jax.tree.map(jnp.add, arch, eps)
      else:
        soft_noise = eps
    return weights, arch, soft_noise

  def step(state: SearchState, batch: dict) -> tuple[SearchState, dict]:
    key_arch, key_weights = jax.random.split(state.step_key())
    epoch = (state.step // cfg.steps_per_epoch).astype(jnp.float32)
    weights, arch = state.params["weights"], state.params["arch"]

    # 1. Architecture step on the held-out batch.
    def val_loss(w, a):
      w, a_noisy, soft = perturb(key_arch, w, a, "arch")
      logits, _ = forward(w, a_noisy, state.batch_stats, batch["val_image"], soft)
      return ce(logits, batch["val_label"]), logits

    def regularizer(a):
      return diversity_regularizer(
        a, epoch, cfg.diversity_lambda, cfg.diversity_tau, cfg.temperature
      )

    (val_ce, val_logits), g_val = jax.value_and_grad(val_loss, argnums=1, has_aux=True)(
      weights, arch
    )
    if cfg.second_order:

      def train_loss_virtual(w, a):
        logits, _ = forward(w, a, state.batch_stats, batch["image"])
        return ce(logits, batch["label"])

      g_val = unrolled_arch_grad(
        train_loss_virtual,
        lambda w, a: val_loss(w, a)[0],
        weights,
        arch,
        weight_schedule(state.step),
        cfg.weight_decay,
      )
    g_reg = jax.grad(regularizer)(arch)
    g_arch = jax.tree.map(jnp.subtract, g_val, g_reg)
    zero_w = jax.tree.map(jnp.zeros_like, weights)
    updates, arch_opt_state = state.arch_tx.update(
      {"weights": zero_w, "arch": g_arch}, state.arch_opt_state, state.params
    )
    params = optax.apply_updates(state.params, updates)
    arch = params["arch"]

    # 2. Weight step on the train batch, with the updated alpha.
    def train_loss(w):
      w_noisy, a, soft = perturb(key_weights, w, arch, "weights")
      logits, stats = forward(w_noisy, a, state.batch_stats, batch["image"], soft)
      return ce(logits, batch["label"]), (logits, stats)

    (loss, (logits, batch_stats)), g_w = jax.value_and_grad(train_loss, has_aux=True)(weights)
    updates, weight_opt_state = state.weight_tx.update(
      {"weights": g_w, "arch": jax.tree.map(jnp.zeros_like, arch)}, state.weight_opt_state, params
    )
    params = optax.apply_updates(params, updates)

    new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      weight_opt_state=weight_opt_state,
      arch_opt_state=arch_opt_state,
    )
    metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
      "val_loss": val_ce,
      "val_accuracy": jnp.mean(jnp.argmax(val_logits, -1) == batch["val_label"]),
      "grad_norm": optax.tree.norm(g_w),
      "arch_grad_norm": optax.tree.norm(g_arch),
      "entropy": mean_entropy(arch, cfg.temperature),
      "diversity_weight": cfg.diversity_lambda * jnp.exp(-epoch / cfg.diversity_tau),
    }
    return new_state, metrics

  return step
