r"""Binary inference speed: packed XNOR-popcount layers and networks vs their float twins.

  python benchmarks/binary_inference.py [--batches=1,16] [--repeats=20] [--archs=A,biggest]
      [--image_size=224] [--skip_networks] [--json]

Everything is measured in one process, medians over `--repeats` calls after two
warm-ups, with the compared calls interleaved, so every speed-up is a ratio from
one run on one machine state (print `uptime` with it).

Layers (issue 14's shapes: 3x3 and 1x1, stride 1, NHWC, at each batch): one
binary conv with its RSign threshold and folded affine, as

* `float`: the float twin, +-1 signs through `lax.conv_general_dilated`;
* `packed`: `packed.sign_conv` (the engine's form: packed im2col, a `fori_loop`
  over the packed words with output channels in the lanes, unroll 4);
* `packed_unroll1`: the same loop, not unrolled;
* `packed_words_unrolled`: the loop over (tap, word) unrolled at trace time
  over shifted windows (no im2col; the first draft's form);
* `packed_reduce_words`: all words XORed at once by broadcasting and the
  popcounts summed over the word axis (the form issue 14 found slow);
* `float_conv_only` / `packed_conv_only`: the conv alone on inputs already
  signed / packed (no RSign, packing or affine): `conv_only_speedup`.
Every variant's output is checked equal to the float conv before timing.

Networks: NAS-BNN-A (Table 6) and the biggest subnet of Table 1 at 224x224, batch 1,
random weights exported by `binary_export.export`, packed vs float twin
(`bnas_jax.deploy.run`); reports the speed-up, the achieved binary MACs/s and the
share of the packed time outside the binary layers (stem, shortcuts, RPReLU,
pooling and classifier stay float).

`--json`: the last line is one JSON object with `layers` (each with `shape`,
`batch`, `variant` times and `speedup` of `packed` vs `float`) and `end_to_end`
(NAS-BNN-A at batch 1: `arch`, `packed_ms`, `float_ms`, `speedup`, ...).
"""

import argparse
import functools
import importlib.util
import json
import os
import subprocess
import sys

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bnas_jax import deploy  # pylint: disable=g-import-not-at-top
from bnas_jax import packed
from bnas_jax.models import binary_export
from bnas_jax.models import build_model
from bnas_jax.models import nasbnn_subnet

# (spatial size, channels in = out): issue 14's table.
SHAPES = ((14, 256), (7, 512), (28, 128))


def _words_unrolled(xp, wp, *, cin, k):
  """The loop over (tap, word) unrolled at trace time on shifted windows (stride 1)."""
  n, h, w, g, words = xp.shape
  pad = (k - 1) // 2
  xpad = jnp.pad(xp, ((0, 0), (pad, pad), (pad, pad), (0, 0), (0, 0)))
  acc = None
  for t in range(k * k):
    dy, dx = divmod(t, k)
    win = xpad[:, dy : dy + h, dx : dx + w]
    for j in range(words):
      term = lax.population_count(win[..., j : j + 1] ^ wp[t, :, j, :])
      acc = term if acc is None else acc + term
  return acc.astype(jnp.int32).reshape(n, h, w, -1)


