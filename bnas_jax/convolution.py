"""2-D convolutions whose gradients are matrix products.

XLA:CPU runs the weight gradient of a *grouped* `lax.conv_general_dilated`
17-28x slower than its forward, and any conv gradient inside a
`lax.switch`/`lax.cond` branch 13-23x slower than outside one; an im2col +
matmul form of the same conv has neither problem (its gradient is ~2x its
forward, inside a branch or not). Measured in `benchmarks/supernet_options.py`
(see benchmarks/README.md). `conv2d` therefore runs a chosen forward and always
takes its gradients from the matmul form; both compute the same function.

Layout: NHWC inputs, HWIO kernels with I = C_in / groups, PyTorch's padding
(k - 1) // 2 on both sides, float32 accumulation.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array


def conv_lax(x: Array, w: Array, groups: int, stride: int = 1) -> Array:
  """The conv as one `lax.conv_general_dilated`."""
  pad = (w.shape[0] - 1) // 2
  return lax.conv_general_dilated(
      x, w, (stride, stride), ((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
      preferred_element_type=jnp.float32)


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
    taps = [xp[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride]
            for dy in range(k) for dx in range(k)]
    cols = jnp.stack(taps, axis=3).reshape(n * ho * wo, k * k, groups, cg)
    cols = cols.transpose(0, 2, 1, 3).reshape(n * ho * wo, groups, k * k * cg)
  # HWIO with O = groups x og: rows ordered (tap, in-channel) as in `cols`.
  wg = w.reshape(k * k * cg, groups, og)
  y = jnp.einsum("rgi,igo->rgo", cols, wg, preferred_element_type=jnp.float32)
  return y.reshape(n, ho, wo, out)


_FORWARDS = {"lax": conv_lax, "im2col": conv_im2col}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x: Array, w: Array, groups: int = 1, stride: int = 1, forward: str = "lax") -> Array:
  """A grouped conv computed by `forward` ("lax" | "im2col"), differentiated as im2col."""
  return _FORWARDS[forward](x, w, groups, stride)


def _conv2d_fwd(x, w, groups, stride, forward):
  return _FORWARDS[forward](x, w, groups, stride), (x, w)


def _conv2d_bwd(groups, stride, forward, residuals, dy):
  del forward
  x, w = residuals
  _, vjp = jax.vjp(lambda a, b: conv_im2col(a, b, groups, stride), x, w)
  return vjp(dy)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
