"""Checkpoint checksums (issue 18 §4): flipped bytes are detected and the previous step used."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnas_jax import checkpointing


def _state(seed):
  # Random weights compress to nothing, so orbax stores their bytes as they are:
  # a flipped byte there reads back without error, as a different number.
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {
    "params": {"kernel": jax.random.normal(k1, (64, 256)), "bias": jax.random.normal(k2, (7,))},
    "step": jnp.asarray(seed, jnp.int32),
  }


def _largest_data_file(step_dir):
  files = [
    os.path.join(root, f)
    for root, _, names in os.walk(os.path.join(step_dir, "state"))
    for f in names
    if os.sep + "d" + os.sep in os.path.join(root, f) + os.sep
  ]
  return max(files, key=os.path.getsize)


def _flip_bytes(path, count=3):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    middle = len(data) // 2
    for i in range(count):
      data[middle + 97 * i] ^= 0x5A
    f.seek(0)
    f.write(data)


@pytest.fixture
def two_steps(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
  for step in (1, 2):
    ckpt.save(step, _state(step), {"position": step}, {"phase": "p"}, force=True)
  ckpt.wait()
  return ckpt, tmp_path / "checkpoints"


def test_flipped_bytes_in_array_data_fall_back_to_the_previous_step(two_steps, capsys):
  ckpt, directory = two_steps
  _flip_bytes(_largest_data_file(str(directory / "2")))
  abstract = checkpointing.abstract_with_sharding(_state(0))

  # The reader alone does not notice: step 2 loads, with other numbers.
  raw = ckpt._manager.restore(
    2, args=checkpointing.ocp.args.Composite(state=checkpointing.ocp.args.StandardRestore(abstract))
  )["state"]
  assert not np.array_equal(raw["params"]["kernel"], _state(2)["params"]["kernel"])
  with pytest.raises(checkpointing.ChecksumMismatch, match=r"\['params'\]\['kernel'\]"):
    ckpt.restore(abstract, step=2)

  state, data, meta = ckpt.restore(abstract)
  jax.tree.map(np.testing.assert_array_equal, state, _state(1))
  assert data == {"position": 1} and meta == {"phase": "p"}
  assert "checkpoints/2 is unreadable" in capsys.readouterr().out
  assert (directory.parent / "checkpoints_unreadable" / "2").is_dir()
  assert ckpt.latest_step() == 1


def test_edited_iterator_state_that_still_parses_is_detected(two_steps):
  ckpt, directory = two_steps
  path = directory / "2" / "data" / "metadata"
  path.write_text(path.read_text().replace("2", "3"))  # valid JSON, another position
  state, data, _ = ckpt.restore(checkpointing.abstract_with_sharding(_state(0)))
  assert data == {"position": 1} and int(state["step"]) == 1


def test_checkpoints_written_without_checksums_still_restore(two_steps):
  ckpt, directory = two_steps
  for step in (1, 2):  # as written before checksums existed
    for name in os.listdir(directory / str(step) / "checksums"):
      os.remove(directory / str(step) / "checksums" / name)
    os.rmdir(directory / str(step) / "checksums")
  state, data, _ = ckpt.restore(checkpointing.abstract_with_sharding(_state(0)))
  jax.tree.map(np.testing.assert_array_equal, state, _state(2))
  assert data == {"position": 2}


def test_checksums_name_every_array_and_change_with_one_bit():
  a = _state(1)
  b = jax.tree.map(lambda x: x, a)
  kernel = np.asarray(b["params"]["kernel"]).copy()
  kernel.view(np.uint32)[3, 5] ^= 1  # one bit of one float
  b["params"]["kernel"] = jnp.asarray(kernel)
  ca, cb = (checkpointing.checksums(s, {}, {}) for s in (a, b))
  assert set(ca["state"]) == {"['params']['bias']", "['params']['kernel']", "['step']"}
  assert ca["state"]["['params']['kernel']"] != cb["state"]["['params']['kernel']"]
  assert ca["state"]["['params']['bias']"] == cb["state"]["['params']['bias']"]