def _reduce_words(xp, wp, *, cin, k):
  """All words at once: broadcast XOR, popcount, sum over (tap, word)."""
  n, h, w, g, words = xp.shape
  cols = packed.im2col_words(xp, k, 1, 1, (k - 1) // 2, h, w)  # (P, G, K)
  w_cols = wp.transpose(1, 0, 2, 3).reshape(g, k * k * words, -1)  # (G, K, O)
  pop = lax.population_count(cols[..., None] ^ w_cols[None]).astype(jnp.int32)
  return jnp.sum(pop, axis=2).reshape(n, h, w, -1)


def _mismatch_variant(mismatch_fn):
  """A packed sign conv (stride 1) whose popcount core is `mismatch_fn`, Eq. (2) of packed.py."""

  def conv(x, wp, wsum, t, s, b, *, cin, k):
    mismatches = mismatch_fn(packed.pack_signs(x, 1, t), wp, cin=cin, k=k)
    y = (k * k * cin - 2 * mismatches).astype(jnp.float32)
    correction = packed.padding_correction(x.shape[1], x.shape[2], k, 1, 1, wsum)
    return (y if correction is None else y - correction) * s + b

  return conv


def layer_rows(batches, repeats):
  rows = []
  rng = np.random.default_rng(0)
  for batch in batches:
    for k in (3, 1):
      for size, c in SHAPES:
        x = jnp.asarray(rng.standard_normal((batch, size, size, c)), jnp.float32)
        w = np.where(rng.standard_normal((k, k, c, c)) >= 0, 1.0, -1.0).astype(np.float32)
        wp = jnp.asarray(packed.pack_conv_weight(w, 1))
        wsum = jnp.asarray(w.sum(axis=2).reshape(k * k, c))
        t, s, b = (jnp.asarray(rng.standard_normal(c), jnp.float32) for _ in range(3))
        wf = jnp.asarray(w)
        signs = jnp.where(x + t >= 0, 1.0, -1.0)
        words = packed.pack_signs(x, 1, t)
        pad = (k - 1) // 2
        fns = {
          "float": jax.jit(
            lambda x: packed.float_sign_conv(x, wf, threshold=t, scale=s, shift=b, groups=1)
          ),
          "packed": jax.jit(
            lambda x: packed.sign_conv(
              x,
              wp,
              threshold=t,
              scale=s,
              shift=b,
              in_channels=c,
              groups=1,
              kernel_size=k,
              wsum=wsum,
            )
          ),
          "packed_unroll1": jax.jit(
            lambda x: (
              packed.binary_conv(
                packed.pack_signs(x, 1, t),
                wp,
                channels_per_group=c,
                kernel_size=k,
                wsum=wsum,
                unroll=1,
              )
              * s
              + b
            )
          ),
          "packed_words_unrolled": jax.jit(
            lambda x: _mismatch_variant(_words_unrolled)(x, wp, wsum, t, s, b, cin=c, k=k)
          ),
          "packed_reduce_words": jax.jit(
            lambda x: _mismatch_variant(_reduce_words)(x, wp, wsum, t, s, b, cin=c, k=k)
          ),
        }
        # The conv alone, on inputs already signed (float) or packed (words).
        # Inputs are arguments, never closed over: XLA would constant-fold the whole conv.
        float_conv = jax.jit(
          lambda signs, wf: lax.conv_general_dilated(
            signs, wf, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
          )
        )
        packed_conv = jax.jit(
          lambda words, wp, wsum: packed.binary_conv(
            words, wp, channels_per_group=c, kernel_size=k, wsum=wsum
          )
        )
        conv_only = {
          "float_conv_only": lambda _: float_conv(signs, wf),
          "packed_conv_only": lambda _: packed_conv(words, wp, wsum),
        }
        np.testing.assert_array_equal(
          np.asarray(conv_only["packed_conv_only"](x)), np.asarray(conv_only["float_conv_only"](x))
        )
        want = np.asarray(fns["float"](x))
        for name, fn in fns.items():
          np.testing.assert_allclose(np.asarray(fn(x)), want, rtol=1e-5, atol=1e-3, err_msg=name)
        fns.update(conv_only)
        ms = deploy.median_ms({n: functools.partial(f, x) for n, f in fns.items()}, repeats)
        row = {
          "shape": f"{size}x{size}, {c}->{c}, {k}x{k}",
          "batch": batch,
          "binary_macs": batch * size * size * c * c * k * k,
          **{f"{n}_ms": v for n, v in ms.items()},
          "speedup": ms["float"] / ms["packed"],
          "conv_only_speedup": ms["float_conv_only"] / ms["packed_conv_only"],
        }
        rows.append(row)
        print(
          f"[layer] batch {batch:3d} {row['shape']:24s} "
          + "  ".join(f"{n} {v:.3f}" for n, v in ms.items())
          + f"  speed-up {row['speedup']:.1f}x",
          flush=True,
        )
  return rows


def _nasbnn_imagenet_config(image_size):
  spec = importlib.util.spec_from_file_location(
    "nasbnn_config", os.path.join(REPO, "configs", "nasbnn.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("imagenet")
  return config


def _random_export(model, shape, seed=0):
  """`binary_export.export` of `model` with random trained-like variables (no init run)."""
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
  rng = np.random.default_rng(seed)

  def value(path, leaf):
    name = str(path[-1].key)
    if name == "var":
      return 1.0 + 0.5 * rng.random(leaf.shape, np.float32)
    if name == "kernel_scale":
      return np.full(leaf.shape, 0.02, np.float32)
    return 0.3 * rng.standard_normal(leaf.shape).astype(np.float32)

  return binary_export.export(model.blocks, jax.tree_util.tree_map_with_path(value, abstract))


def network_rows(archs, image_size, repeats):
  config = _nasbnn_imagenet_config(image_size)
  rows = []
  for arch in archs:
    model = build_model(nasbnn_subnet.resolve(config, arch), 1000)
    shape = (1, image_size, image_size, 3)
    net = _random_export(model, shape)
    result = deploy.run(net, shape, benchmark=True, repeats=repeats)
    row = {
      "arch": arch,
      "image_size": image_size,
      "batch": 1,
      **{
        k: result[k]
        for k in (
          "packed_ms",
          "float_ms",
          "speedup",
          "binary_share",
          "binary_macs_per_s",
          "max_abs_logit_diff",
          "argmax_agreement",
        )
      },
      "outside_binary_share": 1.0 - result["binary_share"],
      "binary_macs": sum(l["bops"] for l in result["layers"]),
    }
    rows.append(row)
    print(
      f"[network] NAS-BNN-{arch} {image_size}x{image_size} batch 1: packed "
      f"{row['packed_ms']:.2f} ms, float twin {row['float_ms']:.2f} ms, speed-up "
      f"{row['speedup']:.2f}x, {row['binary_macs_per_s'] / 1e9:.1f} G binary MACs/s, "
      f"{row['outside_binary_share']:.0%} of the packed time outside binary layers, "
      f"max |logit diff| {row['max_abs_logit_diff']:.2g}",
      flush=True,
    )
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="1,16")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--archs", default="A,biggest")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--skip_networks", action="store_true")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  print(f"uptime: {uptime}; devices: {jax.devices()}", flush=True)
  layers = layer_rows([int(b) for b in args.batches.split(",")], args.repeats)
  networks = (
    [] if args.skip_networks else network_rows(args.archs.split(","), args.image_size, args.repeats)
  )
  if args.json:
    end_to_end = next((r for r in networks if r["arch"] == "A"), networks[0] if networks else {})
    print(
      json.dumps(
        {"uptime": uptime, "layers": layers, "end_to_end": end_to_end, "networks": networks}
      )
    )


if __name__ == "__main__":
  main()
