"""Preemption and crashes of the CLI: SIGTERM and kill -9, then resume.

Each run is a real `python -m bnas_jax.main` process (through the instrumented
main of `cli_crash`, which pauses the run at a known training step and touches
a marker file there, so the signal lands while training runs; the production
code is unchanged) on a config shrunk by --config overrides: the default
reactnet config, and DMS's width search. The expectation is independent of the
code under test: the saved state and results of an uninterrupted run with the
same seed, which resuming must reproduce exactly (CPU, same compiled programs).
NAS-BNN's supernet and search and the cell search are crashed in
test_multiprocess.py, next to their uninterrupted multi-device runs.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import cli_crash

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
CHECKPOINT_EVERY = 4
TINY = [
  *cli_crash.TINY_REACTNET,
  f"--config.num_train_steps={STEPS}",
  f"--config.checkpoint_every_steps={CHECKPOINT_EVERY}",
]
# DMS on a shrunken VGG-11: 2 search blocks of 3 weight steps (each
# checkpointed) and 3 mu steps; no evaluation training.
DMS_BLOCK_STEPS = 3
DMS = [
  "--config=configs/dms.py",
  "--config.model.base_widths=(4, 4, 8, 8, 8, 8, 8, 8)",
  "--config.batch_size=32",
  "--config.eval_batch_size=64",
  "--config.max_eval_examples=64",
  "--config.progress_bar=False",
  "--config.log_every_steps=1",
  "--config.checkpoint_every_steps=1",
  "--config.search.num_blocks=2",
  f"--config.search.block_steps={DMS_BLOCK_STEPS}",
  "--config.search.arch_steps=3",
  "--config.eval.num_epochs=0",
]
# Per-block wall times, and whether a block found its steps already compiled
# in this process, differ between a resumed and an uninterrupted run.
DMS_TIMING = (
  "compile_seconds",
  "weight_train_seconds",
  "arch_seconds",
  "block_seconds",
  "compiled_steps_reused",
  "search_seconds",
  "compile_seconds_per_block",
)


def _env(cache_dir, pause=None):
  # A shared compilation cache: later runs skip XLA compiles (same executables).
  return dict(
    os.environ,
    PYTHONPATH=REPO,
    JAX_PLATFORMS="cpu",
    TF_CPP_MIN_LOG_LEVEL="3",
    XLA_FLAGS="--xla_force_host_platform_device_count=1",
    JAX_DISABLE_MOST_OPTIMIZATIONS="1",
    JAX_COMPILATION_CACHE_DIR=str(cache_dir),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    **(pause or {}),
  )


def _main(workdir, cache_dir, flags=TINY):
  return subprocess.run(
    [sys.executable, "-m", "bnas_jax.main", f"--workdir={workdir}", *flags],
    cwd=REPO,
    env=_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=300,
  )


def _start_paused(workdir, cache_dir, marker, at, delay, flags=TINY):
  """The run paused `delay` s at every `should_stop` call from call `at` (= step) on."""
  return subprocess.Popen(
    [sys.executable, cli_crash.__file__, f"--workdir={workdir}", *flags],
    cwd=REPO,
    env=_env(cache_dir, cli_crash.pause_env(marker, at, delay)),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = _main(workdir, cache_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _assert_same_run(resumed_dir, uninterrupted_dir):
  final = os.path.join("checkpoints", str(STEPS), "state")
  assert int(cli_crash.restore_numpy(resumed_dir / final)["step"]) == STEPS
  cli_crash.assert_same_state(resumed_dir / final, uninterrupted_dir / final)
  results, expected = (
    json.loads((d / "results.json").read_text()) for d in (resumed_dir, uninterrupted_dir)
  )
  for key in ("test_accuracy", "test_loss", "test_examples"):
    assert results[key] == expected[key], key


def test_sigterm_checkpoints_the_current_step_exits_0_and_resumes_exactly(
  tmp_path, cache_dir, uninterrupted
):
  workdir, marker = tmp_path / "run", tmp_path / "at_step_6"
  proc = _start_paused(workdir, cache_dir, marker, at=6, delay=0.3)
  cli_crash.wait_for([marker], proc)
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  elapsed = time.time() - sent
  assert proc.returncode == 0, err[-3000:]
  assert "Stopped after step" in out and "Traceback" not in err
  # Steps are 0.3 s apart; the one running when the signal came is finished
  # and saved (step 6, or 7 if step 6's pause was over), then the process
  # exits: far sooner than a scheduler's grace period (>= 30 s).
  steps = cli_crash.complete_steps(workdir / "checkpoints")
  assert steps[-1] in (6, 7) and CHECKPOINT_EVERY in steps, steps
  assert elapsed < 15, elapsed

  resumed = _main(workdir, cache_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from step {steps[-1]} of {STEPS}" in resumed.stdout
  _assert_same_run(workdir, uninterrupted)


def test_kill_9_during_an_async_save_resumes_to_the_same_result(tmp_path, cache_dir, uninterrupted):
  # Step 9 runs right after step 8's checkpoint started saving in the
  # background: the kill leaves a temporary directory, step 4 stays the
  # newest complete checkpoint.
  workdir, marker = tmp_path / "run", tmp_path / "at_step_9"
  proc = _start_paused(workdir, cache_dir, marker, at=9, delay=0.05)
  cli_crash.wait_for([marker], proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert cli_crash.complete_steps(workdir / "checkpoints")[-1] in (4, 8)

  resumed = _main(workdir, cache_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert not [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]
  _assert_same_run(workdir, uninterrupted)


def test_kill_9_in_the_dms_search_resumes_to_the_same_widths(tmp_path, cache_dir):
  straight, workdir = tmp_path / "straight", tmp_path / "run"
  proc = _main(straight, cache_dir, DMS)
  assert proc.returncode == 0, proc.stderr[-3000:]

  # Killed in block 2's second weight step, once its first is checkpointed.
  block_2 = workdir / "search" / "block_001" / "checkpoints"
  marker = tmp_path / "at_block_2_step_2"
  proc = _start_paused(workdir, cache_dir, marker, at=DMS_BLOCK_STEPS + 2, delay=3.0, flags=DMS)
  cli_crash.wait_for([marker, block_2 / "1" / "commit_success.txt"], proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert cli_crash.complete_steps(block_2) == [1]
  assert cli_crash.read_json(workdir / "search" / "state.json")["next_block"] == 1

  resumed = _main(workdir, cache_dir, DMS)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  for name in ("search/state.json", "dms_widths.json", "report.json"):
    assert cli_crash.read_json(workdir / name, DMS_TIMING) == cli_crash.read_json(
      straight / name, DMS_TIMING
    ), name
  final = os.path.join("search", "block_001", "checkpoints", str(DMS_BLOCK_STEPS), "state")
  cli_crash.assert_same_state(workdir / final, straight / final)
