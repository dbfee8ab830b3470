"""NAS-BNN end to end: supernet training, evolutionary search, deployment.

`train_and_evaluate(config, workdir)` runs, resuming each phase from its own
state in `workdir`:

1. Supernet training (NAS-BNN Sec. 3.3, Eq. 4): per step, the sandwich rule on
   one batch: the biggest subnet as Bi-Teacher (FP weights, binary activations,
   label-smoothed CE), then the smallest and two random subnets trained on the
   teacher's detached soft labels (KD); one optimizer step for the sum. Every
   process samples the same subnets (host RNG seeded by (seed, step)). The
   digits preset ramps the students' losses in (`student_warmup_epochs`).
2. Search (Sec. 3.4): each candidate's BN statistics are recalibrated on a few
   training batches, then it is evaluated on the held-out split; a whole
   generation runs as one jit-compiled sweep. Evolution with the paper's
   defaults, state saved every generation (`search/evolution.py`).
3. Deployment: pipeline 1 extracts chosen subnets into standalone networks
   (parameters sliced, BN recalibrated), tests them and writes their compact
   form (+-1 int8 weights, BN folded: `models/binary_export.py`) to
   `deploy/arch{k}/binary_export.npz`; pipeline 2 finetunes
   them (plain CE, Adam 1e-5 cosine, as the public code's README) and reports
   before/after accuracy (Table 5's effect).
"""

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

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
from bnas_jax.search_spaces import nasbnn
from bnas_jax.trainers import supervised

TEACHER_MODES = {"fwba": ("fp", "binary"), "fwfa": ("fp", "fp"), "bwba": ("binary", "binary")}


def _stack(encodings: list[dict]) -> dict:
  return {k: np.stack([e[k] for e in encodings]) for k in encodings[0]}


def sandwich_archs(space: nasbnn.SearchSpace, seed: int, step: int, sampling: str) -> dict:
  """The students of a step: smallest + two random, identical on every process."""
  rng = np.random.default_rng([seed, step])
  students = [nasbnn.smallest(space)] + [
      nasbnn.sample_uniform(space, rng, distribution=sampling) for _ in range(2)]
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


