"""Storage faults: damaged checkpoints, unusable or full workdirs, another run's workdir."""

import collections
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from bnas_jax import checkpointing
from bnas_jax import run_directory
from bnas_jax.errors import UserInputError
from bnas_jax.trainers import supervised
from configs import reactnet as reactnet_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config(**overrides):
  c = reactnet_config.get_config()
  c.model.blocks = ((8, 1, 3, 1), (16, 2, 3, 2))
  c.model.stem_features = 8
  c.data.image_size = 16
  c.batch_size = 16
  c.eval_batch_size = 64
  c.max_eval_examples = 64
  c.progress_bar = False
  c.num_train_steps = 4
  c.checkpoint_every_steps = 2
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def _params_at(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = checkpointing.ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  args = jax.tree.map(lambda _: checkpointing.ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, args=checkpointing.ocp.args.PyTreeRestore(restore_args=args))[
    "params"
  ]


def _truncate_array_data(step_dir):
  for root, _, files in os.walk(os.path.join(step_dir, "state", "d")):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(root, name)) // 2)


def _garble_iterator_state(step_dir):
  with open(os.path.join(step_dir, "data", "metadata"), "w") as f:
    f.write('{"epoch": 0, "posi')


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 4-step run with checkpoints at steps 2 and 4, and its final params."""
  workdir = tmp_path_factory.mktemp("trained")
  supervised.train_and_evaluate(_tiny_config(), str(workdir))
  return workdir, _params_at(str(workdir), 4)


@pytest.mark.parametrize("damage", [_truncate_array_data, _garble_iterator_state])
def test_unreadable_latest_checkpoint_is_reported_and_the_previous_one_used(
  tmp_path, capsys, trained, damage
):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  damage(str(workdir / "checkpoints" / "4"))
  capsys.readouterr()

  supervised.train_and_evaluate(_tiny_config(), str(workdir))
  out = capsys.readouterr().out
  assert "checkpoints/4 is unreadable" in out and "resumes from step 2" in out
  assert "resumed from step 2 of 4" in out
  assert (workdir / "checkpoints_unreadable" / "4").is_dir()
  # Steps 3-4 were trained again from step 2: the same parameters as before.
  jax.tree.map(np.testing.assert_array_equal, _params_at(str(workdir), 4), trained[1])


def test_no_readable_checkpoint_is_an_error_that_moves_nothing(tmp_path, trained):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  for step in (2, 4):
    _garble_iterator_state(str(workdir / "checkpoints" / str(step)))
  with pytest.raises(UserInputError, match=r"No checkpoint in .*checkpoints can be restored"):
    supervised.train_and_evaluate(_tiny_config(), str(workdir))
  assert (workdir / "checkpoints" / "2").is_dir() and (workdir / "checkpoints" / "4").is_dir()


def test_unusable_workdir_is_reported_before_compute(tmp_path):
  (tmp_path / "a_file").write_text("not a directory")
  with pytest.raises(UserInputError, match="is not usable"):
    run_directory.check(_tiny_config(), str(tmp_path / "a_file" / "run"))


@pytest.mark.parametrize("workdir", ["", "   "])
def test_empty_workdir_is_rejected(workdir):
  with pytest.raises(UserInputError, match="--workdir is empty"):
    run_directory.check(_tiny_config(), workdir)


def test_check_creates_nothing_until_record(tmp_path):
  workdir = tmp_path / "new" / "run"
  snapshot = run_directory.check(_tiny_config(), str(workdir))
  assert os.listdir(tmp_path) == []  # the write probe is gone and nothing was created
  run_directory.record(snapshot)
  assert json.loads((workdir / "config.json").read_text())["num_train_steps"] == 4


def test_nan_in_the_config_does_not_block_resuming(tmp_path):
  nan_config = lambda: _tiny_config(label_smoothing=float("nan"))
  run_directory.record(run_directory.check(nan_config(), str(tmp_path)))
  # The identical command again: NaN compares equal to NaN, so this is the same run.
  assert run_directory.check(nan_config(), str(tmp_path)) is None
  with pytest.raises(UserInputError, match="label_smoothing: NaN -> 0.0"):
    run_directory.check(_tiny_config(), str(tmp_path))


def test_full_disk_is_reported_before_training(tmp_path, monkeypatch):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  state = {"w": np.zeros((1024, 1024), np.float32)}  # 4 MiB
  ckpt.check_free_space(state)  # this machine has room for 5 MiB
  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(
    checkpointing.shutil, "disk_usage", lambda _: usage(10 << 20, 7 << 20, 3 << 20)
  )
  with pytest.raises(
    UserInputError,
    match=r"3.0 MiB free but a checkpoint of this run needs up "
    r"to 5.0 MiB",
  ):
    ckpt.check_free_space(state)
  ckpt.close()


def test_workdir_of_another_config_refuses_unless_forced(tmp_path):
  workdir = str(tmp_path)
  run_directory.record(run_directory.check(_tiny_config(), workdir))
  assert (tmp_path / "config.json").exists()
  # Watching the run differently is not a different run.
  run_directory.check(_tiny_config(progress_bar=True, log_every_steps=7, num_devices=1), workdir)
  with pytest.raises(
    UserInputError, match=r"num_train_steps: 4 -> 8; seed: 0 -> 1.*--force_resume"
  ):
    run_directory.check(_tiny_config(num_train_steps=8, seed=1), workdir)
  run_directory.record(
    run_directory.check(_tiny_config(num_train_steps=8), workdir, force_resume=True)
  )
  assert len([f for f in os.listdir(workdir) if f.startswith("config.json.replaced-")]) == 1
  run_directory.check(_tiny_config(num_train_steps=8), workdir)  # the new config is the run's now


def test_cli_exits_2_on_another_configs_workdir(tmp_path):
  run_directory.record(run_directory.check(_tiny_config(), str(tmp_path)))
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "bnas_jax.main",
      "--config=configs/reactnet.py",
      f"--workdir={tmp_path}",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  err = " ".join(proc.stderr.split())
  assert "holds a run of a different config (batch_size: 16 -> 64;" in err
  assert "Traceback" not in err
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
  "args,expected",
  [
    (["--workdir="], "--workdir is empty"),
    (["--workdir={w}", "--config.batch_size=63"], "multiple of the number of devices"),
    (["--workdir={w}", "--config.optimizer.learning_rate=nan"], "learning_rate=nan must be"),
  ],
)
def test_rejected_run_leaves_nothing_on_disk(tmp_path, args, expected):
  workdir = tmp_path / "w"
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "bnas_jax.main",
      f"--config={REPO}/configs/reactnet.py",
      *[a.format(w=workdir) for a in args],
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith("error: ") and "\n\n" not in proc.stderr.strip()  # only it
  assert expected in " ".join(proc.stderr.split())
  assert os.listdir(tmp_path) == []
