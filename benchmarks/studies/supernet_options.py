r"""How to run every NAS-BNN subnet through one compiled program: a measurement.

  python benchmarks/studies/supernet_options.py [--quick] [--sizes=4,8] [--rounds=N]
      [--network [--nolibrary] [--network_rounds=N]] [--dense_lax]

A NAS-BNN block (Lin et al. 2024, Table 1) is a binary k x k conv with g groups
that keeps its input width c_in, then a binary 1 x 1 conv c_in -> c_out, each
followed by BN and a sign. The supernet must run any (c_in, c_out, k, g)
without recompiling. This script times the candidate designs on ONE block of
the imagenet space's stage 4 (widths {384, 512, 768}, kernels {3, 5}, groups
{4, 8}; blocks 2-9 see the stage's own widths), batch 16, float32, at the
4 x 4 map that a 64 x 64 input gives stage 4 (and 8 x 8):

* static: the true-size block for one fixed (c_in, c_out, k, g); the lower
  bound, but one compile per distinct shape.
* masked-grouped: the k x k conv at the largest size with
  feature_group_count = g_min; the active c_in channels are gathered so that
  each of the g_min conv groups holds c_in / g_min of them, a finer g is a
  block-diagonal weight mask inside each conv group, and the result is
  gathered back. It gathers the weight with the reference's cyclic group
  slicing, as `bnas_jax.models.nasbnn_supernet` does. "masked-grouped-blk"
  (equality check only; it timed the same) stores each fine group's weight
  where it sits in the max-size layout, so only the output columns are
  gathered: another weight sharing, not the reference's.
* masked-dense: the k x k conv as one dense 5 x 5 conv at the largest width
  with a block-diagonal mask (any g). First map size only.
* switch: `lax.switch` over the 12 true-size k x k variants (c_in, k, g) and
  the 9 true-size 1 x 1 variants (c_in, c_out), indexed by traced ids;
  tensors are zero-padded to the largest width between the two.
* switch-remat: the same with every branch under `jax.checkpoint`. Under
  `grad` a switch otherwise returns the residuals of all branches (zeros but
  for the taken one), which small subnets pay for.

The designs run on these conv implementations ("backend" column; lax
variants of the masked and switch designs at the first map size only):

* lax: `lax.conv_general_dilated`.
* mm: the conv as im2col (k*k shifted slices) and one matmul per group. No
  conv op at all, so nothing of XLA:CPU's conv emitter is involved.
* hybrid: a `jax.custom_vjp` whose forward is the lax conv and whose backward
  is the vjp of the mm form (XLA:CPU runs grouped-conv weight gradients and
  any conv gradient inside a `lax.cond`/`lax.switch` branch slowly, matmuls
  are unaffected).

Every design computes the same function (checked first: output, input
gradient and weight gradients against the static block for several
(c_in, c_out, k, g); a "naive" masked variant that masks only the real-valued
weights and never re-zeroes shows what the masks are for), with the
weights binarized as sign x mean|w| over the active entries, the 3 x 3 kernel
as the centre crop of the 5 x 5 weight times a learnable 9 x 9 matrix, and BN
as a per-channel affine map.

Timing: all compiled programs of one map size are timed interleaved,
round-robin (`--rounds` rounds, each calls every program once), so a burst of
load from other processes hits all of them alike; the table gives the median
and the minimum over rounds. "fwd" is a jitted forward, "fwd+bwd" a jitted
gradient with respect to all weights and the block input. Compile time is
`jit(...).lower(...).compile()` (no execution), once per program, i.e. per
shape for static.

`--network` (off by default; ~10 min on 2 busy cores, mostly compiling)
then builds the whole imagenet network (stem, 21 block slots, pool, 100-way
classifier; residual adds, no RPReLU) at 64 x 64, batch 16, in the "switch"
design on the hybrid conv with checkpointed branches (a slot beyond its
stage's depth is skipped with `lax.cond`) and times the eval forward and fwd+bwd of the biggest, the
smallest and two random subnets through one program each; a sandwich step is
the sum of the four fwd+bwd times. "static" is the same code with the choices
as Python constants (one compile per architecture), for biggest and smallest.
With `--library` (default) it also times `bnas_jax.models.nasbnn_supernet`
(masked-grouped on the lax conv) on the same inputs.

`--dense_lax` adds masked-dense on the lax backend. Off by default: XLA:CPU
ran the dense 5 x 5 768 -> 768 conv on a 4 x 4 map in ~10 s (forward) and
~30 s (gradient) here, which alone exceeds the run's time budget.
"""

import functools
import itertools
import os
import time
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from bnas_jax import convolution
from bnas_jax import quantizers
from bnas_jax.search_spaces import nasbnn
# pylint: enable=g-import-not-at-top

flags.DEFINE_bool("quick", False, "4 x 4 map only, 3 rounds, no whole-network part.")
flags.DEFINE_string("sizes", "4,8", "Comma-separated stage-4 map sides to measure.")
flags.DEFINE_integer("rounds", 4, "Interleaved timing rounds per program.")
flags.DEFINE_integer("batch", 16, "Batch size.")
flags.DEFINE_bool("network", False,
                  "Also time the whole network (~10 min on 2 cores, mostly compiling; "
                  "ignored with --quick).")
flags.DEFINE_bool("library", True,
                  "With --network: also time bnas_jax.models.nasbnn_supernet (~2 min compile).")
flags.DEFINE_integer("network_rounds", 2, "Timing rounds of the whole-network part.")
flags.DEFINE_bool("dense_lax", False, "Also run masked-dense on the (very slow) lax conv.")
FLAGS = flags.FLAGS

