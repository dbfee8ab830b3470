r"""NAS-BNN supernet speed: sandwich step, eval forwards, compile time, recompiles.

  python benchmarks/nasbnn_supernet.py [--steps=N] [--rounds=N] [--devices=N]
      [--preset=imagenet|digits] [--image_size=64] [--batch=16] [--num_classes=100]
      [--compile_cache=off|DIR] [--compile_only | --relaunch_check]
      [--conv_forward=lax|im2col|split|auto] [--reference=official.json] [--json]

Issue 3 Sec. 8: the imagenet space of Table 1 (`configs/nasbnn.py:imagenet`),
input 64 x 64, batch 16, 100 classes, on this machine, through the library's
own code: `NasBnnSupernet` and the trainer's `make_sandwich_step` (Bi-Teacher
FWBA with label smoothing + the smallest and two random students with KD, one
Adam update), state built as the trainer builds it. Measured in one run:

* compile time (`jit(...).lower(...).compile()`, no execution: tracing and
  lowering, then XLA) of the sandwich step and of the eval forward (`apply(..., train=False)` with a traced
  architecture);
* sandwich step time: median over `--steps` steps after one warm-up, each step
  with new students sampled as the trainer samples them (seed 0, step s); steps
  run "lag-1" as in the trainer;
* eval forward time of the biggest, the smallest and one random subnet through
  the one eval program, timed interleaved over `--rounds` rounds (median);
* recompile count: how many times each program was traced beyond the first
  (0 means every subnet ran through the same compiled program);
* start-up time (imports to built state) and an estimate of the time to the
  first 100 sandwich steps (start-up + compile + first step + 99 medians), as
  `official_nasbnn_step.py` estimates its own;
* the 1-minute load average at the start, after compiling and at the end (the
  machine is shared; a busy one slows every number).

No reference time is built in: compare against the official PyTorch code by
running `benchmarks/official_nasbnn_step.py` in the same time window (its
report has the same rows), or pass its `--json` output file as `--reference`
to print official / ours per row (above 1: bnas_jax is faster). Data are
random images and labels; no dataset is read.

`--relaunch_check` measures issue 12 Sec. 2 instead: the sandwich step's
compile in a first process and in a second one that finds the first's
persistent compilation cache (`bnas_jax.compile_cache`; a new temporary
directory, deleted afterwards), and their ratio.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

_START = time.perf_counter()

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
  sys.path.insert(0, _REPO_ROOT)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from bnas_jax import compile_cache
from bnas_jax import optimizers
from bnas_jax import sharding
from bnas_jax import train_state as train_state_lib
from bnas_jax.models import nasbnn_subnet
from bnas_jax.models import nasbnn_supernet
from bnas_jax.search_spaces import nasbnn
from bnas_jax.trainers import nasbnn as nasbnn_trainer
from configs import nasbnn as nasbnn_config
# pylint: enable=g-import-not-at-top

flags.DEFINE_integer("steps", 5, "Timed sandwich steps (after one warm-up step).")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds of the eval forwards.")
flags.DEFINE_integer("devices", 0, "XLA host devices (0 = one per CPU core, as main.py).")
flags.DEFINE_enum(
  "preset",
  "imagenet",
  ["imagenet", "digits"],
  "imagenet: Table 1's space at --image_size (the issue's setting); digits: "
  "the space, input size and batch of configs/nasbnn.py's default run.",
)
flags.DEFINE_integer("image_size", 64, "Input side (imagenet preset).")
flags.DEFINE_integer("batch", 16, "Global batch size (imagenet preset).")
flags.DEFINE_integer("num_classes", 100, "Classifier width (imagenet preset).")
flags.DEFINE_string(
  "compile_cache",
  "off",
  "Persistent compilation cache directory (`bnas_jax.compile_cache`); 'off' "
  "(default) measures real compiles.",
)
flags.DEFINE_bool("compile_only", False, "Only compile the sandwich step; report its time.")
flags.DEFINE_bool(
  "relaunch_check",
  False,
  "Compile the sandwich step in two fresh processes sharing a new, empty cache "
  "directory: first launch vs relaunch (issue 12 Sec. 2).",
)
flags.DEFINE_enum(
  "conv_forward",
  "lax",
  ["lax", "im2col", "split", "auto"],
  "Forward of the binary k x k convs (`convolution.conv2d`).",
)
flags.DEFINE_bool("json", False, "Print one JSON object with all numbers as the last line.")
FLAGS = flags.FLAGS

flags.DEFINE_string(
  "reference",
  None,
  "A file whose last line is the JSON report of official_nasbnn_step.py "
  "--json, measured in the same time window; adds official / ours per row.",
)


def _seconds(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def _setting():
  """(config, space, image side, batch, classes) of `--preset`."""
  if FLAGS.preset == "digits":
    config = nasbnn_config.get_config()
    space = nasbnn_subnet.space_from_config(config)
    return config, space, space.resolution, config.batch_size, 10
  config = nasbnn_config.get_config("imagenet")
  space = nasbnn.SearchSpace.imagenet(num_classes=FLAGS.num_classes)
  return config, space, FLAGS.image_size, FLAGS.batch, FLAGS.num_classes


def relaunch_check() -> dict[str, Any]:
  """First-launch vs relaunch compile of the sandwich step, one fresh cache directory."""
  with tempfile.TemporaryDirectory(prefix="bnas_jax_xla_") as cache:
    times = []
    for _ in range(2):
      argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--compile_only",
        "--json",
        f"--compile_cache={cache}",
        f"--preset={FLAGS.preset}",
        f"--devices={FLAGS.devices}",
        f"--image_size={FLAGS.image_size}",
        f"--batch={FLAGS.batch}",
        f"--num_classes={FLAGS.num_classes}",
        f"--conv_forward={FLAGS.conv_forward}",
      ]
      out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
      times.append(json.loads(out.strip().splitlines()[-1]))
  first, second = (t["compile_sandwich"] for t in times)
  return {
    "preset": FLAGS.preset,
    "compile_first_launch": first,
    "compile_relaunch": second,
    "relaunch_over_first": second / first,
    # tracing + lowering to StableHLO is Python work no cache skips
    "trace_lower_first": times[0]["trace_lower"],
    "trace_lower_relaunch": times[1]["trace_lower"],
    "xla_first": times[0]["xla_compile_or_load"],
    "xla_relaunch": times[1]["xla_compile_or_load"],
    "relaunch_cache_hits": times[1]["cache_hits"],
    "load_average": times[0]["load_average"] + times[1]["load_average"],
  }


def _model_data_and_init(config, space, image_size, batch_size, num_classes, total_steps):
  """The supernet, one random batch (host arrays), the biggest subnet, a state builder and
  the generator that drew the batch (later draws continue its stream)."""
  model = nasbnn_supernet.NasBnnSupernet(space, num_classes, conv_forward=FLAGS.conv_forward)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch_size, image_size, image_size, 3), np.float32)
  labels = rng.integers(0, num_classes, batch_size).astype(np.int32)
  biggest = nasbnn.encode(space, nasbnn.biggest(space))

  def init_state(key):
    variables = model.init(key, jnp.zeros((1, image_size, image_size, 3)), biggest)
    tx = optimizers.make_optimizer(config.supernet.optimizer, variables["params"], total_steps, 1)
    return train_state_lib.TrainState.create(
      params=variables["params"],
      batch_stats=variables["batch_stats"],
      tx=tx,
      rng=jax.random.key_data(key),
    )

  return model, images, labels, biggest, init_state, rng


def benchmark() -> dict[str, Any]:
  """Runs every measurement of the module docstring; returns the numbers."""
  compile_cache.configure(FLAGS.compile_cache)
  mesh = sharding.make_mesh(FLAGS.devices if FLAGS.devices else 0)
  config, space, image_size, batch_size, num_classes = _setting()
  sharding.check_batch_size(batch_size, mesh, "the batch")
  total_steps = FLAGS.steps + 2
  model, images, labels, biggest, init_state, rng = _model_data_and_init(
    config, space, image_size, batch_size, num_classes, total_steps
  )
  batch = sharding.global_batch({"image": images, "label": labels}, mesh)

  load = [os.getloadavg()[0]]
  state = sharding.init_replicated(init_state, mesh, jax.random.key(0))
  jax.block_until_ready(state)
  startup = time.perf_counter() - _START
  traces = {"sandwich": 0, "eval": 0}

  def counted(name, fn):
    def wrapped(*args):
      traces[name] += 1  # runs once per trace
      return fn(*args)

    return wrapped

  step_fn = jax.jit(
    counted(
      "sandwich",
      nasbnn_trainer.make_sandwich_step(
        model, num_classes, biggest, label_smoothing=0.1, teacher_mode="fwba", distill=True
      ),
    ),
    donate_argnums=(0,),
  )
  students = [
    nasbnn_trainer.sandwich_archs(space, 0, s, "uniform_depths") for s in range(total_steps)
  ]
  cache_events = []
  jax.monitoring.register_event_listener(
    lambda name, **_: cache_events.append(name) if "compilation_cache/cache_" in name else None
  )
  start = time.perf_counter()
  lowered = step_fn.lower(state, batch, students[0])
  trace_lower = time.perf_counter() - start
  lowered.compile()
  compile_sandwich = time.perf_counter() - start
  load.append(os.getloadavg()[0])
  if FLAGS.compile_only:
    return {
      "preset": FLAGS.preset,
      "compile_sandwich": compile_sandwich,
      "trace_lower": trace_lower,
      "xla_compile_or_load": compile_sandwich - trace_lower,
      "cache_hits": sum(e.endswith("cache_hits") for e in cache_events),
      "load_average": load,
    }

  start = time.perf_counter()
  state, metrics = step_fn(state, batch, students[0])  # warm-up
  jax.block_until_ready(metrics)
  first_step = time.perf_counter() - start
  times, last = [], time.perf_counter()
  for s in range(1, total_steps - 1):
    state, new_metrics = step_fn(state, batch, students[s])
    jax.block_until_ready(metrics)  # lag-1, as training_loop.run_steps
    metrics = new_metrics
    now = time.perf_counter()
    times.append(now - last)
    last = now
  jax.block_until_ready(metrics)
  times.append(time.perf_counter() - last)
  times = times[1:]  # the first interval still overlaps the warm-up step

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  forward = jax.jit(counted("eval", lambda v, x, arch: model.apply(v, x, arch, train=False)))
  archs = {
    "biggest": nasbnn.biggest(space),
    "smallest": nasbnn.smallest(space),
    "random": nasbnn.sample_uniform(space, rng),
  }
  encodings = {
    name: jax.tree.map(jnp.asarray, nasbnn.encode(space, a)) for name, a in archs.items()
  }
  start = time.perf_counter()
  forward.lower(variables, batch["image"], encodings["biggest"]).compile()
  compile_eval = time.perf_counter() - start
  for enc in encodings.values():  # first calls
    _seconds(lambda enc=enc: forward(variables, batch["image"], enc))
  eval_times = {name: [] for name in archs}
  for _ in range(FLAGS.rounds):
    for name, enc in encodings.items():
      eval_times[name].append(_seconds(lambda enc=enc: forward(variables, batch["image"], enc)))

  result = {
    "preset": FLAGS.preset,
    "devices": mesh.size,
    "batch": batch_size,
    "image_size": image_size,
    "num_classes": num_classes,
    "conv_forward": FLAGS.conv_forward,
    "sandwich_step": float(np.median(times)),
    "sandwich_step_min": float(np.min(times)),
    "compile_sandwich": compile_sandwich,
    "compile_eval": compile_eval,
    "startup": startup,
    "first_step": first_step,
    # as the official script estimates it: start-up, compile, 100 steps
    "first_100_steps_estimate": startup
    + compile_sandwich
    + first_step
    + 99 * float(np.median(times)),
    "recompiles_sandwich": traces["sandwich"] - 1,
    "recompiles_eval": traces["eval"] - 1,
    "random_arch": archs["random"].to_string(),
    "load_average": load + [os.getloadavg()[0]],
  }
  for name, ts in eval_times.items():
    result[f"eval_{name}"] = float(np.median(ts))
  return result


def _reference(path: str) -> dict[str, Any]:
  with open(path) as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  return json.loads(lines[-1])


def format_report(r: dict[str, Any], reference: Optional[dict[str, Any]] = None) -> str:
  """The report; with `reference` (official_nasbnn_step.py's JSON) also official / ours."""
  ref = reference or {}
  lines = [
    f"NAS-BNN imagenet supernet, {r['image_size']}x{r['image_size']}, batch {r['batch']}, "
    f"{r['num_classes']} classes, {r['devices']} host device(s), conv forward "
    f"{r['conv_forward']}",
    f"{'measurement':<24}{'bnas_jax (s)':>13}"
    + (f"{'official (s)':>14}{'official/ours':>15}" if ref else ""),
  ]
  for key in (
    "sandwich_step",
    "eval_biggest",
    "eval_smallest",
    "eval_random",
    "first_100_steps_estimate",
  ):
    line = f"{key:<24}{r[key]:>13.3f}"
    if key in ref:
      line += f"{ref[key]:>14.3f}{ref[key] / r[key]:>15.2f}"
    lines.append(line)
  lines += [
    f"start-up (imports, state) {r['startup']:.1f} s; first step {r['first_step']:.1f} s",
    f"compile: sandwich step {r['compile_sandwich']:.1f} s, eval forward {r['compile_eval']:.1f} s",
    f"recompiles after the first trace: sandwich {r['recompiles_sandwich']}, "
    f"eval {r['recompiles_eval']}",
    f"random subnet: {r['random_arch']}",
    "load average (start, compiled, end): " + ", ".join(f"{a:.2f}" for a in r["load_average"]),
  ]
  if ref:
    lines.append(
      "official run's load average (start, end): "
      + ", ".join(f"{a:.2f}" for a in ref.get("load_average", []))
    )
  return "\n".join(lines)


def main(argv):
  del argv
  if FLAGS.relaunch_check or FLAGS.compile_only:
    result = relaunch_check() if FLAGS.relaunch_check else benchmark()
    print(
      ", ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items())
    )
    if FLAGS.json:
      print(json.dumps(result))
    return
  reference = _reference(FLAGS.reference) if FLAGS.reference else None
  result = benchmark()
  print(format_report(result, reference))
  if FLAGS.json:
    print(json.dumps(result))


if __name__ == "__main__":
  flags.FLAGS(sys.argv, known_only=True)
  if FLAGS.devices:
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={FLAGS.devices}"
    )
  else:
    sharding.use_one_cpu_device_per_core()
  app.run(main)
