"""Pipeline 1's compact export (+-1 int8 weights, folded BN, same logits) and its packed form."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import random_variables
from bnas_jax import cost_model
from bnas_jax.errors import UserInputError
from bnas_jax.models import binary_export
from bnas_jax.models import build_model
from bnas_jax.models import nasbnn_subnet
from bnas_jax.models import reactnet

BLOCKS = ((8, 1, 3, 2), (16, 2, 5, 4), (16, 1, 3, 1))


def _trained_like_variables(model, x):
  v = model.init(jax.random.key(0), x)
  leaves, treedef = jax.tree.flatten(v)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  # Away from init: BN statistics, thresholds, biases all non-trivial.
  leaves = [l + 0.1 * jnp.abs(jax.random.normal(k, l.shape)) for l, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, leaves)


def test_exported_network_matches_the_network_it_came_from(tmp_path):
  model = reactnet.ReActNet(num_classes=5, stem_features=8, blocks=BLOCKS)
  x = jax.random.normal(jax.random.key(2), (3, 16, 16, 3))
  variables = _trained_like_variables(model, x)
  net = binary_export.export(BLOCKS, variables)
  for block in net["blocks"]:
    for conv in ("kxk", "1x1"):
      w = block[conv]["weight"]
      assert w.dtype == np.int8 and set(np.unique(w)) <= {-1, 1}
  assert net["stem"]["weight"].dtype == np.int8
  assert np.abs(net["stem"]["weight"]).max() <= 128
  np.testing.assert_allclose(
    binary_export.apply_exported(net, x),
    model.apply(variables, x, train=False),
    rtol=1e-4,
    atol=1e-4,
  )

  sizes = binary_export.size_bytes(net)
  # k*k*(c/g)*c + c*c' binary weights per block; 3*3*3*8 int8 stem weights.
  n_binary = (3 * 3 * 4 * 8 + 8 * 8) + (5 * 5 * 2 * 8 + 8 * 16) + (3 * 3 * 16 * 16 + 16 * 16)
  assert sizes["binary_weights"] == n_binary / 8
  assert sizes["stem_weights"] == 3 * 3 * 3 * 8

  path = tmp_path / "net.npz"
  binary_export.save(str(path), net)
  with np.load(path) as f:
    assert f["['blocks'][1]['kxk']['weight']"].dtype == np.int8


# The packed form (issue 14).


def _config(path, preset=None):
  spec = importlib.util.spec_from_file_location(f"cfg_{os.path.basename(path)}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def _reactnet_digits():
  """The network `configs/reactnet.py` trains (digits: 32x32x1, 10 classes)."""
  return build_model(_config("configs/reactnet.py").model, 10), 32


def _nasbnn_digits_subnet():
  """The biggest subnet of `configs/nasbnn.py`'s digits space, as pipeline 1 deploys it."""
  config = _config("configs/nasbnn.py")
  return build_model(nasbnn_subnet.resolve(config, "biggest"), 10), config.data.image_size


