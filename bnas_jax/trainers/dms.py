"""DMS end to end: width search (Alg. 1), then the searched network from scratch.

`train_and_evaluate(config, workdir)`:

1. Search (Alg. 1, App. A-B.2.1), `config.search.num_blocks` blocks. Block b:
   candidates {mu - 0.8 sigma, mu, mu + 0.8 sigma} per slot -> integer widths; the
   network is built at the largest candidate widths and every BN output of a slot is
   scaled by the Gumbel-softmax channel mask of its three nested candidates
   (`search/dms.py`, Eq. 6/11). Weights start from the previous block's by best-effort
   initialization (Eq. 9-10; `search.best_effort_init=False` for the App. B.1 ablation)
   and are trained for T' epochs on the train half with SGD whose cosine schedule
   (0.05 -> 0.01) restarts in every block. Then, weights frozen, one pass over the
   holdout half updates mu with Adam on CE + lambda * max(0, E[Memory] - target) (Eq. 7),
   where the candidates stay fixed and p(mu) moves (see `search/dms.py`), and mu is
   projected onto mu - 0.4 sigma >= 0.25. Finally sigma is deflated by beta (1 -> 0.3).
2. Final widths round(mu * base) (Sec. 2.4); the network is trained from scratch on the
   whole training set with the evaluation recipe (App. B.2.2; ResNet-18 first trains the
   FP network and initialises the BNN from it) by `trainers/supervised.train_phase`, and
   reported with its test accuracy and Table 1 model size (`cost_model.count_costs`).

Resumption: `search/state.json` (mu, sigma, the Adam state of mu, per-block history) is
written atomically after every block, and each block's weight training checkpoints in
`search/block_NNN/checkpoints` (orbax, with the data iterator position). A restarted run
continues inside the interrupted block's weight training, or redoes its mu pass (which is
a deterministic function of the block's final weights), and gives the result of an
uninterrupted run (tested).

Width changes: a block's network is built at its largest candidate widths rounded up to
`search.width_bucket` channels ("buffers"; channels beyond the largest candidate are
masked to 0), and its two steps (weights, mu) are compiled ahead of time with the
candidates, probabilities and sigma as traced inputs. Blocks with the same buffers reuse
the compiled steps (`compiled_steps_reused` and `compile_seconds` per block in the
history). With `search.shrink_buffers=False` buffers only grow, so as sigma deflates
the steps are reused; the price is the masked channels' compute. A fixed max-width buffer
for the whole search is not possible: the expansion ratio has no upper bound (App.
B.2.1). Measured on the plain digits config (VGG-11, 6 blocks of 11 weight + 11 mu steps)
on a 2-core CPU shared with other jobs (load ~8-9): exact buffers recompiled in every
block, 40-73 s of a 120-166 s block; grow-only buffers compiled once (58 s) and the
other five blocks took 48-70 s each. On the paper's scale (5 epochs of ~390 steps per
block) compilation is a small share of a block, so the paper presets use exact
(shrinking) buffers.

Outputs in `workdir`: `dms_widths.json` (per-slot mu, ratio, width, model sizes of the
searched and uniform networks), `dms_widths.png` (Fig. 4: widths against the uniform
1x-4x baselines), `search/trajectory.json` and `search/trajectory.png` (mu and sigma per
block), `eval/results.json` and `report.json`.
"""

import json
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bnas_jax import atomic_files
from bnas_jax import checkpointing
from bnas_jax import cost_model
from bnas_jax import input_pipeline
from bnas_jax import optimizers
from bnas_jax import reporting
from bnas_jax import sharding
from bnas_jax import train_state as train_state_lib
from bnas_jax import training_loop
from bnas_jax.errors import UserInputError
from bnas_jax.models import dms_arch
from bnas_jax.models import dms_nets
from bnas_jax.search import dms
from bnas_jax.search_spaces import dms_widths
from bnas_jax.trainers import supervised

MB = 2.0**20  # Table 1's MB


# ------------------------------------------------------------------------------------------
# Validation


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise UserInputError(message)


