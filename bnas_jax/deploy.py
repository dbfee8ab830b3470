r"""Run an exported binary network through the XNOR-popcount engine, against its float twin.

  python -m bnas_jax.deploy --export=WORKDIR/deploy/arch0 [--benchmark] [--json]
      [--batch=1] [--image_size=N] [--save_packed=FILE]

`--export` takes a packed export (`binary_packed.npz`, `binary_export.save_packed`),
pipeline 1's int8 export (`binary_export.npz`, written by the NAS-BNN trainer under
`deploy/arch*/`) or a directory holding one. The file is loaded and validated (a bad
or foreign file prints one paragraph and exits with status 2), a seeded batch of
random images runs through the packed network (binary convs as XNOR-popcount,
`packed.py`) and through its float twin (the same +-1 weights through XLA float
convs, `binary_export.apply_exported`), and the largest logit difference and the
argmax agreement are printed. `--save_packed` writes the packed file.

`--benchmark` adds a per-layer table (shapes, BOPs, packed ms, float ms, speed-up;
every binary conv with its RSign and folded affine) and the end-to-end latency of
both under `jax.jit`: medians over repeated calls after warm-up, packed and float
calls interleaved so the ratio comes from one run on one machine state. The stem
(int8 weights), shortcuts, RPReLU, pooling and the classifier stay float in both.

With `--json` the last line is one JSON object: `packed_ms`, `float_ms`, `speedup`
(None without `--benchmark`), `size_bytes` (the packed file), `max_abs_logit_diff`,
`argmax_agreement`, and with `--benchmark` `layers`, `binary_share` (of the packed
time), `binary_macs_per_s`.
"""

import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Mapping

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from bnas_jax import cli
from bnas_jax import packed
from bnas_jax.errors import UserInputError
from bnas_jax.models import binary_export

flags.DEFINE_string(
  "export",
  None,
  "Export file or directory (binary_packed.npz or binary_export.npz, e.g. WORKDIR/deploy/arch0).",
)
flags.DEFINE_bool(
  "benchmark", False, "Time every binary layer and the whole network, packed vs float twin."
)
flags.DEFINE_bool("json", False, "Print one JSON object as the last line.")
flags.DEFINE_integer("batch", 1, "Images per batch.", lower_bound=1, upper_bound=4096)
flags.DEFINE_integer(
  "image_size",
  0,
  "Input height = width; 0 = the size the export records (32 if it records none).",
  lower_bound=0,
  upper_bound=4096,
)
flags.DEFINE_integer(
  "repeats", 20, "Timed calls per measurement (median).", lower_bound=3, upper_bound=10000
)
flags.DEFINE_string("save_packed", None, "Also write the packed export to this file.")
flags.mark_flags_as_required(["export"])
FLAGS = flags.FLAGS

DEFAULT_IMAGE_SIZE = 32


def input_shape(
  net: Mapping[str, Any], info: Mapping[str, Any], batch: int, image_size: int = 0
) -> tuple[int, int, int, int]:
  """The NHWC batch shape to run; checked by tracing the float twin (nothing computed)."""
  size = image_size or info.get("image_size") or DEFAULT_IMAGE_SIZE
  shape = (batch, size, size, int(np.asarray(net["stem"]["weight"]).shape[2]))
  try:
    jax.eval_shape(
      lambda x: binary_export.apply_exported(net, x), jax.ShapeDtypeStruct(shape, jnp.float32)
    )
  except (TypeError, ValueError) as e:
    reason = str(e).splitlines()[0].rstrip(". ")
    raise UserInputError(
      f"--image_size={size} does not fit this network (a stride-2 block needs even feature "
      f"maps on both its conv and its 2x2-pooled shortcut): {reason}. Pick a size the "
      "network's strides divide, e.g. the one it was trained at."
    ) from e
  return shape


def median_ms(fns: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
  """Median wall time (ms) of each zero-argument call; calls interleaved, two warm-ups each."""
  for fn in fns.values():
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) * 1e3 for name, t in times.items()}


