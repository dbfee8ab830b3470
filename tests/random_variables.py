"""Random values of a "trained" network's variables for export tests, without `model.init`."""

import jax
import jax.numpy as jnp
import numpy as np


def trained_like(model, shape, seed=0):
  """BN variances in [1, 1.5), LSQ steps 0.02, every other variable normal with std 0.3."""
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
  rng = np.random.default_rng(seed)

  def value(path, leaf):
    name = str(path[-1].key)
    if name == "var":
      return 1.0 + 0.5 * rng.random(leaf.shape, np.float32)
    if name == "kernel_scale":  # LSQ step of the 8-bit stem
      return np.full(leaf.shape, 0.02, np.float32)
    return 0.3 * rng.standard_normal(leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(value, abstract)
