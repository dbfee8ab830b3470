"""NAS-BNN end to end: supernet training, evolutionary search, deployment.

`train_and_evaluate(config, workdir)` runs, resuming each phase from its own
state in `workdir`:

1. Supernet training (NAS-BNN Sec. 3.3, Eq. 4): per step, the sandwich rule on
   one batch: the biggest subnet as Bi-Teacher (FP weights, binary activations,
   CE against the labels: plain in Eq. 4, smoothed by 0.1 in the public code;
   `supernet.teacher_label_smoothing`), then the smallest and two random subnets trained on the
   teacher's detached soft labels (KD); one optimizer step for the sum. Every
   process samples the same subnets (host RNG seeded by (seed, step)). The
   digits preset ramps the students' losses in (`student_warmup_epochs`).
2. Search (Sec. 4.1.2's evolutionary search): each candidate's BN statistics
   are recalibrated on training batches (as the public code's `search.py`
   does: the paper states no protocol; `config.search.calibration_*`, see
   `calibration_draws`), then it is evaluated on the held-out split; a whole
   generation runs as one jit-compiled sweep. Evolution with the paper's
   defaults, state saved every generation (`search/evolution.py`).
3. Deployment (Sec. 3.4's two pipelines) of a family, one subnet per OPs
   target (`config.deploy.ops_targets`; Table 2's A-F in the paper presets):
   each target takes the most accurate front member at or under it
   (`select_for_targets`). Pipeline 1 extracts it into a standalone network
   (parameters sliced, BN recalibrated as in the search), tests it and writes
   its compact form (+-1 int8 weights, BN folded: `models/binary_export.py`)
   to `deploy/arch{k}/binary_export.npz`; pipeline 2 finetunes it (plain CE,
   Adam, cosine; Table 2's "#100" rows: 100 epochs; on the whole training set,
   held-out split included, as the public code's `train_single.py`) and
   reports before/after test accuracy (Table 5's effect).
"""

import functools
import os
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from bnas_jax import atomic_files
from bnas_jax import input_pipeline
from bnas_jax import optimizers
from bnas_jax import preemption
from bnas_jax import reporting
from bnas_jax import sharding
from bnas_jax import train_state as train_state_lib
from bnas_jax import training_loop
from bnas_jax.errors import UserInputError
from bnas_jax.models import binary_export
from bnas_jax.models import nasbnn_subnet
from bnas_jax.models import nasbnn_supernet
from bnas_jax.search import evolution
from bnas_jax.search import random_baseline
from bnas_jax.search_spaces import nasbnn
from bnas_jax.trainers import supervised

TEACHER_MODES = {"fwba": ("fp", "binary"), "fwfa": ("fp", "fp"), "bwba": ("binary", "binary")}


def _stack(encodings: list[dict]) -> dict:
  return {k: np.stack([e[k] for e in encodings]) for k in encodings[0]}


def sandwich_archs(space: nasbnn.SearchSpace, seed: int, step: int, sampling: str) -> dict:
  """The students of a step: smallest + two random, identical on every process."""
  rng = np.random.default_rng([seed, step])
  students = [nasbnn.smallest(space)] + [
    nasbnn.sample_uniform(space, rng, distribution=sampling) for _ in range(2)
  ]
  return _stack([nasbnn.encode(space, a) for a in students])


def student_weight(step: int, warmup_steps: int) -> np.float32:
  """Weight of the students' KD losses at `step` (1-based): 1 in the paper.

  `warmup_steps > 0` (a digits-preset deviation, see configs/nasbnn.py) ramps
  it linearly from 0 at step 1 to 1 after `warmup_steps`, so the Bi-Teacher
  learns from the labels before its soft labels are distilled.
  """
  if warmup_steps <= 0:
    return np.float32(1.0)
  return np.float32(min(1.0, (step - 1) / warmup_steps))