def binary_layers(net: Mapping[str, Any], shape: tuple[int, ...]) -> list[dict[str, Any]]:
  """Every binary conv with its input shape, groups, stride and BOPs (Ho*Wo*O*k*k*C/G per image)."""
  n, size, _, _ = shape
  c = int(np.asarray(net["stem"]["weight"]).shape[3])
  h = (size + 2 - 3) // 2 + 1  # the 3x3/2 stem
  rows = []
  for i, b in enumerate(net["blocks"]):
    k, stride = int(b["kernel"]), int(b["stride"])
    groups, width = int(b["groups"]), int(b["width"])
    ho = (h + 2 * ((k - 1) // 2) - k) // stride + 1
    rows.append(
      {
        "name": f"block{i}/conv_{k}x{k}",
        "conv": b["kxk"],
        "input": (n, h, h, c),
        "kernel": k,
        "groups": groups,
        "stride": stride,
        "out": c,
        "bops": ho * ho * c * k * k * c // groups,
      }
    )
    rows.append(
      {
        "name": f"block{i}/conv_1x1",
        "conv": b["1x1"],
        "input": (n, ho, ho, c),
        "kernel": 1,
        "groups": 1,
        "stride": 1,
        "out": width,
        "bops": ho * ho * width * c,
      }
    )
    h, c = ho, width
  return rows


def _layer_fns(row: Mapping[str, Any], x: jax.Array):
  """(packed, float) zero-argument calls of one binary layer under jit."""
  conv = row["conv"]
  w = jnp.asarray(conv["weight"], jnp.float32)
  words = jnp.asarray(packed.pack_conv_weight(np.asarray(conv["weight"]), row["groups"]))
  wsum = jnp.sum(w, axis=2).reshape(row["kernel"] ** 2, row["out"])
  affine = {k: jnp.asarray(conv[k]) for k in ("threshold", "scale", "shift")}
  packed_fn = jax.jit(
    lambda x, words, wsum, a: packed.sign_conv(
      x,
      words,
      **a,
      in_channels=x.shape[-1],
      groups=row["groups"],
      kernel_size=row["kernel"],
      stride=row["stride"],
      wsum=wsum,
    )
  )
  float_fn = jax.jit(
    lambda x, w, a: packed.float_sign_conv(x, w, **a, groups=row["groups"], stride=row["stride"])
  )
  return (lambda: packed_fn(x, words, wsum, affine)), (lambda: float_fn(x, w, affine))


def run(
  net: Mapping[str, Any],
  shape: tuple[int, ...],
  *,
  benchmark: bool = False,
  repeats: int = 20,
  seed: int = 0,
) -> dict[str, Any]:
  """Runs `net` packed and as its float twin on one seeded batch; optionally times both.

  Returns:
    {"max_abs_logit_diff", "argmax_agreement", "packed_ms", "float_ms", "speedup"}
    and with `benchmark` also "layers" (one dict per binary conv),
    "binary_share" and "binary_macs_per_s".
  """
  x = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
  packed_apply = binary_export.blockwise_network(binary_export.pack(net), packed_convs=True)
  float_apply = binary_export.blockwise_network(binary_export.float_twin(net), packed_convs=False)
  packed_logits, float_logits = np.asarray(packed_apply(x)), np.asarray(float_apply(x))
  out: dict[str, Any] = {
    "max_abs_logit_diff": float(np.abs(packed_logits - float_logits).max()),
    "argmax_agreement": float(np.mean(packed_logits.argmax(-1) == float_logits.argmax(-1))),
    "packed_ms": None,
    "float_ms": None,
    "speedup": None,
  }
  if not benchmark:
    return out
  layers = []
  for row in binary_layers(net, shape):
    xin = jax.random.normal(jax.random.key(len(layers)), row["input"], jnp.float32)
    packed_fn, float_fn = _layer_fns(row, xin)
    t = median_ms({"packed": packed_fn, "float": float_fn}, repeats)
    n, h, _, c = row["input"]
    layers.append(
      {
        "name": row["name"],
        "shape": f"{h}x{h}x{c}->{row['out']} k{row['kernel']} s{row['stride']} g{row['groups']}",
        "bops": row["bops"] * n,
        "packed_ms": t["packed"],
        "float_ms": t["float"],
        "speedup": t["float"] / t["packed"],
      }
    )
  t = median_ms({"packed": lambda: packed_apply(x), "float": lambda: float_apply(x)}, repeats)
  binary_ms = sum(l["packed_ms"] for l in layers)
  out.update(
    packed_ms=t["packed"],
    float_ms=t["float"],
    speedup=t["float"] / t["packed"],
    layers=layers,
    binary_share=min(1.0, binary_ms / t["packed"]),
    binary_macs_per_s=sum(l["bops"] for l in layers) / (binary_ms / 1e3),
  )
  return out


def format_layers(result: Mapping[str, Any]) -> str:
  """The per-layer table and the end-to-end line of a `run(..., benchmark=True)` result."""
  header = ["layer", "shape", "BOPs", "packed ms", "float ms", "speed-up"]
  rows = [
    [
      l["name"],
      l["shape"],
      f"{l['bops']:,}",
      f"{l['packed_ms']:.3f}",
      f"{l['float_ms']:.3f}",
      f"{l['speedup']:.1f}x",
    ]
    for l in result["layers"]
  ]
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))
  lines = [fmt(header)] + [fmt(r) for r in rows]
  lines.append(
    f"end to end (stem, shortcuts, RPReLU, pooling, classifier float in both): packed "
    f"{result['packed_ms']:.3f} ms, float twin {result['float_ms']:.3f} ms, speed-up "
    f"{result['speedup']:.2f}x; binary layers {result['binary_share']:.0%} of the "
    f"packed time at {result['binary_macs_per_s'] / 1e9:.1f} G binary MACs/s"
  )
  return "\n".join(lines)