def test_packed_file_holds_one_bit_per_binary_weight_and_round_trips(tmp_path):
  model = reactnet.ReActNet(num_classes=5, stem_features=8, blocks=BLOCKS)
  x = jax.random.normal(jax.random.key(2), (1, 16, 16, 3))
  net = binary_export.export(BLOCKS, _trained_like_variables(model, x))
  binary_export.save_packed(str(tmp_path / binary_export.PACKED_FILE), net, image_size=16)
  n_binary = (3 * 3 * 4 * 8 + 8 * 8) + (5 * 5 * 2 * 8 + 8 * 16) + (3 * 3 * 16 * 16 + 16 * 16)
  with np.load(tmp_path / binary_export.PACKED_FILE) as f:
    assert f["binary_bits"].dtype == np.uint32 and f["binary_bits"].size == -(-n_binary // 32)
  binary_export.save(str(tmp_path / "i.npz"), net)
  for name, fmt in ((binary_export.PACKED_FILE, "packed"), ("i.npz", "int8")):
    loaded, info = binary_export.load(str(tmp_path / name))
    assert info["format"] == fmt
    assert jax.tree.structure(loaded) == jax.tree.structure(net)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(net)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The packed file is a directory's export too.
  assert binary_export.load(str(tmp_path))[1]["format"] == "packed"


@pytest.mark.parametrize("network", [_reactnet_digits, _nasbnn_digits_subnet])
def test_packed_network_equals_float_export_and_size_matches_cost_model(tmp_path, network):
  model, size = network()
  x = jax.random.normal(jax.random.key(3), (4, size, size, 1))
  net = binary_export.export(model.blocks, random_variables.trained_like(model, (1, size, size, 1)))
  on_disk = binary_export.save_packed(str(tmp_path / "p.npz"), net, image_size=size)
  # cost_model: binary weights 1 bit, the int8 stem 8 bits, every other param
  # (thresholds, BN scale/bias, LSQ step, RPReLU, classifier) 32 bits. The file
  # stores BN folded into the same number of floats, plus ~1.2 kB of npz headers.
  want = cost_model.count_costs(model, (1, size, size, 1), train=False).model_size_bytes
  assert abs(on_disk - want) <= 0.05 * want, (on_disk, want)

  loaded, _ = binary_export.load(str(tmp_path / "p.npz"))
  packed_logits = binary_export.jit_network(binary_export.apply_packed, binary_export.pack(loaded))(
    x
  )
  float_logits = binary_export.jit_network(
    binary_export.apply_exported, binary_export.float_twin(net)
  )(x)
  np.testing.assert_array_equal(np.argmax(packed_logits, -1), np.argmax(float_logits, -1))
  np.testing.assert_allclose(packed_logits, float_logits, rtol=1e-5, atol=1e-4)


def _write_npz(path, **arrays):
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  return str(path)


def test_bad_exports_raise_one_user_input_error(tmp_path):
  model = reactnet.ReActNet(num_classes=5, stem_features=8, blocks=BLOCKS)
  x = jnp.zeros((1, 16, 16, 3))
  net = binary_export.export(BLOCKS, _trained_like_variables(model, x))
  good = str(tmp_path / "good.npz")
  binary_export.save_packed(good, net)
  with np.load(good) as f:
    arrays = dict(f)
  spec = json.loads(bytes(arrays["spec"]).decode())
  text = tmp_path / "notes.txt"
  text.write_text("not an export")
  (tmp_path / "empty").mkdir()
  (tmp_path / "deploy" / "arch0").mkdir(parents=True)
  binary_export.save(str(tmp_path / "deploy" / "arch0" / "binary_export.npz"), net)
  bad_spec = dict(spec, format="something else")
  cases = {
    str(tmp_path / "missing.npz"): "no such file",
    str(text): "cannot be read as .npz",
    str(tmp_path / "empty"): "neither",
    str(tmp_path / "deploy"): "arch0",
    _write_npz(
      tmp_path / "short.npz", **dict(arrays, binary_bits=arrays["binary_bits"][:-1])
    ): "stored weight bits",
    _write_npz(
      tmp_path / "floats.npz", **dict(arrays, float32=arrays["float32"][:-3])
    ): "float32 values",
    _write_npz(
      tmp_path / "nospec.npz", **{k: v for k, v in arrays.items() if k != "spec"}
    ): "missing",
    _write_npz(
      tmp_path / "format.npz",
      **dict(arrays, spec=np.frombuffer(json.dumps(bad_spec).encode(), np.uint8)),
    ): "format",
    _write_npz(
      tmp_path / "nan.npz", **dict(arrays, float32=arrays["float32"] * np.nan)
    ): "not finite",
  }
  for path, why in cases.items():
    with pytest.raises(UserInputError, match=why):
      binary_export.load(path)


def test_packed_and_float_exports_classify_every_digits_image_alike():
  """Real images (scikit-learn's digits, 8x8 upsampled to 32x32, many exact zeros): the
  packed network's predictions equal the float export's on every one of 300 images."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  images = datasets.load_digits().images[-300:].astype(np.float32) / 16.0
  x = jnp.asarray(np.kron(images, np.ones((4, 4), np.float32))[..., None] - 0.3)
  model, size = _reactnet_digits()
  assert x.shape[1:] == (size, size, 1)
  net = binary_export.export(
    model.blocks, random_variables.trained_like(model, (1, size, size, 1), seed=5)
  )
  packed_logits = binary_export.blockwise_network(binary_export.pack(net), packed_convs=True)(x)
  float_logits = binary_export.blockwise_network(binary_export.float_twin(net), packed_convs=False)(
    x
  )
  np.testing.assert_array_equal(np.argmax(packed_logits, -1), np.argmax(float_logits, -1))
  np.testing.assert_allclose(packed_logits, float_logits, rtol=1e-5, atol=1e-4)
