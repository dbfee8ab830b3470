"""Bit-packed binary layers: XNOR-popcount convolutions and dense layers in pure JAX.

A binary layer multiplies +-1 activations by +-1 weights. With 32 signs packed
into one uint32 word (bit 1 = -1, bit 0 = +1, so sign(0) = +1 as in the float
path), the dot product of two length-n sign vectors a, b is

    a . b = n - 2 * popcount(bits(a) XOR bits(b))                      (1)

(XNOR-Net, Rastegari et al. 2016, Sec. 3.2; the xor form counts mismatches,
which is the complement of XNOR's matches). Channel counts that are not
multiples of 32 leave padding bits that are 0 in both operands: their XOR is 0,
so they add nothing to the popcount and `n` in (1) is the true channel count.

Zero padding. The float conv pads its +-1 input with zeros, and a padded zero
contributes 0. A packed word cannot hold a zero, so the border is padded with
words of +1 signs (0 bits) and corrected: a padded tap then contributes
sum_c w[tap, c, o] instead of 0, so the exact float result is

    y[p, o] = T * C_g - 2 * P[p, o] - sum_{taps t of p outside the image} wsum[t, o]   (2)

with T*C_g the taps times channels per group, P the popcount over all taps, and
`wsum[t, o] = sum_c w[t, c, o]`. The correction of (2) is a (H_out*W_out, k*k)
0/1 mask of outside taps (known at trace time) times `wsum`: a tiny matmul.

Kernel form. Issue 14 measured (and `benchmarks/binary_inference.py`
re-measures) that on XLA:CPU the fast form keeps the *output channels in the
vector lanes* and loops over the packed input words: the packed im2col
(positions, G, k*k*Wg) is built with strided slices, then a `fori_loop` over
its words adds `popcount(x_word[:, :, None] ^ w_word[None])` into an int32
accumulator (positions, G, O_g). Forms that broadcast all words and reduce
over the word axis were no faster than the float conv.

Layouts: activations NHWC; a packed activation is (N, H, W, G, Wg) uint32 with
Wg = ceil(C_g / 32) words per group; a packed conv weight is
(k*k, G, Wg, O_g) uint32 (tap-major, as HWIO flattened), so output channel
g * O_g + o is output o of group g.
"""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
WORD_BITS = 32


def num_words(channels: int) -> int:
  """uint32 words holding `channels` sign bits."""
  return -(-channels // WORD_BITS)


def _pack_bits(bits: Array) -> Array:
  """Packs a bool array along its last axis into uint32 words (bit i = element i)."""
  c = bits.shape[-1]
  words = num_words(c)
  pad = words * WORD_BITS - c
  if pad:
    bits = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, pad)])
  bits = bits.reshape(*bits.shape[:-1], words, WORD_BITS).astype(jnp.uint32)
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  # Distinct bits: the sum is their bitwise OR.
  return jnp.sum(bits << shifts, axis=-1, dtype=jnp.uint32)