def packed_size_bytes(
  net: Mapping[str, Any], info: Mapping[str, Any], save_to: str | None = None
) -> int:
  """On-disk bytes of the packed form (the file itself when the export is packed)."""
  if save_to:
    return binary_export.save_packed(save_to, net, image_size=info.get("image_size"))
  if info["format"] == "packed":
    return int(info["size_bytes"])
  with tempfile.TemporaryDirectory() as tmp:
    return binary_export.save_packed(
      os.path.join(tmp, binary_export.PACKED_FILE), net, image_size=info.get("image_size")
    )


def main(argv):
  if len(argv) > 1:
    cli.fail(f"Unexpected positional arguments {argv[1:]!r}; all options are --flags.")
  with cli.user_errors_exit():
    net, info = binary_export.load(FLAGS.export)
    shape = input_shape(net, info, FLAGS.batch, FLAGS.image_size)
    if FLAGS.save_packed and os.path.isdir(FLAGS.save_packed):
      example = os.path.join(FLAGS.save_packed, binary_export.PACKED_FILE)
      raise UserInputError(
        f"--save_packed={FLAGS.save_packed} is a directory; give a file name, e.g. {example}."
      )
  size = packed_size_bytes(net, info, FLAGS.save_packed)
  print(
    f"{info['path']}: {info['format']} export, {len(net['blocks'])} blocks, "
    f"{info['size_bytes']:,} bytes on disk; packed form {size:,} bytes"
  )
  result = run(net, shape, benchmark=FLAGS.benchmark, repeats=FLAGS.repeats)
  print(
    f"batch {shape}: max |packed - float logits| = {result['max_abs_logit_diff']:.3g}, "
    f"argmax agreement {result['argmax_agreement']:.0%}"
  )
  if FLAGS.benchmark:
    print(format_layers(result))
  if FLAGS.json:
    summary = dict(
      result,
      path=info["path"],
      format=info["format"],
      size_bytes=size,
      export_file_bytes=info["size_bytes"],
      input_shape=list(shape),
    )
    print(json.dumps(summary))
  sys.stdout.flush()


if __name__ == "__main__":
  cli.run(main)
