"""A training step on 4 simulated CPU devices equals the 1-device step."""

import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = r"""
import sys
import jax, numpy as np
from bnas_jax import sharding, train_state
from bnas_jax.models import reactnet

model = reactnet.ReActNet(10, 8, ((8, 1, 3, 1), (16, 2, 3, 2)))
rs = np.random.RandomState(0)
batch = {"image": rs.randn(16, 16, 16, 3).astype(np.float32),
         "label": rs.randint(0, 10, 16).astype(np.int32)}
mesh = sharding.make_mesh()
assert mesh.size == int(sys.argv[2]), mesh
variables = sharding.init_replicated(
    lambda k: model.init(k, np.zeros((1, 16, 16, 3), np.float32)), mesh, jax.random.key(0))
loss_fn = train_state.make_classification_loss(model, 10, label_smoothing=0.1)
grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
(loss, (logits, stats)), grads = grad_fn(variables["params"], variables["batch_stats"],
                                         sharding.global_batch(batch, mesh))
flat = {"loss": np.asarray(loss), "logits": np.asarray(logits)}
for path, leaf in jax.tree_util.tree_leaves_with_path({"grads": grads, "stats": stats}):
  flat[jax.tree_util.keystr(path)] = np.asarray(leaf)
np.savez(sys.argv[1], **flat)
"""


def _run(tmp_path, devices):
  out = str(tmp_path / f"step_{devices}.npz")
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    PYTHONPATH=REPO,
    JAX_PLATFORMS="cpu",
  )
  subprocess.run(
    [sys.executable, "-c", _SCRIPT, out, str(devices)], check=True, env=env, cwd=REPO, timeout=300
  )
  return dict(np.load(out))


def test_four_devices_match_one_device(tmp_path):
  one, four = _run(tmp_path, 1), _run(tmp_path, 4)
  assert one.keys() == four.keys()
  assert len([k for k in one if k.startswith("['grads']")]) > 10
  for key in one:
    # Batch-norm statistics and the loss are over the global batch on both.
    np.testing.assert_allclose(four[key], one[key], rtol=2e-4, atol=2e-5, err_msg=key)