def make_sandwich_step(model, num_classes: int, teacher_arch: dict, *, label_smoothing: float,
                       teacher_mode: str, distill: bool):
  """The jitted-ready sandwich step (Eq. 4): teacher CE + students' KD, one update.

  `step(state, batch, students, s_weight)`: `s_weight` scales the students'
  losses (1 in the paper; see `student_weight`).
  """
  t_weights, t_acts = TEACHER_MODES[teacher_mode]

  def loss_fn(params, batch_stats, batch, students, s_weight):
    x, labels = batch["image"], batch["label"]
    apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    t_logits, upd = apply({"params": params, "batch_stats": batch_stats}, x, teacher_arch,
                          weight_mode=t_weights, activation_mode=t_acts)
    t_loss = train_state_lib.cross_entropy(t_logits, labels, num_classes, label_smoothing).mean()
    soft = jax.lax.stop_gradient(jax.nn.softmax(t_logits))

    def student(stats, arch):
      logits, upd = apply({"params": params, "batch_stats": stats}, x, arch)
      if distill:  # KLLossSoft with T = 1: CE against the teacher's soft labels
        loss = -jnp.mean(jnp.sum(soft * jax.nn.log_softmax(logits), axis=-1))
      else:
        loss = train_state_lib.cross_entropy(logits, labels, num_classes).mean()
      return upd["batch_stats"], loss

    # The students share shapes (only their traced encodings differ): one
    # scanned body instead of three unrolled copies halves the program.
    stats, s_losses = jax.lax.scan(student, upd["batch_stats"], students)
    s_loss = jnp.sum(s_losses)
    teacher_acc = jnp.mean(jnp.argmax(t_logits, -1) == labels)
    return t_loss + s_weight * s_loss, (stats, t_loss, s_loss, teacher_acc)

  def step(state, batch, students, s_weight=np.float32(1.0)):
    (loss, (stats, t_loss, s_loss, t_acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, students, s_weight)
    metrics = {"loss": loss, "teacher_loss": t_loss, "student_loss": s_loss,
               "teacher_accuracy": t_acc, "grad_norm": optax.tree.norm(grads)}
    return state.apply_gradients(grads, stats), metrics

  return step


def _supernet(config, space, num_classes):
  return nasbnn_supernet.NasBnnSupernet(space, num_classes,
                                        bi_transformation=config.supernet.bi_transformation,
                                        weight_norm=config.supernet.weight_norm,
                                        zero_init_classifier=config.supernet.zero_init_classifier)


def validate(config: Any, mesh) -> tuple[nasbnn.SearchSpace, input_pipeline.DatasetInfo]:
  """Checks the config before any compute; returns the space and dataset info."""
  space = nasbnn_subnet.space_from_config(config)
  info = input_pipeline.get_dataset_info(config.data)
  if info.image_shape[0] != space.resolution:
    raise UserInputError(
        f"config.data.image_size={info.image_shape[0]} differs from config.space.resolution="
        f"{space.resolution}; the supernet is built for the space's resolution.")
  for name in ("batch_size", "eval_batch_size"):
    sharding.check_batch_size(config[name], mesh, f"config.{name}")
  if not info.num_examples.get("holdout"):
    raise UserInputError(
        "NAS-BNN searches on a held-out split of the training data: set "
        "config.data.holdout_per_class or config.data.holdout_fraction.")
  if config.supernet.teacher not in TEACHER_MODES:
    raise UserInputError(f"config.supernet.teacher={config.supernet.teacher!r} is not one of "
                         f"{sorted(TEACHER_MODES)}.")
  evolution.validate_config(_evolution_config(config, space, info.num_classes))
  return space, info


def train_supernet(config, space, info, mesh, workdir: str) -> Any:
  """Phase 1: sandwich training of the supernet; returns the final train state."""
  model = _supernet(config, space, info.num_classes)
  steps_per_epoch = input_pipeline.num_batches_per_epoch(config.data, "train", config.batch_size)
  total_steps = config.supernet.get("num_train_steps") or int(
      config.supernet.num_epochs * steps_per_epoch)
  biggest = nasbnn.encode(space, nasbnn.biggest(space))
  x0 = jnp.zeros((1, *info.image_shape))

  state, ckpt, train_iter, _ = training_loop.start_phase(
      config, workdir, mesh, lambda key: model.init(key, x0, biggest), config.supernet.optimizer,
      total_steps, steps_per_epoch)
  step_fn = jax.jit(make_sandwich_step(
      model, info.num_classes, biggest, label_smoothing=config.supernet.label_smoothing,
      teacher_mode=config.supernet.teacher, distill=config.supernet.distill), donate_argnums=(0,))
  reporter = reporting.Reporter(workdir, total_steps, int(state.step),
                                progress_bar=config.get("progress_bar", True), desc="supernet")
  warmup_steps = int(config.supernet.student_warmup_epochs * steps_per_epoch)
  state = training_loop.run_steps(
      state=state, train_step=step_fn, train_iter=train_iter, mesh=mesh, ckpt=ckpt,
      reporter=reporter, total_steps=total_steps,
      **training_loop.intervals(config, steps_per_epoch),
      phase_name="supernet",
      step_inputs=lambda step: (
          sandwich_archs(space, config.seed, step, config.supernet.sampling),
          student_weight(step, warmup_steps)),
      schedule=optimizers.make_schedule(config.supernet.optimizer, total_steps, steps_per_epoch))
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
  """BN recalibration of one subnet (Sec. 3.4): mean of per-batch moments.

  Every BN's running mean/variance becomes the average over the calibration
  batches of the batch mean and unbiased variance (PyTorch's momentum=None,
  as the reference), with the other parameters untouched.
  """

  def recalibrate(params, batch_stats, calib_images, arch):
    def moments(x):
      _, out = model.apply({"params": params, "batch_stats": batch_stats}, x, arch, train=True,
                           mutable=["batch_stats", "batch_moments"])
      return out["batch_moments"]

    per_batch = jax.lax.map(moments, calib_images)
    return jax.tree.map(lambda m: jnp.mean(m[0], axis=0), per_batch,
                        is_leaf=lambda t: isinstance(t, tuple))

  return recalibrate


def make_eval_sweep(model):
  """(params, stats, calib, eval batches, archs) -> accuracy of every arch, one program."""
  recalibrate = make_recalibrate(model)

  def sweep(params, batch_stats, calib_images, eval_batches, archs):
    def one(arch):
      stats = recalibrate(params, batch_stats, calib_images, arch)

      def correct(batch):
        logits = model.apply({"params": params, "batch_stats": stats}, batch["image"], arch,
                             train=False)
        return jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * batch["mask"])

      return jnp.sum(jax.lax.map(correct, eval_batches)) / jnp.sum(eval_batches["mask"])

    return jax.lax.map(one, archs)

  return sweep


