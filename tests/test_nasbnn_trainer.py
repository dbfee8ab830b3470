"""NAS-BNN end to end on a tiny space: supernet -> search -> deployment, and resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnas_jax.errors import UserInputError
from bnas_jax.models import nasbnn_subnet
from bnas_jax.search_spaces import nasbnn
from bnas_jax.trainers import nasbnn as nasbnn_trainer
from configs import nasbnn as nasbnn_config

# Two stages with every kind of choice; the real config's Table 1 copy has 21
# block slots and compiles for minutes, this one in seconds. As config fields
# (config.space.stages / stem_widths) and as the space they describe.
TINY_STAGES = (((1, 2), (8, 16), (3, 5), (1, 2), 1), ((1, 2, 3), (16, 24, 32), (3, 5), (2, 4), 2))
TINY = nasbnn.SearchSpace(
    name="tiny", stem_widths=(4, 8), resolution=16, num_classes=10,
    stages=tuple(nasbnn.StageSpec(*st) for st in TINY_STAGES))


def _config():
  c = nasbnn_config.get_config()
  c.space.update(dict(stages=TINY_STAGES, stem_widths=(4, 8), width_divisor=1, resolution=16))
  c.batch_size = 32
  c.eval_batch_size = 64
  c.max_eval_examples = 64
  c.progress_bar = False
  c.supernet.num_train_steps = 4
  c.checkpoint_every_steps = 2
  c.search.update(dict(population_size=6, generations=2, num_mutations=3, num_crossovers=3,
                       calibration_batches=2, sweep_chunk=4))
  c.deploy.update(dict(num_archs=1, finetune_steps=2))
  return c


def test_whole_method_runs_and_reports(tmp_path):
  report = nasbnn_trainer.train_and_evaluate(_config(), str(tmp_path))
  saved = json.loads((tmp_path / "report.json").read_text())
  assert saved == json.loads(json.dumps(report))
  front = saved["front"]
  assert front and all(0.0 <= r["holdout_accuracy"] <= 1.0 for r in front)
  ops = [r["ops_m"] for r in front]
  accs = [r["holdout_accuracy"] for r in front]
  assert ops == sorted(ops) and accs == sorted(accs)  # a true Pareto front
  for r in front:
    nasbnn.validate(TINY, nasbnn.Architecture.from_string(r["arch"]))  # the config's space
  (deployed,) = saved["deployed"]
  assert 0.0 <= deployed["test_accuracy_extracted"] <= 1.0
  assert (tmp_path / "search" / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  records = json.loads((tmp_path / "search" / "search_records.json").read_text())
  assert len(records) == 6 + 2 * 6  # population + generations x (mutations + crossovers)


def test_sandwich_students_are_the_same_on_every_call():
  a = nasbnn_trainer.sandwich_archs(TINY, seed=3, step=7, sampling="uniform_depths")
  b = nasbnn_trainer.sandwich_archs(TINY, seed=3, step=7, sampling="uniform_depths")
  jax.tree.map(np.testing.assert_array_equal, a, b)
  smallest = nasbnn.encode(TINY, nasbnn.smallest(TINY))
  for k in smallest:
    np.testing.assert_array_equal(a[k][0], smallest[k])


def test_recalibration_averages_batch_moments():
  from bnas_jax import layers
  from bnas_jax.models import nasbnn_supernet
  model = nasbnn_supernet.NasBnnSupernet(TINY, 10)
  arch = nasbnn.encode(TINY, nasbnn.biggest(TINY))
  x = jax.random.normal(jax.random.key(0), (3, 4, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x[0], arch)
  stats = jax.jit(nasbnn_trainer.make_recalibrate(model))(
      variables["params"], variables["batch_stats"], x, arch)
  # Independent expectation for the stem BN (all 8 channels active in the
  # biggest subnet): the average over batches of the batch mean and of the
  # unbiased batch variance of the stem conv's output, as PyTorch's BN with
  # momentum=None accumulates them.
  stem = layers.QuantConv(8, kernel_size=3, strides=2, kernel_quantizer="lsq", kernel_bits=8)
  outs = [np.asarray(stem.apply({"params": variables["params"]["stem_conv"]}, xb), np.float64)
          for xb in x]
  means = [o.mean(axis=(0, 1, 2)) for o in outs]
  variances = [o.reshape(-1, 8).var(axis=0, ddof=1) for o in outs]
  np.testing.assert_allclose(stats["stem_bn"]["mean"], np.mean(means, axis=0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["stem_bn"]["var"], np.mean(variances, axis=0), rtol=1e-4)


def test_config_can_describe_its_own_space():
  space = nasbnn_subnet.space_from_config(_config())
  assert space.stages == TINY.stages and space.stem_widths == TINY.stem_widths
  assert space.resolution == 16 and space.nd_constraint
  c = _config()
  c.space.stages = ((1, 2), (8,))  # not (depths, widths, kernels, groups, stride)
  with pytest.raises(UserInputError, match="config.space.stages"):
    nasbnn_subnet.space_from_config(c)
  c = _config()
  c.space.stem_widths = None
  with pytest.raises(UserInputError):
    nasbnn_subnet.space_from_config(c)


def test_student_weight_ramps_linearly_then_stays_at_one():
  assert [float(nasbnn_trainer.student_weight(s, 0)) for s in (1, 50)] == [1.0, 1.0]
  ramp = [float(nasbnn_trainer.student_weight(s, 4)) for s in range(1, 8)]
  assert ramp == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_students_weight_zero_leaves_the_teachers_gradient_alone():
  import optax
  from bnas_jax import train_state as train_state_lib
  from bnas_jax.models import nasbnn_supernet
  # One stage whose depth is the only choice: students differ from the teacher
  # and the program compiles in seconds.
  space = nasbnn.SearchSpace(name="depth", stem_widths=(4,), resolution=8, num_classes=10,
                             stages=(nasbnn.StageSpec((1, 2), (8,), (3,), (1,), 2),))
  model = nasbnn_supernet.NasBnnSupernet(space, 10)
  biggest = nasbnn.encode(space, nasbnn.biggest(space))
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
  labels = np.arange(8) % 10
  variables = model.init(jax.random.key(1), x[:1], biggest)
  state = train_state_lib.TrainState.create(  # SGD(1): new params = params - grads
      params=variables["params"], batch_stats=variables["batch_stats"], tx=optax.sgd(1.0),
      rng=jax.random.key_data(jax.random.key(2)))
  step = jax.jit(nasbnn_trainer.make_sandwich_step(
      model, 10, biggest, label_smoothing=0.1, teacher_mode="fwba", distill=True))
  students = nasbnn_trainer.sandwich_archs(space, seed=0, step=1, sampling="uniform_depths")
  batch = {"image": x, "label": labels}

  def teacher_loss(params):  # label smoothing 0.1 written out
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                            biggest, train=True, weight_mode="fp", mutable=["batch_stats"])
    target = 0.9 * jax.nn.one_hot(labels, 10) + 0.01
    return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))

  expected = jax.jit(jax.grad(teacher_loss))(variables["params"])
  got = {}
  for w in (0.0, 1.0):
    new, metrics = step(state, batch, students, np.float32(w))
    got[w] = jax.tree.map(lambda a, b: a - b, variables["params"], new.params)
    if w == 0.0:
      assert float(metrics["loss"]) == pytest.approx(float(metrics["teacher_loss"]))
  for g, e in zip(jax.tree.leaves(got[0.0]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
  differs = [not np.allclose(g, e, rtol=1e-3, atol=1e-5)
             for g, e in zip(jax.tree.leaves(got[1.0]), jax.tree.leaves(expected))]
  assert any(differs)  # with weight 1 the students' KD moves the shared weights
