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

import json
import math
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bnas_jax import atomic_files
from bnas_jax import convolution
from bnas_jax import layers
from bnas_jax import packed
from bnas_jax import quantizers
from bnas_jax import user_files
from bnas_jax.errors import UserInputError

Array = jax.Array
BN_EPS = 1e-5  # layers.batch_norm (PyTorch's default)


def _fold_bn(
  bn_params: Mapping[str, Array], bn_stats: Mapping[str, Array], scale: Array
) -> tuple[np.ndarray, np.ndarray]:
  """`BN(pre * scale)` in eval mode as `pre * a + b`."""
  inv = np.asarray(bn_params["scale"]) / np.sqrt(np.asarray(bn_stats["var"]) + BN_EPS)
  a = np.asarray(scale) * inv
  b = np.asarray(bn_params["bias"]) - np.asarray(bn_stats["mean"]) * inv
  return a.astype(np.float32), b.astype(np.float32)


def _binary_conv(
  conv: Mapping[str, Array], bn: Mapping[str, Array], stats: Mapping[str, Array], kernel_norm: bool
) -> dict[str, np.ndarray]:
  w = jnp.asarray(conv["kernel"])
  if kernel_norm:
    w = quantizers.channelwise_weight_norm(w)
  alpha = jnp.mean(jnp.abs(w), axis=(0, 1, 2))  # magnitude_aware_sign's scale
  scale, shift = _fold_bn(bn, stats, alpha)
  return {
    "weight": np.where(np.asarray(w) >= 0, 1, -1).astype(np.int8),
    "threshold": np.asarray(conv["input_threshold"], np.float32),
    "scale": scale,
    "shift": shift,
  }


def _rprelu(p: Mapping[str, Array]) -> dict[str, np.ndarray]:
  return {k: np.asarray(v, np.float32) for k, v in p.items()}


def export(
  blocks: Sequence[tuple[int, int, int, int]],
  variables: Mapping[str, Any],
  *,
  kernel_norm: bool = True,
  stem_bits: int = 8,
) -> dict[str, Any]:
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
    "stem": {
      "weight": q.astype(np.int8 if stem_bits <= 8 else np.int32),
      "scale": scale,
      "shift": shift,
      "rprelu": _rprelu(p["stem"]["rprelu"]),
    },
    "blocks": [],
    "classifier": {k: np.asarray(v, np.float32) for k, v in p["classifier"].items()},
  }
  for i, (width, stride, kernel, groups) in enumerate(blocks):
    bp, bs = p[f"block{i}"], s[f"block{i}"]
    out["blocks"].append(
      {
        "stride": stride,
        "groups": groups,
        "width": width,
        "kernel": kernel,
        "kxk": _binary_conv(bp["conv_kxk"], bp["bn_kxk"], bs["bn_kxk"], kernel_norm),
        "rprelu_kxk": _rprelu(bp["rprelu_kxk"]),
        "1x1": _binary_conv(bp["conv_1x1"], bp["bn_1x1"], bs["bn_1x1"], kernel_norm),
        "rprelu_1x1": _rprelu(bp["rprelu_1x1"]),
      }
    )
  return out


def _rprelu_apply(x: Array, p: Mapping[str, Array]) -> Array:
  return quantizers.rprelu(x, p["bias_in"], p["slope"], p["bias_out"])


def _sign_conv(x: Array, c: Mapping[str, Array], groups: int, stride: int) -> Array:
  signs = jnp.where(x + c["threshold"] >= 0, 1.0, -1.0)
  y = convolution.conv_lax(signs, jnp.asarray(c["weight"], jnp.float32), groups, stride)
  return y * c["scale"] + c["shift"]


def _stem(stem: Mapping[str, Array], x: Array) -> Array:
  # conv_im2col: the 3-channel stem as one matmul (2.5x faster than XLA:CPU's conv here).
  y = convolution.conv_im2col(x.astype(jnp.float32), jnp.asarray(stem["weight"], jnp.float32), 1, 2)
  return _rprelu_apply(y * stem["scale"] + stem["shift"], stem["rprelu"])


def _block(b: Mapping[str, Any], x: Array, sign_conv) -> Array:
  y = sign_conv(x, b["kxk"], b["groups"], b["stride"])
  shortcut = layers.avg_pool_2x2(x) if b["stride"] == 2 else x
  out1 = _rprelu_apply(y + shortcut, b["rprelu_kxk"])
  y = sign_conv(out1, b["1x1"], 1, 1)
  return _rprelu_apply(y + layers.match_channels(out1, b["width"]), b["rprelu_1x1"])