def validate(config: Any, mesh) -> input_pipeline.DatasetInfo:
  """Checks everything a user can get wrong, before any compute."""
  space = dms_arch.family(config).space  # checks config.model.name and base_widths
  family = space.family
  s = config.search
  num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  _require(
    isinstance(s.num_blocks, int) and s.num_blocks >= 1,
    f"config.search.num_blocks={s.num_blocks!r} must be a positive integer.",
  )
  _require(
    num(s.block_epochs)
    and num(s.block_steps)
    and s.block_steps >= 0
    and (s.block_epochs > 0 or s.block_steps > 0),
    "config.search.block_epochs (T') must be > 0 unless config.search.block_steps > 0.",
  )
  _require(
    num(s.arch_epochs)
    and num(s.arch_steps)
    and s.arch_steps >= 0
    and (s.arch_epochs > 0 or s.arch_steps > 0),
    "config.search.arch_epochs must be > 0 unless config.search.arch_steps > 0.",
  )
  for name in ("mu_initial", "sigma_initial", "sigma_final", "memory_target_mb", "tau"):
    _require(num(s[name]) and s[name] > 0, f"config.search.{name}={s[name]!r} must be > 0.")
  _require(
    s.sigma_final <= s.sigma_initial,
    f"config.search.sigma_final={s.sigma_final} must not exceed sigma_initial="
    f"{s.sigma_initial}: sigma is only deflated (Alg. 1).",
  )
  _require(
    num(s.penalty) and s.penalty >= 0, f"config.search.penalty (lambda)={s.penalty!r} must be >= 0."
  )
  _require(
    num(s.min_ratio) and s.min_ratio > 0, f"config.search.min_ratio={s.min_ratio!r} must be > 0."
  )
  _require(
    isinstance(s.width_bucket, int) and s.width_bucket >= 1,
    f"config.search.width_bucket={s.width_bucket!r} must be a positive integer (1 = exact widths).",
  )
  for name in ("batch_size", "eval_batch_size"):
    sharding.check_batch_size(config[name], mesh, f"config.{name}")
  info = input_pipeline.get_dataset_info(config.data)
  if config.eval.arch is None:
    _require(
      info.num_examples.get("holdout", 0) > 0,
      "DMS updates mu on held-out training data: set config.data.holdout_fraction "
      "(0.5 in the paper) or config.data.holdout_per_class.",
    )
    for split in ("train", "holdout"):
      _require(
        config.batch_size <= info.num_examples[split],
        f"config.batch_size={config.batch_size} exceeds the {info.num_examples[split]} "
        f"examples of the {split!r} split.",
      )
  else:
    space.resolve(config.eval.arch)
  for name in ("num_epochs", "fp_pretrain_epochs"):
    _require(
      num(config.eval[name]) and config.eval[name] >= 0,
      f"config.eval.{name}={config.eval[name]!r} must be >= 0.",
    )
  model = dms_nets.make_net(family, space.base_widths, info.num_classes)
  try:
    jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *info.image_shape)), train=False)
    )
  except Exception as e:  # pylint: disable=broad-except
    raise UserInputError(
      f"{family} cannot run on {info.image_shape} images of {config.data.name}: {e}. The "
      "CIFAR backbones need at least 32x32 inputs (config.data.image_size)."
    ) from e
  return info


# ------------------------------------------------------------------------------------------
# Steps


def _masks(cand_widths: jax.Array, buffer_widths: tuple[int, ...], pi: jax.Array) -> list:
  return [dms.channel_mask(cand_widths[j], pi[j], w) for j, w in enumerate(buffer_widths)]


def make_weight_step(
  model, num_classes: int, buffer_widths: tuple[int, ...], tau: float, label_smoothing: float = 0.0
):
  """(state, batch, cand_widths, log_probs) -> (state, metrics): Eq. 8 on the mixture.

  One SGD step on the Gumbel-sampled mixture of the candidates; the candidates' widths
  (n, 3) and log-probabilities (n, 3) are traced, so one compiled step serves every
  block whose widths fit the same buffers.
  """

  def apply_kwargs(state, cand_widths, log_probs):
    pi = dms.gumbel_softmax(state.step_key(), log_probs, tau)
    return {"channel_masks": _masks(cand_widths, buffer_widths, pi)}

  return train_state_lib.make_classification_train_step(
    model, num_classes, label_smoothing, apply_kwargs
  )