Array = jax.Array
Arch = tuple[int, int, int, int]  # (c_in, c_out, kernel, groups)

_SPACE = nasbnn.SearchSpace.imagenet(num_classes=100)
_STAGE = _SPACE.stages[3]
WIDTHS = _STAGE.widths            # (384, 512, 768)
KERNELS = _STAGE.kernels          # (3, 5)
GROUPS = _STAGE.groups            # (4, 8)
C_MAX = max(WIDTHS)
K_MAX = max(KERNELS)
G_MIN = min(GROUPS)

SUBNETS = {
    "biggest": (768, 768, 5, 4),
    "middle": (512, 512, 5, 8),
    "smallest": (384, 384, 3, 8),
}
CHECK_ARCHS = ((768, 512, 3, 8), (512, 768, 5, 8), (512, 384, 3, 4), (384, 768, 5, 4))


# --------------------------------------------------------------------------- #
# Convolution backends
# --------------------------------------------------------------------------- #


conv_lax = convolution.conv_lax
conv_mm = convolution.conv_im2col


def conv_hybrid(x: Array, w: Array, groups: int, stride: int = 1) -> Array:
  """Forward of `conv_lax`, gradients of `conv_mm` (the two are the same function)."""
  return convolution.conv2d(x, w, groups, stride, "lax")


BACKENDS = {"lax": conv_lax, "mm": conv_mm,
            "hybrid": lambda x, w, groups, stride=1: conv_hybrid(x, w, groups, stride)}


# --------------------------------------------------------------------------- #
# Shared pieces: binarization, kernel transform, BN + sign
# --------------------------------------------------------------------------- #


def binarize(w: Array, valid: Optional[Array] = None) -> Array:
  """sign(w) x mean|w| per output filter, over the `valid` entries only.

  Masked entries must be re-zeroed AFTER the sign: sign(0) = +1 would turn
  them into live weights, and averaging |w| over them would shrink the scale.
  """
  axes = (0, 1, 2)
  if valid is None:
    alpha = jnp.mean(jnp.abs(w), axis=axes, keepdims=True)
    return lax.stop_gradient(alpha) * quantizers.ste_sign(w)
  count = jnp.maximum(jnp.sum(valid, axis=axes, keepdims=True), 1.0)
  alpha = jnp.sum(jnp.abs(w) * valid, axis=axes, keepdims=True) / count
  return lax.stop_gradient(alpha) * quantizers.ste_sign(w) * valid


def kernel_5to3(w5: Array, matrix: Array) -> Array:
  """OFA kernel transform: centre 3 x 3 crop of a 5 x 5 HWIO kernel times a 9 x 9 matrix."""
  crop = w5[1:4, 1:4]
  flat = crop.reshape(9, -1)
  return jnp.einsum("ab,bj->aj", matrix, flat).reshape(crop.shape)


def bn_sign(y: Array, gamma: Array, beta: Array, mask: Optional[Array] = None,
            sign: bool = True) -> Array:
  """Per-channel affine map (inference-style BN), then the activation sign.

  With a channel mask the result is multiplied by it: beta would otherwise
  leak into the inactive channels and sign(0) = +1 would make them live.
  """
  y = y * gamma + beta
  if sign:
    y = quantizers.approx_sign(y)
  return y if mask is None else y * mask


def channel_mask(width: Array, size: int) -> Array:
  return (jnp.arange(size) < width).astype(jnp.float32)


def init_params(key: Array, c_max: int = C_MAX, k_max: int = K_MAX, g_min: int = G_MIN,
                dense: bool = False) -> dict[str, Array]:
  """Supernet weights of one block at their largest sizes."""
  keys = jax.random.split(key, 7)
  in_kxk = c_max if dense else c_max // g_min
  return {
      "kxk": jax.random.normal(keys[0], (k_max, k_max, in_kxk, c_max)),
      "m53": jnp.eye(9) + 0.1 * jax.random.normal(keys[1], (9, 9)),
      "gamma1": 1.0 + 0.1 * jax.random.normal(keys[2], (c_max,)),
      "beta1": 0.5 * jax.random.normal(keys[3], (c_max,)),
      "pw": jax.random.normal(keys[4], (1, 1, c_max, c_max)),
      "gamma2": 1.0 + 0.1 * jax.random.normal(keys[5], (c_max,)),
      "beta2": 0.5 * jax.random.normal(keys[6], (c_max,)),
  }


# --------------------------------------------------------------------------- #
# The block in each design
# --------------------------------------------------------------------------- #


