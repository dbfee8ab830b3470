"""Weight decay only on conv/classifier kernels; partitioned optimizer under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
import pytest

from bnas_jax import optimizers
from bnas_jax import param_policies
from bnas_jax.errors import UserInputError
from bnas_jax.models import reactnet


def _params():
  model = reactnet.ReActNet(10, 8, ((8, 1, 3, 1), (16, 2, 3, 2)))
  return model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]


def test_decay_labels_follow_the_papers():
  labels = param_policies.label_params(_params(), param_policies.WEIGHT_DECAY_ON_KERNELS)
  flat = {param_policies.param_name(p): l for p, l in jax.tree_util.tree_leaves_with_path(labels)}
  decayed = sorted(n for n, l in flat.items() if l == "decay")
  assert decayed == [
    "block0/conv_1x1/kernel",
    "block0/conv_kxk/kernel",
    "block1/conv_1x1/kernel",
    "block1/conv_kxk/kernel",
    "classifier/kernel",
    "stem/conv/kernel",
  ]
  assert flat["stem/conv/kernel_scale"] == "no_decay"
  assert flat["block0/conv_kxk/input_threshold"] == "no_decay"


def test_weight_decay_is_l2_on_decayed_params_only_under_jit():
  params = {"conv": {"kernel": jnp.ones(3)}, "bn": {"scale": jnp.ones(3)}}
  cfg = ml_collections.ConfigDict(
    dict(name="sgd", learning_rate=0.1, schedule="constant", weight_decay=0.5, momentum=0.0)
  )
  tx = optimizers.make_optimizer(cfg, params, 10, 1)
  state = tx.init(params)
  update = jax.jit(tx.update)
  zero = jax.tree.map(jnp.zeros_like, params)
  for _ in range(2):  # two jitted steps through optax.partition
    updates, state = update(zero, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  # SGD with L2: w <- w - lr * wd * w, twice, on the conv kernel only.
  np.testing.assert_allclose(params["conv"]["kernel"], (1 - 0.1 * 0.5) ** 2)
  np.testing.assert_allclose(params["bn"]["scale"], 1.0)


def test_unmatched_parameter_is_reported():
  with pytest.raises(UserInputError, match="matches none"):
    param_policies.label_params({"a": jnp.ones(1)}, ((r"b", "decay"),))


@pytest.mark.parametrize("name,at_end", [("cosine", 0.0), ("linear", 0.0), ("constant", 1.0)])
def test_schedules_end_where_the_papers_say(name, at_end):
  cfg = ml_collections.ConfigDict(dict(learning_rate=1.0, schedule=name))
  sched = optimizers.make_schedule(cfg, 100, 10)
  assert float(sched(0)) == pytest.approx(1.0)
  assert float(sched(100)) == pytest.approx(at_end, abs=1e-6)


def test_multistep_schedule_decays_at_epoch_boundaries():
  cfg = ml_collections.ConfigDict(
    dict(learning_rate=0.1, schedule="multistep", boundaries_epochs=(2, 3), decay_factor=0.5)
  )
  s = optimizers.make_schedule(cfg, total_steps=40, steps_per_epoch=10)
  np.testing.assert_allclose(
    [float(s(t)) for t in (0, 19, 20, 29, 30, 39)], [0.1, 0.1, 0.05, 0.05, 0.025, 0.025], rtol=1e-6
  )


def test_lsq_step_sizes_never_fall_below_eps_after_an_update(monkeypatch):
  """The public NAS-BNN code clamps LSQ step sizes to eps before each forward."""
  eps = float(jnp.finfo(jnp.float32).eps)
  params = {"stem": {"kernel": jnp.ones((3, 3, 3, 2)), "kernel_scale": jnp.array([1e-3, 0.5])}}
  grads = {"stem": {"kernel": jnp.full((3, 3, 3, 2), 2.0), "kernel_scale": jnp.array([1.0, 1.0])}}
  cfg = ml_collections.ConfigDict(
    dict(name="sgd", learning_rate=0.1, schedule="constant", momentum=0.0, weight_decay=0.0)
  )
  tx = optimizers.make_optimizer(cfg, params, 10, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  # Plain SGD: 1e-3 - 0.1 < 0 is floored at eps; 0.5 - 0.1 and the kernel are untouched.
  np.testing.assert_array_equal(new["stem"]["kernel_scale"], np.float32([eps, 0.5 - 0.1]))
  np.testing.assert_array_equal(new["stem"]["kernel"], np.full((3, 3, 3, 2), 1.0 - 0.2, np.float32))
  # The floor adds no optimizer state: checkpoints from before it still restore.
  monkeypatch.setattr(optimizers, "LSQ_STEP_SIZE", "no_such_parameter")
  unfloored = optimizers.make_optimizer(cfg, params, 10, 10)
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(unfloored.init(params))


def test_one_cycle_is_bnas_onecyclelr():
  """BNAS's CIFAR recipe: lr/20 -> lr at 45% of the steps, back by 90%, then lr/2000."""
  cfg = ml_collections.ConfigDict(
    dict(
      name="sgd", schedule="one_cycle", learning_rate=0.1, div_factor=20.0, final_div_factor=100.0
    )
  )
  sched = optimizers.make_schedule(cfg, 1000, 10)
  np.testing.assert_allclose(
    [float(sched(s)) for s in (0, 450, 900, 1000)], [0.1 / 20, 0.1, 0.1 / 20, 0.1 / 2000], rtol=1e-5
  )
  np.testing.assert_allclose(float(sched(225)), (0.1 / 20 + 0.1) / 2, rtol=1e-5)
