"""Differentiable binary architecture search end to end: search -> derive -> train -> test.

`train_and_evaluate(config, workdir)` runs (each phase resumes from its own
checkpoints in `workdir`):

1. Search (`workdir/search`): the cell supernet (`models/darts_cells.py`) with
   the bilevel step of `search/bilevel.py` on the two halves of the training
   split ("train" and "holdout" of the input pipeline; the held-out half is read
   by its own persistent, resumable iterator, not re-sampled each step as in
   the DARTS/BNAS code). After every epoch: the genotype derived from the
   current alpha (`genotype_epoch_NNN.json`), the mean edge entropy of
   softmax(alpha / T), the share of learnable ops in the genotype (BNAS Sec. 4.3)
   and the supernet's held-out accuracy go to `history.json` and the metric
   writers; the genotype of the best held-out epoch is kept as
   `genotype_best.json` (BNAS keeps the best-validation genotype; it logs
   each epoch's genotype before that epoch's training, here it is the alpha
   at the end of the epoch that was evaluated).
2. Derivation: `genotype_best.json` (or `config.genotype_file`, which skips
   the search) and a PNG of its cells (`cells.png`).
3. Final network (`workdir/final`): `GenotypeNetwork` with `config.final`'s
   cells and channels, trained from scratch on the whole training split with
   the paper's recipe, tested; cost summary with the real-valued shortcut
   projections (`res_conv`) counted separately.
4. Optionally the same training for a random architecture of the space at
   the searched one's OPs (`config.final.random_baseline`, `workdir/random`:
   `random_at_cost`), the baseline a search has to beat.

`config.space = "mbconv"` runs the same phases on the bimodal paper's binary
MBConv space (`search_spaces/mbconv.py`, `models/binary_mbconv.py`): the
"genotype" is then a choice list, the networks come from `config.model`'s
stages, and the cost summary reports BOPs and real FLOPs (stem, classifier)
separately. The trainer holds the config's family (`models/darts_arch.family`: a
`CellFamily` or a `binary_mbconv.MBConvFamily`) and only calls its methods
(`search_network`, `network`, `cost`) and its space's (`resolve`, `sample`,
`derive`, `learnable_share`, `draw`).

`workdir/report.json` collects the genotype, test accuracies, costs and the
search history.
"""

import json
import os
import time
from typing import Any, Optional

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from bnas_jax import input_pipeline
from bnas_jax import optimizers
from bnas_jax import reporting
from bnas_jax import sharding
from bnas_jax import train_state as train_state_lib
from bnas_jax import training_loop
from bnas_jax.errors import UserInputError
from bnas_jax.models import darts_arch
from bnas_jax.search import bilevel
from bnas_jax.search import random_baseline

# ----------------------------------------------------------------------------
# Validation.


def final_data_config(config: Any) -> ml_collections.ConfigDict:
  """The final network trains on the whole training split (BNAS Sec. 5.1)."""
  data = config.data.copy_and_resolve_references()
  with data.unlocked():
    data.holdout_fraction = 0.0
    data.holdout_per_class = 0
  return data


def noise_config(config: Any) -> bilevel.NoiseConfig:
  n = config.search.noise
  return bilevel.NoiseConfig(
    arch_scale=float(n.arch_scale),
    weight_scale=float(n.weight_scale),
    distribution=n.distribution,
    arch_relative=bool(n.arch_relative),
    weight_relative=bool(n.weight_relative),
    arch_placement=n.arch_placement,
    steps=tuple(n.steps),
  ).validate()


def _check_shape(model: Any, image_shape: tuple[int, ...], what: str, **kwargs) -> None:
  try:
    jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False, **kwargs)
    )
  except UserInputError:
    raise
  except Exception as e:  # an impossible shape (resolution too small for the reductions)
    raise UserInputError(
      f"The {what} cannot run on {image_shape} inputs: {e}. Check config.model / "
      "config.final (cells, channels) and data.image_size."
    ) from e


