"""Preemption and crashes of the CLI: SIGTERM and kill -9, then resume.

Each run is a real `python -m bnas_jax.main` process on the default reactnet
config shrunk by --config overrides. A wrapper slows the training batches and
touches a marker file when a given batch is drawn, so the signal lands while
training runs; the production code is unchanged. The expectation is
independent of the code under test: the parameters and test metrics of an
uninterrupted run with the same seed, which resuming must reproduce exactly
(CPU, same compiled programs).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
CHECKPOINT_EVERY = 4
TINY = ["--config=configs/reactnet.py", f"--config.num_train_steps={STEPS}",
        "--config.batch_size=16", "--config.progress_bar=False",
        "--config.model.blocks=((8, 1, 3, 1), (16, 2, 3, 2))", "--config.model.stem_features=8",
        "--config.data.image_size=16", "--config.max_eval_examples=64",
        "--config.log_every_steps=1", f"--config.checkpoint_every_steps={CHECKPOINT_EVERY}"]

# Runs bnas_jax.main with train batches slowed by DELAY seconds and a marker
# file touched when batch AT is drawn: argv = MARKER AT DELAY main-args...
_SLOWED_MAIN = r"""
import runpy, sys, time
from bnas_jax import input_pipeline
marker, at, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
real = input_pipeline.make_train_iterator

def slowed(*args, **kwargs):
  it = real(*args, **kwargs)

  class Slowed:
    drawn = 0

    def __next__(self):
      Slowed.drawn += 1
      if Slowed.drawn == at:
        open(marker, "w").close()
      time.sleep(delay)
      return next(it)

    def __getattr__(self, name):
      return getattr(it, name)

  return Slowed()

input_pipeline.make_train_iterator = slowed
sys.argv = ["bnas_jax.main"] + sys.argv[4:]
runpy.run_module("bnas_jax.main", run_name="__main__", alter_sys=True)
"""


def _env(cache_dir):
  # A shared compilation cache: later runs skip XLA compiles (same executables).
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
              XLA_FLAGS="--xla_force_host_platform_device_count=1",
              JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _main(workdir, cache_dir, *extra):
  return subprocess.run([sys.executable, "-m", "bnas_jax.main", f"--workdir={workdir}", *TINY,
                         *extra], cwd=REPO, env=_env(cache_dir), capture_output=True, text=True,
                        timeout=300)


def _start_slowed(workdir, cache_dir, marker, at, delay=0.3):
  return subprocess.Popen(
      [sys.executable, "-c", _SLOWED_MAIN, str(marker), str(at), str(delay),
       f"--workdir={workdir}", *TINY], cwd=REPO, env=_env(cache_dir),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=240):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    if proc.poll() is not None:
      raise AssertionError(f"run ended before the marker: {proc.communicate()[1][-3000:]}")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError("marker never appeared")
    time.sleep(0.05)


def _complete_steps(workdir):
  root = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()
                and os.path.exists(os.path.join(root, d, "commit_success.txt")))


def _restore_numpy(path):
  """A saved state as numpy arrays, whatever device layout it was saved from."""
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def _final(workdir):
  state = _restore_numpy(os.path.join(workdir, "checkpoints", str(STEPS), "state"))
  with open(os.path.join(workdir, "results.json")) as f:
    return state, json.load(f)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = _main(workdir, cache_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _final(str(workdir))


def _assert_same_run(resumed_dir, uninterrupted):
  state, results = _final(str(resumed_dir))
  ref_state, ref_results = uninterrupted
  assert int(state["step"]) == STEPS
  for name in ("params", "batch_stats", "opt_state", "rng"):
    assert jax.tree.structure(state[name]) == jax.tree.structure(ref_state[name])
    assert jax.tree.leaves(state[name]), name
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, err_msg=name), state[name],
                 ref_state[name])
  for key in ("test_accuracy", "test_loss", "test_examples"):
    assert results[key] == ref_results[key], key


def test_sigterm_checkpoints_the_current_step_exits_0_and_resumes_exactly(
    tmp_path, cache_dir, uninterrupted):
  workdir, marker = tmp_path / "run", tmp_path / "at_batch_6"
  proc = _start_slowed(workdir, cache_dir, marker, at=6)
  _wait_for(marker, proc)
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  elapsed = time.time() - sent
  assert proc.returncode == 0, err[-3000:]
  assert "Stopped after step" in out and "Traceback" not in err
  # Steps are 0.3 s apart; the one running when the signal came is finished
  # and saved (step 6, or 7 if batch 7 was already drawn), then the process
  # exits: far sooner than a scheduler's grace period (>= 30 s).
  steps = _complete_steps(str(workdir))
  assert steps[-1] in (6, 7) and CHECKPOINT_EVERY in steps, steps
  assert elapsed < 15, elapsed

  resumed = _main(workdir, cache_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from step {steps[-1]} of {STEPS}" in resumed.stdout
  _assert_same_run(workdir, uninterrupted)


def test_kill_9_during_an_async_save_resumes_to_the_same_result(tmp_path, cache_dir,
                                                                uninterrupted):
  # Batch 9 is drawn right after step 8's checkpoint started saving in the
  # background: the kill leaves a temporary directory, step 4 stays the
  # newest complete checkpoint.
  workdir, marker = tmp_path / "run", tmp_path / "at_batch_9"
  proc = _start_slowed(workdir, cache_dir, marker, at=9, delay=0.05)
  _wait_for(marker, proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert _complete_steps(str(workdir))[-1] in (4, 8)

  resumed = _main(workdir, cache_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert not [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]
  _assert_same_run(workdir, uninterrupted)