def _head(classifier: Mapping[str, Array], x: Array) -> Array:
  return jnp.mean(x, axis=(1, 2)) @ classifier["kernel"] + classifier["bias"]


def apply_exported(net: Mapping[str, Any], x: Array) -> Array:
  """Logits of the exported network (eval mode) for images `x` (NHWC)."""
  x = _stem(net["stem"], x)
  for b in net["blocks"]:
    x = _block(b, x, _sign_conv)
  return _head(net["classifier"], x)


def size_bytes(net: Mapping[str, Any]) -> dict[str, float]:
  """Storage of the exported form: binary weights at 1 bit, the stem's integers
  at their width, every float32 array (scales, shifts, thresholds, RPReLU,
  classifier) at 32 bits."""
  binary = sum(b[c]["weight"].size for b in net["blocks"] for c in ("kxk", "1x1")) / 8
  stem = float(net["stem"]["weight"].nbytes)
  floats = float(
    sum(
      leaf.nbytes
      for leaf in jax.tree.leaves(net)
      if isinstance(leaf, np.ndarray) and leaf.dtype == np.float32
    )
  )
  return {
    "binary_weights": binary,
    "stem_weights": stem,
    "float32": floats,
    "total": binary + stem + floats,
  }


def save(path: str, net: Mapping[str, Any]) -> None:
  """Writes the arrays to one .npz atomically (temp file + rename); weights stay int8."""
  flat = {
    jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(net)
  }
  atomic_files.write_npz(path, flat)


# ----------------------------------------------------------------------------
# The packed form (issue 14): 1 bit per binary weight on disk, XNOR-popcount at run time.

PACKED_FORMAT = "bnas_jax.binary_net.packed"
PACKED_VERSION = 1
PACKED_FILE = "binary_packed.npz"
INT8_FILE = "binary_export.npz"  # `save`'s name in deploy/arch*/ (trainers/nasbnn.py)


def _spec(net: Mapping[str, Any]) -> dict[str, Any]:
  """The structure of an exported network: everything but its arrays' values."""
  stem_w = np.asarray(net["stem"]["weight"])
  return {
    "format": PACKED_FORMAT,
    "version": PACKED_VERSION,
    "in_channels": int(stem_w.shape[2]),
    "stem_features": int(stem_w.shape[3]),
    "stem_dtype": str(stem_w.dtype),
    "num_classes": int(np.asarray(net["classifier"]["kernel"]).shape[1]),
    "blocks": [
      [int(b["width"]), int(b["stride"]), int(b["kernel"]), int(b["groups"])] for b in net["blocks"]
    ],
  }