def validate(config: Any, mesh) -> dict[str, Any]:
  """Checks everything a user can get wrong, before any compute."""
  family = darts_arch.family(config)
  family.check_config()
  space = family.space
  for what, bs in (
    ("config.search.batch_size", config.search.batch_size),
    ("config.final.batch_size", config.final.batch_size),
    ("config.eval_batch_size", config.eval_batch_size),
  ):
    sharding.check_batch_size(bs, mesh, what)
  if config.final.optimizer.get("schedule") not in optimizers.SCHEDULES:
    raise UserInputError(
      f"config.final.optimizer.schedule={config.final.optimizer.schedule!r} "
      f"is not one of {optimizers.SCHEDULES}."
    )
  if config.derive.gamma <= 0:  # also a field rule; checked here for direct library calls
    raise UserInputError(f"config.derive.gamma={config.derive.gamma} must be > 0 (BNAS Eq. 4).")
  noise = noise_config(config)
  info = input_pipeline.get_dataset_info(config.data)
  final_info = input_pipeline.get_dataset_info(final_data_config(config))
  genotype = None
  if config.genotype_file:
    genotype = space.resolve(config.genotype_file)
  else:
    if not info.num_examples.get("holdout"):
      raise UserInputError(
        "The search needs a held-out half of the training split for alpha: set "
        "config.data.holdout_fraction (0.5 as DARTS/BNAS) or holdout_per_class, or pass "
        "config.genotype_file to train a given genotype without searching."
      )
    for split in ("train", "holdout"):
      if config.search.batch_size > info.num_examples[split]:
        raise UserInputError(
          f"config.search.batch_size={config.search.batch_size} is larger "
          f"than the {split} split ({info.num_examples[split]} examples)."
        )
    _check_shape(family.search_network(info.num_classes), info.image_shape, "supernet")
  probe = genotype or space.sample(np.random.default_rng(0))
  _check_shape(family.network(probe, info.num_classes), info.image_shape, "final network")
  if config.final.batch_size > final_info.num_examples["train"]:
    raise UserInputError(
      f"config.final.batch_size={config.final.batch_size} is larger than the "
      f"training split ({final_info.num_examples['train']} examples)."
    )
  return dict(family=family, info=info, genotype=genotype, noise=noise)


# ----------------------------------------------------------------------------
# Search.


class PairedIterator:
  """Train-half and held-out-half batches side by side, with one resumable state."""

  def __init__(self, train_iter: Any, holdout_iter: Any):
    self.train, self.holdout = train_iter, holdout_iter

  def __iter__(self) -> "PairedIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self.train))
    val = next(self.holdout)
    batch["val_image"], batch["val_label"] = val["image"], val["label"]
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"train": self.train.get_state(), "holdout": self.holdout.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    self.train.set_state(state["train"])
    self.holdout.set_state(state["holdout"])

  def close(self) -> None:
    self.train.close()
    self.holdout.close()


def _steps(cfg: Any, steps_per_epoch: int) -> int:
  return int(cfg.get("num_train_steps") or round(cfg.num_epochs * steps_per_epoch))