def make_arch_step(
  model,
  num_classes: int,
  buffer_widths: tuple[int, ...],
  *,
  tau: float,
  tx: optax.GradientTransformation,
  min_mu_minus_delta: float,
):
  """(mu, opt_state, variables, batch, key, block) -> (mu, opt_state, metrics): Eq. 7 on mu.

  `block` holds the block's candidates (`ratios`, `widths`), `sigma`, the size
  `polynomial`, `target_mb` and `penalty`, all traced. Weights and BN statistics are
  fixed; BN normalises with batch statistics as in the weight steps. The candidates are
  the block's network; mu moves their probabilities, and through them the Gumbel
  mixture and E[Memory].
  """

  def loss_fn(mu, variables, batch, key, block):
    probs = dms.candidate_probabilities(mu, block["sigma"], block["ratios"])
    pi = dms.gumbel_softmax(key, jnp.log(probs), tau)
    logits, _ = model.apply(
      variables,
      batch["image"],
      train=True,
      channel_masks=_masks(block["widths"], buffer_widths, pi),
      mutable=["batch_stats"],
    )
    ce = train_state_lib.cross_entropy(logits, batch["label"], num_classes).mean()
    memory_mb = dms.memory_at(block["polynomial"], dms.expected_widths(probs, block["widths"])) / MB
    penalty = dms.memory_penalty(memory_mb, block["target_mb"], block["penalty"])
    return ce + penalty, (ce, memory_mb)

  def step(mu, opt_state, variables, batch, key, block):
    (loss, (ce, memory_mb)), grad = jax.value_and_grad(loss_fn, has_aux=True)(
      mu, variables, batch, key, block
    )
    updates, opt_state = tx.update(grad, opt_state, mu)
    mu = dms.project_mu(optax.apply_updates(mu, updates), block["sigma"], min_mu_minus_delta)
    return (
      mu,
      opt_state,
      {"loss": loss, "ce": ce, "expected_memory_mb": memory_mb, "grad_norm": jnp.linalg.norm(grad)},
    )

  return step


def arch_optimizer(config: Any) -> optax.GradientTransformation:
  a = config.search.arch_optimizer
  return optax.adam(a.learning_rate, b1=a.get("b1", 0.9), b2=a.get("b2", 0.999))


# ------------------------------------------------------------------------------------------
# Search state


def _state_path(workdir: str) -> str:
  return os.path.join(workdir, "search", "state.json")


def _initial_search_state(config: Any, n: int) -> dict:
  s = config.search
  mu = np.full((n,), s.mu_initial, np.float32)
  opt_state = arch_optimizer(config).init(jnp.asarray(mu))
  return {
    "next_block": 0,
    "mu": mu.tolist(),
    "sigma": float(s.sigma_initial),
    "arch_opt_state": [np.asarray(x).tolist() for x in jax.tree.leaves(opt_state)],
    "history": [],
  }


def _load_search_state(config: Any, workdir: str, n: int) -> dict:
  path = _state_path(workdir)
  if not os.path.exists(path):
    return _initial_search_state(config, n)
  with open(path) as f:
    state = json.load(f)
  if len(state.get("mu", ())) != n:
    raise UserInputError(
      f"{path} holds a search of {len(state.get('mu', ()))} slots but config.model.name="
      f"{config.model.name!r} has {n}; use a new --workdir."
    )
  return state


def _opt_state_from_json(config: Any, mu: jax.Array, leaves: list) -> Any:
  template = arch_optimizer(config).init(mu)
  treedef = jax.tree.structure(template)
  return jax.tree.unflatten(
    treedef, [jnp.asarray(v, dtype=t.dtype) for v, t in zip(leaves, jax.tree.leaves(template))]
  )


def _block_dir(workdir: str, block: int) -> str:
  return os.path.join(workdir, "search", f"block_{block:03d}")


def _restore_final_variables(block_dir: str) -> dict:
  """{"params", "batch_stats"} of a finished block's last checkpoint (shapes as saved)."""
  ckpt_dir = os.path.join(block_dir, "checkpoints")
  steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
  path = os.path.join(ckpt_dir, str(max(steps)), "state")
  restored = checkpointing.ocp.StandardCheckpointer().restore(path)
  return {"params": restored["params"], "batch_stats": restored["batch_stats"]}


# ------------------------------------------------------------------------------------------
# One block of Alg. 1


