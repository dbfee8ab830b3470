"""Result files are replaced whole or not at all."""

import json
import os

import numpy as np
import pytest

from bnas_jax import atomic_files


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / "sub" / "r.json"
  atomic_files.write_json(path, {"a": 1})
  assert json.loads(path.read_text()) == {"a": 1}

  def crash(src, dst):
    raise KeyboardInterrupt  # e.g. Ctrl-C between writing and renaming

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(KeyboardInterrupt):
    atomic_files.write_json(path, {"a": 2})
  assert json.loads(path.read_text()) == {"a": 1}
  assert os.listdir(path.parent) == ["r.json"]


def test_npz_and_figure_round_trip(tmp_path):
  atomic_files.write_npz(tmp_path / "x.npz", {"w": np.arange(6, dtype=np.uint32).reshape(2, 3)})
  np.testing.assert_array_equal(np.load(tmp_path / "x.npz")["w"], np.arange(6).reshape(2, 3))
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure()
  fig.add_subplot().plot([0, 1], [1, 0])
  atomic_files.write_figure(tmp_path / "f.png", fig, dpi=50)
  assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