def make_sandwich_step(
  model,
  num_classes: int,
  teacher_arch: dict,
  *,
  label_smoothing: float,
  teacher_mode: str,
  distill: bool,
):
  """The jitted-ready sandwich step (Eq. 4): teacher CE + students' KD, one update.

  `step(state, batch, students, s_weight)`: `s_weight` scales the students'
  losses (1 in the paper; see `student_weight`).
  """
  t_weights, t_acts = TEACHER_MODES[teacher_mode]
  apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])

  def teacher_loss(params, batch_stats, batch):
    t_logits, upd = apply(
      {"params": params, "batch_stats": batch_stats},
      batch["image"],
      teacher_arch,
      weight_mode=t_weights,
      activation_mode=t_acts,
    )
    t_loss = train_state_lib.cross_entropy(
      t_logits, batch["label"], num_classes, label_smoothing
    ).mean()
    return t_loss, (t_logits, upd["batch_stats"])

  def student_loss(params, stats, batch, soft, arch):
    logits, upd = apply({"params": params, "batch_stats": stats}, batch["image"], arch)
    if distill:  # KLLossSoft with T = 1: CE against the teacher's soft labels
      loss = -jnp.mean(jnp.sum(soft * jax.nn.log_softmax(logits), axis=-1))
    else:
      loss = train_state_lib.cross_entropy(logits, batch["label"], num_classes).mean()
    return loss, upd["batch_stats"]

  def loss_fn(params, batch_stats, batch, students, s_weight):
    t_loss, (t_logits, stats) = teacher_loss(params, batch_stats, batch)
    soft = jax.lax.stop_gradient(jax.nn.softmax(t_logits))

    def student(stats, arch):
      loss, stats = student_loss(params, stats, batch, soft, arch)
      return stats, loss

    # The students share shapes (only their traced encodings differ): one
    # scanned body instead of three unrolled copies halves the program.
    stats, s_losses = jax.lax.scan(student, stats, students)
    s_loss = jnp.sum(s_losses)
    teacher_acc = jnp.mean(jnp.argmax(t_logits, -1) == batch["label"])
    return t_loss + s_weight * s_loss, (stats, t_loss, s_loss, teacher_acc)

  def step(state, batch, students, s_weight=np.float32(1.0)):
    (loss, (stats, t_loss, s_loss, t_acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.batch_stats, batch, students, s_weight
    )
    metrics = {
      "loss": loss,
      "teacher_loss": t_loss,
      "student_loss": s_loss,
      "teacher_accuracy": t_acc,
      "grad_norm": optax.tree.norm(grads),
    }
    return state.apply_gradients(grads, stats), metrics

  return step


def _supernet(config, space, num_classes):
  """The family's supernet (`nasbnn_subnet.NasBnnFamily.search_network`)."""
  return nasbnn_subnet.NasBnnFamily(config, space).search_network(num_classes)


def validate(config: Any, mesh) -> tuple[nasbnn.SearchSpace, input_pipeline.DatasetInfo]:
  """Checks the config before any compute; returns the space and dataset info."""
  space = nasbnn_subnet.space_from_config(config)
  info = input_pipeline.get_dataset_info(config.data)
  if info.image_shape[0] != space.resolution:
    raise UserInputError(
      f"config.data.image_size={info.image_shape[0]} differs from config.space.resolution="
      f"{space.resolution}; the supernet is built for the space's resolution."
    )
  for name in ("batch_size", "eval_batch_size"):
    sharding.check_batch_size(config[name], mesh, f"config.{name}")
  _validate_calibration(config.search, mesh, info.num_examples["train"])
  _validate_targets(config.deploy.ops_targets)
  if not info.num_examples.get("holdout"):
    raise UserInputError(
      "NAS-BNN searches on a held-out split of the training data: set "
      "config.data.holdout_per_class or config.data.holdout_fraction."
    )
  if config.supernet.teacher not in TEACHER_MODES:
    raise UserInputError(
      f"config.supernet.teacher={config.supernet.teacher!r} is not one of {sorted(TEACHER_MODES)}."
    )
  evolution.validate_config(_evolution_config(config, space, info.num_classes))
  return space, info


def _validate_calibration(s, mesh, num_train: int) -> None:
  for name in ("calibration_batches", "calibration_pool_batches"):
    if not isinstance(s[name], int) or isinstance(s[name], bool) or s[name] < 1:
      raise UserInputError(f"config.search.{name}={s[name]!r} must be a positive integer.")
  sharding.check_batch_size(s.calibration_batch_size, mesh, "config.search.calibration_batch_size")
  if s.calibration_batch_size > num_train:
    raise UserInputError(
      f"config.search.calibration_batch_size={s.calibration_batch_size} is larger than the "
      f"training split ({num_train} images) it is drawn from; lower it."
    )


def _validate_targets(targets) -> None:
  if not isinstance(targets, (tuple, list)) or not all(
    isinstance(t, (int, float)) and not isinstance(t, bool) and np.isfinite(t) and t > 0
    for t in targets
  ):
    raise UserInputError(
      f"config.deploy.ops_targets={targets!r} must be a tuple of positive OPs budgets in "
      f"millions, e.g. (0.05, 0.1, 0.27); () deploys nothing."
    )


def train_supernet(config, space, info, mesh, workdir: str) -> Any:
  """Phase 1: sandwich training of the supernet; returns the final train state."""
  model = _supernet(config, space, info.num_classes)
  steps_per_epoch = input_pipeline.num_batches_per_epoch(config.data, "train", config.batch_size)
  total_steps = config.supernet.get("num_train_steps") or int(
    config.supernet.num_epochs * steps_per_epoch
  )
  biggest = nasbnn.encode(space, nasbnn.biggest(space))
  x0 = jnp.zeros((1, *info.image_shape))

  state, ckpt, train_iter, _ = training_loop.start_phase(
    config,
    workdir,
    mesh,
    lambda key: model.init(key, x0, biggest),
    config.supernet.optimizer,
    total_steps,
    steps_per_epoch,
    data_config=config.data,
    batch_size=config.batch_size,
  )
  step_fn = jax.jit(
    make_sandwich_step(
      model,
      info.num_classes,
      biggest,
      label_smoothing=config.supernet.teacher_label_smoothing,
      teacher_mode=config.supernet.teacher,
      distill=config.supernet.distill,
    ),
    donate_argnums=(0,),
  )
  reporter = reporting.Reporter(
    workdir,
    total_steps,
    int(state.step),
    progress_bar=config.get("progress_bar", True),
    desc="supernet",
  )
  warmup_steps = int(config.supernet.student_warmup_epochs * steps_per_epoch)
  if int(state.step) < total_steps and jax.process_index() == 0:
    print("compiling the sandwich step — first run only, cached for the next", flush=True)
  state = training_loop.run_steps(
    state=state,
    train_step=step_fn,
    train_iter=train_iter,
    mesh=mesh,
    ckpt=ckpt,
    reporter=reporter,
    total_steps=total_steps,
    **training_loop.intervals(config, steps_per_epoch),
    phase_name="supernet",
    step_inputs=lambda step: (
      sandwich_archs(space, config.seed, step, config.supernet.sampling),
      student_weight(step, warmup_steps),
    ),
    schedule=optimizers.make_schedule(config.supernet.optimizer, total_steps, steps_per_epoch),
  )
  reporter.close()
  ckpt.close()
  return state


def _stacked_batches(batches: list[dict], mesh) -> dict:
  """Stacks host batches to (num_batches, batch, ...) sharded over the batch axis."""
  out = {}
  for k in batches[0]:
    v = np.stack([b[k] for b in batches])
    spec = PartitionSpec(None, sharding.DATA_AXIS)
    out[k] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), v)
  return out


