"""The CLIs: bad input exits 2 with one paragraph before compute; summary JSON."""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args, timeout=300):
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.mark.parametrize(
  "args,expected",
  [
    (["--config=configs/reactnet.py:nope"], "Unknown preset 'nope'"),
    (["--config=configs/reactnet.py", "--config.no_such_field=1"], "no_such_field"),
    (["--config=configs/reactnet.py", "--config.batch_size=abc"], "batch_size"),
    (["--config=configs/reactnet.py", "--config.data.name=mnist"], "Unknown dataset name 'mnist'"),
    (["--config=configs/reactnet.py", "--arch=A"], "drop --arch"),
    (["--config=configs/reactnet.py", "--batch=-3"], "not an integer in the range [1, 4096]"),
    (["--config=configs/nasbnn.py", "--arch=stem:\uff11\uff16"], "non-ASCII character"),
    (["--config=configs/nope.py"], "'configs/nope.py' does not exist"),
    (["--config=configs"], "is not a Python config file"),
    (["--config=configs/reactnet.py:"], "names no preset"),
    (["--config=configs/reactnet.py", "--config.model.blocks[0]=1"], "model.blocks[0]"),
    (
      ["--config=configs/reactnet.py", "--config.optimizer.learning_rate=0"],
      "config.optimizer.learning_rate=0.0 must be a finite number in (0, 1]",
    ),
  ],
)
def test_summary_rejects_bad_input_with_status_2(args, expected):
  proc = _run("bnas_jax.summary", *args)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith("error: ") and "\n\n" not in proc.stderr.strip()  # only it
  assert expected in " ".join(proc.stderr.split())
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
  "override,expected",
  [
    ("--config.model.blocks=((8, 1, 3, 3),)", "groups=3 must divide"),
    ("--config.batch_size=63", "multiple of the number of devices"),
  ],
)
def test_main_rejects_impossible_configs_before_compute(tmp_path, override, expected):
  env_workdir = str(tmp_path / "w")
  proc = _run("bnas_jax.main", "--config=configs/reactnet.py", f"--workdir={env_workdir}", override)
  assert proc.returncode == 2, proc.stderr
  assert expected in proc.stderr and "Traceback" not in proc.stderr
  assert not os.path.exists(os.path.join(env_workdir, "checkpoints"))


def test_summary_json_for_the_imagenet_preset():
  proc = _run("bnas_jax.summary", "--config=configs/reactnet.py:imagenet", "--json")
  assert proc.returncode == 0, proc.stderr
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  # ReActNet-A with an 8-bit stem: BOPs 4.82e9 (ReActNet paper), stem
  # 3*3*3*32*112*112 int8 MACs, FC 1024*1000 + 1000 bias.
  assert report["bops"] == 4_816_896_000
  assert report["int8_ops"] == 3 * 3 * 3 * 32 * 112 * 112
  assert report["flops"] == 1024 * 1000 + 1000
  assert report["ops"] == pytest.approx(
    report["flops"] + report["int8_ops"] / 8 + report["bops"] / 64
  )
  for key in ("params", "binary_params", "model_size_bytes"):
    assert isinstance(report[key], (int, float)) and report[key] > 0


ABSL_LINE = re.compile(r"^[IWEF]\d{4} |^WARNING: All log messages", re.MULTILINE)
TINY_REACTNET = (
  "--config=configs/reactnet.py",
  "--config.batch_size=16",
  "--config.model.blocks=((8, 1, 3, 1), (16, 2, 3, 2))",
  "--config.model.stem_features=8",
  "--config.data.image_size=16",
  "--config.max_eval_examples=64",
  "--config.num_train_steps=2",
)


def test_rejected_run_prints_only_its_paragraph(tmp_path):
  # Rejected after JAX started (it logs its backends) and the trainer imported TF.
  proc = _run(
    "bnas_jax.main", *TINY_REACTNET, f"--workdir={tmp_path / 'w'}", "--config.optimizer.b1=1.0"
  )
  assert proc.returncode == 2
  assert proc.stderr.startswith(
    "error: The config has values that cannot work: config.optimizer.b1=1.0 must be"
  ), proc.stderr
  assert proc.stdout == "" and "\n\n" not in proc.stderr.strip()
  # --verbose shows the library lines.
  proc = _run(
    "bnas_jax.main",
    *TINY_REACTNET,
    f"--workdir={tmp_path / 'w'}",
    "--config.optimizer.b1=1.0",
    "--verbose",
  )
  assert proc.returncode == 2 and "devices: [CpuDevice" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_console_shows_the_run_and_library_lines_go_to_log_txt(tmp_path):
  workdir = tmp_path / "w"
  proc = _run(
    "bnas_jax.main", *TINY_REACTNET, f"--workdir={workdir}", "--config.progress_bar=False"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test accuracy" in proc.stdout
  assert not ABSL_LINE.search(proc.stdout + proc.stderr), proc.stdout + proc.stderr
  log = (workdir / "log.txt").read_text()
  assert "process 0/1, devices: [CpuDevice" in log  # main's own INFO line
  assert "checkpoint_manager.py" in log  # orbax's chatter


LIBRARY_LOGS_SCRIPT = r"""
import logging, os, sys
from absl import app
from bnas_jax import cli

def main(argv):
  logs = cli.LibraryLogs(verbose=sys.argv[-1] == "verbose")
  os.write(2, b"held C++ line: Very slow compile?\n")  # what XLA's alarm does
  logging.info("held library line")
  logs.to_file(sys.argv[1], 0)
  os.write(2, b"later C++ line\n")
  logging.info("later library line")
  logging.error("an error line")
  print("the run's own line", flush=True)

app.run(main)
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_library_logs_go_to_log_txt_unless_verbose(tmp_path, verbose):
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run(
    [sys.executable, "-c", LIBRARY_LOGS_SCRIPT, str(tmp_path), "verbose" if verbose else "quiet"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == "the run's own line\n"
  library = (
    "held C++ line: Very slow compile?",
    "held library line",
    "later C++ line",
    "later library line",
  )
  if verbose:
    assert all(line in proc.stderr for line in library)
    assert not (tmp_path / "log.txt").exists()
  else:
    assert not any(line in proc.stderr for line in library), proc.stderr
    assert "an error line" in proc.stderr  # errors stay visible
    log = (tmp_path / "log.txt").read_text()
    assert all(line in log for line in library), log
