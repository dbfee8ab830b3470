"""The NAS-BNN supernet: one program for every subnet, equal to the extracted subnet."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnas_jax import train_state as train_state_lib
from bnas_jax.models import build_model
from bnas_jax.models import nasbnn_subnet
from bnas_jax.models import nasbnn_supernet
from bnas_jax.search_spaces import nasbnn
from bnas_jax.trainers import nasbnn as nasbnn_trainer

# A two-stage space with every kind of choice (depth, width, kernel {3, 5},
# groups with g_min > 1, a strided stage) compiles in seconds.
SPACE = nasbnn.SearchSpace(
  name="tiny",
  stem_widths=(4, 8),
  resolution=8,
  num_classes=10,
  stages=(
    nasbnn.StageSpec((1, 2), (8, 16), (3, 5), (1, 2), stride=1),
    nasbnn.StageSpec((1, 2, 3), (16, 24, 32), (3, 5), (2, 4), stride=2),
  ),
)
MODEL = nasbnn_supernet.NasBnnSupernet(SPACE, 10)
X = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))


@functools.lru_cache(maxsize=None)
def _variables():
  init = jax.jit(lambda key: MODEL.init(key, X, nasbnn.encode(SPACE, nasbnn.biggest(SPACE))))
  v = init(jax.random.key(1))
  # Move every parameter and statistic away from its initial value so identity
  # matrices, zero biases and unit BN statistics cannot hide a wrong slice.
  leaves, treedef = jax.tree.flatten(v)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  leaves = [l + 0.05 * jnp.abs(jax.random.normal(k, l.shape)) for l, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, leaves)


TRACES = []


@jax.jit
def _forward(variables, x, arch):
  TRACES.append(1)  # runs once per compilation
  return MODEL.apply(variables, x, arch, train=False)


def _archs():
  rng = np.random.default_rng(0)
  return [nasbnn.biggest(SPACE), nasbnn.smallest(SPACE)] + [
    nasbnn.sample_uniform(SPACE, rng) for _ in range(6)
  ]


def test_every_subnet_equals_its_extracted_standalone_network():
  variables = _variables()
  for arch in _archs():
    logits = _forward(variables, X, nasbnn.encode(SPACE, arch))
    subnet = build_model(nasbnn_subnet.model_config(SPACE, arch), 10)
    extracted = nasbnn_supernet.extract_subnet_variables(SPACE, arch, variables)
    expected = jax.jit(functools.partial(subnet.apply, train=False))(extracted, X)
    np.testing.assert_allclose(
      logits,
      expected,
      rtol=1e-4,
      atol=1e-4 * float(jnp.abs(expected).max()),
      err_msg=arch.to_string(),
    )
  assert len(TRACES) == 1  # eight different subnets, one compilation


def test_static_encoding_runs_the_same_subnet():
  variables = _variables()
  for arch in (nasbnn.biggest(SPACE), nasbnn.smallest(SPACE)):
    enc = nasbnn.encode(SPACE, arch)  # numpy: picked at trace time where possible
    static = jax.jit(lambda v, x, enc=enc: MODEL.apply(v, x, enc, train=False))
    np.testing.assert_allclose(
      static(variables, X), _forward(variables, X, enc), rtol=1e-5, atol=1e-5
    )
  # The biggest subnet (the teacher) has identical slots within a stage: no switch at all.
  biggest = nasbnn.encode(SPACE, nasbnn.biggest(SPACE))
  jaxpr = str(jax.make_jaxpr(lambda v, x: MODEL.apply(v, x, biggest, train=False))(variables, X))
  assert "cond" not in jaxpr and "cond" in str(jax.make_jaxpr(_forward)(variables, X, biggest))


def test_inactive_blocks_keep_their_batch_statistics():
  variables = _variables()
  arch = nasbnn.smallest(SPACE)  # runs 1 of 2 and 1 of 3 blocks
  train_apply = jax.jit(functools.partial(MODEL.apply, train=True, mutable=["batch_stats"]))
  _, updates = train_apply(variables, X, nasbnn.encode(SPACE, arch))
  slots = nasbnn.block_slots(SPACE)
  inactive = [i for i, s in enumerate(slots) if s.block >= arch.depths[s.stage]]
  assert inactive
  for i in inactive:
    for bn in ("bn_kxk", "bn_1x1"):
      jax.tree.map(
        np.testing.assert_array_equal,
        nasbnn_supernet.slot_variables(updates["batch_stats"], SPACE, i)[bn],
        nasbnn_supernet.slot_variables(variables["batch_stats"], SPACE, i)[bn],
      )
  # An active block's statistics move only in its active channels.
  first = nasbnn_supernet.slot_variables(updates["batch_stats"], SPACE, 0)["bn_1x1"]["mean"]
  width = arch.stages[0][0].width
  old = nasbnn_supernet.slot_variables(variables["batch_stats"], SPACE, 0)["bn_1x1"]["mean"]
  assert not np.allclose(first[:width], old[:width])
  np.testing.assert_array_equal(first[width:], old[width:])


@pytest.mark.parametrize("weight_mode,activation_mode", [("fp", "binary"), ("fp", "fp")])
def test_teacher_modes_skip_the_bi_transformation(weight_mode, activation_mode):
  variables = _variables()
  arch = nasbnn.encode(SPACE, nasbnn.biggest(SPACE))

  def loss(params, mode):
    logits = MODEL.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      X,
      arch,
      train=False,
      weight_mode=mode[0],
      activation_mode=mode[1],
    )
    return jnp.sum(logits**2)

  grads_teacher = jax.jit(jax.grad(loss), static_argnums=1)(
    variables["params"], (weight_mode, activation_mode)
  )
  grads_student = jax.jit(jax.grad(loss), static_argnums=1)(
    variables["params"], ("binary", "binary")
  )
  # Biggest subnet uses the largest kernel everywhere: Bi-Transformation (Eq. 5)
  # is used by binary-weight students only, never by the FP-weight teacher.
  for slot in range(len(nasbnn.block_slots(SPACE))):
    assert not np.any(
      nasbnn_supernet.slot_variables(grads_teacher, SPACE, slot)["conv_kxk"]["fp2bin"]
    )
    assert np.any(nasbnn_supernet.slot_variables(grads_student, SPACE, slot)["conv_kxk"]["fp2bin"])


def test_gradients_equal_those_of_the_extracted_network():
  """Training a subnet inside the supernet = training the standalone network.

  The standalone ReActNet differentiates plain lax convolutions; the supernet
  takes its gradients from the matmul form inside switch branches.
  """
  variables = _variables()
  labels = jnp.array([1, 7])

  def xent(logits):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

  @jax.jit
  def super_grads(params, x, enc):
    def loss(params, x):
      logits, _ = MODEL.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        x,
        enc,
        train=True,
        mutable=["batch_stats"],
      )
      return xent(logits)

    return jax.grad(loss, argnums=(0, 1))(params, x)

  rng = np.random.default_rng(3)
  for arch in [nasbnn.sample_uniform(SPACE, rng) for _ in range(2)] + [nasbnn.smallest(SPACE)]:
    g_super, gx_super = super_grads(variables["params"], X, nasbnn.encode(SPACE, arch))
    subnet = build_model(nasbnn_subnet.model_config(SPACE, arch), 10)
    extracted = nasbnn_supernet.extract_subnet_variables(SPACE, arch, variables)

    def sub_loss(params, x):
      logits, _ = subnet.apply(
        {"params": params, "batch_stats": extracted["batch_stats"]},
        x,
        train=True,
        mutable=["batch_stats"],
      )
      return xent(logits)

    g_sub, gx_sub = jax.jit(jax.grad(sub_loss, argnums=(0, 1)))(extracted["params"], X)
    tol = dict(rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(gx_super, gx_sub, **tol)
    slots = nasbnn.block_slots(SPACE)
    active = [i for i, s in enumerate(slots) if s.block < arch.depths[s.stage]]
    blocks = [b for stage in arch.stages for b in stage]
    for n, (i, block) in enumerate(zip(active, blocks)):
      g_slot = nasbnn_supernet.slot_variables(g_super, SPACE, i)
      got = g_slot["conv_1x1"]["kernel"]
      want = g_sub[f"block{n}"]["conv_1x1"]["kernel"]
      c_in, c_out = want.shape[2], want.shape[3]
      np.testing.assert_allclose(got[:, :, :c_in, :c_out], want, **tol)
      assert not np.any(got[:, :, c_in:]) and not np.any(got[..., c_out:])
      np.testing.assert_allclose(
        g_slot["bn_kxk"]["scale"][:c_in], g_sub[f"block{n}"]["bn_kxk"]["scale"], **tol
      )
      np.testing.assert_allclose(
        g_slot["conv_kxk"]["input_threshold"][:c_in],
        g_sub[f"block{n}"]["conv_kxk"]["input_threshold"],
        **tol,
      )
    np.testing.assert_allclose(
      g_super["stem_conv"]["kernel"][..., : arch.stem_width], g_sub["stem"]["conv"]["kernel"], **tol
    )


def test_zero_initialised_classifier_starts_at_uniform_predictions():
  # The digits preset's zero-init head: every subnet's first loss is ln(10),
  # whatever the trunk computes; the default (reference) init is not uniform.
  arch = nasbnn.encode(SPACE, nasbnn.biggest(SPACE))
  for zero_init, uniform in ((True, True), (False, False)):
    model = nasbnn_supernet.NasBnnSupernet(SPACE, 10, zero_init_classifier=zero_init)
    v = jax.jit(lambda key: model.init(key, X, arch))(jax.random.key(1))
    logits = model.apply(v, X, arch, train=False)
    ce = -jnp.mean(jax.nn.log_softmax(logits)[:, 3])
    assert bool(jnp.isclose(ce, np.log(10.0), atol=1e-6)) == uniform


# The sandwich step (NAS-BNN Eq. 4) on the tiny space: teacher CE + students' KD.
_LABELS = jnp.array([1, 7])
_GRAD_SCALE = 1e3  # the step's "optimizer" adds 1e3 x the gradient: params move, grads readable


def _sandwich_state():
  variables = _variables()
  return train_state_lib.TrainState.create(
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    tx=optax.scale(_GRAD_SCALE),
    rng=jax.random.key_data(jax.random.key(0)),
  )


def _sandwich_step(**kw):
  return nasbnn_trainer.make_sandwich_step(
    MODEL,
    10,
    nasbnn.encode(SPACE, nasbnn.biggest(SPACE)),
    label_smoothing=0.1,
    teacher_mode="fwba",
    distill=True,
    **kw,
  )


def _reference_sandwich(variables, students, s_weight):
  """Eq. 4 one subnet at a time: each loss differentiated alone, gradients
  summed, BN statistics passed from subnet to subnet in sandwich order."""
  apply = functools.partial(MODEL.apply, train=True, mutable=["batch_stats"])
  params = variables["params"]

  def teacher(p):
    logits, upd = apply(
      {"params": p, "batch_stats": variables["batch_stats"]},
      X,
      nasbnn.encode(SPACE, nasbnn.biggest(SPACE)),
      weight_mode="fp",
    )
    targets = optax.smooth_labels(jax.nn.one_hot(_LABELS, 10), 0.1)
    return optax.softmax_cross_entropy(logits, targets).mean(), (logits, upd["batch_stats"])

  (t_loss, (t_logits, stats)), grads = jax.value_and_grad(teacher, has_aux=True)(params)
  soft = jax.nn.softmax(t_logits)
  s_losses = []
  for i in range(students["active"].shape[0]):
    arch = jax.tree.map(lambda a, i=i: a[i], students)

    def student(p, stats=stats, arch=arch):
      logits, upd = apply({"params": p, "batch_stats": stats}, X, arch)
      return -jnp.mean(jnp.sum(soft * jax.nn.log_softmax(logits), -1)), upd["batch_stats"]

    (loss, stats), g = jax.value_and_grad(student, has_aux=True)(params)
    grads = jax.tree.map(lambda a, b: a + s_weight * b, grads, g)
    s_losses.append(loss)
  return grads, stats, t_loss, sum(s_losses)


def _check_step_against_reference(step, state, students, s_weight):
  batch = {"image": X, "label": _LABELS}
  new, metrics = step(state, batch, students, np.float32(s_weight))
  grads, stats, t_loss, s_loss = jax.jit(_reference_sandwich)(
    {"params": state.params, "batch_stats": state.batch_stats}, students, s_weight
  )
  tol = dict(rtol=2e-3, atol=1e-6)
  jax.tree.map(
    lambda a, b, g: np.testing.assert_allclose((a - b) / _GRAD_SCALE, g, **tol),
    new.params,
    state.params,
    grads,
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new.batch_stats, stats
  )
  np.testing.assert_allclose(metrics["teacher_loss"], t_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["student_loss"], s_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], t_loss + s_weight * s_loss, rtol=1e-5)


SANDWICH_TRACES = []


@functools.lru_cache(maxsize=None)
def _counted_sandwich_step():
  """One jitted step shared by the tests below; SANDWICH_TRACES grows once per trace."""
  step = _sandwich_step()

  def counted(*args):
    SANDWICH_TRACES.append(1)
    return step(*args)

  return jax.jit(counted)


@pytest.mark.slow  # compiles the step and a reference (about a minute on 2 quiet cores)
def test_sandwich_step_equals_the_per_subnet_reference():
  students = nasbnn_trainer.sandwich_archs(SPACE, 0, 3, "uniform_depths")
  _check_step_against_reference(_counted_sandwich_step(), _sandwich_state(), students, 0.5)


@pytest.mark.slow  # shares the compiled step with the test above when both run
def test_sandwich_step_compiles_once_for_50_student_draws():
  step = _counted_sandwich_step()
  batch = {"image": X, "label": _LABELS}
  draws = [nasbnn_trainer.sandwich_archs(SPACE, 1, s, "uniform_depths") for s in range(51)]
  assert len({tuple(np.concatenate([v.ravel() for v in d.values()])) for d in draws}) > 40
  # Warm-up: the state then arrives as the training loop carries it (a step's output).
  state, _ = step(_sandwich_state(), batch, draws[0], np.float32(1.0))
  traces = len(SANDWICH_TRACES)
  for students in draws[1:]:
    state, _ = step(state, batch, students, np.float32(1.0))
  assert len(SANDWICH_TRACES) == traces  # 50 draws of 3 students: not one new trace