def _evolution_config(config, space, num_classes) -> evolution.EvolutionConfig:
  s = config.search
  small = nasbnn_subnet.subnet_cost(space, nasbnn.smallest(space), num_classes)["ops"] / 1e6
  big = nasbnn_subnet.subnet_cost(space, nasbnn.biggest(space), num_classes)["ops"] / 1e6
  lo = s.ops_min if s.ops_min is not None else small
  hi = s.ops_max if s.ops_max is not None else big
  step = s.bucket_step if s.bucket_step is not None else (hi - lo) / 20
  return evolution.EvolutionConfig(
      population_size=s.population_size, generations=s.generations,
      num_mutations=s.num_mutations, num_crossovers=s.num_crossovers,
      mutation_prob=s.mutation_prob, ops_min=lo, ops_max=hi, bucket_step=step, seed=config.seed,
      max_tries=s.max_tries)


def _calibration_batches(config, mesh) -> jax.Array:
  it = input_pipeline.make_train_iterator(
      config.data, "train", config.eval_batch_size, config.seed + 1, augment=False,
      process_index=jax.process_index(), process_count=jax.process_count())
  calib = _stacked_batches([next(it) for _ in range(config.search.calibration_batches)], mesh)
  it.close()
  return calib["image"]


def _eval_batches(config, split: str, mesh) -> dict:
  return _stacked_batches(list(input_pipeline.make_eval_batches(
      config.data, split, config.eval_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), max_examples=config.get("max_eval_examples") or None)),
      mesh)


def search(config, space, info, mesh, state, calib, workdir: str) -> evolution.SearchResult:
  """Phase 2: evolutionary search with recalibrated, jit-swept evaluation."""
  model = _supernet(config, space, info.num_classes)
  holdout = _eval_batches(config, "holdout", mesh)
  sweep = jax.jit(make_eval_sweep(model))
  chunk = config.search.sweep_chunk

  def evaluate(archs):
    accs = []
    for i in range(0, len(archs), chunk):
      part = [nasbnn.encode(space, a) for a in archs[i:i + chunk]]
      n = len(part)
      part += [part[-1]] * (chunk - n)  # fixed shape: one compiled sweep
      out = sweep(state.params, state.batch_stats, calib, holdout, _stack(part))
      accs.extend(float(a) for a in np.asarray(jax.device_get(out))[:n])
    return accs

  cost = lambda arch: nasbnn_subnet.subnet_cost(space, arch, info.num_classes)["ops"] / 1e6
  os.makedirs(workdir, exist_ok=True)
  state_path = os.path.join(workdir, "search_state.json")

  def stop_if_requested(generation):  # SIGTERM: the generation's state is saved
    if preemption.should_stop():
      raise preemption.Preempted(generation, state_path)

  result = evolution.run_evolution(
      space, _evolution_config(config, space, info.num_classes), cost_fn=cost,
      evaluate_fn=evaluate, state_path=state_path, save_state=jax.process_index() == 0,
      log=print if jax.process_index() == 0 else lambda _: None,
      after_generation=stop_if_requested)
  if jax.process_index() == 0:
    evolution.write_outputs(result, workdir)
  return result


