"""The tree passes the linter configured in pyproject.toml (`ruff check .`, the [test] extra)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_check_passes():
  out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                       capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
