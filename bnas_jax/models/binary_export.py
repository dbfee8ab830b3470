"""Deployment pipeline 1's compact form: +-1 weights, integer stem, BN folded.

NAS-BNN Sec. 3.5 deploys a searched subnet as a standalone binary network. A
trained `reactnet.ReActNet` (what `nasbnn_supernet.extract_subnet_variables`
returns) is turned into plain arrays that an inference engine (larq compute
engine, daBNN, bitwise kernels) would consume:

* every binary conv: its weight after channel-wise normalization (Eq. 6) as
  int8 in {-1, +1} (sign(0) = +1), its RSign threshold, and the per-channel
  affine map that the weight scale mean|w| and the following eval-mode BN fold
  into: `conv(sign(x + t), B) * scale + shift`;
* the stem: its LSQ 8-bit integer weights, with the step size and BN folded
  into `conv(x, Q) * scale + shift`;
* RPReLU parameters and the full-precision classifier unchanged.

`apply_exported` runs that form with nothing but convs on the exported
integers (accumulated in float32, exact for sums of +-1) and per-channel
affine maps; a test checks its logits against the ReActNet (and hence the
supernet) it came from.
"""

import os
import tempfile
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bnas_jax import convolution
from bnas_jax import layers
from bnas_jax import quantizers

Array = jax.Array
BN_EPS = 1e-5  # layers.batch_norm (PyTorch's default)


def _fold_bn(bn_params: Mapping[str, Array], bn_stats: Mapping[str, Array], scale: Array
             ) -> tuple[np.ndarray, np.ndarray]:
  """`BN(pre * scale)` in eval mode as `pre * a + b`."""
  inv = np.asarray(bn_params["scale"]) / np.sqrt(np.asarray(bn_stats["var"]) + BN_EPS)
  a = np.asarray(scale) * inv
  b = np.asarray(bn_params["bias"]) - np.asarray(bn_stats["mean"]) * inv
  return a.astype(np.float32), b.astype(np.float32)


def _binary_conv(conv: Mapping[str, Array], bn: Mapping[str, Array], stats: Mapping[str, Array],
                 kernel_norm: bool) -> dict[str, np.ndarray]:
  w = jnp.asarray(conv["kernel"])
  if kernel_norm:
    w = quantizers.channelwise_weight_norm(w)
  alpha = jnp.mean(jnp.abs(w), axis=(0, 1, 2))  # magnitude_aware_sign's scale
  scale, shift = _fold_bn(bn, stats, alpha)
  return {"weight": np.where(np.asarray(w) >= 0, 1, -1).astype(np.int8),
          "threshold": np.asarray(conv["input_threshold"], np.float32),
          "scale": scale, "shift": shift}


def _rprelu(p: Mapping[str, Array]) -> dict[str, np.ndarray]:
  return {k: np.asarray(v, np.float32) for k, v in p.items()}


def export(blocks: Sequence[tuple[int, int, int, int]], variables: Mapping[str, Any], *,
           kernel_norm: bool = True, stem_bits: int = 8) -> dict[str, Any]:
  """The compact arrays of a binary `ReActNet(blocks=blocks)` with 8-bit LSQ stem.

  Args:
    blocks: the network's (width, stride, kernel, groups) per block.
    variables: its {"params", "batch_stats"}.
    kernel_norm: whether its binary convs use Eq. 6 ("channelwise").
    stem_bits: the stem's LSQ bit width.
  """
  p, s = variables["params"], variables["batch_stats"]
  stem_w = jnp.asarray(p["stem"]["conv"]["kernel"])
  step = jnp.asarray(p["stem"]["conv"]["kernel_scale"])
  qn, qp = -(2 ** (stem_bits - 1)), 2 ** (stem_bits - 1) - 1
  q = np.asarray(jnp.round(jnp.clip(stem_w / step, qn, qp)))
  scale, shift = _fold_bn(p["stem"]["bn"], s["stem"]["bn"], step)
  out: dict[str, Any] = {
      "stem": {"weight": q.astype(np.int8 if stem_bits <= 8 else np.int32), "scale": scale,
               "shift": shift, "rprelu": _rprelu(p["stem"]["rprelu"])},
      "blocks": [],
      "classifier": {k: np.asarray(v, np.float32) for k, v in p["classifier"].items()},
  }
  for i, (width, stride, kernel, groups) in enumerate(blocks):
    bp, bs = p[f"block{i}"], s[f"block{i}"]
    out["blocks"].append({
        "stride": stride, "groups": groups, "width": width, "kernel": kernel,
        "kxk": _binary_conv(bp["conv_kxk"], bp["bn_kxk"], bs["bn_kxk"], kernel_norm),
        "rprelu_kxk": _rprelu(bp["rprelu_kxk"]),
        "1x1": _binary_conv(bp["conv_1x1"], bp["bn_1x1"], bs["bn_1x1"], kernel_norm),
        "rprelu_1x1": _rprelu(bp["rprelu_1x1"]),
    })
  return out


def _rprelu_apply(x: Array, p: Mapping[str, Array]) -> Array:
  return quantizers.rprelu(x, p["bias_in"], p["slope"], p["bias_out"])


def _sign_conv(x: Array, c: Mapping[str, Array], groups: int, stride: int) -> Array:
  signs = jnp.where(x + c["threshold"] >= 0, 1.0, -1.0)
  y = convolution.conv_lax(signs, jnp.asarray(c["weight"], jnp.float32), groups, stride)
  return y * c["scale"] + c["shift"]


def apply_exported(net: Mapping[str, Any], x: Array) -> Array:
  """Logits of the exported network (eval mode) for images `x` (NHWC)."""
  stem = net["stem"]
  y = convolution.conv_lax(x.astype(jnp.float32), jnp.asarray(stem["weight"], jnp.float32), 1, 2)
  x = _rprelu_apply(y * stem["scale"] + stem["shift"], stem["rprelu"])
  for b in net["blocks"]:
    y = _sign_conv(x, b["kxk"], b["groups"], b["stride"])
    shortcut = layers.avg_pool_2x2(x) if b["stride"] == 2 else x
    out1 = _rprelu_apply(y + shortcut, b["rprelu_kxk"])
    y = _sign_conv(out1, b["1x1"], 1, 1)
    repeat = jnp.take(out1, jnp.arange(b["width"]) % out1.shape[-1], axis=-1)
    x = _rprelu_apply(y + repeat, b["rprelu_1x1"])
  x = jnp.mean(x, axis=(1, 2))
  return x @ net["classifier"]["kernel"] + net["classifier"]["bias"]


def size_bytes(net: Mapping[str, Any]) -> dict[str, float]:
  """Storage of the exported form: binary weights at 1 bit, the stem's integers
  at their width, every float32 array (scales, shifts, thresholds, RPReLU,
  classifier) at 32 bits."""
  binary = sum(b[c]["weight"].size for b in net["blocks"] for c in ("kxk", "1x1")) / 8
  stem = float(net["stem"]["weight"].nbytes)
  floats = float(sum(leaf.nbytes for leaf in jax.tree.leaves(net)
                     if isinstance(leaf, np.ndarray) and leaf.dtype == np.float32))
  return {"binary_weights": binary, "stem_weights": stem, "float32": floats,
          "total": binary + stem + floats}


def save(path: str, net: Mapping[str, Any]) -> None:
  """Writes the arrays to one .npz atomically (temp file + rename); weights stay int8."""
  flat = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(net)}
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
  with os.fdopen(fd, "wb") as f:
    np.savez(f, **flat)
  os.replace(tmp, path)