def make_recalibrate(model):
  """BN recalibration of one subnet: mean of per-batch moments.

  Every BN's running mean/variance becomes the average over the calibration
  batches of the batch mean and unbiased variance, with the other parameters
  untouched: the public code's `search.py`/`test.py` (BatchNorm2d with
  momentum=None, reset, then forward passes in train mode). The paper only
  says subnets inherit the supernet's weights (Sec. 3.4, 4.1.2).
  """

  def recalibrate(params, batch_stats, calib_images, arch):
    def moments(x):
      _, out = model.apply(
        {"params": params, "batch_stats": batch_stats},
        x,
        arch,
        train=True,
        mutable=["batch_stats", "batch_moments"],
      )
      return out["batch_moments"]

    per_batch = jax.lax.map(moments, calib_images)
    return jax.tree.map(
      lambda m: jnp.mean(m[0], axis=0), per_batch, is_leaf=lambda t: isinstance(t, tuple)
    )

  return recalibrate


def calibration_draws(
  arch_strings: Sequence[str],
  *,
  seed: int,
  num_batches: int,
  batch_size: int,
  pool_size: int,
  reshuffle: bool,
) -> np.ndarray:
  """Indices into the calibration pool: int32 (len(arch_strings), num_batches, batch_size).

  `reshuffle` (the public code: a fresh shuffled loader per candidate) gives
  every candidate its own draw from the pool, seeded by (seed, CRC-32 of the
  architecture string): identical on every process, on every call and after
  a resume, and the same candidate always gets the same batches. Without it
  every candidate uses the pool's first `num_batches` batches in order (the
  behaviour before the switch existed).
  """
  n = num_batches * batch_size
  out = np.empty((len(arch_strings), n), np.int32)
  for i, name in enumerate(arch_strings):
    if not reshuffle:
      out[i] = np.arange(n) % pool_size
      continue
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    perms = [rng.permutation(pool_size) for _ in range(-(-n // pool_size))]
    out[i] = np.concatenate(perms)[:n]
  return out.reshape(len(arch_strings), num_batches, batch_size)


def _gather_calibration(pool, draw, mesh):
  images = jnp.take(pool, draw, axis=0)  # (num_batches, batch_size, H, W, C)
  if mesh is not None:
    images = jax.lax.with_sharding_constraint(
      images, NamedSharding(mesh, PartitionSpec(None, sharding.DATA_AXIS))
    )
  return images


def make_recalibrate_from_pool(model, mesh=None):
  """(params, stats, pool, draw, arch) -> recalibrated stats; `draw` from `calibration_draws`."""
  recalibrate = make_recalibrate(model)

  def run(params, batch_stats, pool, draw, arch):
    return recalibrate(params, batch_stats, _gather_calibration(pool, draw, mesh), arch)

  return run


def make_eval_sweep(model, mesh=None):
  """(params, stats, pool, draws, eval batches, archs) -> accuracy of every arch, one program.

  Candidate i is recalibrated on `pool[draws[i]]` (a per-candidate gather
  inside the compiled program), then evaluated.
  """
  recalibrate = make_recalibrate_from_pool(model, mesh)

  def sweep(params, batch_stats, pool, draws, eval_batches, archs):
    def one(inputs):
      arch, draw = inputs
      stats = recalibrate(params, batch_stats, pool, draw, arch)

      def correct(batch):
        logits = model.apply(
          {"params": params, "batch_stats": stats}, batch["image"], arch, train=False
        )
        return jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * batch["mask"])

      return jnp.sum(jax.lax.map(correct, eval_batches)) / jnp.sum(eval_batches["mask"])

    return jax.lax.map(one, (archs, draws))

  return sweep


class Calibration:
  """The calibration pool on device and each candidate's draw from it.

  The pool is `pool_batches` batches of training images, read once
  (augmented when `config.search.calibration_augment`, as the public code's
  RandomResizedCrop + flip loader); each candidate recalibrates on
  `calibration_batches` batches of `calibration_batch_size` drawn from it
  (`calibration_draws`). The public code draws fresh images from the whole
  training set per candidate; a pool several times the draw approximates
  that inside one compiled sweep.
  """

  def __init__(self, config, mesh):
    s = config.search
    self.num_batches = s.calibration_batches
    self.batch_size = s.calibration_batch_size
    self.reshuffle = bool(s.calibration_reshuffle)
    self.seed = config.seed
    it = input_pipeline.make_train_iterator(
      config.data,
      "train",
      self.batch_size,
      config.seed + 1,
      augment=bool(s.calibration_augment),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    batches = [next(it) for _ in range(s.calibration_pool_batches)]
    it.close()
    # (pool, H, W, C), the pool's images sharded over the data axis.
    images = np.concatenate([b["image"] for b in batches])
    self.pool = jax.make_array_from_process_local_data(
      NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS)), images
    )
    self.pool_size = self.pool.shape[0]

  def draws(self, archs: Sequence[nasbnn.Architecture]) -> np.ndarray:
    return calibration_draws(
      [a.to_string() for a in archs],
      seed=self.seed,
      num_batches=self.num_batches,
      batch_size=self.batch_size,
      pool_size=self.pool_size,
      reshuffle=self.reshuffle,
    )


def _evolution_config(config, space, num_classes) -> evolution.EvolutionConfig:
  s = config.search
  small = nasbnn_subnet.subnet_cost(space, nasbnn.smallest(space), num_classes)["ops"] / 1e6
  big = nasbnn_subnet.subnet_cost(space, nasbnn.biggest(space), num_classes)["ops"] / 1e6
  lo = s.ops_min if s.ops_min is not None else small
  hi = s.ops_max if s.ops_max is not None else big
  step = s.bucket_step if s.bucket_step is not None else (hi - lo) / 20
  return evolution.EvolutionConfig(
    population_size=s.population_size,
    generations=s.generations,
    num_mutations=s.num_mutations,
    num_crossovers=s.num_crossovers,
    mutation_prob=s.mutation_prob,
    ops_min=lo,
    ops_max=hi,
    bucket_step=step,
    seed=config.seed,
    max_tries=s.max_tries,
    init_sampling=s.get("init_sampling", "per_bucket"),
  )


def _eval_batches(config, split: str, mesh) -> dict:
  return _stacked_batches(
    list(
      input_pipeline.make_eval_batches(
        config.data,
        split,
        config.eval_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        max_examples=config.get("max_eval_examples") or None,
      )
    ),
    mesh,
  )


def make_holdout_evaluator(config, space, info, mesh, state, calib: Calibration):
  """archs -> held-out accuracies: recalibrated and evaluated in jit-swept chunks."""
  model = _supernet(config, space, info.num_classes)
  holdout = _eval_batches(config, "holdout", mesh)
  sweep = jax.jit(make_eval_sweep(model, mesh))
  chunk = config.search.sweep_chunk

  def evaluate(archs):
    accs = []
    for i in range(0, len(archs), chunk):
      part = list(archs[i : i + chunk])
      n = len(part)
      part += [part[-1]] * (chunk - n)  # fixed shape: one compiled sweep
      out = sweep(
        state.params,
        state.batch_stats,
        calib.pool,
        calib.draws(part),
        holdout,
        _stack([nasbnn.encode(space, a) for a in part]),
      )
      accs.extend(float(a) for a in np.asarray(jax.device_get(out))[:n])
    return accs

  return evaluate


def search(config, space, info, evaluate, workdir: str) -> evolution.SearchResult:
  """Phase 2: evolutionary search, `evaluate` from `make_holdout_evaluator`."""
  cost = lambda arch: nasbnn_subnet.subnet_cost(space, arch, info.num_classes)["ops"] / 1e6
  os.makedirs(workdir, exist_ok=True)
  state_path = os.path.join(workdir, "search_state.json")

  def stop_if_requested(generation):  # SIGTERM: the generation's state is saved
    if preemption.should_stop():
      raise preemption.Preempted(generation, state_path)

  result = evolution.run_evolution(
    space,
    _evolution_config(config, space, info.num_classes),
    cost_fn=cost,
    evaluate_fn=evaluate,
    state_path=state_path,
    save_state=jax.process_index() == 0,
    log=print if jax.process_index() == 0 else lambda _: None,
    after_generation=stop_if_requested,
  )
  if jax.process_index() == 0:
    evolution.write_outputs(result, workdir)
  return result


def select_for_targets(front: Sequence[dict], targets: Sequence[float]) -> list[dict]:
  """One front member per OPs target (Table 2's family): the most accurate at or under it.

  Ties in accuracy go to the cheaper subnet. Returns, per target in the given
  order, {"target_ops_m", "record"} with `record` None and a `skipped` reason
  when no member is at or under the target, or when the chosen member was
  already chosen for an earlier target (deployed once).
  """
  out, taken = [], {}
  for t in targets:
    fits = [r for r in front if r["ops"] <= t]
    if not fits:
      out.append(
        {"target_ops_m": t, "record": None, "skipped": f"no front member at or under {t:g} M OPs"}
      )
      continue
    best = max(fits, key=lambda r: (r["acc"], -r["ops"]))
    key = best["arch"].to_string()
    if key in taken:
      out.append(
        {
          "target_ops_m": t,
          "record": None,
          "skipped": f"same subnet as the {taken[key]:g} M OPs target",
        }
      )
      continue
    taken[key] = t
    out.append({"target_ops_m": t, "record": best})
  return out


def random_arch_at_ops(
  space: nasbnn.SearchSpace, ops_m: float, cost, seed: int, num_samples: int = 2000
) -> nasbnn.Architecture:
  """A uniform random subnet (`uniform_depths`) with OPs the closest to `ops_m` at or under it.

  `search/random_baseline.py` with `num_samples` seeded draws (identical on
  every process); stops early within 2% under the target. When no draw is at
  or under it (a target near the smallest subnet), the smallest subnet.
  """
  rng = np.random.default_rng([seed, 0x5EED, int(ops_m * 1e6)])
  sample = lambda r: nasbnn.sample_uniform(space, r, distribution="uniform_depths")
  arch, got = random_baseline.sample_at_cost(sample, cost, ops_m, rng, num_samples=num_samples)
  return arch if got <= ops_m else nasbnn.smallest(space)


def finetune_phase(
  config: Any, space: nasbnn.SearchSpace, arch: nasbnn.Architecture, name: str
) -> supervised.Phase:
  """Pipeline 2 of a deployed subnet: its network finetuned with `config.deploy`'s recipe.

  No label smoothing; with `deploy.finetune_with_holdout` on the whole training set,
  held-out split included, as the public code does (Table 2's "#100").
  """
  d = config.deploy
  return supervised.Phase(
    name=name,
    model=nasbnn_subnet.model_config(space, arch, config.model),
    optimizer=d.optimizer.copy_and_resolve_references(),
    num_epochs=d.finetune_epochs,
    num_train_steps=d.get("finetune_steps", 0),
    batch_size=config.batch_size,
    label_smoothing=0.0,
    binary_weights=True,
    fold_holdout=bool(d.get("finetune_with_holdout")),
  )


def deploy(
  config, space, info, mesh, state, result, calib: Calibration, evaluate, workdir: str
) -> dict:
  """Phase 3 for a family: per OPs target, pipeline 1 (extract + test) and 2 (finetune + test).

  Returns {"deployed": [...], "skipped": [...]}; with
  `config.deploy.random_baseline` each deployed entry also holds
  "random_baseline": a random subnet at or under the same OPs, put through
  the same evaluation and both pipelines.
  """
  model = _supernet(config, space, info.num_classes)
  recalibrate = jax.jit(make_recalibrate_from_pool(model, mesh))
  cost = lambda arch: nasbnn_subnet.subnet_cost(space, arch, info.num_classes)["ops"] / 1e6

  def pipelines(arch, name):
    draw = calib.draws([arch])[0]
    stats = recalibrate(
      state.params, state.batch_stats, calib.pool, draw, nasbnn.encode(space, arch)
    )
    variables = nasbnn_supernet.extract_subnet_variables(
      space,
      arch,
      {"params": state.params, "batch_stats": stats},
      bi_transformation=config.supernet.bi_transformation,
    )
    finetune = finetune_phase(config, space, arch, f"finetune_{name}")
    sub_dir = os.path.join(workdir, name)
    before = supervised.evaluate_variables(config, finetune, variables, mesh, info, "test")
    before = before["accuracy"]
    compact = binary_export.export(
      finetune.model.blocks, variables, kernel_norm=finetune.model.kernel_norm == "channelwise"
    )
    packed_bytes = None  # the bit-packed form `python -m bnas_jax.deploy` runs
    if jax.process_index() == 0:
      binary_export.save(os.path.join(sub_dir, "binary_export.npz"), compact)
      packed_bytes = binary_export.save_packed(
        os.path.join(sub_dir, binary_export.PACKED_FILE), compact, image_size=config.data.image_size
      )
    after = supervised.train_phase(config, finetune, sub_dir, init_variables=variables)
    return {
      "arch": arch.to_string(),
      "ops_m": cost(arch),
      "test_accuracy_pipeline1": before,
      "test_accuracy_pipeline2": after["test_accuracy"],
      "export_bytes": binary_export.size_bytes(compact)["total"],
      "packed_bytes": packed_bytes,
    }

  selection = select_for_targets(result.front, config.deploy.ops_targets)
  deployed, skipped = [], []
  for sel in selection:
    if sel["record"] is None:
      skipped.append({"target_ops_m": sel["target_ops_m"], "reason": sel["skipped"]})
      print(f"[deploy] target {sel['target_ops_m']:g} M OPs skipped: {sel['skipped']}")
  chosen = [sel for sel in selection if sel["record"] is not None]
  for k, sel in enumerate(chosen):
    record = sel["record"]
    entry = {
      "target_ops_m": sel["target_ops_m"],
      **pipelines(record["arch"], f"arch{k}"),
      "holdout_accuracy": record["acc"],
    }
    print(
      f"[deploy] target {sel['target_ops_m']:g}: {entry['arch']}: {entry['ops_m']:.4g} M OPs, "
      f"holdout {entry['holdout_accuracy']:.4f}, test {entry['test_accuracy_pipeline1']:.4f} "
      f"pipeline 1 -> {entry['test_accuracy_pipeline2']:.4f} pipeline 2"
    )
    if config.deploy.get("random_baseline"):
      arch = random_arch_at_ops(space, record["ops"], cost, config.seed + k)
      base = pipelines(arch, f"random{k}")
      base["holdout_accuracy"] = evaluate([arch])[0]
      entry["random_baseline"] = base
      print(
        f"[deploy]   random at the same OPs: {base['arch']}: {base['ops_m']:.4g} M OPs, "
        f"holdout {base['holdout_accuracy']:.4f}, test {base['test_accuracy_pipeline1']:.4f} "
        f"-> {base['test_accuracy_pipeline2']:.4f}"
      )
    deployed.append(entry)
  return {"deployed": deployed, "skipped": skipped}


def summary_lines(report: dict) -> list[str]:
  """The printed summary of the deployed family (one line per subnet)."""
  lines = [
    "Deployed subnets (one per OPs target; accuracy: held-out after search, test after "
    "pipeline 1 / pipeline 2):",
    f"  {'target':>8} {'OPs (M)':>9} {'held-out':>8} {'pipe 1':>7} {'pipe 2':>7} "
    f"{'export':>9}  architecture",
  ]
  for d in report["deployed"]:
    lines.append(
      f"  {d['target_ops_m']:8.4g} {d['ops_m']:9.4f} {d['holdout_accuracy']:8.4f} "
      f"{d['test_accuracy_pipeline1']:7.4f} {d['test_accuracy_pipeline2']:7.4f} "
      f"{int(d['export_bytes']):9,d}  {d['arch']}"
    )
    if "random_baseline" in d:
      b = d["random_baseline"]
      lines.append(
        f"  {'random':>8} {b['ops_m']:9.4f} {b['holdout_accuracy']:8.4f} "
        f"{b['test_accuracy_pipeline1']:7.4f} {b['test_accuracy_pipeline2']:7.4f} "
        f"{int(b['export_bytes']):9,d}  {b['arch']}"
      )
  for s in report["skipped"]:
    lines.append(f"  {s['target_ops_m']:8.4g}  skipped: {s['reason']}")
  return lines


def train_and_evaluate(config: Any, workdir: str) -> dict:
  """Supernet -> search -> deployment; writes `report.json` and prints the front and family."""
  mesh = sharding.make_mesh(config.get("num_devices", 0))
  space, info = validate(config, mesh)
  state = train_supernet(config, space, info, mesh, os.path.join(workdir, "supernet"))
  # One calibration pool serves the search and the deployed subnets.
  calib = Calibration(config, mesh)
  evaluate = make_holdout_evaluator(config, space, info, mesh, state, calib)
  result = search(config, space, info, evaluate, os.path.join(workdir, "search"))
  print("Pareto front (OPs in M, held-out accuracy):")
  for r in result.front:
    print(f"  {r['ops']:10.4f}  {r['acc']:.4f}  {r['arch'].to_string()}")
  family = deploy(
    config, space, info, mesh, state, result, calib, evaluate, os.path.join(workdir, "deploy")
  )
  report = {
    "front": [
      {"arch": r["arch"].to_string(), "ops_m": r["ops"], "holdout_accuracy": r["acc"]}
      for r in result.front
    ],
    **family,
  }
  if jax.process_index() == 0:
    print("\n".join(summary_lines(report)))
    atomic_files.write_json(os.path.join(workdir, "report.json"), report, indent=2)
  return report
