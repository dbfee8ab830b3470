r"""Train-step speed of the ReActNet of `configs/reactnet.py` on synthetic data.

  python benchmarks/reactnet_step.py [--preset=digits|cifar10|imagenet] \
      [--batch=N] [--image_size=N] [--steps=N] [--async_steps=N] [--devices=N] [--json]

Everything below is measured in one process, so the numbers are comparable:

* compile time of the jitted train step and of the eval forward (first call,
  blocking; it includes one execution);
* median and p90 time of `--steps` train steps after 2 warm-up steps. Steps are
  dispatched "lag-1": step s is dispatched, then step s-1's metrics are waited
  for (the trainer's loop does the same). The time between two consecutive
  completions is one step's time;
* the time per step with `--async_steps` steps queued before any is waited for.
  Queuing many steps on XLA:CPU was once measured ~15x slower than lag-1 (1.1 s
  vs 0.07 s per digits step), and with several host devices a deep queue can
  stall the gradient all-reduce until XLA aborts the process. This number
  documents that behaviour; it is never the step time, and it is measured
  last, after the other numbers are printed;
* examples/s = batch / median step time;
* the cost model's forward MACs at batch 1 (FLOPs, Int8OPs, BOPs, OPs);
* model FLOP/s = 3 x 2 x (all forward MACs) x batch / median step time. The 3
  is forward + the two backward products (w.r.t. inputs and weights); every
  MAC counts as 2 real floating-point ops whatever its precision, because XLA
  runs binary and int8 convs as float convs;
* a float32 matmul reference (one 2048x2048 @ 2048x2048 per device, sharded
  over the same mesh, 2 n^3 FLOPs each, median of several runs) and the ratio
  model FLOP/s / matmul FLOP/s.

The data is random images and labels of the config's shape; no dataset is read.
The state is built as `bnas_jax.trainers.supervised` builds it (fully binary
network, i.e. ReActNet's step 2 for the two-step presets).

Devices: by default one XLA host device per CPU core
(`sharding.use_one_cpu_device_per_core`); `--devices=N` forces N host devices
and a mesh over the first N devices. With `--json` the last line printed is one
JSON object with all numbers (seconds, raw counts).
"""

import json
import os
import re
import sys
import time
from typing import Any, Callable

# The benchmark measures the checkout it lives in, so its root comes first on
# the path (also makes `configs/` importable without installing anything).
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
  sys.path.insert(0, _REPO_ROOT)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top
from absl import flags

# Importing JAX does not start its backends; `main` sets the host device count
# before the first call that does.
import jax
import jax.numpy as jnp
import numpy as np

from bnas_jax import cli
from bnas_jax import cost_model
from bnas_jax import input_pipeline
from bnas_jax import optimizers
from bnas_jax import sharding
from bnas_jax import train_state as train_state_lib
from bnas_jax.errors import UserInputError
from bnas_jax.models import build_model
from configs import reactnet as reactnet_config
# pylint: enable=g-import-not-at-top

flags.DEFINE_enum(
  "preset", "digits", ["digits", "cifar10", "imagenet"], "Preset of configs/reactnet.py."
)
flags.DEFINE_integer("batch", 0, "Global batch size; 0 = the preset's batch_size.")
flags.DEFINE_integer("image_size", 0, "Image side; 0 = the preset's data.image_size.")
flags.DEFINE_integer("steps", 50, "Timed train steps (after 2 warm-up steps).")
flags.DEFINE_integer(
  "async_steps",
  20,
  "Steps of the fully async queue measurement (0 skips it). Deep queues on "
  "several CPU devices can deadlock XLA's all-reduce and abort the run.",
)
flags.DEFINE_integer(
  "devices",
  0,
  "Number of devices; on CPU forces that many XLA host devices. "
  "0 = one host device per CPU core (or all accelerators).",
)
flags.DEFINE_bool("json", False, "Print one JSON object as the last line.")
FLAGS = flags.FLAGS