def static_kxk_weight(stored: Array, matrix: Array, c: int, k: int, g: int,
                      sharing: str = "reference", g_min: int = G_MIN) -> Array:
  """True-size (k, k, c/g, c) binary weight of a (c, k, g) choice.

  Fine group j (output channels j*c/g ... ) reads the stored input slice
  (j mod r) * c/g ...; r = stored_in // (c/g) is the reference's cyclic rule
  ("reference"; a dense store gives the diagonal blocks), r = g / g_min puts
  it where it sits in the max-size grouped layout ("blk").
  """
  sub = c // g
  r = max(stored.shape[2] // sub, 1) if sharing == "reference" else g // g_min
  parts = [stored[:, :, (j % r) * sub:(j % r + 1) * sub, j * sub:(j + 1) * sub]
           for j in range(g)]
  w = parts[0] if g == 1 else jnp.concatenate(parts, axis=-1)
  if k < stored.shape[0]:
    w = kernel_5to3(w, matrix)
  return binarize(w)


def static_kxk(p: dict[str, Array], x: Array, c: int, k: int, g: int,
               conv: Callable[..., Array], sharing: str = "reference", stride: int = 1,
               g_min: int = G_MIN) -> Array:
  """sign -> true-size k x k conv -> BN; x has exactly c channels."""
  h = quantizers.approx_sign(x)
  h = conv(h, static_kxk_weight(p["kxk"], p["m53"], c, k, g, sharing, g_min), g, stride)
  return bn_sign(h, p["gamma1"][:c], p["beta1"][:c], sign=False)


def static_pointwise(p: dict[str, Array], h: Array, c_in: int, c_out: int,
                     conv: Callable[..., Array]) -> Array:
  """sign -> true-size 1 x 1 conv -> BN; h has exactly c_in channels."""
  h = quantizers.approx_sign(h)
  h = conv(h, binarize(p["pw"][:, :, :c_in, :c_out]), 1)
  return bn_sign(h, p["gamma2"][:c_out], p["beta2"][:c_out], sign=False)


def static_block(p: dict[str, Array], x: Array, arch: Arch, conv: Callable[..., Array],
                 sharing: str = "reference") -> Array:
  """The block at its true size; x has c_in channels, the output c_out."""
  c_in, c_out, k, g = arch
  h = static_kxk(p, x, c_in, k, g, conv, sharing)
  return static_pointwise(p, h, c_in, c_out, conv)


def _k_select(stored: Array, matrix: Array, k: Array) -> tuple[Array, Array]:
  """Max-size kernel of traced size k (3 x 3 zero-padded to 5 x 5), spatial mask."""
  w3 = jnp.pad(kernel_5to3(stored, matrix), ((1, 1), (1, 1), (0, 0), (0, 0)))
  w = jnp.where(k == K_MAX, stored, w3)
  taps = (jnp.abs(jnp.arange(K_MAX) - K_MAX // 2) <= k // 2).astype(jnp.float32)
  return w, taps[:, None, None, None] * taps[None, :, None, None]


def masked_pointwise(p: dict[str, Array], h: Array, c_in: Array, c_out: Array,
                     conv: Callable[..., Array], naive: bool = False) -> Array:
  """sign -> masked dense 1 x 1 conv -> BN; zero beyond c_out.

  `naive` masks only the real-valued weight and never re-zeroes anything (the
  pitfalls the equality check demonstrates).
  """
  in_mask, out_mask = channel_mask(c_in, C_MAX), channel_mask(c_out, C_MAX)
  valid = in_mask[None, None, :, None] * out_mask[None, None, None, :]
  if naive:
    h = conv(quantizers.approx_sign(h), binarize(p["pw"] * valid), 1)
    return bn_sign(h, p["gamma2"], p["beta2"], sign=False)
  h = quantizers.approx_sign(h) * in_mask
  h = conv(h, binarize(p["pw"], valid), 1)
  return bn_sign(h, p["gamma2"], p["beta2"], out_mask, sign=False)


def masked_grouped_block(p: dict[str, Array], x: Array, arch: Array,
                         conv: Callable[..., Array], sharing: str = "reference",
                         naive: bool = False) -> Array:
  """Max-size grouped conv (g_min groups) with channel gathers and a group mask.

  `naive`: see `masked_pointwise`.
  """
  c_in, c_out, k, g = arch[0], arch[1], arch[2], arch[3]
  block = C_MAX // G_MIN                 # channels per conv group (192)
  per = c_in // G_MIN                    # active channels per conv group
  sub = c_in // g                        # channels per fine group
  pos = jnp.arange(C_MAX)
  b, t = pos // block, pos % block
  orig = b * per + t                     # original channel at each position
  live = t < per
  mask = channel_mask(c_in, C_MAX)
  h = quantizers.approx_sign(x) * (1.0 if naive else mask)
  h = jnp.where(live, jnp.take(h, jnp.minimum(orig, C_MAX - 1), axis=-1), 0.0)

  t_in = jnp.arange(block)[:, None]
  ch_in = b[None, :] * per + t_in         # original input channel per (t_in, position)
  o = orig[None, :]
  valid = (t_in < per) & live[None, :] & (ch_in // sub == o // sub)
  w, taps = _k_select(p["kxk"], p["m53"], k)
  o_idx = jnp.minimum(o, C_MAX - 1)
  if sharing == "reference":
    r = block // sub
    src_in = ((o // sub) % r) * sub + ch_in % sub
    w = w[:, :, jnp.minimum(src_in, block - 1), jnp.broadcast_to(o_idx, src_in.shape)]
  else:
    w = jnp.take(w, o_idx[0], axis=-1)
  valid = valid.astype(jnp.float32)[None, None] * taps
  w = binarize(w * valid) if naive else binarize(w, valid)
  y = conv(h, w, G_MIN)
  inv = (pos // per) * block + pos % per  # position of original channel c
  y = jnp.take(y, jnp.minimum(inv, C_MAX - 1), axis=-1)
  h = bn_sign(y, p["gamma1"], p["beta1"], None if naive else mask, sign=False)
  return masked_pointwise(p, h, c_in, c_out, conv, naive)


def masked_dense_block(p: dict[str, Array], x: Array, arch: Array,
                       conv: Callable[..., Array]) -> Array:
  """Max-size dense k x k conv with a block-diagonal (groups) and kernel mask."""
  c_in, c_out, k, g = arch[0], arch[1], arch[2], arch[3]
  sub = c_in // g
  mask = channel_mask(c_in, C_MAX)
  h = quantizers.approx_sign(x) * mask
  ch = jnp.arange(C_MAX)
  valid = ((ch[:, None] < c_in) & (ch[None, :] < c_in)
           & (ch[:, None] // sub == ch[None, :] // sub))
  w, taps = _k_select(p["kxk"], p["m53"], k)
  w = binarize(w, valid.astype(jnp.float32)[None, None] * taps)
  h = bn_sign(conv(h, w, 1), p["gamma1"], p["beta1"], mask, sign=False)
  return masked_pointwise(p, h, c_in, c_out, conv)


def _choice_index(values: Sequence[Array], choices: Sequence[tuple[int, ...]]) -> Array:
  """Index of the traced tuple `values` in the static list `choices`."""
  idx = jnp.int32(0)
  for i, choice in enumerate(choices):
    hit = functools.reduce(jnp.logical_and, [v == c for v, c in zip(values, choice)])
    idx = jnp.where(hit, i, idx)
  return idx


def _pad_channels(y: Array, size: int) -> Array:
  return jnp.pad(y, ((0, 0),) * (y.ndim - 1) + ((0, size - y.shape[-1]),))


def _branches(fns: list[Callable[..., Array]], remat: bool) -> list[Callable[..., Array]]:
  """`lax.switch` branches, each under `jax.checkpoint` if `remat`.

  Under `grad`, a switch's forward returns the residuals of EVERY branch
  (zeros for the branches not taken), so small subnets pay for the big
  branches' residuals. Checkpointed branches keep only their inputs (shared by
  all branches) and recompute the taken branch in the backward pass.
  """
  return [jax.checkpoint(f) for f in fns] if remat else fns


def switch_kxk(p: dict[str, Array], x: Array, c_in: Array, k: Array, g: Array,
               conv: Callable[..., Array], widths: Sequence[int], kernels: Sequence[int],
               groups: Sequence[int], stride: int = 1, remat: bool = False) -> Array:
  """`static_kxk` via `lax.switch` over the true-size (c, k, g) branches.

  x and the result are zero-padded to the largest width. Python-int choices
  skip the switch (the static design).
  """
  c_max = x.shape[-1]

  def branch(choice):
    c, kk, gg = choice
    return lambda p, x: _pad_channels(
        static_kxk(p, x[..., :c], c, kk, gg, conv, stride=stride, g_min=min(groups)), c_max)

  if all(isinstance(v, int) for v in (c_in, k, g)):
    return branch((c_in, k, g))(p, x)
  choices = list(itertools.product(widths, kernels, groups))
  return lax.switch(_choice_index((c_in, k, g), choices),
                    _branches([branch(c) for c in choices], remat), p, x)


def switch_pointwise(p: dict[str, Array], h: Array, c_in: Array, c_out: Array,
                     conv: Callable[..., Array], in_widths: Sequence[int],
                     out_widths: Sequence[int], remat: bool = False) -> Array:
  """`static_pointwise` via `lax.switch` over the (c_in, c_out) pairs; padded."""
  c_out_max = p["pw"].shape[-1]

  def branch(choice):
    ci, co = choice
    return lambda p, h: _pad_channels(static_pointwise(p, h[..., :ci], ci, co, conv),
                                      c_out_max)

  if isinstance(c_in, int) and isinstance(c_out, int):
    return branch((c_in, c_out))(p, h)
  choices = list(itertools.product(in_widths, out_widths))
  return lax.switch(_choice_index((c_in, c_out), choices),
                    _branches([branch(c) for c in choices], remat), p, h)


def switch_block(p: dict[str, Array], x: Array, arch: Array, conv: Callable[..., Array],
                 remat: bool = False) -> Array:
  c_in, c_out, k, g = arch[0], arch[1], arch[2], arch[3]
  h = switch_kxk(p, x, c_in, k, g, conv, WIDTHS, KERNELS, GROUPS, remat=remat)
  return switch_pointwise(p, h, c_in, c_out, conv, WIDTHS, WIDTHS, remat=remat)


# --------------------------------------------------------------------------- #
# Measurement helpers
# --------------------------------------------------------------------------- #


class Program:
  """`jax.jit(fn)` compiled ahead of time for `args`' shapes, with its compile time."""

  def __init__(self, name: str, fn: Callable[..., Any], args: Sequence[Any]):
    start = time.perf_counter()
    self.compiled = jax.jit(fn).lower(*args).compile()
    self.compile_s = time.perf_counter() - start
    self.name = name

  def __call__(self, *args):
    return self.compiled(*args)


def _timed(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def interleaved(cases: Sequence[tuple[str, Callable[[], Any]]], rounds: int
                ) -> dict[str, list[float]]:
  """Times every case once per round, round-robin; one warm-up call each first."""
  for _, fn in cases:
    jax.block_until_ready(fn())
  times = {name: [] for name, _ in cases}
  for _ in range(rounds):
    for name, fn in cases:
      times[name].append(_timed(fn))
  return times


def _ms(ts: Sequence[float]) -> str:
  return f"{1e3 * float(np.median(ts)):8.1f} ({1e3 * min(ts):6.1f})"


def _loss(block_fn):
  """Scalar loss of a block: its output against a fixed random cotangent."""
  def loss(p, x, arch, cot):
    y = block_fn(p, x, arch)
    return jnp.sum(y * cot[..., :y.shape[-1]])
  return loss


# --------------------------------------------------------------------------- #
# Stage-4 block study
# --------------------------------------------------------------------------- #


def _single_conv_check(batch: int, hw: int, rounds: int) -> list[str]:
  """One binary conv outside vs inside a `lax.switch` branch (fwd, grad)."""
  key = jax.random.PRNGKey(3)
  lines = [f"One conv, {hw}x{hw}, batch {batch}: plain vs inside a 2-branch lax.switch "
           "(ms, median (min))",
           f"  {'conv':28s} {'backend':7s} {'fwd plain':>17s} {'fwd switch':>17s} "
           f"{'grad plain':>17s} {'grad switch':>17s}"]
  for k, c, g in ((1, 768, 1), (5, 768, 4), (3, 384, 8)):
    x = jnp.sign(jax.random.normal(key, (batch, hw, hw, c)))
    w = jnp.sign(jax.random.normal(key, (k, k, c // g, c)))
    for backend in ("lax", "mm"):
      conv = BACKENDS[backend]

      def plain(w, x, i, conv=conv, g=g):
        del i
        return jnp.sum(conv(x, w, g) ** 2)

      def switched(w, x, i, conv=conv, g=g):
        return lax.switch(i, [lambda w, x: jnp.sum(conv(x, w, g) ** 2),
                              lambda w, x: jnp.sum(conv(x, 2 * w, g) ** 2)], w, x)

      cases = []
      for name, fn in (("fwd plain", plain), ("fwd switch", switched)):
        prog = Program(name, fn, (w, x, 0))
        cases.append((name, functools.partial(prog, w, x, 0)))
      for name, fn in (("grad plain", plain), ("grad switch", switched)):
        prog = Program(name, jax.grad(fn, argnums=(0, 1)), (w, x, 0))
        cases.append((name, functools.partial(prog, w, x, 0)))
      t = interleaved(cases, rounds)
      label = f"{k}x{k} {c}->{c} g{g}"
      lines.append(f"  {label:28s} {backend:7s} " + " ".join(_ms(t[n]) for n, _ in cases))
  return lines


def _check_equal(batch: int, hw: int) -> list[str]:
  """Max differences of each design from the static block (lax conv).

  Compares the output, the gradient of a fixed random loss with respect to
  the block input and with respect to every stored weight (all designs derive
  their weights from the same stored tensors), and the values left in the
  channels beyond the active widths.
  """
  key = jax.random.PRNGKey(0)
  p = init_params(key)
  pd = init_params(key, dense=True)
  x_full = jax.random.normal(jax.random.PRNGKey(1), (batch, hw, hw, C_MAX))
  cot = jax.random.normal(jax.random.PRNGKey(2), (batch, hw, hw, C_MAX))

  def grads(fn):
    def run(p, x, arch, cot):
      y, vjp = jax.vjp(lambda pp, xx: fn(pp, xx, arch), p, x)
      dp, dx = vjp(cot[..., :y.shape[-1]])
      return y, dx, dp
    return jax.jit(run)

  def rel(a, b):
    return float(jnp.max(jnp.abs(a - b))) / max(float(jnp.max(jnp.abs(b))), 1e-30)

  # (design, backend, block, static sharing, params)
  designs = [
      ("masked-grouped", "hybrid",
       functools.partial(masked_grouped_block, sharing="reference"), "reference", p),
      ("masked-grouped-blk", "hybrid", functools.partial(masked_grouped_block, sharing="blk"),
       "blk", p),
      ("masked-dense", "mm", masked_dense_block, "reference", pd),
      ("switch", "hybrid", switch_block, "reference", p),
      ("masked-grp naive", "hybrid",
       functools.partial(masked_grouped_block, sharing="reference", naive=True),
       "reference", p),
  ]
  programs = [(name, backend, grads(functools.partial(
      lambda p, x, a, block, conv: block(p, x, a, conv), block=block,
      conv=BACKENDS[backend])), sharing, params)
              for name, backend, block, sharing, params in designs]
  worst = {}
  for arch in CHECK_ARCHS:
    c_in, c_out = arch[0], arch[1]
    x = x_full * channel_mask(c_in, C_MAX)
    arr = jnp.asarray(arch, jnp.int32)
    refs = {}
    for name, backend, prog, sharing, params in programs:
      ref_key = (sharing, id(params))
      if ref_key not in refs:
        ref = grads(functools.partial(
            lambda p, x, a, arch, sharing: static_block(p, x, arch, conv_lax, sharing),
            arch=arch, sharing=sharing))
        refs[ref_key] = ref(params, x[..., :c_in], arr, cot)
      ref_y, ref_dx, ref_dp = refs[ref_key]
      y, dx, dp = prog(params, x, arr, cot)
      errs = (rel(y[..., :c_out], ref_y),
              float(jnp.max(jnp.abs(y[..., c_out:]))) if c_out < C_MAX else 0.0,
              rel(dx[..., :c_in], ref_dx),
              max(rel(dp[name_], ref_dp[name_]) for name_ in ref_dp))
      prev = worst.get((name, backend), (0.0,) * 4)
      worst[(name, backend)] = tuple(max(a, b) for a, b in zip(prev, errs))
  lines = [f"Equality with the static block (lax conv) over {len(CHECK_ARCHS)} "
           f"(c_in, c_out, k, g), {hw}x{hw}, batch {batch}. Max over them of: relative max "
           "|diff| of the output (dy), the input gradient (dx), the weight gradients (dW); "
           "max |y| beyond c_out.",
           f"  {'design':19s} {'backend':7s} {'rel dy':>9s} {'|y| pad':>9s} {'rel dx':>9s} "
           f"{'rel dW':>9s}"]
  for (name, backend), errs in worst.items():
    lines.append(f"  {name:19s} {backend:7s} " + " ".join(f"{e:9.1e}" for e in errs))
  return lines


def stage_study(batch: int, hw: int, rounds: int, full: bool, dense_lax: bool
                ) -> list[str]:
  """Times every (design, backend, subnet) on one stage-4 block at hw x hw."""
  key = jax.random.PRNGKey(0)
  p = init_params(key)
  pd = init_params(key, dense=True)
  x_full = jax.random.normal(jax.random.PRNGKey(1), (batch, hw, hw, C_MAX))
  cot = jax.random.normal(jax.random.PRNGKey(2), (batch, hw, hw, C_MAX))
  inputs = {}
  for sub, arch in SUBNETS.items():
    x = x_full * channel_mask(arch[0], C_MAX)
    inputs[sub] = (x, jnp.asarray(arch, jnp.int32))

  # `full` adds the designs that only confirm a known slowdown (lax-conv
  # gradients) and masked-dense; the first map size runs them all.
  designs = [("static", b) for b in ("lax", "mm", "hybrid")]
  designs += [("masked-grouped", b) for b in (("lax", "hybrid") if full else ("hybrid",))]
  designs += [("masked-dense", "mm")] if full else []
  designs += [("masked-dense", "lax")] if dense_lax else []
  designs += [("switch", b) for b in (("lax", "hybrid") if full else ("hybrid",))]
  designs += [("switch-remat", "hybrid")]
  blocks = {"masked-grouped": masked_grouped_block, "masked-dense": masked_dense_block,
            "switch": switch_block,
            "switch-remat": functools.partial(switch_block, remat=True)}

  cases, compile_s = [], {}
  for design, backend in designs:
    conv = BACKENDS[backend]
    if design == "static":
      for sub, arch in SUBNETS.items():
        fn = functools.partial(lambda p, x, a, arch, conv: static_block(p, x, arch, conv),
                               arch=arch, conv=conv)
        x, arr = inputs[sub]
        xs = x[..., :arch[0]]
        fwd = Program("fwd", fn, (p, xs, arr))
        grad = Program("grad", jax.grad(_loss(fn), argnums=(0, 1)), (p, xs, arr, cot))
        compile_s[(design, backend, sub)] = (fwd.compile_s, grad.compile_s)
        cases.append(((design, backend, sub, "fwd"), functools.partial(fwd, p, xs, arr)))
        cases.append(((design, backend, sub, "grad"),
                      functools.partial(grad, p, xs, arr, cot)))
      continue
    params = pd if design == "masked-dense" else p
    fn = functools.partial(lambda p, x, a, block, conv: block(p, x, a, conv),
                           block=blocks[design], conv=conv)
    x0, a0 = inputs["biggest"]
    fwd = Program("fwd", fn, (params, x0, a0))
    grad = Program("grad", jax.grad(_loss(fn), argnums=(0, 1)), (params, x0, a0, cot))
    for sub in SUBNETS:
      x, arr = inputs[sub]
      compile_s[(design, backend, sub)] = (fwd.compile_s, grad.compile_s)
      cases.append(((design, backend, sub, "fwd"), functools.partial(fwd, params, x, arr)))
      cases.append(((design, backend, sub, "grad"),
                    functools.partial(grad, params, x, arr, cot)))

  times = interleaved(cases, rounds)
  med = {key: float(np.median(t)) for key, t in times.items()}
  best = {(sub, kind): min(med[("static", b, sub, kind)] for b in ("lax", "mm", "hybrid"))
          for sub in SUBNETS for kind in ("fwd", "grad")}
  rows = [f"Stage-4 block (k x k conv c_in->c_in + 1x1 conv c_in->c_out, BN/sign), "
          f"{hw}x{hw} map, batch {batch}, {rounds} interleaved rounds; ms as median (min).",
          "biggest = (768->768, k5, g4), middle = (512->512, k5, g8), smallest = "
          "(384->384, k3, g8). 'x best' = median / fastest static median of that subnet.",
          f"  {'design':15s} {'backend':7s} {'subnet':9s} {'fwd ms':>17s} "
          f"{'fwd+bwd ms':>17s} {'x best f/fb':>12s} {'compile s f/fb':>15s}"]
  for design, backend in designs:
    for sub in SUBNETS:
      key = (design, backend, sub)
      tf, tg = times[key + ("fwd",)], times[key + ("grad",)]
      rf, rg = med[key + ("fwd",)] / best[(sub, "fwd")], med[key + ("grad",)] / best[(sub, "grad")]
      cf, cg = compile_s[key]
      rows.append(f"  {design:15s} {backend:7s} {sub:9s} {_ms(tf)} {_ms(tg)} "
                  f"{rf:5.1f} {rg:5.1f}   {cf:6.1f} {cg:6.1f}")
  rows.append("  Cost tracking (smallest / biggest median; static-best: "
              f"fwd {best[('smallest', 'fwd')] / best[('biggest', 'fwd')]:.2f}, "
              f"fwd+bwd {best[('smallest', 'grad')] / best[('biggest', 'grad')]:.2f}):")
  for design, backend in designs:
    r = [med[(design, backend, "smallest", k)] / med[(design, backend, "biggest", k)]
         for k in ("fwd", "grad")]
    rows.append(f"    {design:15s} {backend:7s} fwd {r[0]:.2f}  fwd+bwd {r[1]:.2f}")
  rows.append("  Compile s: static per shape; the other designs once for every subnet.")
  return rows


# --------------------------------------------------------------------------- #
# Whole network
# --------------------------------------------------------------------------- #


def network_slots(space: nasbnn.SearchSpace) -> list[dict[str, Any]]:
  """Static description of every block slot: its choice sets and stride."""
  slots, prev = [], space.stem_widths
  for spec in space.stages:
    for j in range(spec.max_depth):
      slots.append({"in_widths": prev if j == 0 else spec.widths, "widths": spec.widths,
                    "kernels": spec.kernels, "groups": spec.groups,
                    "stride": spec.stride if j == 0 else 1, "first": j == 0})
    prev = spec.widths
  return slots


def init_network(key: Array, space: nasbnn.SearchSpace) -> dict[str, Any]:
  """Supernet weights of the whole network at their largest sizes."""
  slots = network_slots(space)
  keys = jax.random.split(key, len(slots) + 2)
  stem_max = max(space.stem_widths)
  blocks = []
  for slot, k in zip(slots, keys[2:]):
    c_in, c_out = max(slot["in_widths"]), max(slot["widths"])
    k_max, g_min = max(slot["kernels"]), min(slot["groups"])
    ks = jax.random.split(k, 7)
    blocks.append({
        "kxk": jax.random.normal(ks[0], (k_max, k_max, c_in // g_min, c_in)),
        "m53": jnp.eye(9) + 0.1 * jax.random.normal(ks[1], (9, 9)),
        "gamma1": 1.0 + 0.1 * jax.random.normal(ks[2], (c_in,)),
        "beta1": 0.5 * jax.random.normal(ks[3], (c_in,)),
        "pw": jax.random.normal(ks[4], (1, 1, c_in, c_out)),
        "gamma2": 1.0 + 0.1 * jax.random.normal(ks[5], (c_out,)),
        "beta2": 0.5 * jax.random.normal(ks[6], (c_out,)),
    })
  c_last = max(space.stages[-1].widths)
  return {
      "stem": 0.3 * jax.random.normal(keys[0], (space.stem_kernel, space.stem_kernel, 3,
                                                stem_max)),
      "blocks": blocks,
      "fc": 0.05 * jax.random.normal(keys[1], (c_last, space.num_classes)),
  }


def network_forward(params: dict[str, Any], images: Array, enc: dict[str, Any],
                    space: nasbnn.SearchSpace, conv: Callable[..., Array]) -> Array:
  """Logits of the subnet `enc` (traced arrays: one program for all; ints: static).

  Stem (full precision here), then every slot: sign -> k x k conv -> BN,
  + shortcut (2 x 2 average pool on stride 2), sign -> 1 x 1 conv -> BN,
  + the reference's repeat-channels shortcut; a slot beyond its stage's depth
  passes its input through (`lax.cond`, so it costs nothing). Tensors are
  zero-padded to each layer's largest width; every conv runs in a
  `lax.switch` branch of its true size.
  """
  static = isinstance(enc["stem_width"], int)
  stem_max = max(space.stem_widths)
  width = enc["stem_width"]
  x = conv_lax(images, params["stem"], 1, space.stem_stride)
  x = x * channel_mask(width, stem_max)
  for i, (slot, p) in enumerate(zip(network_slots(space), params["blocks"])):
    c_out, k, g, active = (enc["width"][i], enc["kernel"][i], enc["groups"][i],
                           enc["active"][i])
    out_max = max(slot["widths"])

    def run(p, x, slot=slot, c_in=width, c_out=c_out, k=k, g=g, out_max=out_max):
      y = switch_kxk(p, x, c_in, k, g, conv, slot["in_widths"], slot["kernels"],
                     slot["groups"], slot["stride"], remat=True)
      if slot["stride"] == 2:
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
      out1 = y + x
      y = switch_pointwise(p, out1, c_in, c_out, conv, slot["in_widths"], slot["widths"],
                           remat=True)
      repeat = jnp.arange(out_max) % c_in
      return y + jnp.take(out1, repeat, axis=-1) * channel_mask(c_out, out_max)

    if slot["first"]:
      x, width = run(p, x), c_out
    elif static:
      if active:
        x, width = run(p, x), c_out
    else:
      x = lax.cond(active > 0, jax.checkpoint(run), lambda p, x: x, p, x)
      width = jnp.where(active > 0, c_out, width)
  feats = jnp.mean(x, axis=(1, 2))
  return feats @ params["fc"]


def _xent(logits: Array, labels: Array) -> Array:
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def network_study(batch: int, rounds: int, library: bool) -> list[str]:
  """Whole imagenet network at 64 x 64: sandwich step and eval forwards."""
  space = nasbnn.SearchSpace.imagenet(num_classes=100)
  res = 64
  rng = np.random.default_rng(0)
  archs = {"biggest": nasbnn.biggest(space), "smallest": nasbnn.smallest(space),
           "random1": nasbnn.sample_uniform(space, rng),
           "random2": nasbnn.sample_uniform(space, rng)}
  encs = {n: {k: jnp.asarray(v) for k, v in nasbnn.encode(space, a).items()}
          for n, a in archs.items()}
  images = jax.random.normal(jax.random.PRNGKey(5), (batch, res, res, 3))
  labels = jax.random.randint(jax.random.PRNGKey(6), (batch,), 0, space.num_classes)
  params = init_network(jax.random.PRNGKey(7), space)
  conv = BACKENDS["hybrid"]

  def fwd(p, images, enc):
    return network_forward(p, images, enc, space, conv)

  def loss(p, images, labels, enc):
    return _xent(fwd(p, images, enc), labels)

  grad = jax.grad(loss)
  programs, cases = {}, []
  programs["switch fwd"] = Program("fwd", fwd, (params, images, encs["biggest"]))
  programs["switch grad"] = Program("grad", grad, (params, images, labels, encs["biggest"]))
  for name, enc in encs.items():
    cases.append((("switch", name, "fwd"),
                  functools.partial(programs["switch fwd"], params, images, enc)))
    cases.append((("switch", name, "grad"),
                  functools.partial(programs["switch grad"], params, images, labels, enc)))
  for name in ("biggest", "smallest"):
    enc = {k: (int(v) if v.ndim == 0 else [int(a) for a in v])
           for k, v in nasbnn.encode(space, archs[name]).items()}
    f = functools.partial(lambda p, im, enc: fwd(p, im, enc), enc=enc)
    gr = functools.partial(lambda p, im, lb, enc: grad(p, im, lb, enc), enc=enc)
    programs[f"static fwd {name}"] = Program("fwd", f, (params, images))
    programs[f"static grad {name}"] = Program("grad", gr, (params, images, labels))
    cases.append((("static", name, "fwd"),
                  functools.partial(programs[f"static fwd {name}"], params, images)))
    cases.append((("static", name, "grad"),
                  functools.partial(programs[f"static grad {name}"], params, images, labels)))
  if library:
    from bnas_jax.models import nasbnn_supernet  # pylint: disable=g-import-not-at-top
    model = nasbnn_supernet.NasBnnSupernet(space, space.num_classes)
    variables = model.init(jax.random.PRNGKey(8), images, encs["biggest"], train=False)

    def lib_fwd(v, images, enc):
      return model.apply(v, images, enc, train=False)

    def lib_loss(prm, stats, images, labels, enc):
      logits, _ = model.apply({"params": prm, "batch_stats": stats}, images, enc, train=True,
                              mutable=["batch_stats"])
      return _xent(logits, labels)

    lib_grad = jax.grad(lib_loss)
    lp, ls = variables["params"], variables["batch_stats"]
    programs["library fwd"] = Program("fwd", lib_fwd, (variables, images, encs["biggest"]))
    programs["library grad"] = Program("grad", lib_grad,
                                       (lp, ls, images, labels, encs["biggest"]))
    for name in ("biggest", "smallest"):  # Masked: every subnet costs the same.
      enc = encs[name]
      cases.append((("library", name, "fwd"),
                    functools.partial(programs["library fwd"], variables, images, enc)))
      cases.append((("library", name, "grad"),
                    functools.partial(programs["library grad"], lp, ls, images, labels, enc)))
  times = interleaved(cases, rounds)
  med = {key: float(np.median(t)) for key, t in times.items()}
  lines = [f"Whole imagenet network, 64x64, batch {batch}, 100 classes, {rounds} interleaved "
           "rounds; seconds as median (min).",
           "  switch = one program for every subnet (lax.switch over true-size branches, "
           "hybrid conv, checkpointed branches, depth by lax.cond);",
           "  static = one program per architecture (same code, choices as constants).",
           "  library = bnas_jax.models.nasbnn_supernet (masked-grouped, lax conv; train-mode "
           "BN) as of this run." if library else "",
           f"  {'program':8s} {'subnet':9s} {'eval fwd s':>17s} {'fwd+bwd s':>17s}"]
  for key in times:
    design, name, kind = key
    if kind != "fwd":
      continue
    tf, tg = times[key], times[(design, name, "grad")]
    lines.append(f"  {design:8s} {name:9s} {_s(tf)} {_s(tg)}")
  for design in ("switch", "library"):
    if (design, "biggest", "grad") in med:
      if (design, "random1", "grad") in med:
        step = sum(med[(design, n, "grad")] for n in archs)
        how = "sum of the 4 fwd+bwd medians"
      else:
        big, small = med[(design, "biggest", "grad")], med[(design, "smallest", "grad")]
        step = 2 * (big + small)
        how = "biggest + smallest + 2 x their mean: masked, any subnet costs the same"
      lines.append(f"  {design}: sandwich step ({how}) {step:.2f} s")
  lines.append("  compile s: " + ", ".join(f"{n} {p.compile_s:.1f}"
                                           for n, p in programs.items()))
  lines.append("  random1 = " + archs["random1"].to_string())
  lines.append("  random2 = " + archs["random2"].to_string())
  return [line for line in lines if line]


def _s(ts: Sequence[float]) -> str:
  return f"{float(np.median(ts)):8.3f} ({min(ts):6.3f})"


def main(argv):
  del argv
  sizes = [4] if FLAGS.quick else [int(s) for s in FLAGS.sizes.split(",") if s]
  rounds = 3 if FLAGS.quick else FLAGS.rounds
  start = time.perf_counter()
  print(f"jax {jax.__version__}, {jax.devices()[0].platform} x {jax.device_count()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
  for line in _single_conv_check(FLAGS.batch, 4, rounds):
    print(line, flush=True)
  print(flush=True)
  for line in _check_equal(4, 4):
    print(line, flush=True)
  for i, hw in enumerate(sizes):
    print(flush=True)
    for line in stage_study(FLAGS.batch, hw, rounds, full=i == 0, dense_lax=FLAGS.dense_lax):
      print(line, flush=True)
  if FLAGS.network and not FLAGS.quick:
    print(flush=True)
    for line in network_study(FLAGS.batch, FLAGS.network_rounds, FLAGS.library):
      print(line, flush=True)
  print(f"\ntotal {time.perf_counter() - start:.0f} s, load average "
        f"{os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
