"""Pipeline 1's compact export: +-1 int8 weights, folded BN, same logits."""

import jax
import jax.numpy as jnp
import numpy as np

from bnas_jax.models import binary_export
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
  np.testing.assert_allclose(binary_export.apply_exported(net, x),
                             model.apply(variables, x, train=False), rtol=1e-4, atol=1e-4)

  sizes = binary_export.size_bytes(net)
  # k*k*(c/g)*c + c*c' binary weights per block; 3*3*3*8 int8 stem weights.
  n_binary = (3 * 3 * 4 * 8 + 8 * 8) + (5 * 5 * 2 * 8 + 8 * 16) + (3 * 3 * 16 * 16 + 16 * 16)
  assert sizes["binary_weights"] == n_binary / 8
  assert sizes["stem_weights"] == 3 * 3 * 3 * 8

  path = tmp_path / "net.npz"
  binary_export.save(str(path), net)
  with np.load(path) as f:
    assert f["['blocks'][1]['kxk']['weight']"].dtype == np.int8