def run_search(
  config: Any, workdir: str, mesh, family: Any, info: Any, noise: bilevel.NoiseConfig
) -> tuple[Any, list[dict]]:
  """Bilevel search; returns the best-held-out genotype and the per-epoch history."""
  os.makedirs(workdir, exist_ok=True)
  sc = config.search
  space = family.space
  model = family.search_network(info.num_classes)
  steps_per_epoch = input_pipeline.num_batches_per_epoch(config.data, "train", sc.batch_size)
  total_steps = _steps(sc, steps_per_epoch)
  x0 = jnp.zeros((1, *info.image_shape))

  def init_state(key):
    # An "rbg" key: XLA:CPU compiles the supernet's initialisation ~2x faster
    # than with threefry (hundreds of kernels).
    variables = model.init(jax.random.key(config.seed, impl="rbg"), x0, train=False)
    params = {"weights": variables["params"], "arch": variables["arch"]}
    weight_tx, arch_tx, _ = bilevel.make_optimizers(
      sc.optimizer, sc.arch_optimizer, params, total_steps, steps_per_epoch
    )
    return bilevel.SearchState.create(
      params=params,
      batch_stats=variables["batch_stats"],
      weight_tx=weight_tx,
      arch_tx=arch_tx,
      rng=jax.random.key_data(jax.random.fold_in(key, 1)),
    )

  pc, pi = jax.process_count(), jax.process_index()
  paired = PairedIterator(
    input_pipeline.make_train_iterator(
      config.data, "train", sc.batch_size, config.seed, process_index=pi, process_count=pc
    ),
    input_pipeline.make_train_iterator(
      config.data, "holdout", sc.batch_size, config.seed, process_index=pi, process_count=pc
    ),
  )
  state, ckpt, _ = training_loop.open_phase(config, workdir, mesh, init_state, paired)
  _, _, schedule = bilevel.make_optimizers(
    sc.optimizer, sc.arch_optimizer, state.params, total_steps, steps_per_epoch
  )
  step_cfg = bilevel.SearchStepConfig(
    num_classes=info.num_classes,
    steps_per_epoch=steps_per_epoch,
    diversity_lambda=sc.diversity_lambda,
    diversity_tau=sc.diversity_tau,
    temperature=sc.temperature,
    second_order=sc.second_order,
    weight_decay=sc.optimizer.weight_decay,
    noise=noise,
  )
  step_fn = jax.jit(bilevel.make_search_step(model, step_cfg, schedule), donate_argnums=(0,))
  eval_fn = jax.jit(train_state_lib.make_classification_eval_step(model, info.num_classes))
  reporter = reporting.Reporter(
    workdir,
    total_steps,
    int(state.step),
    progress_bar=config.get("progress_bar", True),
    desc="search",
  )

  history_path = os.path.join(workdir, "history.json")
  history: list[dict] = []
  if os.path.exists(history_path):
    with open(history_path) as f:
      history = [h for h in json.load(f) if h["step"] <= int(state.step)]

  def record_epoch(step: int, state: Any) -> None:
    epoch = step // steps_per_epoch
    arch = jax.device_get(state.params["arch"])
    geno = space.derive(arch)
    reporting.write_json(os.path.join(workdir, f"genotype_epoch_{epoch:03d}.json"), geno.to_dict())
    entry = {
      "epoch": epoch,
      "step": step,
      "wall_seconds": round(time.time() - start, 2),
      "genotype": geno.to_dict(),
      "entropy": float(bilevel.mean_entropy(arch, sc.temperature)),
      "learnable_share": space.learnable_share(geno),
    }
    if sc.eval_holdout:
      variables = {
        "params": state.params["weights"],
        "arch": state.params["arch"],
        "batch_stats": state.batch_stats,
      }
      ev = training_loop.evaluate(
        eval_fn,
        variables,
        config.data,
        "holdout",
        config.eval_batch_size,
        mesh,
        config.get("max_eval_examples", 0),
      )
      entry.update(holdout_accuracy=ev["accuracy"], holdout_loss=ev["loss"])
    best = max((h.get("holdout_accuracy", -1.0) for h in history), default=-1.0)
    history.append(entry)
    if entry.get("holdout_accuracy", 0.0) >= best:
      reporting.write_json(os.path.join(workdir, "genotype_best.json"), geno.to_dict())
    reporting.write_json(history_path, history)
    reporter.scalars(
      step, {k: entry[k] for k in ("entropy", "learnable_share", "holdout_accuracy") if k in entry}
    )
    reporter.message(
      f"[search] epoch {epoch}: entropy {entry['entropy']:.4f}, learnable-op "
      f"share {entry['learnable_share']:.3f}"
      + (
        f", held-out accuracy {entry['holdout_accuracy']:.4f}"
        if "holdout_accuracy" in entry
        else ""
      )
      + f"\n  {geno}"
    )

  start = time.time()  # wall time of this process (compilation included)
  restored_step = int(state.step)
  if (
    restored_step
    and restored_step % steps_per_epoch == 0
    and not any(h["step"] == restored_step for h in history)
  ):
    record_epoch(restored_step, state)  # the run stopped between checkpoint and record

  def after_step(step: int, state: Any) -> None:
    if step % steps_per_epoch == 0:
      record_epoch(step, state)

  try:
    state = training_loop.run_steps(
      state=state,
      train_step=step_fn,
      train_iter=paired,
      mesh=mesh,
      ckpt=ckpt,
      reporter=reporter,
      total_steps=total_steps,
      **training_loop.intervals(config, steps_per_epoch),
      phase_name="search",
      schedule=schedule,
      after_step=after_step,
    )
  finally:
    paired.close()
  if not history or history[-1]["step"] != total_steps:
    record_epoch(total_steps, state)  # a search shorter than one epoch, or not on an edge
  reporter.close()
  ckpt.close()
  best_path = os.path.join(workdir, "genotype_best.json")
  if jax.process_count() > 1:  # every process reads what process 0 wrote
    multihost_utils.sync_global_devices("darts_genotype_best_written")
  return space.load(best_path), history


