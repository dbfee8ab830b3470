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
  name="tiny",
  stem_widths=(4, 8),
  resolution=16,
  num_classes=10,
  stages=tuple(nasbnn.StageSpec(*st) for st in TINY_STAGES),
)


def _config():
  c = nasbnn_config.get_config()
  c.space.update(dict(stages=TINY_STAGES, stem_widths=(4, 8), width_divisor=1, resolution=16))
  c.batch_size = 32
  c.eval_batch_size = 64
  c.max_eval_examples = 64
  c.progress_bar = False
  c.supernet.num_train_steps = 4
  c.checkpoint_every_steps = 2
  c.search.update(
    dict(
      population_size=6,
      generations=2,
      num_mutations=3,
      num_crossovers=3,
      calibration_batches=2,
      calibration_batch_size=64,
      calibration_pool_batches=3,
      sweep_chunk=4,
    )
  )
  # One target below every subnet (skipped) and one above all (the most
  # accurate front member); the random baseline runs at its OPs.
  c.deploy.update(dict(ops_targets=(1e-6, 1e6), finetune_steps=2, random_baseline=True))
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
  best = max(front, key=lambda r: (r["holdout_accuracy"], -r["ops_m"]))
  assert (deployed["arch"], deployed["ops_m"]) == (best["arch"], best["ops_m"])
  assert deployed["holdout_accuracy"] == best["holdout_accuracy"]
  for d in (deployed, deployed["random_baseline"]):
    assert 0.0 <= d["test_accuracy_pipeline1"] <= 1.0
    assert 0.0 <= d["test_accuracy_pipeline2"] <= 1.0
    assert d["export_bytes"] > 0
  # Pipeline 1 also writes the bit-packed form `python -m bnas_jax.deploy` runs.
  assert (
    deployed["packed_bytes"] == (tmp_path / "deploy" / "arch0" / "binary_packed.npz").stat().st_size
  )
  assert deployed["random_baseline"]["ops_m"] <= deployed["ops_m"]
  (skipped,) = saved["skipped"]
  assert skipped["target_ops_m"] == 1e-6 and "no front member" in skipped["reason"]
  assert (tmp_path / "search" / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  records = json.loads((tmp_path / "search" / "search_records.json").read_text())
  assert len(records) == 6 + 2 * 6  # population + generations x (mutations + crossovers)


def _record(name, ops, acc):
  return {"arch": nasbnn.Architecture.from_string(name), "ops": ops, "acc": acc}


def test_each_target_deploys_the_most_accurate_member_at_or_under_it():
  a = "stem4|s1:8k3g1|s2:16k3g2"
  b = "stem4|s1:8k3g1|s2:16k5g2"
  c = "stem8|s1:16k5g1*2|s2:32k5g2*3"
  # Not a Pareto front on purpose: c is cheaper than b but more accurate,
  # and a tie on accuracy goes to the cheaper member.
  front = [_record(a, 1.0, 0.5), _record(c, 2.0, 0.9), _record(b, 3.0, 0.9)]
  got = nasbnn_trainer.select_for_targets(front, (0.5, 1.0, 2.5, 10.0, 1.5))
  assert [g["target_ops_m"] for g in got] == [0.5, 1.0, 2.5, 10.0, 1.5]
  assert got[0]["record"] is None and "no front member" in got[0]["skipped"]
  assert got[1]["record"]["arch"].to_string() == a
  assert got[2]["record"]["arch"].to_string() == c
  assert got[3]["record"] is None and "2.5" in got[3]["skipped"]  # c again: deployed once
  assert got[4]["record"] is None and "1" in got[4]["skipped"]  # a again


def test_calibration_draws_differ_per_candidate_and_repeat_per_seed():
  names = ["stem4|s1:8k3g1|s2:16k3g2", "stem4|s1:8k3g1|s2:16k5g2"]
  kw = dict(num_batches=3, batch_size=5, pool_size=40)
  d1 = nasbnn_trainer.calibration_draws(names, seed=0, reshuffle=True, **kw)
  d2 = nasbnn_trainer.calibration_draws(names[::-1], seed=0, reshuffle=True, **kw)
  assert d1.shape == (2, 3, 5) and d1.dtype == np.int32
  np.testing.assert_array_equal(d1, d2[::-1])  # a candidate's draw is its own
  assert not np.array_equal(d1[0], d1[1])
  assert not np.array_equal(
    d1, nasbnn_trainer.calibration_draws(names, seed=1, reshuffle=True, **kw)
  )
  for d in d1:  # 15 distinct images of the pool (no repeats while the pool lasts)
    assert len(set(d.ravel().tolist())) == 15 and d.min() >= 0 and d.max() < 40
  fixed = nasbnn_trainer.calibration_draws(names, seed=0, reshuffle=False, **kw)
  for d in fixed:  # the pool's first three batches, in order, for every candidate
    np.testing.assert_array_equal(d, np.arange(15).reshape(3, 5))


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
    variables["params"], variables["batch_stats"], x, arch
  )
  # Independent expectation for the stem BN (all 8 channels active in the
  # biggest subnet): the average over batches of the batch mean and of the
  # unbiased batch variance of the stem conv's output, as PyTorch's BN with
  # momentum=None accumulates them.
  stem = layers.QuantConv(8, kernel_size=3, strides=2, kernel_quantizer="lsq", kernel_bits=8)
  outs = [
    np.asarray(stem.apply({"params": variables["params"]["stem_conv"]}, xb), np.float64) for xb in x
  ]
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


