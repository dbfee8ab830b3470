"""`python -m bnas_jax.deploy`: loads an export, runs it packed and as its float twin."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import random_variables
from bnas_jax import deploy
from bnas_jax.models import binary_export
from bnas_jax.models import reactnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (width, stride, kernel, groups): odd channel counts, groups, a 5x5 and a stride 2.
BLOCKS = ((12, 1, 3, 3), (20, 2, 5, 4), (36, 1, 3, 1))


def _run(*args, timeout=300):
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run(
    [sys.executable, "-m", "bnas_jax.deploy", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _net(seed=0):
  model = reactnet.ReActNet(num_classes=7, stem_features=6, blocks=BLOCKS)
  return binary_export.export(BLOCKS, random_variables.trained_like(model, (1, 16, 16, 3), seed))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  """A NAS-BNN-style `deploy/arch0/binary_export.npz` (pipeline 1's int8 file)."""
  root = tmp_path_factory.mktemp("run") / "deploy"
  binary_export.save(str(root / "arch0" / binary_export.INT8_FILE), _net())
  return root


def test_deploy_runs_an_int8_export_and_writes_the_packed_file(export_dir):
  packed_path = export_dir / "arch0" / binary_export.PACKED_FILE
  proc = _run(
    f"--export={export_dir / 'arch0'}",
    "--json",
    "--image_size=16",
    "--batch=3",
    f"--save_packed={packed_path}",
  )
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["format"] == "int8" and result["input_shape"] == [3, 16, 16, 3]
  assert result["size_bytes"] == os.path.getsize(packed_path)
  assert result["argmax_agreement"] == 1.0 and result["max_abs_logit_diff"] < 1e-4
  assert result["packed_ms"] is None  # timed only with --benchmark
  # The directory now holds both; the packed file is preferred and loads to the same net.
  net, info = binary_export.load(str(export_dir / "arch0"))
  assert info["format"] == "packed"
  for a, b in zip(jax.tree.leaves(net), jax.tree.leaves(_net())):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_benchmark_rows_cover_every_binary_conv_with_its_bops(export_dir):
  net, info = binary_export.load(str(export_dir / "arch0" / binary_export.INT8_FILE))
  result = deploy.run(net, deploy.input_shape(net, info, 1, 16), benchmark=True, repeats=3)
  # 16x16 input -> 8x8 after the stem; BOPs = Ho*Wo*C_out*k*k*C_in/G per conv.
  want = [
    ("block0/conv_3x3", 8 * 8 * 6 * 9 * 6 // 3),
    ("block0/conv_1x1", 8 * 8 * 12 * 6),
    ("block1/conv_5x5", 4 * 4 * 12 * 25 * 12 // 4),
    ("block1/conv_1x1", 4 * 4 * 20 * 12),
    ("block2/conv_3x3", 4 * 4 * 20 * 9 * 20),
    ("block2/conv_1x1", 4 * 4 * 36 * 20),
  ]
  assert [(l["name"], l["bops"]) for l in result["layers"]] == want
  for row in result["layers"]:
    assert row["packed_ms"] > 0 and row["float_ms"] > 0
    assert row["speedup"] == pytest.approx(row["float_ms"] / row["packed_ms"])
  assert result["speedup"] == pytest.approx(result["float_ms"] / result["packed_ms"])
  assert 0 < result["binary_share"] <= 1
  assert "speed-up" in deploy.format_layers(result)


def test_deploy_benchmark_json_is_the_last_line(export_dir):
  proc = _run(
    f"--export={export_dir / 'arch0' / binary_export.INT8_FILE}",
    "--benchmark",
    "--json",
    "--image_size=16",
    "--repeats=3",
  )
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  for key in ("packed_ms", "float_ms", "speedup", "size_bytes", "max_abs_logit_diff"):
    assert isinstance(result[key], (int, float)), key
  assert len(result["layers"]) == 2 * len(BLOCKS)


@pytest.mark.parametrize(
  "args,expected",
  [
    (["--export=/no/such/export.npz"], "no such file or directory"),
    (["--export=README.md"], "cannot be read as .npz"),
    (["--export={run}"], "pick one of its networks: arch0"),
    (["--export={run}/arch0", "--image_size=14"], "--image_size=14 does not fit"),
    (["--export={run}/arch0", "--batch=0"], "not an integer in the range [1, 4096]"),
    (["--export={run}/arch0", "--save_packed={run}"], "is a directory"),
  ],
)
def test_deploy_rejects_bad_input_with_status_2(export_dir, args, expected):
  proc = _run(*(a.format(run=export_dir) for a in args))
  assert proc.returncode == 2, proc.stderr
  assert expected in " ".join(proc.stderr.split())
  assert "Traceback" not in proc.stderr
  assert len([l for l in proc.stderr.splitlines() if l.startswith("error:")]) == 1
