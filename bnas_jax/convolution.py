"""2-D convolutions whose gradients are matrix products.

XLA:CPU runs the weight gradient of a *grouped* `lax.conv_general_dilated`
17-28x slower than its forward, and any conv gradient inside a
`lax.switch`/`lax.cond` branch 13-23x slower than outside one; an im2col +
matmul form of the same conv has neither problem (its gradient is ~2x its
forward, inside a branch or not). Measured in `benchmarks/studies/supernet_options.py`
(see benchmarks/README.md). `conv2d` therefore runs a chosen forward and always
takes its gradients from the matmul form; all forms compute the same function.

The "split" form runs a grouped conv as one plain conv per group on channel
slices. Measured on the NAS-BNN shapes (batch 16, one conv inside a
checkpointed `lax.switch` branch, 2 busy cores): its forward is 2-6x faster
than one grouped lax conv when the input side exceeds the kernel side (e.g.
16 x 16, 192 channels, k = 5, g = 2: 18 vs 126 ms), but 2-20x slower for
k = 5 on 4 x 4 or 2 x 2 inputs (4 x 4, 768, g = 4: 240 vs 11 ms); its gradient
inside a branch is 1.4-20x slower than the matmul one (4-20x from 8 x 8 up:
plain conv gradients in branches, above). Hence the "auto" forward (split
where it wins, lax elsewhere) and the im2col backward for every forward.

Layout: NHWC inputs, HWIO kernels with I = C_in / groups, PyTorch's padding
(k - 1) // 2 on both sides, float32 accumulation.
"""

import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array


def conv_lax(
  x: Array, w: Array, groups: int, stride: int = 1, *, dilation: int = 1, padding: Any = None
) -> Array:
  """The conv as one `lax.conv_general_dilated`.

  `padding`: None for PyTorch's symmetric `dilation * (k - 1) // 2`, else
  anything `lax.conv_general_dilated` takes ("VALID", ((lo, hi), (lo, hi))).
  """
  if padding is None:
    pad = dilation * (w.shape[0] - 1) // 2
    padding = ((pad, pad), (pad, pad))
  return lax.conv_general_dilated(
    x,
    w,
    (stride, stride),
    padding,
    rhs_dilation=(dilation, dilation),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
    preferred_element_type=jnp.float32,
  )


def conv_im2col(x: Array, w: Array, groups: int, stride: int = 1) -> Array:
  """The conv as k*k shifted slices (im2col) and one batched matmul over groups."""
  n, h, wd, c = x.shape
  k, out = w.shape[0], w.shape[-1]
  cg, og = c // groups, out // groups
  pad = (k - 1) // 2
  ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
  if k == 1:
    cols = x[:, ::stride, ::stride, :].reshape(n * ho * wo, groups, cg)
  else:
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    taps = [
      xp[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride]
      for dy in range(k)
      for dx in range(k)
    ]
    cols = jnp.stack(taps, axis=3).reshape(n * ho * wo, k * k, groups, cg)
    cols = cols.transpose(0, 2, 1, 3).reshape(n * ho * wo, groups, k * k * cg)
  # HWIO with O = groups x og: rows ordered (tap, in-channel) as in `cols`.
  wg = w.reshape(k * k * cg, groups, og)
  y = jnp.einsum("rgi,igo->rgo", cols, wg, preferred_element_type=jnp.float32)
  return y.reshape(n, ho, wo, out)


def conv_split(
  x: Array, w: Array, groups: int, stride: int = 1, *, dilation: int = 1, padding: Any = None
) -> Array:
  """The conv as `groups` plain (ungrouped) lax convs on channel slices, concatenated."""
  conv = functools.partial(conv_lax, stride=stride, dilation=dilation, padding=padding)
  if groups == 1:
    return conv(x, w, 1)
  cg, og = x.shape[-1] // groups, w.shape[-1] // groups
  return jnp.concatenate(
    [conv(x[..., i * cg : (i + 1) * cg], w[..., i * og : (i + 1) * og], 1) for i in range(groups)],
    axis=-1,
  )


def grouped_conv(
  x: Array,
  w: Array,
  groups: int,
  stride: int = 1,
  *,
  dilation: int = 1,
  padding: Any = None,
  form: str = "auto",
) -> Array:
  """A grouped conv (autodiff gradients) as `form`: "lax", "split" or "auto" (`grouped_form`)."""
  form = grouped_form() if form == "auto" else form
  conv = conv_split if form == "split" else conv_lax
  return conv(x, w, groups, stride, dilation=dilation, padding=padding)


def grouped_form() -> str:
  """How a differentiated grouped conv outside a `lax.switch` should run on this backend.

  "split" (one plain conv per group) on XLA:CPU, whose grouped-conv weight
  gradient is 17-28x slower than its forward (module docstring; a digits
  MBConv search step: 4.5 s grouped, 0.70 s split, benchmarks/README.md);
  "lax" (one grouped conv) elsewhere.
  """
  return "split" if jax.default_backend() == "cpu" else "lax"


def conv_auto(x: Array, w: Array, groups: int, stride: int = 1) -> Array:
  """`conv_split` where its forward measured faster than `conv_lax`, else `conv_lax`.

  XLA:CPU ran per-group convs 2-6x faster than one grouped conv whenever the
  input side exceeded the kernel side, and 2-20x slower otherwise (k = 5 on
  4 x 4 or 2 x 2 inputs); see benchmarks/README.md.
  """
  if groups > 1 and min(x.shape[1:3]) > w.shape[0]:
    return conv_split(x, w, groups, stride)
  return conv_lax(x, w, groups, stride)


_FORMS = {"lax": conv_lax, "im2col": conv_im2col, "split": conv_split, "auto": conv_auto}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x: Array, w: Array, groups: int = 1, stride: int = 1, forward: str = "lax") -> Array:
  """A grouped conv computed by `forward`, differentiated as im2col.

  Args:
    x: NHWC input.
    w: HWIO kernel, I = C_in / groups.
    groups: feature groups.
    stride: spatial stride.
    forward: "lax" | "im2col" | "split" (one plain conv per group) | "auto"
      (split or lax by shape).
  """
  return _FORMS[forward](x, w, groups, stride)


def _conv2d_fwd(x, w, groups, stride, forward):
  return _FORMS[forward](x, w, groups, stride), (x, w)


def _conv2d_bwd(groups, stride, forward, residuals, dy):
  del forward
  x, w = residuals
  _, vjp = jax.vjp(lambda a, b: conv_im2col(a, b, groups, stride), x, w)
  return vjp(dy)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
