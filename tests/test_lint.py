"""The tree passes the linter and formatter configured in pyproject.toml (the [test] extra)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  "command", [["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]]
)
def test_ruff_passes(command):
  out = subprocess.run(
    [sys.executable, "-m", "ruff", *command], cwd=REPO, capture_output=True, text=True, check=False
  )
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