WARMUP_STEPS = 2
MATMUL_N = 2048
MATMUL_RUNS = 10


def _set_host_device_count(count: int) -> None:
  """Forces `count` XLA host devices, replacing any count already in XLA_FLAGS."""
  flag = f"--xla_force_host_platform_device_count={count}"
  flags_env = os.environ.get("XLA_FLAGS", "")
  pattern = r"--xla_force_host_platform_device_count=\S*"
  if re.search(pattern, flags_env):
    flags_env = re.sub(pattern, flag, flags_env)
  else:
    flags_env = f"{flags_env} {flag}".strip()
  os.environ["XLA_FLAGS"] = flags_env


def _load_config(preset: str, batch: int, image_size: int) -> Any:
  config = reactnet_config.get_config(preset)
  if batch:
    config.batch_size = batch
  if image_size:
    config.data.image_size = image_size
  return config


def _blocking_time(fn: Callable[[], Any]) -> tuple[float, Any]:
  """Seconds until `fn()`'s outputs are ready, and the outputs."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - start, out


def _matmul_flops_per_s(mesh: Any) -> dict[str, float]:
  """Achieved float32 matmul FLOP/s with one n x n @ n x n product per device.

  The left operand is sharded over the mesh like a batch, so every device runs
  the same work a data-parallel step gives it and the reference uses the same
  devices (and cores) as the model.
  """
  n, d = MATMUL_N, mesh.size
  rng = np.random.default_rng(1)
  a = jax.device_put(rng.standard_normal((d * n, n), np.float32), sharding.batch_sharded(mesh))
  b = jax.device_put(rng.standard_normal((n, n), np.float32), sharding.replicated(mesh))
  matmul = jax.jit(
    lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST),
    out_shardings=sharding.batch_sharded(mesh),
  )
  _blocking_time(lambda: matmul(a, b))  # compile
  times = [_blocking_time(lambda: matmul(a, b))[0] for _ in range(MATMUL_RUNS)]
  median = float(np.median(times))
  flops = 2.0 * d * n**3
  return {
    "n": n,
    "per_device_products": 1,
    "runs": MATMUL_RUNS,
    "median_s": median,
    "flops": flops,
    "flops_per_s": flops / median,
  }


def benchmark(
  preset: str, batch: int, image_size: int, steps: int, devices: int
) -> tuple[Callable[[int], float], dict[str, Any]]:
  """Runs the measurements of the module docstring except the async queue.

  Returns:
    `measure_async(n)`, which queues n more steps of the same state and returns
    the seconds per step, and a dict of all other numbers.
  """
  if steps < 1:
    raise UserInputError(f"--steps={steps} must be at least 1.")
  if devices < 0:
    raise UserInputError(f"--devices={devices} must be 0 (all) or a positive count.")
  config = _load_config(preset, batch, image_size)
  if devices and jax.devices()[0].platform == "cpu" and jax.device_count() != devices:
    # The flag only works before the CPU backend starts; say so instead of
    # silently benchmarking another device count.
    raise UserInputError(
      f"--devices={devices} but {jax.device_count()} CPU devices are visible; the CPU backend "
      "was started before XLA_FLAGS could be set."
    )
  mesh = sharding.make_mesh(devices)
  sharding.check_batch_size(config.batch_size, mesh, "--batch")
  num_classes, image_shape = input_pipeline.model_input_spec(config.data)
  global_batch_size = config.batch_size
  model = build_model(config.model, num_classes)

  # Forward MACs of one example, from the same module definitions that train.
  cost = cost_model.count_costs(model, (1, *image_shape), train=False)
  forward_macs = cost.flops + cost.int8_ops + cost.bops

  # The schedule's length only changes learning-rate values, not the work of
  # a step; any length covering the benchmark will do.
  total_steps = 1 + WARMUP_STEPS + 2 * steps
  opt_cfg = config.optimizer.copy_and_resolve_references()

  def init_state(key):
    variables = model.init(key, jnp.zeros((1, *image_shape)), train=False)
    tx = optimizers.make_optimizer(opt_cfg, variables["params"], total_steps, total_steps)
    return train_state_lib.TrainState.create(
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      tx=tx,
      rng=jax.random.key_data(jax.random.fold_in(key, 1)),
    )

  state = sharding.init_replicated(init_state, mesh, jax.random.key(config.seed))

  # Two distinct batches, assembled once: the timed loop measures the jitted
  # step, not host-side random number generation or host-to-device copies.
  rng = np.random.default_rng(0)
  local_rows = global_batch_size // jax.process_count()
  batches = [
    sharding.global_batch(
      {
        "image": rng.standard_normal((local_rows, *image_shape), np.float32),
        "label": rng.integers(0, num_classes, (local_rows,), np.int32),
      },
      mesh,
    )
    for _ in range(2)
  ]

  train_step = jax.jit(
    train_state_lib.make_classification_train_step(
      model, num_classes, config.get("label_smoothing", 0.0)
    ),
    donate_argnums=(0,),
  )
  eval_forward = jax.jit(
    lambda params, batch_stats, images: model.apply(
      {"params": params, "batch_stats": batch_stats}, images, train=False
    )
  )

  # Compile times: first calls, blocking. Each includes one execution.
  compile_train_s, (state, metrics) = _blocking_time(lambda: train_step(state, batches[0]))
  compile_eval_s, _ = _blocking_time(
    lambda: eval_forward(state.params, state.batch_stats, batches[0]["image"])
  )

  for s in range(WARMUP_STEPS):
    state, metrics = jax.block_until_ready(train_step(state, batches[s % 2]))

  # Lag-1: with step s queued behind step s-1, the device never idles while
  # Python waits, and at most two steps are in flight. Consecutive completion
  # times are then one step apart.
  done = [time.perf_counter()]
  pending = None
  for s in range(steps):
    state, metrics = train_step(state, batches[s % 2])
    if pending is not None:
      jax.block_until_ready(pending)
      done.append(time.perf_counter())
    pending = metrics
  jax.block_until_ready((state, pending))
  done.append(time.perf_counter())
  step_times = np.diff(done)
  median_s = float(np.median(step_times))
  p90_s = float(np.percentile(step_times, 90))
  final_loss = float(pending["loss"])

  matmul = _matmul_flops_per_s(mesh)

  train_flops_per_example = 3 * 2 * forward_macs
  model_flops_per_s = train_flops_per_example * global_batch_size / median_s
  device = jax.devices()[0]

  def measure_async(async_steps: int) -> float:
    """Seconds per step with `async_steps` steps queued before any is waited for.

    Only documents how XLA:CPU behaves with a deep queue; see `main` for why it
    runs after everything else.
    """
    nonlocal state
    metrics = None
    start = time.perf_counter()
    for s in range(async_steps):
      state, metrics = train_step(state, batches[s % 2])
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / async_steps

  return measure_async, {
    "preset": preset,
    "platform": device.platform,
    "device_kind": device.device_kind,
    "num_devices": mesh.size,
    "cpu_count": os.cpu_count(),
    "jax_version": jax.__version__,
    "batch": global_batch_size,
    "per_device_batch": global_batch_size // mesh.size,
    "image_shape": list(image_shape),
    "num_classes": num_classes,
    "steps": steps,
    "warmup_steps": WARMUP_STEPS,
    "compile_train_s": compile_train_s,
    "compile_eval_s": compile_eval_s,
    "step_time_median_s": median_s,
    "step_time_p90_s": p90_s,
    "step_time_min_s": float(np.min(step_times)),
    "examples_per_s": global_batch_size / median_s,
    "final_loss": final_loss,
    "cost_at_batch_1": {
      "flops": cost.flops,
      "int8_ops": cost.int8_ops,
      "bops": cost.bops,
      "ops": cost.ops,
      "macs": forward_macs,
    },
    "train_flops_per_example": train_flops_per_example,
    "model_flops_per_s": model_flops_per_s,
    "matmul": matmul,
    "model_over_matmul": model_flops_per_s / matmul["flops_per_s"],
  }


def _si(n: float) -> str:
  for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(n) >= div:
      return f"{n / div:.3g}{suffix}"
  return f"{n:.3g}"


def format_report(r: dict) -> str:
  """Human-readable lines of a `benchmark` result."""
  c = r["cost_at_batch_1"]
  m = r["matmul"]
  h, w, ch = r["image_shape"]
  return "\n".join(
    [
      f"ReActNet preset={r['preset']}  input {h}x{w}x{ch}  {r['num_classes']} classes  "
      f"batch {r['batch']} ({r['per_device_batch']}/device)",
      f"devices: {r['num_devices']} x {r['platform']} ({r['device_kind']}), "
      f"{r['cpu_count']} CPU cores, jax {r['jax_version']}",
      f"compile (first call, incl. 1 run): train step {r['compile_train_s']:.2f} s, "
      f"eval forward {r['compile_eval_s']:.2f} s",
      f"train step (lag-1, {r['steps']} steps after {r['warmup_steps']} warm-up): "
      f"median {r['step_time_median_s'] * 1e3:.1f} ms, p90 {r['step_time_p90_s'] * 1e3:.1f} ms, "
      f"min {r['step_time_min_s'] * 1e3:.1f} ms",
      f"throughput: {r['examples_per_s']:.1f} examples/s",
      f"cost at batch 1 (MACs): FLOPs {_si(c['flops'])}, Int8OPs {_si(c['int8_ops'])}, "
      f"BOPs {_si(c['bops'])}, OPs {_si(c['ops'])} (all MACs {_si(c['macs'])})",
      f"model FLOP/s: {_si(r['model_flops_per_s'])}FLOP/s "
      f"(= 3 x 2 x {_si(c['macs'])} MACs x {r['batch']} / median step; every precision as fp)",
      f"matmul reference: {_si(m['flops_per_s'])}FLOP/s "
      f"(float32 {m['n']}x{m['n']} @ {m['n']}x{m['n']} per device, median "
      f"{m['median_s'] * 1e3:.1f} ms of {m['runs']})",
      f"model / matmul FLOP/s: {r['model_over_matmul']:.3f}",
    ]
  )


def main(argv):
  if len(argv) > 1:
    cli.fail(f"Unexpected positional arguments {argv[1:]!r}; all options are --flags.")
  # Before the first JAX call: the host device count is fixed when the CPU
  # backend starts.
  if FLAGS.devices > 0:
    _set_host_device_count(FLAGS.devices)
  else:
    sharding.use_one_cpu_device_per_core()
  with cli.user_errors_exit():
    if FLAGS.async_steps < 0:
      raise UserInputError(f"--async_steps={FLAGS.async_steps} must be >= 0 (0 skips it).")
    measure_async, result = benchmark(
      FLAGS.preset, FLAGS.batch, FLAGS.image_size, FLAGS.steps, FLAGS.devices
    )
  print(format_report(result), flush=True)
  # Last, and after the report is out: on several host devices a deep queue can
  # stall XLA:CPU's all-reduce rendezvous, which aborts the process after 40 s.
  if FLAGS.async_steps:
    async_s = measure_async(FLAGS.async_steps)
    result.update(
      async_steps=FLAGS.async_steps,
      async_queued_step_s=async_s,
      async_over_lag1=async_s / result["step_time_median_s"],
    )
    print(
      f"fully async queue of {FLAGS.async_steps} steps: {async_s * 1e3:.1f} ms/step "
      f"({result['async_over_lag1']:.2f}x the lag-1 median; not the step time)"
    )
  if FLAGS.json:
    print(json.dumps(result))
  sys.stdout.flush()


if __name__ == "__main__":
  cli.run(main)