def deploy(config, space, info, mesh, state, result, calib, workdir: str) -> list[dict]:
  """Phase 3: pipeline 1 (extract + test) and pipeline 2 (finetune + test)."""
  model = _supernet(config, space, info.num_classes)
  recalibrate = jax.jit(make_recalibrate(model))
  chosen = sorted(result.front, key=lambda r: -r["acc"])[:config.deploy.num_archs]
  reports = []
  for k, record in enumerate(chosen):
    arch = record["arch"]
    stats = recalibrate(state.params, state.batch_stats, calib, nasbnn.encode(space, arch))
    variables = nasbnn_supernet.extract_subnet_variables(
        space, arch, {"params": state.params, "batch_stats": stats},
        bi_transformation=config.supernet.bi_transformation)
    ft = config.copy_and_resolve_references()
    with ft.unlocked():
      ft.model = nasbnn_subnet.model_config(space, arch, config.model)
      ft.num_epochs = config.deploy.finetune_epochs
      ft.num_train_steps = config.deploy.get("finetune_steps", 0)
      ft.optimizer = config.deploy.optimizer
      ft.label_smoothing = 0.0
    sub_dir = os.path.join(workdir, f"arch{k}")
    before = supervised.evaluate_variables(ft, variables, mesh, info, "test")["accuracy"]
    compact = binary_export.export(ft.model.blocks, variables,
                                   kernel_norm=ft.model.kernel_norm == "channelwise")
    if jax.process_index() == 0:
      binary_export.save(os.path.join(sub_dir, "binary_export.npz"), compact)
    after = supervised.train_phase(ft, sub_dir, binary_weights=True,
                                   weight_decay=ft.optimizer.weight_decay,
                                   init_variables=variables, phase_name=f"finetune{k}")
    reports.append({"arch": arch.to_string(), "ops_m": record["ops"], "search_accuracy": record["acc"],
                    "test_accuracy_extracted": before, "test_accuracy_finetuned":
                    after["test_accuracy"],
                    "export_bytes": binary_export.size_bytes(compact)["total"]})
    print(f"[deploy] {arch.to_string()}: {record['ops']:.4g} M OPs, holdout {record['acc']:.4f}, "
          f"test {before:.4f} extracted -> {after['test_accuracy']:.4f} finetuned")
  return reports


def train_and_evaluate(config: Any, workdir: str) -> dict:
  """Supernet -> search -> deployment; writes `report.json` and prints the front."""
  mesh = sharding.make_mesh(config.get("num_devices", 0))
  space, info = validate(config, mesh)
  state = train_supernet(config, space, info, mesh, os.path.join(workdir, "supernet"))
  # The same calibration batches serve the search and the deployed subnets.
  calib = _calibration_batches(config, mesh)
  result = search(config, space, info, mesh, state, calib, os.path.join(workdir, "search"))
  print("Pareto front (OPs in M, held-out accuracy):")
  for r in result.front:
    print(f"  {r['ops']:10.4f}  {r['acc']:.4f}  {r['arch'].to_string()}")
  deployed = deploy(config, space, info, mesh, state, result, calib,
                    os.path.join(workdir, "deploy"))
  report = {"front": [{"arch": r["arch"].to_string(), "ops_m": r["ops"], "holdout_accuracy": r["acc"]}
                      for r in result.front],
            "deployed": deployed}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "report.json"), "w") as f:
      json.dump(report, f, indent=2)
  return report