@pytest.mark.parametrize(
  "field, value, match",
  [
    ("deploy.ops_targets", (0.1, -1.0), "ops_targets"),
    ("deploy.ops_targets", (float("nan"),), "ops_targets"),
    ("search.calibration_batches", 0, "calibration_batches"),
    ("search.calibration_pool_batches", 0, "calibration_pool_batches"),
    ("search.calibration_batch_size", 100000, "larger than the training split"),
  ],
)
def test_bad_calibration_or_targets_are_rejected_before_compute(field, value, match):
  from bnas_jax import sharding

  c = _config()
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(UserInputError, match=match):
    nasbnn_trainer.validate(c, sharding.make_mesh(1))


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
  space = nasbnn.SearchSpace(
    name="depth",
    stem_widths=(4,),
    resolution=8,
    num_classes=10,
    stages=(nasbnn.StageSpec((1, 2), (8,), (3,), (1,), 2),),
  )
  model = nasbnn_supernet.NasBnnSupernet(space, 10)
  biggest = nasbnn.encode(space, nasbnn.biggest(space))
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
  labels = np.arange(8) % 10
  variables = model.init(jax.random.key(1), x[:1], biggest)
  state = train_state_lib.TrainState.create(  # SGD(1): new params = params - grads
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    tx=optax.sgd(1.0),
    rng=jax.random.key_data(jax.random.key(2)),
  )
  step = jax.jit(
    nasbnn_trainer.make_sandwich_step(
      model, 10, biggest, label_smoothing=0.1, teacher_mode="fwba", distill=True
    )
  )
  students = nasbnn_trainer.sandwich_archs(space, seed=0, step=1, sampling="uniform_depths")
  batch = {"image": x, "label": labels}

  def teacher_loss(params):  # label smoothing 0.1 written out
    logits, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      biggest,
      train=True,
      weight_mode="fp",
      mutable=["batch_stats"],
    )
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
  differs = [
    not np.allclose(g, e, rtol=1e-3, atol=1e-5)
    for g, e in zip(jax.tree.leaves(got[1.0]), jax.tree.leaves(expected))
  ]
  assert any(differs)  # with weight 1 the students' KD moves the shared weights


def test_recalibrated_sweep_uses_each_candidates_draw_from_the_pool():
  from bnas_jax.models import nasbnn_supernet

  space = nasbnn.SearchSpace(
    name="depth",
    stem_widths=(4,),
    resolution=8,
    num_classes=10,
    stages=(nasbnn.StageSpec((1, 2), (8,), (3,), (1,), 2),),
  )
  model = nasbnn_supernet.NasBnnSupernet(space, 10)
  archs = [nasbnn.smallest(space), nasbnn.biggest(space)]
  enc = nasbnn_trainer._stack([nasbnn.encode(space, a) for a in archs])
  pool = jax.random.normal(jax.random.key(0), (12, 8, 8, 3))
  images = jax.random.normal(jax.random.key(1), (2, 6, 8, 8, 3))
  labels = np.arange(12).reshape(2, 6) % 10
  evals = {"image": images, "label": labels, "mask": np.ones((2, 6), np.float32)}
  variables = model.init(jax.random.key(2), pool[:1], nasbnn.encode(space, archs[1]))
  recalibrate = jax.jit(nasbnn_trainer.make_recalibrate(model))

  def expected(arch, calib):  # the pre-pool sweep: fixed batches, then held-out accuracy
    stats = recalibrate(variables["params"], variables["batch_stats"], calib, arch)
    logits = model.apply(
      {"params": variables["params"], "batch_stats": stats},
      images.reshape(12, 8, 8, 3),
      arch,
      train=False,
    )
    return float(np.mean(np.argmax(logits, -1) == labels.ravel()))

  sweep = jax.jit(nasbnn_trainer.make_eval_sweep(model))
  for reshuffle in (False, True):
    draws = nasbnn_trainer.calibration_draws(
      [a.to_string() for a in archs],
      seed=0,
      num_batches=2,
      batch_size=3,
      pool_size=12,
      reshuffle=reshuffle,
    )
    got = sweep(variables["params"], variables["batch_stats"], pool, draws, evals, enc)
    for i, arch in enumerate(archs):
      one = jax.tree.map(lambda v: v[i], enc)
      calib = pool[:6].reshape(2, 3, 8, 8, 3) if not reshuffle else pool[draws[i]]
      assert float(got[i]) == pytest.approx(expected(one, calib), abs=1e-6)


def test_calibration_pool_without_augmentation_is_the_plain_training_batches():
  from bnas_jax import input_pipeline, sharding

  c = _config()
  c.search.update(
    dict(calibration_augment=False, calibration_pool_batches=2, calibration_batch_size=16)
  )
  c.space.resolution = 16
  mesh = sharding.make_mesh(1)
  pool = np.asarray(nasbnn_trainer.Calibration(c, mesh).pool)
  it = input_pipeline.make_train_iterator(c.data, "train", 16, c.seed + 1, augment=False)
  plain = np.concatenate([next(it)["image"] for _ in range(2)])
  it.close()
  np.testing.assert_array_equal(pool, plain)
  c.search.calibration_augment = True
  augmented = np.asarray(nasbnn_trainer.Calibration(c, mesh).pool)
  assert augmented.shape == plain.shape and not np.array_equal(augmented, plain)
