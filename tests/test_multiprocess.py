"""Real multi-process runs on one machine through launch/local_multiprocess.sh.

2 processes x 2 CPU devices (localhost coordinator, gloo collectives, each
process feeding its own rows of the global batch) must train like 1 process x
4 devices: the same 4-device mesh and global batch, so the same loss curve up
to the order of floating-point reductions, and every process must take the
same host-side decisions (sampled subnets, search children, genotypes).
A kill -9 of the 1 x 4 run in NAS-BNN's supernet training, then in its
evolutionary search, or in a cell search, then the same command again, must
end bit-for-bit where the uninterrupted 1 x 4 run ends (same programs on CPU;
the kill points come from cli_crash's pause). A SIGTERM to one process of a
2 x 2 job stops all of them after one common step with a checkpoint (exit 0);
a process killed with -9 makes the survivor exit with an error within the
heartbeat timeout.

New methods add their tiny CLI flags to `CONFIGS` to get the same checks.
"""

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import cli_crash

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "launch", "local_multiprocess.sh")
HEARTBEAT_SECONDS = 5
TRAIN_STEPS = 6
CHECKPOINT_EVERY = 3


@dataclasses.dataclass(frozen=True)
class Case:
  """A method's tiny run and what its logs must show.

  Attributes:
    flags: CLI flags of the run, except its number of training steps.
    steps_flag: the flag that sets the number of training steps.
    curve_metric: the per-step console metric compared between layouts.
    events_dir: where process 0 writes TensorBoard events, relative to --workdir.
    printed_by_process_0: a result line only process 0 prints.
    decisions: lines every process prints; equal lines mean every process
      took the same host-side decisions.
  """

  flags: tuple[str, ...]
  steps_flag: str
  curve_metric: str = "train_loss"
  events_dir: str = "."
  printed_by_process_0: str = r"^\[train\] test accuracy"
  decisions: str = ""


# The smallest NAS-BNN space with every kind of choice (stem width, depth,
# width, kernel, groups) and the Non-Decreasing constraint across a stage
# boundary: 224 architectures, compiled in seconds instead of Table 1's minutes.
TINY_NASBNN_SPACE = (
  "--config.space.width_divisor=1",
  "--config.space.resolution=16",
  "--config.space.stem_widths=(4, 8)",
  "--config.space.stages=(((1, 2), (8,), (3,), (1,), 1), ((1, 2), (8, 16), (3, 5), (1, 2), 2))",
)

CONFIGS = {
  "reactnet": Case(cli_crash.TINY_REACTNET, "--config.num_train_steps"),
  # Supernet training (sandwich subnets drawn on the host every step), then a
  # 2-generation search whose children and Pareto front every process must
  # draw alike; no deployment.
  "nasbnn": Case(
    (
      "--config=configs/nasbnn.py",
      *TINY_NASBNN_SPACE,
      "--config.num_devices=0",  # every device of the job (the digits preset uses one)
      "--config.batch_size=16",
      "--config.eval_batch_size=32",
      "--config.max_eval_examples=32",
      "--config.progress_bar=False",
      "--config.log_every_steps=1",
      f"--config.checkpoint_every_steps={CHECKPOINT_EVERY}",
      "--config.search.population_size=4",
      "--config.search.generations=2",
      "--config.search.num_mutations=2",
      "--config.search.num_crossovers=1",
      "--config.search.calibration_batches=1",
      "--config.search.sweep_chunk=4",
      "--config.deploy.ops_targets=()",
    ),
    "--config.supernet.num_train_steps",
    events_dir="supernet",
    printed_by_process_0=r"^Search generation 2/2",
    decisions=r"^ +[\d.]+ +[\d.]+ +stem\S+$",
  ),  # the printed Pareto front
  # BNAS cell search on 8x8 digits, one cell, no final network; every process
  # prints the genotype derived from its alpha.
  "cell_search": Case(
    (
      "--config=configs/bnas.py",
      "--config.data.image_size=8",
      "--config.model.channels=2",
      "--config.model.num_cells=1",
      "--config.search.batch_size=16",
      "--config.final.num_epochs=0",
      "--config.eval_batch_size=32",
      "--config.max_eval_examples=32",
      "--config.progress_bar=False",
      "--config.log_every_steps=1",
      f"--config.checkpoint_every_steps={CHECKPOINT_EVERY}",
    ),
    "--config.search.num_train_steps",
    events_dir="search",
    printed_by_process_0=r"^\[search\] epoch",
    decisions=r"^genotype: .*$",
  ),
}


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(log_dir, cache_dir, extra=()):
  env = dict(
    os.environ,
    PYTHONPATH=REPO,
    LOG_DIR=str(log_dir),
    BNAS_PORT=str(_free_port()),
    BNAS_HEARTBEAT_TIMEOUT_SECONDS=str(HEARTBEAT_SECONDS),
    TF_CPP_MIN_LOG_LEVEL="3",
    JAX_DISABLE_MOST_OPTIMIZATIONS="1",
    JAX_COMPILATION_CACHE_DIR=str(cache_dir),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    # The interpreter running the tests, not whatever python3 is on PATH.
    PYTHON=sys.executable,
  )
  if extra:  # instrumented: the processes run tests/cli_crash.py
    env.update(extra, PYTHON=cli_crash.python_shim(os.path.dirname(log_dir)))
  return env