def _template(spec: Mapping[str, Any]) -> dict[str, Any]:
  """`export`'s structure for `spec` with zero arrays of the right shapes and dtypes."""
  f32 = lambda *shape: np.zeros(shape, np.float32)
  rprelu = lambda c: {"bias_in": f32(c), "bias_out": f32(c), "slope": f32(c)}

  def conv(k, cin, cout, groups):
    return {
      "weight": np.zeros((k, k, cin // groups, cout), np.int8),
      "threshold": f32(cin),
      "scale": f32(cout),
      "shift": f32(cout),
    }

  c = spec["stem_features"]
  net = {
    "stem": {
      "weight": np.zeros((3, 3, spec["in_channels"], c), spec["stem_dtype"]),
      "scale": f32(c),
      "shift": f32(c),
      "rprelu": rprelu(c),
    },
    "blocks": [],
    "classifier": {"kernel": f32(c, spec["num_classes"]), "bias": f32(spec["num_classes"])},
  }
  for width, stride, kernel, groups in spec["blocks"]:
    net["blocks"].append(
      {
        "stride": stride,
        "groups": groups,
        "width": width,
        "kernel": kernel,
        "kxk": conv(kernel, c, c, groups),
        "rprelu_kxk": rprelu(c),
        "1x1": conv(1, c, width, 1),
        "rprelu_1x1": rprelu(width),
      }
    )
    c = width
  net["classifier"]["kernel"] = f32(c, spec["num_classes"])
  return net


def _binary_weights(net: Mapping[str, Any]) -> list[np.ndarray]:
  return [b[c]["weight"] for b in net["blocks"] for c in ("kxk", "1x1")]


def _float_leaves(net: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
  return [
    (jax.tree_util.keystr(k), np.asarray(v))
    for k, v in jax.tree_util.tree_leaves_with_path(net)
    if isinstance(v, np.ndarray) and v.dtype == np.float32
  ]


def save_packed(path: str, net: Mapping[str, Any], *, image_size: int | None = None) -> int:
  """Writes `net` (from `export` or `load`) as one packed .npz; returns its size in bytes.

  Four arrays: `binary_bits` (uint32, the sign bits of every binary weight in
  HWIO order, block by block, kxk then 1x1, bit 1 = -1, 32 per word: 1 bit per
  binary weight), `stem_weight` (the stem's integers), `float32` (every float
  array in the pytree order of `export`'s structure) and `spec` (JSON: widths,
  strides, kernels, groups, stem and classifier sizes, optional `image_size`).
  """
  spec = _spec(net)
  if image_size:
    spec["image_size"] = int(image_size)
  negative = np.concatenate([np.asarray(w).reshape(-1) < 0 for w in _binary_weights(net)])
  bits = np.packbits(negative, bitorder="little")
  bits = np.pad(bits, (0, -bits.size % 4)).view("<u4")
  floats = np.concatenate([v.reshape(-1) for _, v in _float_leaves(net)])
  atomic_files.write_npz(
    path,
    {
      "spec": np.frombuffer(json.dumps(spec, separators=(",", ":")).encode(), np.uint8),
      "binary_bits": bits,
      "stem_weight": np.asarray(net["stem"]["weight"]),
      "float32": floats,
    },
  )
  return os.path.getsize(path)


def _bad(path: str, why: str) -> UserInputError:
  return UserInputError(
    f"{path} is not a usable binary network export: {why}. --export takes a file written by "
    f"bnas_jax.models.binary_export.save_packed ({PACKED_FILE}) or save ({INT8_FILE}, e.g. "
    "WORKDIR/deploy/arch0/ of a NAS-BNN run), or a directory holding one."
  )


def resolve_export_path(path: str) -> str:
  """The export file `path` names: the file itself, or the one export inside a directory."""
  if os.path.isdir(path):
    found = [
      os.path.join(path, n)
      for n in (PACKED_FILE, INT8_FILE)
      if os.path.isfile(os.path.join(path, n))
    ]
    if not found:
      subdirs = sorted(
        d
        for d in os.listdir(path)
        if os.path.isfile(os.path.join(path, d, INT8_FILE))
        or os.path.isfile(os.path.join(path, d, PACKED_FILE))
      )
      hint = f"; pick one of its networks: {', '.join(subdirs)}" if subdirs else ""
      raise _bad(path, f"the directory holds neither {PACKED_FILE} nor {INT8_FILE}{hint}")
    return found[0]
  if not os.path.isfile(path):
    raise _bad(path, "no such file or directory")
  return path


def _fill(path: str, spec: Mapping[str, Any], get) -> dict[str, Any]:
  """`_template(spec)` with each array leaf replaced by `get(keystr, template_leaf)`."""
  template = _template(spec)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  out = []
  for k, leaf in leaves:
    if not isinstance(leaf, np.ndarray):
      out.append(leaf)
      continue
    value = np.asarray(get(jax.tree_util.keystr(k), leaf))
    if value.shape != leaf.shape:
      raise _bad(
        path,
        f"array {jax.tree_util.keystr(k)} has shape {value.shape}, the network's "
        f"structure needs {leaf.shape}",
      )
    out.append(value.astype(leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, [l for l in out])


def _spec_of_int8_file(path: str, f: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Reads the structure of a `save` (int8) file back from its keys and shapes."""
  n = 0
  while f"['blocks'][{n}]['stride']" in f:
    n += 1
  get = lambda i, key: int(f[f"['blocks'][{i}]['{key}']"])
  stem = f["['stem']['weight']"]
  if stem.ndim != 4:
    raise _bad(path, f"the stem weight has shape {stem.shape}, not (3, 3, C_in, C_out)")
  return {
    "format": PACKED_FORMAT,
    "version": PACKED_VERSION,
    "in_channels": int(stem.shape[2]),
    "stem_features": int(stem.shape[3]),
    "stem_dtype": str(stem.dtype),
    "num_classes": int(f["['classifier']['bias']"].shape[0]),
    "blocks": [
      [get(i, "width"), get(i, "stride"), get(i, "kernel"), get(i, "groups")] for i in range(n)
    ],
  }


def _check_spec(path: str, spec: Any) -> None:
  if not isinstance(spec, dict) or spec.get("format") != PACKED_FORMAT:
    raise _bad(path, "its spec does not name the format " + PACKED_FORMAT)
  if spec.get("version") != PACKED_VERSION:
    raise _bad(path, f"format version {spec.get('version')!r}, this reader knows {PACKED_VERSION}")
  c = spec.get("stem_features")
  for block in spec.get("blocks", []):
    if (
      len(block) != 4
      or any(not isinstance(v, int) or v <= 0 for v in block)
      or block[1] not in (1, 2)
      or block[2] % 2 == 0
      or c % block[3]
    ):
      raise _bad(
        path,
        f"block {block} is not (width, stride 1|2, odd kernel, groups dividing "
        f"its {c} input channels)",
      )
    c = block[0]
  if spec.get("stem_dtype") not in ("int8", "int32", "float32"):
    raise _bad(path, f"stem dtype {spec.get('stem_dtype')!r}")


def load(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads an export (packed or int8 file, or a directory holding one) and validates it.

  Returns:
    (net, info): `net` in `export`'s structure (int8 +-1 weights), ready for
    `apply_exported` and `pack`; `info` holds `path`, `format` ("packed" or
    "int8"), `size_bytes` (on disk) and `image_size` (None if not recorded).

  Raises:
    UserInputError: the path does not exist or is not a complete, consistent export.
  """
  path = resolve_export_path(path)
  try:
    f = np.load(path, allow_pickle=False)
    keys = set(f.files)
  except Exception as e:  # not a zip / npz at all
    raise _bad(path, f"it cannot be read as .npz ({type(e).__name__}: {e})") from e
  with f:
    try:
      if "spec" in keys:
        try:
          spec = user_files.parse_json(bytes(f["spec"]).decode("utf-8"), f"export {path}")
        except (UserInputError, UnicodeDecodeError) as e:
          raise _bad(path, "its spec is not JSON") from e
        _check_spec(path, spec)
        missing = {"binary_bits", "stem_weight", "float32"} - keys
        if missing:
          raise _bad(path, f"arrays {sorted(missing)} are missing")
        template = _template(spec)
        sizes = [w.size for w in _binary_weights(template)]
        bits = np.unpackbits(np.asarray(f["binary_bits"], "<u4").view(np.uint8), bitorder="little")
        if bits.size < sum(sizes) or bits.size >= sum(sizes) + 32:
          raise _bad(path, f"{bits.size} stored weight bits for {sum(sizes)} binary weights")
        signs = (1 - 2 * bits[: sum(sizes)].astype(np.int8)).astype(np.int8)
        floats = np.asarray(f["float32"])
        wanted = [(k, v) for k, v in _float_leaves(template)]
        if floats.dtype != np.float32 or floats.size != sum(v.size for _, v in wanted):
          raise _bad(
            path,
            f"{floats.size} float32 values stored, the structure needs "
            f"{sum(v.size for _, v in wanted)}",
          )
        values, offset = {}, 0
        for k, v in wanted:
          values[k] = floats[offset : offset + v.size].reshape(v.shape)
          offset += v.size
        offsets = np.cumsum([0] + sizes)
        binaries = {}
        for i, b in enumerate(template["blocks"]):
          for j, c in enumerate(("kxk", "1x1")):
            n = 2 * i + j
            binaries[f"['blocks'][{i}]['{c}']['weight']"] = signs[
              offsets[n] : offsets[n + 1]
            ].reshape(b[c]["weight"].shape)
        binaries["['stem']['weight']"] = f["stem_weight"]
        net = _fill(path, spec, lambda k, _: binaries[k] if k in binaries else values[k])
        fmt, image_size = "packed", spec.get("image_size")
      else:
        spec = _spec_of_int8_file(path, f)
        _check_spec(path, spec)
        net = _fill(path, spec, lambda k, _: f[k])
        for w in _binary_weights(net):
          if not np.isin(w, (-1, 1)).all():
            raise _bad(path, "a binary weight is not -1 or +1")
        fmt, image_size = "int8", None
    except KeyError as e:
      raise _bad(path, f"array {e} is missing") from e
    except (ValueError, TypeError) as e:
      if isinstance(e, UserInputError):
        raise
      raise _bad(path, f"{type(e).__name__}: {e}") from e
  if not all(np.isfinite(v).all() for _, v in _float_leaves(net)):
    raise _bad(path, "a scale, shift, threshold or classifier value is not finite")
  return net, {
    "path": path,
    "format": fmt,
    "size_bytes": os.path.getsize(path),
    "image_size": image_size,
  }


def _pack_conv(c: Mapping[str, Any], groups: int) -> dict[str, Any]:
  w = np.asarray(c["weight"])
  k, _, cg, out = w.shape
  return {
    "words": jnp.asarray(packed.pack_conv_weight(w, groups)),
    # Eq. (2) of packed.py: per-tap weight sums for the zero-padding correction.
    "wsum": jnp.asarray(w.astype(np.float32).sum(axis=2).reshape(k * k, out)),
    "threshold": jnp.asarray(c["threshold"]),
    "scale": jnp.asarray(c["scale"]),
    "shift": jnp.asarray(c["shift"]),
  }


def pack(net: Mapping[str, Any]) -> dict[str, Any]:
  """The engine form of `net`: binary weights as (k*k, G, Wg, O_g) uint32 words."""
  out = {
    "stem": jax.tree.map(jnp.asarray, dict(net["stem"])),
    "classifier": jax.tree.map(jnp.asarray, dict(net["classifier"])),
    "blocks": [],
  }
  out["stem"]["weight"] = jnp.asarray(net["stem"]["weight"], jnp.float32)
  for b in net["blocks"]:
    out["blocks"].append(
      {
        "stride": int(b["stride"]),
        "groups": int(b["groups"]),
        "width": int(b["width"]),
        "kernel": int(b["kernel"]),
        "kxk": _pack_conv(b["kxk"], int(b["groups"])),
        "1x1": _pack_conv(b["1x1"], 1),
        "rprelu_kxk": jax.tree.map(jnp.asarray, dict(b["rprelu_kxk"])),
        "rprelu_1x1": jax.tree.map(jnp.asarray, dict(b["rprelu_1x1"])),
      }
    )
  return out


def float_twin(net: Mapping[str, Any]) -> dict[str, Any]:
  """`net` with every weight already float32: `apply_exported`'s XLA float-conv run."""
  return jax.tree.map(
    lambda v: jnp.asarray(v, jnp.float32) if isinstance(v, np.ndarray) else v, net
  )


def packed_sign_conv(x: Array, c: Mapping[str, Array], groups: int, stride: int) -> Array:
  """`_sign_conv` through the XNOR-popcount engine (exact, fused threshold and affine)."""
  k = int(math.isqrt(c["words"].shape[0]))
  return packed.sign_conv(
    x,
    c["words"],
    threshold=c["threshold"],
    scale=c["scale"],
    shift=c["shift"],
    in_channels=x.shape[-1],
    groups=groups,
    kernel_size=k,
    stride=stride,
    wsum=c["wsum"],
  )


def apply_packed(net: Mapping[str, Any], x: Array) -> Array:
  """Logits of a `pack`ed network: `apply_exported` with every binary conv run as
  XNOR-popcount. The stem (int8 weights), the shortcuts (2x2 average pooling,
  channel repeat), RPReLU, global pooling and the classifier stay float."""
  x = _stem(net["stem"], x)
  for b in net["blocks"]:
    x = _block(b, x, packed_sign_conv)
  return _head(net["classifier"], x)


def jit_network(apply_fn, net: Mapping[str, Any]):
  """`x -> apply_fn(net, x)` under `jax.jit`, the arrays passed as arguments and the
  structure (strides, groups, widths) static, so weights are not baked into the program."""
  arrays, rebuild = _split_static(net)
  run = jax.jit(lambda arrays, x: apply_fn(rebuild(arrays), x))
  return lambda x: run(arrays, x)


def _split_static(tree: Any) -> tuple[list[Any], Any]:
  """(arrays, rebuild): `rebuild(arrays)` is `tree` with its python scalars kept static."""
  leaves, treedef = jax.tree.flatten(tree)
  is_array = [isinstance(l, (np.ndarray, jax.Array)) for l in leaves]

  def rebuild(arrays):
    it = iter(arrays)
    return jax.tree.unflatten(treedef, [next(it) if a else l for l, a in zip(leaves, is_array)])

  return [l for l, a in zip(leaves, is_array) if a], rebuild


def blockwise_network(net: Mapping[str, Any], *, packed_convs: bool):
  """`x -> logits` of `pack(net)` (`packed_convs`) or `float_twin(net)` as one jitted
  program per block (plus stem and head), called in sequence.

  The same computation as `apply_packed` / `apply_exported`. On XLA:CPU the packed
  NAS-BNN-A at 224x224 ran 1.6x faster this way than as one whole-network
  program (28.6 vs 46.0 ms, same run; the float twin 62 vs 64 ms), so latency
  is measured on this form for both (`bnas_jax.deploy`).
  """
  sign_conv = packed_sign_conv if packed_convs else _sign_conv
  stages = [(_stem, net["stem"])]
  stages += [(lambda b, x: _block(b, x, sign_conv), b) for b in net["blocks"]]
  stages.append((_head, net["classifier"]))
  compiled = []
  for fn, part in stages:
    arrays, rebuild = _split_static(part)
    compiled.append(
      (jax.jit(lambda arrays, x, fn=fn, rebuild=rebuild: fn(rebuild(arrays), x)), arrays)
    )

  def run(x):
    for program, arrays in compiled:
      x = program(arrays, x)
    return x

  return run