def _block_config(config: Any, block: int) -> ml_collections.ConfigDict:
  """The run config with a per-block seed: each block sees its own data order."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.seed = int(config.seed) * 100003 + block
  return c


def _weight_optimizer_config(config: Any) -> ml_collections.ConfigDict:
  o = config.search.optimizer
  return ml_collections.ConfigDict(
    dict(
      name=o.get("name", "sgd"),
      learning_rate=o.learning_rate,
      schedule="cosine_restarts",
      restart_epochs=1.0,
      min_lr=o.get("min_lr", 0.0),
      momentum=o.get("momentum", 0.9),
      weight_decay=o.get("weight_decay", 0.0),
      grad_clip_norm=o.get("grad_clip_norm", None),
    )
  )


def _sharded_batch_spec(config: Any, info, mesh) -> dict:
  b = config.batch_size
  spec = sharding.batch_sharded(mesh)
  return {
    "image": jax.ShapeDtypeStruct((b, *info.image_shape), jnp.float32, sharding=spec),
    "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=spec),
  }


def buffer_widths(max_widths: np.ndarray, bucket: int) -> tuple[int, ...]:
  """Widths of the block's network: the largest candidates rounded up to `bucket`."""
  return tuple(int(-(-int(w) // bucket) * bucket) for w in max_widths)


def _compiled_steps(
  config: Any, model, buffers: tuple[int, ...], info, mesh, state, total_steps: int, compiled: dict
) -> tuple[Any, Any, float, bool]:
  """(weight step, arch step, compile seconds, cache hit) for a block's network.

  `compiled` (one per search) holds the steps by everything their programs
  depend on (buffer widths, data shapes, optimizer settings, mesh): a block
  whose largest candidates fit the buffers of an earlier block reuses them.
  """
  s = config.search
  opt_cfg = _weight_optimizer_config(config)
  key = (
    config.model.name,
    buffers,
    info.num_classes,
    tuple(info.image_shape),
    config.batch_size,
    s.tau,
    config.get("label_smoothing", 0.0),
    opt_cfg.to_json(),
    s.arch_optimizer.to_json(),
    total_steps,
    s.min_mu_minus_delta,
    tuple(d.id for d in mesh.devices.flat),
  )
  if key in compiled:
    return (*compiled[key], 0.0, True)
  t0 = time.perf_counter()
  rep, rows = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  batch_spec = _sharded_batch_spec(config, info, mesh)
  n = len(buffers)
  tx = optimizers.make_optimizer(opt_cfg, state.params, total_steps, total_steps)
  weight_step = make_weight_step(
    model, info.num_classes, buffers, s.tau, config.get("label_smoothing", 0.0)
  )

  def weight_core(params, batch_stats, opt_state, step, rng, batch, cand_widths, log_probs):
    # The optimizer is rebuilt from the same settings (tx is static, not traced), so the
    # program does not depend on which block's TrainState object carries it.
    st = train_state_lib.TrainState(
      step=step, params=params, batch_stats=batch_stats, opt_state=opt_state, rng=rng, tx=tx
    )
    st, metrics = weight_step(st, batch, cand_widths, log_probs)
    return st.params, st.batch_stats, st.opt_state, st.step, metrics

  widths_spec = jax.ShapeDtypeStruct((n, 3), jnp.int32, sharding=rep)
  probs_spec = jax.ShapeDtypeStruct((n, 3), jnp.float32, sharding=rep)
  core = (
    jax.jit(
      weight_core,
      in_shardings=(rep,) * 5 + (rows, rep, rep),
      out_shardings=rep,
      donate_argnums=(0, 1, 2),
    )
    .lower(
      state.params,
      state.batch_stats,
      state.opt_state,
      state.step,
      state.rng,
      batch_spec,
      widths_spec,
      probs_spec,
    )
    .compile()
  )

  def train_step(state, batch, cand_widths, log_probs):
    params, stats, opt_state, step, metrics = core(
      state.params,
      state.batch_stats,
      state.opt_state,
      state.step,
      state.rng,
      batch,
      cand_widths,
      log_probs,
    )
    return state.replace(params=params, batch_stats=stats, opt_state=opt_state, step=step), metrics

  arch_tx = arch_optimizer(config)
  mu_spec = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=rep)
  f32 = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=rep)
  block_spec = {
    "ratios": probs_spec,
    "widths": widths_spec,
    "sigma": f32(()),
    "polynomial": {"const": f32(()), "linear": f32((n,)), "pairwise": f32((n, n))},
    "target_mb": f32(()),
    "penalty": f32(()),
  }
  opt_spec = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
    jax.eval_shape(arch_tx.init, mu_spec),
  )
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  key_spec = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
  arch_step = (
    jax.jit(
      make_arch_step(
        model,
        info.num_classes,
        buffers,
        tau=s.tau,
        tx=arch_tx,
        min_mu_minus_delta=s.min_mu_minus_delta,
      ),
      in_shardings=(rep, rep, rep, rows, rep, rep),
      out_shardings=rep,
    )
    .lower(mu_spec, opt_spec, variables, batch_spec, key_spec, block_spec)
    .compile()
  )
  compiled[key] = (train_step, arch_step)
  return train_step, arch_step, time.perf_counter() - t0, False