def _launch(processes, devices, workdir, log_dir, cache_dir, *flags, env=()):
  return subprocess.Popen(
    ["bash", SCRIPT, str(processes), str(devices), f"--workdir={workdir}", *flags],
    cwd=REPO,
    env=_env(log_dir, cache_dir, dict(env)),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _log(log_dir, process):
  with open(os.path.join(log_dir, f"process_{process}.log")) as f:
    return f.read()


def _pid(log_dir, process):
  with open(os.path.join(log_dir, f"process_{process}.pid")) as f:
    return int(f.read())


def _curve(log: str, metric: str) -> dict[int, float]:
  """{step: value} from the console metric lines ("[step] name=value, ...")."""
  return {
    int(m.group(1)): float(m.group(2))
    for m in re.finditer(rf"\] \[(\d+)\] [^\n]*\b{metric}=([-+.\deE]+)", log)
  }


def _flags(name):
  case = CONFIGS[name]
  # --verbose: the metric lines compared below are library (absl) log lines,
  # which otherwise go to WORKDIR/log.txt.
  return [*case.flags, f"{case.steps_flag}={TRAIN_STEPS}", "--verbose"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@dataclasses.dataclass(frozen=True)
class Run:
  workdir: str
  logs: list[str]  # per process


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir):
  """(name, processes) -> the uninterrupted run of `name` on 4 devices in 1 or 2 processes.

  Both layouts of a method are launched once per module, side by side (they
  compile different programs; the 1 x 4 run alone would leave a core idle).
  """
  runs = {}

  def run(name: str, processes: int) -> Run:
    if (name, processes) not in runs:
      started = {}
      for p in (2, 1):
        root = tmp_path_factory.mktemp(f"{name}_{p}x{4 // p}")
        started[p] = (
          root,
          _launch(p, 4 // p, root / "work", root / "logs", cache_dir, *_flags(name)),
        )
      for p, (root, proc) in started.items():
        out = proc.communicate(timeout=900)[0]
        logs = [_log(root / "logs", i) for i in range(p)]
        assert proc.returncode == 0, out + logs[0][-3000:] + logs[-1][-3000:]
        runs[name, p] = Run(str(root / "work"), logs)
    return runs[name, processes]

  return run


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_two_processes_of_two_devices_train_like_one_process_of_four(finished_run, name):
  case = CONFIGS[name]
  curves = {}
  for processes in (2, 1):
    run = finished_run(name, processes)
    devices_line = re.search(rf"process 0/{processes}, devices: (.*)", run.logs[0])
    assert devices_line and devices_line.group(1).count("CpuDevice(") == 4, run.logs[0][:3000]
    curves[processes] = _curve(run.logs[0], case.curve_metric)
    # Metrics and results come from process 0 only.
    events = [
      f
      for f in os.listdir(os.path.join(run.workdir, case.events_dir))
      if f.startswith("events.out.tfevents")
    ]
    assert len(events) == 1, events
  logs = finished_run(name, 2).logs
  # The printed summary line (all processes log it, after a logging prefix).
  printed = re.compile(case.printed_by_process_0, re.MULTILINE)
  assert printed.search(logs[0]) and not printed.search(logs[1])
  # Every process logs the metrics it computed and prints the decisions it took.
  assert _curve(logs[1], case.curve_metric) == curves[2]
  if case.decisions:
    decided = [re.findall(case.decisions, log, re.MULTILINE) for log in logs]
    assert decided[0] and decided[0] == decided[1], decided
  steps = list(range(1, TRAIN_STEPS + 1))
  assert sorted(curves[2]) == steps == sorted(curves[1])
  np.testing.assert_allclose(
    [curves[2][s] for s in steps], [curves[1][s] for s in steps], rtol=1e-4
  )


def _kill_9(name, workdir, log_dir, cache_dir, *, at, wait_for):
  """Launches the 1 x 4 run of `name` and SIGKILLs it in a pause at `should_stop` call `at`.

  The pause (3 s per call from call `at` on) holds the run while `wait_for`
  (paths, e.g. an earlier checkpoint's background write) complete.
  """
  marker = os.path.join(os.path.dirname(log_dir), f"at_call_{at}")
  proc = _launch(
    1,
    4,
    workdir,
    log_dir,
    cache_dir,
    *_flags(name),
    env=tuple(cli_crash.pause_env(marker, at, 3.0).items()),
  )
  cli_crash.wait_for([marker, *wait_for], proc)
  os.kill(_pid(log_dir, 0), signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGKILL  # the launcher's status for the killed process


def _resume(name, workdir, log_dir, cache_dir):
  proc = _launch(1, 4, workdir, log_dir, cache_dir, *_flags(name))
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, out + _log(log_dir, 0)[-3000:]
  return _log(log_dir, 0)


def test_kill_9_in_supernet_training_and_in_the_search_resumes_to_the_same_result(
  tmp_path, cache_dir, finished_run
):
  work, supernet = tmp_path / "work", tmp_path / "work" / "supernet" / "checkpoints"
  # Killed while paused after step 5, once step 3's checkpoint is complete.
  _kill_9(
    "nasbnn",
    work,
    tmp_path / "logs_a",
    cache_dir,
    at=5,
    wait_for=[supernet / str(CHECKPOINT_EVERY) / "commit_success.txt"],
  )
  assert cli_crash.complete_steps(supernet) == [CHECKPOINT_EVERY]
  # Relaunched: steps 4-6 (should_stop calls 1-3), then the initial population
  # of the search (call 4, just after its search state is saved); killed there.
  # (Had it restarted from step 0, call 4 would come before any search state.)
  _kill_9(
    "nasbnn",
    work,
    tmp_path / "logs_b",
    cache_dir,
    at=TRAIN_STEPS - CHECKPOINT_EVERY + 1,
    wait_for=[work / "search" / "search_state.json"],
  )
  assert cli_crash.read_json(work / "search" / "search_state.json")["generation"] == 0
  log = _resume("nasbnn", work, tmp_path / "logs_c", cache_dir)
  assert "Resuming the search" in log and "0 of 2 generations done" in log

  expected = finished_run("nasbnn", 1).workdir
  final = os.path.join("supernet", "checkpoints", str(TRAIN_STEPS), "state")
  cli_crash.assert_same_state(work / final, os.path.join(expected, final))
  for name in ("search_records.json", "pareto_front.json", "search_table.json"):
    assert cli_crash.read_json(work / "search" / name) == cli_crash.read_json(
      os.path.join(expected, "search", name)
    ), name


def test_kill_9_in_cell_search_resumes_to_the_same_result(tmp_path, cache_dir, finished_run):
  work, search = tmp_path / "work", tmp_path / "work" / "search"
  _kill_9(
    "cell_search",
    work,
    tmp_path / "logs_a",
    cache_dir,
    at=5,
    wait_for=[search / "checkpoints" / str(CHECKPOINT_EVERY) / "commit_success.txt"],
  )
  assert cli_crash.complete_steps(search / "checkpoints") == [CHECKPOINT_EVERY]
  _resume("cell_search", work, tmp_path / "logs_b", cache_dir)

  expected = finished_run("cell_search", 1).workdir
  final = os.path.join("search", "checkpoints", str(TRAIN_STEPS), "state")
  cli_crash.assert_same_state(work / final, os.path.join(expected, final))
  for name in ("search/history.json", "search/genotype_best.json", "genotype.json"):
    assert cli_crash.read_json(work / name, ignore=["wall_seconds"]) == cli_crash.read_json(
      os.path.join(expected, name), ignore=["wall_seconds"]
    ), name


def test_sigterm_stops_every_process_at_one_step_and_a_dead_process_stops_the_job(
  tmp_path, cache_dir
):
  flags = [
    *CONFIGS["reactnet"].flags,
    "--config.num_train_steps=100000",
    "--config.checkpoint_every_steps=20",
  ]
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  checkpoints = workdir / "checkpoints"

  def wait_for_checkpoint(step, proc):
    deadline = time.time() + 300
    while not (checkpoints / str(step) / "commit_success.txt").exists():
      assert proc.poll() is None, proc.communicate()[0] + _log(logs, 0)[-3000:]
      assert time.time() < deadline
      time.sleep(0.1)

  # A preemption notice reaching only process 1: both agree on a step, save it, exit 0.
  proc = _launch(2, 2, workdir, logs, cache_dir, *flags)
  wait_for_checkpoint(20, proc)
  os.kill(_pid(logs, 1), signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out + _log(logs, 0)[-3000:]
  stopped = re.search(r"Stopped after step (\d+)", _log(logs, 0))
  assert stopped, _log(logs, 0)[-3000:]
  step = int(stopped.group(1))
  assert step > 20 and (checkpoints / str(step) / "commit_success.txt").exists()

  # The same command resumes; then process 1 dies without a word.
  proc = _launch(2, 2, workdir, logs, cache_dir, *flags)
  wait_for_checkpoint(step + 20 - step % 20, proc)
  os.kill(_pid(logs, 1), signal.SIGKILL)
  killed = time.time()
  proc.communicate(timeout=120)
  elapsed = time.time() - killed
  assert proc.returncode != 0
  assert f"resumed from step {step}" in _log(logs, 0)
  # The survivor fails at its next collective or, at the latest, when the
  # coordinator misses the dead process's heartbeats.
  assert elapsed < 4 * HEARTBEAT_SECONDS + 10, elapsed


def test_settings_come_from_flags_then_environment():
  from bnas_jax import distributed  # pylint: disable=g-import-not-at-top

  env = {
    "BNAS_COORDINATOR": "10.0.0.2:8476",
    "BNAS_NUM_PROCESSES": "4",
    "BNAS_PROCESS_ID": "3",
    "BNAS_HEARTBEAT_TIMEOUT_SECONDS": "7",
  }
  s = distributed.resolve(environ=env)
  assert (
    s.mode,
    s.coordinator_address,
    s.num_processes,
    s.process_id,
    s.heartbeat_timeout_seconds,
  ) == ("explicit", "10.0.0.2:8476", 4, 3, 7)
  s = distributed.resolve(process_id=1, heartbeat_timeout_seconds=30, environ=env)
  assert (s.process_id, s.heartbeat_timeout_seconds) == (1, 30)
  assert distributed.resolve(environ={}).mode == "single"
  assert distributed.resolve(environ={"BNAS_JAX_DISTRIBUTED": "1"}).mode == "auto"
  assert distributed.resolve(auto=True, environ={}).mode == "auto"


@pytest.mark.parametrize(
  "flags,expected",
  [
    (["--num_processes=2"], "--coordinator_address, --process_id not set"),
    (["--coordinator_address=localhost", "--num_processes=2", "--process_id=0"], "HOST:PORT"),
    (
      ["--coordinator_address=localhost:1234", "--num_processes=2", "--process_id=2"],
      "0 <= process_id < num_processes",
    ),
    (["--heartbeat_timeout_seconds=0"], "at least 1 second"),
  ],
)
def test_bad_multi_process_flags_exit_2_before_compute(tmp_path, flags, expected):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "bnas_jax.main",
      "--config=configs/reactnet.py",
      f"--workdir={tmp_path}",
      *flags,
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert expected in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr


def test_jax_distributed_without_a_cluster_exits_2(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_"))}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "bnas_jax.main",
      "--config=configs/reactnet.py",
      f"--workdir={tmp_path}",
      "--jax_distributed",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "found no cluster to join" in " ".join(proc.stderr.split())