def pack_signs(x: Array, groups: int = 1, threshold: Array | float = 0.0) -> Array:
  """sign(x + threshold) of an NHWC (or (N, C)) array, packed per group.

  The RSign of ReActNet (Eq. 1 of ReActNet): -1 where x + threshold < 0, +1
  otherwise (sign(0) = +1, as `quantizers.ste_sign`).

  Returns:
    (..., groups, ceil(C / groups / 32)) uint32; bit 1 means -1.
  """
  c = x.shape[-1]
  negative = (x + threshold) < 0
  negative = negative.reshape(*x.shape[:-1], groups, c // groups)
  return _pack_bits(negative)


def unpack_signs(words: Array, channels: int) -> Array:
  """Inverse of `pack_signs` for one group axis: (..., G, Wg) -> (..., G * channels) +-1 float."""
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  bits = (words[..., None] >> shifts) & 1
  bits = bits.reshape(*words.shape[:-1], -1)[..., :channels]
  signs = 1.0 - 2.0 * bits.astype(jnp.float32)
  return signs.reshape(*words.shape[:-2], -1)


def pack_conv_weight(w: np.ndarray, groups: int) -> np.ndarray:
  """A +-1 HWIO kernel (I = C_in / groups) as (k*k, G, Wg, O_g) uint32 words (numpy)."""
  w = np.asarray(w)
  kh, kw, cg, out = w.shape
  og = out // groups
  # (taps, cg, G, og) -> (taps, G, og, cg): pack along cg.
  neg = (w < 0).reshape(kh * kw, cg, groups, og).transpose(0, 2, 3, 1)
  words = num_words(cg)
  neg = np.pad(neg, [(0, 0)] * 3 + [(0, words * WORD_BITS - cg)])
  neg = neg.reshape(kh * kw, groups, og, words, WORD_BITS).astype(np.uint64)
  packed = np.sum(neg << np.arange(WORD_BITS, dtype=np.uint64), axis=-1).astype(np.uint32)
  return np.ascontiguousarray(packed.transpose(0, 1, 3, 2))  # (taps, G, Wg, og)


def pack_dense_weight(w: np.ndarray) -> np.ndarray:
  """A +-1 (C_in, O) kernel as (1, 1, Wg, O) uint32 words: a 1x1 conv with one group."""
  return pack_conv_weight(np.asarray(w)[None, None], 1)


def _outside_tap_mask(size: int, k: int, stride: int, dilation: int, pad: int) -> np.ndarray:
  """(out_size, k) 1.0 where tap j of output i reads a padded position, along one axis."""
  out = (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  pos = np.arange(out)[:, None] * stride + np.arange(k)[None, :] * dilation - pad
  return ((pos < 0) | (pos >= size)).astype(np.float32)


def im2col_words(
  x_packed: Array, k: int, stride: int, dilation: int, pad: int, ho: int, wo: int
) -> Array:
  """(N, H, W, G, Wg) packed signs -> (N * Ho * Wo, G, k*k*Wg) words, tap-major.

  Padding words are 0 (+1 signs) and corrected by Eq. (2). Packed words are
  32x smaller than the float im2col, so materialising them is cheap.
  """
  n, _, _, g, words = x_packed.shape
  if k == 1 and stride == 1:
    return x_packed.reshape(n * ho * wo, g, words)
  xp = x_packed
  if pad:
    xp = jnp.pad(x_packed, ((0, 0), (pad, pad), (pad, pad), (0, 0), (0, 0)))
  taps = []
  for dy in range(k):
    for dx in range(k):
      y0, x0 = dy * dilation, dx * dilation
      taps.append(
        lax.slice(
          xp,
          (0, y0, x0, 0, 0),
          (n, y0 + stride * (ho - 1) + 1, x0 + stride * (wo - 1) + 1, g, words),
          (1, stride, stride, 1, 1),
        )
      )
  cols = jnp.stack(taps, axis=3)  # (N, Ho, Wo, T, G, Wg)
  return cols.transpose(0, 1, 2, 4, 3, 5).reshape(n * ho * wo, g, k * k * words)


def popcount_mismatches(cols: Array, w_cols: Array, unroll: int = 4) -> Array:
  """sum_j popcount(cols[p, g, j] ^ w_cols[g, j, o]): (P, G, K) x (G, K, O_g) -> (P, G, O_g) int32.

  The loop runs over the K packed words; each step XORs one word per position
  with one word per output channel, so the output channels sit in the vector
  lanes and the accumulator stays in registers/cache (the form issue 14
  measured 7-25x faster than XLA's float conv on this CPU).
  """
  p, g, k = cols.shape
  og = w_cols.shape[-1]

  def step(j, acc):
    xj = lax.dynamic_slice_in_dim(cols, j, 1, axis=2)  # (P, G, 1)
    wj = lax.dynamic_index_in_dim(w_cols, j, axis=1, keepdims=False)  # (G, O_g)
    return acc + lax.population_count(xj ^ wj[None]).astype(jnp.int32)

  acc = jnp.zeros((p, g, og), jnp.int32)
  return lax.fori_loop(0, k, step, acc, unroll=max(1, min(unroll, k)))


def binary_conv(
  x_packed: Array,
  w_packed: Array,
  *,
  channels_per_group: int,
  kernel_size: int,
  stride: int = 1,
  dilation: int = 1,
  wsum: Array | None = None,
  unroll: int = 4,
) -> Array:
  """The exact integer +-1 conv of packed signs with packed weights, Eq. (1)-(2).

  Args:
    x_packed: (N, H, W, G, Wg) uint32 from `pack_signs`.
    w_packed: (k*k, G, Wg, O_g) uint32 from `pack_conv_weight`.
    channels_per_group: C_in / G (the true bit count per group and tap).
    kernel_size: k (odd).
    stride: spatial stride.
    dilation: kernel dilation; padding dilation * (k - 1) // 2 as the float path.
    wsum: (k*k, O) float32 per-tap weight sums (`sum_c w`); needed for k > 1
      (the zero-padding correction), computed from `w_packed` if None.
    unroll: `fori_loop` unrolling of the loop over packed words.

  Returns:
    (N, H_out, W_out, G * O_g) float32 holding integers: sum of x * w over
    the window, zero-padded inputs contributing 0.
  """
  n, h, wd, g, words = x_packed.shape
  k = kernel_size
  taps, _, _, og = w_packed.shape
  if taps != k * k or w_packed.shape[1:3] != (g, words):
    raise ValueError(
      f"packed weight {w_packed.shape} does not fit k={k} and packed input {x_packed.shape}"
    )
  pad = dilation * (k - 1) // 2
  ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  wo = (wd + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  cols = im2col_words(x_packed, k, stride, dilation, pad, ho, wo)
  w_cols = w_packed.transpose(1, 0, 2, 3).reshape(g, taps * words, og)
  mismatches = popcount_mismatches(cols, w_cols, unroll).reshape(n, ho, wo, g * og)
  y = (taps * channels_per_group - 2 * mismatches).astype(jnp.float32)
  if wsum is None and pad:
    wsum = conv_weight_tap_sums(w_packed, channels_per_group)
  correction = padding_correction(h, wd, k, stride, dilation, wsum)
  return y if correction is None else y - correction


def padding_correction(
  h: int, w: int, k: int, stride: int, dilation: int, wsum: Array | None
) -> Array | None:
  """The last term of Eq. (2): (1, H_out, W_out, O) sums of the weights of padded taps.

  None when no tap of any output reads the border (k = 1 or no padding).
  """
  pad = dilation * (k - 1) // 2
  if not pad:
    return None
  ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  wo = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  mask_y = _outside_tap_mask(h, k, stride, dilation, pad)
  mask_x = _outside_tap_mask(w, k, stride, dilation, pad)
  # Tap (dy, dx) is outside iff its row or its column is.
  outside = 1.0 - (1.0 - mask_y[:, None, :, None]) * (1.0 - mask_x[None, :, None, :])
  outside = outside.reshape(ho * wo, k * k)
  if not outside.any():
    return None
  # Exact: 0/1 times integers below 2^24, one nonzero term per outside tap.
  correction = jnp.dot(jnp.asarray(outside), wsum, precision=lax.Precision.HIGHEST)
  return correction.reshape(1, ho, wo, -1)


def conv_weight_tap_sums(w_packed: Array, channels_per_group: int) -> Array:
  """(k*k, O) float32 sum over input channels of the +-1 weights of each tap."""
  taps, g, _, og = w_packed.shape
  negatives = jnp.sum(lax.population_count(w_packed).astype(jnp.int32), axis=2)  # (taps, G, og)
  return (channels_per_group - 2 * negatives).reshape(taps, g * og).astype(jnp.float32)


def binary_dense(x_packed: Array, w_packed: Array, *, in_features: int) -> Array:
  """Exact +-1 matrix product: (N, 1, Wg) packed signs times a `pack_dense_weight` kernel."""
  n = x_packed.shape[0]
  y = binary_conv(
    x_packed.reshape(n, 1, 1, 1, -1), w_packed, channels_per_group=in_features, kernel_size=1
  )
  return y.reshape(n, -1)


def sign_conv(
  x: Array,
  w_packed: Array,
  *,
  threshold: Array,
  scale: Array,
  shift: Array,
  in_channels: int,
  groups: int,
  kernel_size: int,
  stride: int = 1,
  dilation: int = 1,
  wsum: Array | None = None,
) -> Array:
  """RSign -> packed binary conv -> folded per-channel affine, fused under jit.

  `conv(sign(x + threshold), B) * scale + shift`: the RSign threshold (ReActNet
  Eq. 1), the weight scale mean|w| and the eval-mode BN folded into `scale` and
  `shift` (binary_export's form).
  """
  bits = pack_signs(x, groups, threshold)
  y = binary_conv(
    bits,
    w_packed,
    channels_per_group=in_channels // groups,
    kernel_size=kernel_size,
    stride=stride,
    dilation=dilation,
    wsum=wsum,
  )
  return y * scale + shift


def float_sign_conv(
  x: Array,
  w: Array,
  *,
  threshold: Array,
  scale: Array,
  shift: Array,
  groups: int,
  stride: int = 1,
  dilation: int = 1,
) -> Array:
  """The float twin of `sign_conv`: the same +-1 weights through `lax.conv_general_dilated`."""
  signs = jnp.where(x + threshold >= 0, 1.0, -1.0)
  k = w.shape[0]
  pad = dilation * (k - 1) // 2
  y = lax.conv_general_dilated(
    signs,
    jnp.asarray(w, jnp.float32),
    (stride, stride),
    ((pad, pad), (pad, pad)),
    rhs_dilation=(dilation, dilation),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
    preferred_element_type=jnp.float32,
  )
  return y * scale + shift
