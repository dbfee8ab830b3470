"""Crash tests of the real CLI: an instrumented `bnas_jax.main`, kill points, comparisons.

As a script, `python tests/cli_crash.py MAIN_FLAGS...` runs `bnas_jax.main`
with test-only instrumentation selected by an environment variable (a leading
`-m bnas_jax.main` is dropped, so `launch/local_multiprocess.sh` runs it through
the shim `python_shim` writes, as its `PYTHON`). The production code is unchanged.

  BNAS_TEST_PAUSE=MARKER:AT:DELAY
      `preemption.should_stop` is called once per training step and once per
      search generation on every process, counted over the whole launch. From
      its AT-th call on, each call first sleeps DELAY seconds; the AT-th
      touches MARKER before sleeping. A test that waits for MARKER then signals
      a run that is still going, at a known step or generation.

As a module it gives tests the pieces around such runs: waiting for a marker,
complete checkpoint steps, and saved states and JSON results to compare a
resumed run with an uninterrupted one.
"""

import json
import os
import runpy
import stat
import sys
import time
from typing import Any, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp

# The run both crash suites train: the digits ReActNet shrunk to two blocks at
# 16x16 (add --config.num_train_steps=N).
TINY_REACTNET = (
  "--config=configs/reactnet.py",
  "--config.batch_size=16",
  "--config.progress_bar=False",
  "--config.model.blocks=((8, 1, 3, 1), (16, 2, 3, 2))",
  "--config.model.stem_features=8",
  "--config.data.image_size=16",
  "--config.max_eval_examples=64",
  "--config.log_every_steps=1",
)

from bnas_jax import preemption

ENV_PAUSE = "BNAS_TEST_PAUSE"


def pause_env(marker: os.PathLike, at: int, delay: float) -> dict[str, str]:
  """The environment that pauses a run from `should_stop` call `at` on."""
  return {ENV_PAUSE: f"{marker}:{at}:{delay}"}


def python_shim(directory: os.PathLike) -> str:
  """An executable running this script, for launch/local_multiprocess.sh's PYTHON."""
  path = os.path.join(directory, "python_with_cli_crash")
  with open(path, "w") as f:
    f.write(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.abspath(__file__)}" "$@"\n')
  os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
  return path


def wait_for(paths: Iterable[os.PathLike], proc: Any, timeout: float = 300) -> None:
  """Waits until every path exists; fails if `proc` (a Popen) ends first."""
  deadline = time.time() + timeout
  while not all(os.path.exists(p) for p in paths):
    if proc.poll() is not None:
      raise AssertionError(
        f"the run ended before {list(map(str, paths))}:\n{(proc.communicate()[0] or '')[-3000:]}"
      )
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f"{list(map(str, paths))} never appeared")
    time.sleep(0.05)


def complete_steps(checkpoint_dir: os.PathLike) -> list[int]:
  """Steps whose orbax checkpoint in `checkpoint_dir` finished writing."""
  return sorted(
    int(d)
    for d in os.listdir(checkpoint_dir)
    if d.isdigit() and os.path.exists(os.path.join(checkpoint_dir, d, "commit_success.txt"))
  )


def restore_numpy(path: os.PathLike) -> Any:
  """A saved state as numpy arrays, whatever device layout it was saved from."""
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def assert_same_state(path: os.PathLike, expected_path: os.PathLike) -> None:
  """Two saved train states hold bit-identical arrays (same tree, none empty)."""
  state, expected = restore_numpy(path), restore_numpy(expected_path)
  assert jax.tree.structure(state) == jax.tree.structure(expected)
  assert jax.tree.leaves(state)
  for (key, a), b in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(key))


def read_json(path: os.PathLike, ignore: Iterable[str] = ()) -> Any:
  """A JSON file without the keys in `ignore` (at any depth), e.g. wall times."""
  ignore = set(ignore)

  def drop(value):
    if isinstance(value, dict):
      return {k: drop(v) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
      return [drop(v) for v in value]
    return value

  with open(path) as f:
    return drop(json.load(f))


def _install_pause(spec: str) -> None:
  marker, at, delay = spec.rsplit(":", 2)
  at, delay = int(at), float(delay)
  real = preemption.should_stop
  calls = [0]

  def paused_should_stop() -> bool:
    calls[0] += 1
    if calls[0] == at:
      open(marker, "w").close()
    if calls[0] >= at:
      time.sleep(delay)
    return real()

  preemption.should_stop = paused_should_stop


def main(argv: list[str]) -> None:
  if argv[:2] == ["-m", "bnas_jax.main"]:
    argv = argv[2:]
  if os.environ.get(ENV_PAUSE):
    _install_pause(os.environ[ENV_PAUSE])
  sys.argv = ["bnas_jax.main", *argv]
  runpy.run_module("bnas_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main(sys.argv[1:])