def run_block(
  config: Any,
  workdir: str,
  block: int,
  search: dict,
  info,
  mesh,
  previous: Optional[dict],
  compiled: dict,
) -> tuple[dict, dict]:
  """Alg. 1 lines 2-12 for one block; returns (new search state, final variables)."""
  s = config.search
  family = config.model.name
  base = dms_widths.base_widths_of(config.model)
  mu = np.asarray(search["mu"], np.float32)
  sigma = float(search["sigma"])
  ratios = np.asarray(dms.candidate_ratios(mu, sigma, s.min_ratio))
  cand_widths = dms.candidate_widths(ratios, base)
  buffers = buffer_widths(cand_widths.max(axis=1), s.width_bucket)
  if not s.shrink_buffers and search["history"]:
    buffers = tuple(max(a, b) for a, b in zip(buffers, search["history"][-1]["buffer_widths"]))
  model = dms_nets.make_net(family, buffers, info.num_classes)
  log_probs = np.log(np.asarray(dms.candidate_probabilities(mu, sigma, ratios)))
  x0 = jnp.zeros((1, *info.image_shape))
  block_dir = _block_dir(workdir, block)
  rep = sharding.replicated(mesh)
  t_block = time.perf_counter()

  # Weight training: T' epochs, a fresh SGD whose cosine (0.05 -> 0.01) restarts here.
  steps_per_epoch = input_pipeline.num_batches_per_epoch(config.data, "train", config.batch_size)
  total_steps = s.block_steps or max(1, int(round(s.block_epochs * steps_per_epoch)))
  opt_cfg = _weight_optimizer_config(config)
  block_cfg = _block_config(config, block)
  state, ckpt, train_iter, resumed = training_loop.start_phase(
    block_cfg,
    block_dir,
    mesh,
    lambda key: model.init(key, x0, train=False),
    opt_cfg,
    total_steps,
    total_steps,
    data_config=block_cfg.data,
    batch_size=block_cfg.batch_size,
  )
  if not resumed and previous is not None and s.best_effort_init:
    carried = jax.device_put(
      dms.best_effort_init(previous, {"params": state.params, "batch_stats": state.batch_stats}),
      rep,
    )
    state = state.replace(params=carried["params"], batch_stats=carried["batch_stats"])
  weight_step, arch_step, compile_seconds, cached = _compiled_steps(
    config, model, buffers, info, mesh, state, total_steps, compiled
  )
  cand_dev = jax.device_put(jnp.asarray(cand_widths, jnp.int32), rep)
  log_probs_dev = jax.device_put(jnp.asarray(log_probs, jnp.float32), rep)
  reporter = reporting.Reporter(
    block_dir,
    total_steps,
    int(state.step),
    progress_bar=config.get("progress_bar", True),
    desc=f"search block {block + 1}/{s.num_blocks}",
  )
  t_train = time.perf_counter()
  state = training_loop.run_steps(
    state=state,
    train_step=weight_step,
    train_iter=train_iter,
    mesh=mesh,
    ckpt=ckpt,
    reporter=reporter,
    total_steps=total_steps,
    **training_loop.intervals(config, steps_per_epoch),
    phase_name=f"search_block_{block}",
    step_inputs=lambda step: (cand_dev, log_probs_dev),
    schedule=optimizers.make_schedule(opt_cfg, total_steps, total_steps),
  )
  train_seconds = time.perf_counter() - t_train
  train_iter.close()
  ckpt.close()
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  # mu update on the holdout half (Alg. 1 lines 9-10).
  polynomial = dms_nets.size_polynomial(family, info.num_classes, tuple(info.image_shape))
  block_inputs = jax.device_put(
    {
      "ratios": jnp.asarray(ratios, jnp.float32),
      "widths": cand_dev,
      "sigma": jnp.float32(sigma),
      "polynomial": {k: jnp.asarray(v, jnp.float32) for k, v in polynomial.items()},
      "target_mb": jnp.float32(s.memory_target_mb),
      "penalty": jnp.float32(s.penalty),
    },
    rep,
  )
  mu_dev = jax.device_put(jnp.asarray(mu), rep)
  opt_state = jax.device_put(_opt_state_from_json(config, mu_dev, search["arch_opt_state"]), rep)
  holdout_batches = input_pipeline.num_batches_per_epoch(config.data, "holdout", config.batch_size)
  arch_steps = s.arch_steps or max(1, int(round(s.arch_epochs * holdout_batches)))
  key = jax.random.fold_in(jax.random.key(config.seed), block)
  holdout_iter = input_pipeline.make_train_iterator(
    config.data,
    "holdout",
    config.batch_size,
    block_cfg.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  metrics = []
  t_arch = time.perf_counter()
  for i in range(arch_steps):
    batch = sharding.global_batch(next(holdout_iter), mesh)
    mu_dev, opt_state, m = arch_step(
      mu_dev,
      opt_state,
      variables,
      batch,
      jax.device_put(jax.random.fold_in(key, i), rep),
      block_inputs,
    )
    metrics.append(m)
  holdout_iter.close()
  metrics = {k: float(np.mean([float(m[k]) for m in metrics])) for k in metrics[0]}
  if not np.all(np.isfinite(list(metrics.values()))):
    raise FloatingPointError(f"Non-finite mu update in search block {block}: {metrics}.")
  arch_seconds = time.perf_counter() - t_arch
  new_mu = np.asarray(mu_dev, np.float64)
  beta = dms.deflation_factor(s.num_blocks, s.sigma_initial, s.sigma_final)
  record = {
    "block": block,
    "sigma": sigma,
    "mu_before": mu.tolist(),
    "mu_after": new_mu.tolist(),
    "candidate_ratios": ratios.tolist(),
    "candidate_widths": cand_widths.tolist(),
    "buffer_widths": list(buffers),
    "arch_steps": arch_steps,
    "weight_steps": total_steps,
    "compile_seconds": compile_seconds,
    "compiled_steps_reused": cached,
    "weight_train_seconds": train_seconds,
    "arch_seconds": arch_seconds,
    "block_seconds": time.perf_counter() - t_block,
    **{f"valid_{k}": v for k, v in metrics.items()},
  }
  reporter.scalars(
    total_steps,
    {
      "sigma": sigma,
      **{f"valid_{k}": v for k, v in metrics.items()},
      **{f"mu/{n}": v for n, v in zip(dms_widths.slot_names(family), new_mu)},
    },
  )
  reporter.message(
    f"[search block {block + 1}/{s.num_blocks}] sigma {sigma:.3f} valid CE {metrics['ce']:.3f} "
    f"E[memory] {metrics['expected_memory_mb']:.4f} MB, mu "
    + " ".join(f"{v:.2f}" for v in new_mu)
    + (" (compiled steps reused" if cached else f" (compile {compile_seconds:.1f}s")
    + f", block {record['block_seconds']:.1f}s)"
  )
  reporter.close()
  new_search = {
    "next_block": block + 1,
    "mu": new_mu.tolist(),
    "sigma": sigma * beta,
    "arch_opt_state": [np.asarray(x).tolist() for x in jax.tree.leaves(opt_state)],
    "history": search["history"] + [record],
  }
  return new_search, variables


def search(config: Any, workdir: str, info, mesh) -> dict:
  """Alg. 1 from wherever `workdir` stopped; returns the final search state."""
  n = len(dms_widths.base_widths(config.model.name))
  state = _load_search_state(config, workdir, n)
  previous = None
  compiled: dict = {}  # see _compiled_steps
  while state["next_block"] < config.search.num_blocks:
    block = state["next_block"]
    if previous is None and block > 0 and config.search.best_effort_init:
      previous = _restore_final_variables(_block_dir(workdir, block - 1))
    state, previous = run_block(config, workdir, block, state, info, mesh, previous, compiled)
    reporting.write_json(_state_path(workdir), state)
  return state


# ------------------------------------------------------------------------------------------
# Outputs


def _model_size(family: str, widths, num_classes: int, image_shape, binary=True) -> float:
  model = dms_nets.make_net(family, widths, num_classes, binary=binary)
  return cost_model.count_costs(model, (1, *image_shape), train=False).model_size_bytes


def random_widths_at_size(
  config: Any, info, target_bytes: float, rng: np.random.Generator
) -> tuple[int, ...]:
  """A random width vector of the DMS space whose binary network is the largest at or under
  `target_bytes` along its random direction: the baseline at the searched network's size.

  Per slot a random ratio r_i ~ U(0.5, 2) of the base width gives the shape; one global
  scale s (bisection, at most 40 steps) makes widths max(ceil(min_ratio c_i), round(s r_i c_i))
  just fit the budget, so only the distribution of widths over layers is random.
  """
  family = config.model.name
  base = np.asarray(dms_widths.base_widths_of(config.model), np.float64)
  shape = rng.uniform(0.5, 2.0, size=base.size)
  floor = np.ceil(config.search.min_ratio * base)

  def widths(scale: float) -> tuple[int, ...]:
    return tuple(int(w) for w in np.maximum(floor, np.maximum(1, np.round(scale * shape * base))))

  size = lambda s: _model_size(family, widths(s), info.num_classes, tuple(info.image_shape))
  lo, hi = 0.0, 1.0
  while size(hi) <= target_bytes and hi < 1e3:
    lo, hi = hi, 2 * hi
  for _ in range(40):
    if widths(lo) == widths(hi):  # every scale between gives these widths: done
      break
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if size(mid) <= target_bytes else (lo, mid)
  return widths(lo)


def widths_summary(config: Any, search_state: Optional[dict], widths, info) -> dict:
  """The `dms_widths.json` record: searched widths and Table 1 sizes of all networks."""
  family = config.model.name
  shape = tuple(info.image_shape)
  base = dms_widths.base_widths_of(config.model)
  uniform = {}
  for name, k in dms_widths.UNIFORM.items():
    w = dms_widths.uniform_widths(family, k, base)
    uniform[name] = {
      "widths": list(w),
      "model_size_mb": _model_size(family, w, info.num_classes, shape) / MB,
    }
  uniform["fp"] = {
    "widths": list(base),
    "model_size_mb": _model_size(family, base, info.num_classes, shape, binary=False) / MB,
  }
  out = {
    "family": family,
    "slot_names": list(dms_widths.slot_names(family)),
    "base_widths": list(base),
    "widths": list(widths),
    "model_size_mb": _model_size(family, widths, info.num_classes, shape) / MB,
    "memory_target_mb": config.search.memory_target_mb,
    "uniform": uniform,
  }
  if search_state is not None:
    out["mu"] = search_state["mu"]
    out["ratios"] = [w / b for w, b in zip(widths, base)]
    out["sigma_final"] = search_state["sigma"]
  return out


def plot_widths(space: dms_widths.WidthSpace, summary: dict, path: str) -> None:
  """Fig. 4: searched channels per layer against the uniform 1x-4x BNNs, sizes in MB."""
  sizes = {name: u["model_size_mb"] for name, u in summary["uniform"].items()}
  sizes["widths"] = summary["model_size_mb"]
  dms_widths.draw(
    space,
    dms_widths.Widths(tuple(summary["widths"])),
    path,
    f"{summary['family']}: searched widths vs uniform BNNs",
    label="DMS",
    sizes_mb=sizes,
  )


def write_trajectory(search_state: dict, family: str, directory: str) -> None:
  """mu (per slot) and sigma per block, as JSON and a PNG."""
  hist = search_state["history"]
  if not hist:
    return
  traj = {
    "slot_names": list(dms_widths.slot_names(family)),
    "sigma": [h["sigma"] for h in hist],
    "mu": [hist[0]["mu_before"]] + [h["mu_after"] for h in hist],
    "expected_memory_mb": [h.get("valid_expected_memory_mb") for h in hist],
    "valid_ce": [h.get("valid_ce") for h in hist],
    "compile_seconds": [h["compile_seconds"] for h in hist],
    "block_seconds": [h["block_seconds"] for h in hist],
  }
  reporting.write_json(os.path.join(directory, "trajectory.json"), traj)
  if jax.process_index() != 0:
    return
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
  mu = np.asarray(traj["mu"])
  for j, name in enumerate(traj["slot_names"]):
    a1.plot(np.arange(len(mu)), mu[:, j], label=name)
  a1.set_xlabel("mu updates")
  a1.set_ylabel("mu (expansion ratio)")
  a1.legend(fontsize=6, ncol=2)
  a2.plot(np.arange(len(traj["sigma"])), traj["sigma"], "k.-")
  a2.set_xlabel("block")
  a2.set_ylabel("sigma")
  fig.tight_layout()
  atomic_files.write_figure(os.path.join(directory, "trajectory.png"), fig, dpi=120)
  plt.close(fig)


# ------------------------------------------------------------------------------------------
# Evaluation (App. B.2.2)


def eval_phase(
  config: Any, model_config: Any, name: str, *, num_epochs: float, binary: bool = True
) -> supervised.Phase:
  """App. B.2.2: the network trained from scratch on the whole training set (`config.eval`)."""
  model = model_config.copy_and_resolve_references()
  model.binary = binary and model_config.get("binary", True)
  return supervised.Phase(
    name=name,
    model=model,
    optimizer=config.eval.optimizer.copy_and_resolve_references(),
    num_epochs=num_epochs,
    num_train_steps=config.eval.num_train_steps,
    batch_size=config.batch_size,
    label_smoothing=config.get("label_smoothing", 0.0),
    binary_weights=True,
    fold_holdout=True,
  )


def evaluate(config: Any, workdir: str, model_config: Any, info, mesh) -> dict:
  """Trains `model_config` from scratch (FP pre-training first if configured); tests it."""
  init_variables = None
  if config.eval.fp_pretrain_epochs and model_config.get("binary", True):
    fp_phase = eval_phase(
      config, model_config, "eval_fp", num_epochs=config.eval.fp_pretrain_epochs, binary=False
    )
    fp_dir = os.path.join(workdir, "eval_fp")
    supervised.train_phase(config, fp_phase, fp_dir)
    fp = _restore_final_variables(fp_dir)
    bnn = dms_nets.build(model_config, info.num_classes)
    fresh = bnn.init(jax.random.key(config.seed), jnp.zeros((1, *info.image_shape)), train=False)
    init_variables = dms.best_effort_init(fp, fresh)  # same shapes: a full copy
  phase = eval_phase(config, model_config, "eval", num_epochs=config.eval.num_epochs)
  return supervised.train_phase(
    config, phase, os.path.join(workdir, "eval"), init_variables=init_variables
  )


def random_baseline(config: Any, workdir: str, summary: dict, info, mesh) -> dict:
  """Random widths at the searched network's model size, trained and tested the same way."""
  target = summary["model_size_mb"] * MB
  widths = random_widths_at_size(config, info, target, np.random.default_rng([config.seed, 7]))
  model_config = dms_arch.family(config).model_config(dms_widths.Widths(widths))
  size_mb = _model_size(config.model.name, widths, info.num_classes, tuple(info.image_shape)) / MB
  print(
    f"[dms] random baseline: widths {list(widths)}, model size {size_mb:.4f} MB (searched "
    f"{summary['model_size_mb']:.4f} MB)",
    flush=True,
  )
  results = evaluate(config, os.path.join(workdir, "random"), model_config, info, mesh)
  return {
    "widths": list(widths),
    "model_size_mb": size_mb,
    "test_accuracy": results["test_accuracy"],
  }


def train_and_evaluate(config: Any, workdir: str) -> dict:
  """Search (unless `config.eval.arch` is set), then train and test the found widths."""
  mesh = sharding.make_mesh(config.get("num_devices", 0))
  info = validate(config, mesh)
  dms_family = dms_arch.family(config)
  family = dms_family.space.family
  t0 = time.perf_counter()
  search_state = None
  if config.eval.arch is None:
    search_state = search(config, workdir, info, mesh)
    arch = dms_widths.Widths(dms.final_widths(search_state["mu"], dms_family.space.base_widths))
    write_trajectory(search_state, family, os.path.join(workdir, "search"))
  else:
    arch = dms_family.space.resolve(config.eval.arch)
  model_config = dms_family.model_config(arch)
  widths = tuple(model_config.widths)
  search_seconds = time.perf_counter() - t0
  summary = widths_summary(config, search_state, widths, info)
  if not model_config.binary:
    summary["model_size_mb"] = summary["uniform"]["fp"]["model_size_mb"]
  reporting.write_json(os.path.join(workdir, "dms_widths.json"), summary)
  if jax.process_index() == 0:
    plot_widths(dms_family.space, summary, os.path.join(workdir, "dms_widths.png"))
  t1 = time.perf_counter()
  report = {
    "family": family,
    "widths": list(widths),
    "binary": bool(model_config.binary),
    "model_size_mb": summary["model_size_mb"],
    "search_seconds": search_seconds,
  }
  if config.eval.num_epochs or config.eval.num_train_steps:
    results = evaluate(config, workdir, model_config, info, mesh)
    report.update(
      test_accuracy=results["test_accuracy"],
      params=results["params"],
      eval_seconds=time.perf_counter() - t1,
    )
    if config.eval.get("random_baseline") and search_state is not None:
      report["random_baseline"] = random_baseline(config, workdir, summary, info, mesh)
  if search_state is not None:
    report["mu"] = search_state["mu"]
    report["compile_seconds_per_block"] = [h["compile_seconds"] for h in search_state["history"]]
  reporting.write_json(os.path.join(workdir, "report.json"), report)
  accuracy = (
    f"test accuracy {report['test_accuracy']:.4f}"
    if "test_accuracy" in report
    else "not trained (config.eval.num_epochs = 0)"
  )
  print(
    f"[dms] widths {list(widths)}: model size {summary['model_size_mb']:.4f} MB, {accuracy}",
    flush=True,
  )
  if "random_baseline" in report:
    print(
      f"[dms] random widths at the same size: test accuracy "
      f"{report['random_baseline']['test_accuracy']:.4f}",
      flush=True,
    )
  return report
