"""Real multi-process runs on one machine through launch/local_multiprocess.sh.

2 processes x 2 CPU devices (localhost coordinator, gloo collectives, each
process feeding its own rows of the global batch) must train like 1 process x
4 devices: the same 4-device mesh and global batch, so the same loss curve up
to the order of floating-point reductions. A SIGTERM to one process stops all
of them after one common step with a checkpoint (exit 0); a process killed
with -9 makes the survivor exit with an error within the heartbeat timeout.

New methods add their tiny CLI flags to `CONFIGS` to get the same check.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "launch", "local_multiprocess.sh")
HEARTBEAT_SECONDS = 5

CONFIGS = {
    "reactnet": ["--config=configs/reactnet.py", "--config.batch_size=16",
                 "--config.progress_bar=False",
                 "--config.model.blocks=((8, 1, 3, 1), (16, 2, 3, 2))",
                 "--config.model.stem_features=8", "--config.data.image_size=16",
                 "--config.max_eval_examples=64", "--config.log_every_steps=1"],
}
CURVE_METRIC = {"reactnet": "train_loss"}


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(log_dir, cache_dir):
  return dict(os.environ, PYTHONPATH=REPO, LOG_DIR=str(log_dir), BNAS_PORT=str(_free_port()),
              BNAS_HEARTBEAT_TIMEOUT_SECONDS=str(HEARTBEAT_SECONDS), TF_CPP_MIN_LOG_LEVEL="3",
              JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _launch(processes, devices, workdir, log_dir, cache_dir, *flags):
  return subprocess.Popen(["bash", SCRIPT, str(processes), str(devices), f"--workdir={workdir}",
                           *flags], cwd=REPO, env=_env(log_dir, cache_dir),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _log(log_dir, process):
  with open(os.path.join(log_dir, f"process_{process}.log")) as f:
    return f.read()


def _curve(log: str, metric: str) -> dict[int, float]:
  """{step: value} from the console metric lines ("[step] name=value, ...")."""
  return {int(m.group(1)): float(m.group(2))
          for m in re.finditer(rf"\] \[(\d+)\] [^\n]*\b{metric}=([-+.\deE]+)", log)}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_two_processes_of_two_devices_train_like_one_process_of_four(tmp_path, cache_dir, name):
  flags = [*CONFIGS[name], "--config.num_train_steps=6"]
  runs = {}
  for processes, devices in ((2, 2), (1, 4)):
    key = f"{processes}x{devices}"
    proc = _launch(processes, devices, tmp_path / key, tmp_path / f"logs_{key}", cache_dir,
                   *flags)
    out = proc.communicate(timeout=600)[0]
    logs = [_log(tmp_path / f"logs_{key}", p) for p in range(processes)]
    assert proc.returncode == 0, out + logs[0][-3000:]
    devices_line = re.search(rf"process 0/{processes}, devices: (.*)", logs[0])
    assert devices_line and devices_line.group(1).count("CpuDevice(") == 4, logs[0][:3000]
    runs[key] = _curve(logs[0], CURVE_METRIC[name])
    # Metrics and results come from process 0 only.
    events = [f for f in os.listdir(tmp_path / key) if f.startswith("events.out.tfevents")]
    assert len(events) == 1, events
    if processes > 1:  # the printed summary line (all processes log it)
      printed = re.compile(r"^\[train\] test accuracy", re.MULTILINE)
      assert printed.search(logs[0]) and not printed.search(logs[1])
  assert sorted(runs["2x2"]) == list(range(1, 7)) == sorted(runs["1x4"])
  np.testing.assert_allclose([runs["2x2"][s] for s in range(1, 7)],
                             [runs["1x4"][s] for s in range(1, 7)], rtol=1e-4)


def test_sigterm_stops_every_process_at_one_step_and_a_dead_process_stops_the_job(
    tmp_path, cache_dir):
  flags = [*CONFIGS["reactnet"], "--config.num_train_steps=100000",
           "--config.checkpoint_every_steps=20"]
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  checkpoints = workdir / "checkpoints"

  def wait_for_checkpoint(step, proc):
    deadline = time.time() + 300
    while not (checkpoints / str(step) / "commit_success.txt").exists():
      assert proc.poll() is None, proc.communicate()[0] + _log(logs, 0)[-3000:]
      assert time.time() < deadline
      time.sleep(0.1)

  def pid(process):
    with open(logs / f"process_{process}.pid") as f:
      return int(f.read())

  # A preemption notice reaching only process 1: both agree on a step, save it, exit 0.
  proc = _launch(2, 2, workdir, logs, cache_dir, *flags)
  wait_for_checkpoint(20, proc)
  os.kill(pid(1), signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out + _log(logs, 0)[-3000:]
  stopped = re.search(r"Stopped after step (\d+)", _log(logs, 0))
  assert stopped, _log(logs, 0)[-3000:]
  step = int(stopped.group(1))
  assert step > 20 and (checkpoints / str(step) / "commit_success.txt").exists()

  # The same command resumes; then process 1 dies without a word.
  proc = _launch(2, 2, workdir, logs, cache_dir, *flags)
  wait_for_checkpoint(step + 20 - step % 20, proc)
  os.kill(pid(1), signal.SIGKILL)
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
  env = {"BNAS_COORDINATOR": "10.0.0.2:8476", "BNAS_NUM_PROCESSES": "4",
         "BNAS_PROCESS_ID": "3", "BNAS_HEARTBEAT_TIMEOUT_SECONDS": "7"}
  s = distributed.resolve(environ=env)
  assert (s.mode, s.coordinator_address, s.num_processes, s.process_id,
          s.heartbeat_timeout_seconds) == ("explicit", "10.0.0.2:8476", 4, 3, 7)
  s = distributed.resolve(process_id=1, heartbeat_timeout_seconds=30, environ=env)
  assert (s.process_id, s.heartbeat_timeout_seconds) == (1, 30)
  assert distributed.resolve(environ={}).mode == "single"
  assert distributed.resolve(environ={"BNAS_JAX_DISTRIBUTED": "1"}).mode == "auto"
  assert distributed.resolve(auto=True, environ={}).mode == "auto"


@pytest.mark.parametrize("flags,expected", [
    (["--num_processes=2"], "--coordinator_address, --process_id not set"),
    (["--coordinator_address=localhost", "--num_processes=2", "--process_id=0"], "HOST:PORT"),
    (["--coordinator_address=localhost:1234", "--num_processes=2", "--process_id=2"],
     "0 <= process_id < num_processes"),
    (["--heartbeat_timeout_seconds=0"], "at least 1 second"),
])
def test_bad_multi_process_flags_exit_2_before_compute(tmp_path, flags, expected):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "bnas_jax.main", "--config=configs/reactnet.py",
                         f"--workdir={tmp_path}", *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert expected in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr


def test_jax_distributed_without_a_cluster_exits_2(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_"))}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "bnas_jax.main", "--config=configs/reactnet.py",
                         f"--workdir={tmp_path}", "--jax_distributed"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "found no cluster to join" in " ".join(proc.stderr.split())