# ----------------------------------------------------------------------------
# Final network.


def make_final_train_step(
  model, num_classes: int, label_smoothing: float, drop_path_prob: float, total_steps: int
):
  """Classification step; drop-path probability ramps linearly 0 -> p (DARTS/BNAS)."""

  def apply_kwargs(state: train_state_lib.TrainState) -> dict:
    p = drop_path_prob * state.step.astype(jnp.float32) / max(1, total_steps)
    return {"drop_path_prob": p, "rngs": {"dropout": state.step_key()}}

  return train_state_lib.make_classification_train_step(
    model, num_classes, label_smoothing, apply_kwargs
  )


def train_final(
  config: Any, workdir: str, mesh, family: Any, genotype: Any, phase_name: str = "final"
) -> dict[str, Any]:
  """Trains the genotype's network from scratch and tests it."""
  os.makedirs(workdir, exist_ok=True)
  fc = config.final
  data = final_data_config(config)
  info = input_pipeline.get_dataset_info(data)
  model = family.network(genotype, info.num_classes)
  steps_per_epoch = input_pipeline.num_batches_per_epoch(data, "train", fc.batch_size)
  total_steps = _steps(fc, steps_per_epoch)
  x0 = jnp.zeros((1, *info.image_shape))

  def init_state(key):
    variables = model.init(key, x0, train=False)
    tx = optimizers.make_optimizer(fc.optimizer, variables["params"], total_steps, steps_per_epoch)
    return train_state_lib.TrainState.create(
      params=variables["params"],
      batch_stats=variables["batch_stats"],
      tx=tx,
      rng=jax.random.key_data(jax.random.fold_in(key, 1)),
    )

  train_iter = input_pipeline.make_train_iterator(
    data,
    "train",
    fc.batch_size,
    config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  state, ckpt, _ = training_loop.open_phase(config, workdir, mesh, init_state, train_iter)
  schedule = optimizers.make_schedule(fc.optimizer, total_steps, steps_per_epoch)
  step_fn = jax.jit(
    make_final_train_step(
      model, info.num_classes, fc.label_smoothing, fc.drop_path_prob, total_steps
    ),
    donate_argnums=(0,),
  )
  reporter = reporting.Reporter(
    workdir,
    total_steps,
    int(state.step),
    progress_bar=config.get("progress_bar", True),
    desc=phase_name,
  )
  try:
    state = training_loop.run_steps(
      state=state,
      train_step=step_fn,
      train_iter=train_iter,
      mesh=mesh,
      ckpt=ckpt,
      reporter=reporter,
      total_steps=total_steps,
      **training_loop.intervals(config, steps_per_epoch),
      phase_name=phase_name,
      schedule=schedule,
    )
  finally:
    train_iter.close()
  eval_fn = jax.jit(train_state_lib.make_classification_eval_step(model, info.num_classes))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  test = training_loop.evaluate(
    eval_fn,
    variables,
    data,
    "test",
    config.eval_batch_size,
    mesh,
    config.get("max_eval_examples", 0),
  )
  costs = family.cost(genotype, info.num_classes, info.image_shape)
  results = {
    "phase": phase_name,
    "genotype": genotype.to_dict(),
    "steps": total_steps,
    "test_accuracy": test["accuracy"],
    "test_loss": test["loss"],
    "test_examples": test["count"],
    "costs": costs,
  }
  reporter.scalars(total_steps, {"test_accuracy": test["accuracy"]})
  reporter.message(
    f"[{phase_name}] test accuracy {test['accuracy']:.4f} on {test['count']} examples after "
    f"{total_steps} steps; FLOPs {costs['flops'] / 1e6:.3f} M (of which real shortcut "
    f"projections {costs['shortcut_flops'] / 1e6:.3f} M), BOPs {costs['bops'] / 1e6:.3f} M, "
    f"OPs {costs['ops'] / 1e6:.3f} M"
  )
  reporter.close()
  ckpt.close()
  reporting.write_json(os.path.join(workdir, "results.json"), results)
  return results


def random_at_cost(config: Any, family: Any, ops: float) -> Any:
  """A uniform random architecture of the family's space whose network costs at most `ops`.

  The closest such draw.

  The baseline of a search: the same space, the same training, the same cost
  (`search/random_baseline.py`); identical on every process (seeded draws).
  """
  info = input_pipeline.get_dataset_info(final_data_config(config))

  def cost(genotype):
    return family.cost(genotype, info.num_classes, info.image_shape)["ops"]

  genotype, got = random_baseline.sample_at_cost(
    family.space.sample, cost, ops, np.random.default_rng([config.seed, 7])
  )
  print(
    f"random baseline: {got / 1e6:.4g} M OPs (searched: {ops / 1e6:.4g} M): {genotype}", flush=True
  )
  return genotype


# ----------------------------------------------------------------------------
# Entry point.


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Search (unless config.genotype_file), derive, train the final network, test."""
  mesh = sharding.make_mesh(config.get("num_devices", 0))
  checked = validate(config, mesh)
  family, info = checked["family"], checked["info"]
  space = family.space
  os.makedirs(workdir, exist_ok=True)
  report: dict[str, Any] = {"space": space.name}
  genotype: Optional[Any] = checked["genotype"]
  if genotype is None:
    genotype, history = run_search(
      config, os.path.join(workdir, "search"), mesh, family, info, checked["noise"]
    )
    report["search_history"] = history
  report["genotype"] = genotype.to_dict()
  reporting.write_json(os.path.join(workdir, "genotype.json"), genotype.to_dict())
  if jax.process_index() == 0:
    space.draw(genotype, os.path.join(workdir, "cells.png"), title=str(space.name))
  print(f"genotype: {genotype}", flush=True)
  final = {}
  if config.final.num_epochs or config.final.num_train_steps:
    final = train_final(config, os.path.join(workdir, "final"), mesh, family, genotype)
    report["final"] = final
    if config.final.random_baseline:
      random_geno = random_at_cost(config, family, final["costs"]["ops"])
      report["random_baseline"] = train_final(
        config, os.path.join(workdir, "random"), mesh, family, random_geno, phase_name="random"
      )
  reporting.write_json(os.path.join(workdir, "report.json"), report)
  if final:
    print(f"test accuracy {final['test_accuracy']:.4f}", flush=True)
  return report
