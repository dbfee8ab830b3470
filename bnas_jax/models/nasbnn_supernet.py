"""The NAS-BNN binary supernet: every architecture of the space in one program.

NAS-BNN (Lin et al. 2024) Sec. 3.2-3.3. An architecture arrives as traced
int32 arrays (`search_spaces.nasbnn.encode`), so every subnet runs through the
same compiled program and sampling never recompiles. Its semantics are those of
the public reference's slicing supernet (reference notes Sec. 2-4):

* width: the leading `c` channels are active. Activations travel zero-padded
  to the largest width of their position; elementwise ops (BN, RPReLU,
  shortcuts) run at that width and re-zero the inactive channels (sign(0) = +1,
  BN's beta and RPReLU's biases would leak into them).
* kernel: a 3x3 choice in a {3, 5} layer is the centre crop of the 5x5 weight
  times a learnable 9x9 matrix (OFA); a kernel equal to the layer's largest
  gets the Bi-Transformation (Eq. 5) in binary-weight mode only.
* groups: the weight is stored as (K, K, Cmax / g_min, Cmax); g groups of width
  c read its input slices cyclically, as the reference does (`grouped_kernel`).
* depth: the first `depth` blocks of a stage run; the others take a zero
  branch, pass their input through and leave their BN statistics untouched.
* weights: channel-wise normalization (Eq. 6), then sign x mean|w| (binary) or
  the normalized real weight (FP teacher modes).

Execution (measured in benchmarks/studies/supernet_options.py): every conv is a
`lax.switch` over true-size branches, one per (c_in, k, g) for the k x k conv
and per (c_in, c_out) for the 1 x 1 conv, each under `jax.checkpoint`, on
`convolution.conv2d` whose gradients are matmuls. A subnet therefore costs
what its own size costs rather than the supernet's; masking max-size tensors
(the previous design here) made every subnet cost the biggest one, ~3x slower
per sandwich step.

`weight_mode` / `activation_mode` ("binary" | "fp") select BWBA (students),
FWBA (the Bi-Teacher) and FWFA (the teacher ablation of Sec. 4.4).
"""

import functools
import itertools
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bnas_jax import convolution
from bnas_jax import layers
from bnas_jax import quantizers
from bnas_jax.search_spaces import nasbnn

Array = jax.Array


def channel_mask(width: Array, size: int) -> Array:
  """1.0 for the leading `width` of `size` channels, else 0.0."""
  return (jnp.arange(size) < width).astype(jnp.float32)


class MaskedBatchNorm(nn.Module):
  """BatchNorm over the active channels; statistics update only if `update`.

  Per-channel statistics make masking exact: the active channels see exactly
  what a sliced BN would, inactive ones are zeroed. Momentum 0.1 in PyTorch's
  sense (reference), eps 1e-5.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, mask: Array, *, train: bool, update: Array = True) -> Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if train:
      mean = jnp.mean(x, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
      n = x.shape[0] * x.shape[1] * x.shape[2]
      unbiased = var * n / max(n - 1, 1)  # running variance as PyTorch keeps it
      # BN recalibration (the public code's search.py / test.py) averages these
      # over a few batches.
      self.sow("batch_moments", "mean", mean)
      self.sow("batch_moments", "var", unbiased)
      if not self.is_initializing():
        keep = jnp.logical_not(jnp.logical_and(update, mask > 0))
        m = self.momentum
        ra_mean.value = jnp.where(keep, ra_mean.value, m * ra_mean.value + (1 - m) * mean)
        ra_var.value = jnp.where(keep, ra_var.value, m * ra_var.value + (1 - m) * unbiased)
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y * mask


class MaskedRPReLU(nn.Module):
  """RPReLU (ReActNet Eq. 3) on the active channels."""

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    c = x.shape[-1]
    b_in = self.param("bias_in", nn.initializers.zeros, (c,), jnp.float32)
    slope = self.param("slope", nn.initializers.constant(0.25), (c,), jnp.float32)
    b_out = self.param("bias_out", nn.initializers.zeros, (c,), jnp.float32)
    return quantizers.rprelu(x, b_in, slope, b_out) * mask


def _is_static(*values: Any) -> bool:
  return all(isinstance(v, (int, bool, np.integer, np.bool_, np.ndarray)) for v in values)


def choice_index(
  values: Sequence[Array], choices: Sequence[tuple[int, ...]], active: Array = True
) -> Array:
  """Position of `values` in the static list `choices`; len(choices) if not `active`.

  Python/numpy values give a Python int (the branch is picked at trace time),
  traced values a traced index (0 if absent; inputs are validated upstream).
  """
  if _is_static(active, *values):
    if not active:
      return len(choices)
    return choices.index(tuple(int(v) for v in values))
  idx = jnp.int32(0)
  for i, choice in enumerate(choices):
    hit = functools.reduce(jnp.logical_and, [v == c for v, c in zip(values, choice)])
    idx = jnp.where(hit, i, idx)
  return jnp.where(active, idx, len(choices))


def _pad_channels(y: Array, size: int) -> Array:
  return jnp.pad(y, ((0, 0),) * (y.ndim - 1) + ((0, size - y.shape[-1]),))


def true_size_switch(
  index: Array, branches: Sequence[Callable[..., Array]], out_shape: tuple[int, ...], *operands: Any
) -> Array:
  """`lax.switch` over true-size branches, plus a last branch returning zeros.

  Every branch runs under `jax.checkpoint`: under `grad` a switch otherwise
  hands out the residuals of EVERY branch (zeros but for the taken one), which
  a small subnet would pay for; checkpointed branches keep only their inputs,
  shared by all, and recompute the taken branch in the backward pass. Index
  `len(branches)` selects the zero branch (an inactive slot costs nothing).
  A Python int index calls its branch directly (a static subnet, e.g. the
  teacher: no switch at all).
  """
  zeros = lambda *_: jnp.zeros(out_shape, jnp.float32)
  if isinstance(index, int):
    return (list(branches) + [zeros])[index](*operands)
  return jax.lax.switch(index, [jax.checkpoint(b) for b in branches] + [zeros], *operands)


def normalize_and_binarize(w: Array, binary: bool, weight_norm: bool = True) -> Array:
  """Eq. 6 per output filter, then sign x mean|w| (binary) or the real weight.

  The quantizers of the subnet's `layers.QuantConv(kernel_norm="channelwise",
  kernel_quantizer="magnitude_aware_sign")`: unbiased std with eps, detached
  scale, clipped STE through sign. `weight_norm=False` is the Sec. 4.4 ablation.
  """
  if weight_norm:
    w = quantizers.channelwise_weight_norm(w)
  return quantizers.magnitude_aware_sign(w) if binary else w


def grouped_kernel(
  params: Mapping[str, Array], kernels: Sequence[int], c: int, k: int, g: int, binary_weights: bool
) -> Array:
  """The real-valued (k, k, c/g, c) kernel of the static choice (c, k, g).

  `params` holds an `ElasticGroupConv`'s stored weight (K, K, Cmax / g_min,
  Cmax), its OFA matrices and, if learnt, its Bi-Transformation `fp2bin`.
  Output filters [:c]; fine group j (output channels j*c/g ...) reads the
  stored input slice (j mod r)*c/g ..., r = (Cmax / g_min) // (c / g): the
  public reference's cyclic rule. A smaller kernel is the centre crop times
  the learnable OFA matrix (chained 7 -> 5 -> 3); the largest kernel gets the
  Bi-Transformation (Eq. 5) in binary-weight mode only.
  """
  stored = params["kernel"]
  big = stored.shape[0]
  sub = c // g
  r = max(stored.shape[2] // sub, 1)
  out = np.arange(c)
  src_in = ((out // sub) % r)[None, :] * sub + np.arange(sub)[:, None]  # (sub, c)
  w = stored[:, :, src_in, out[None, :]]
  if k == big:
    if binary_weights and "fp2bin" in params and big > 1:
      w = quantizers.bi_transformation(w, params["fp2bin"])
    return w
  prev = big
  for size in sorted(kernels, reverse=True)[1:]:
    w = quantizers.ofa_kernel_transform(w, size, params[f"matrix_{prev}to{size}"])
    if size == k:
      return w
    prev = size
  raise ValueError(f"kernel {k} is not one of {tuple(kernels)}")


class ElasticGroupConv(nn.Module):
  """The k x k binary conv of a block: elastic width, kernel size and groups.

  Weights are stored once at the largest size (see `grouped_kernel` for how a
  choice reads them). Execution: `lax.switch` over one true-size branch per
  (c, k, g) on `convolution.conv2d` (gradients as matmuls), so a subnet costs
  what its own size costs; input and output are zero-padded to the largest
  width. An inactive slot takes the zero branch.

  Attributes:
    in_widths: the input (= output) widths this slot can see.
    kernels: the layer's kernel choices (Table 1), e.g. (3, 5).
    groups: the layer's group choices, e.g. (4, 8); each a multiple of the smallest.
    strides: 1 or 2.
    bi_transformation: learn the K^2 x K^2 Bi-Transformation (Eq. 5).
    weight_norm: channel-wise weight normalization (Eq. 6).
    conv_forward: forward of `convolution.conv2d` ("lax" | "im2col" | "split" | "auto").
  """

  in_widths: tuple[int, ...]
  kernels: tuple[int, ...]
  groups: tuple[int, ...]
  strides: int = 1
  bi_transformation: bool = True
  weight_norm: bool = True
  conv_forward: str = "lax"

  @nn.compact
  def __call__(
    self,
    x: Array,
    width: Array,
    k: Array,
    g: Array,
    *,
    active: Array = True,
    binary_weights: bool,
    binary_activations: bool,
  ) -> Array:
    big, g_min, cmax = max(self.kernels), min(self.groups), max(self.in_widths)
    params = {
      "kernel": self.param(
        "kernel", layers.torch_default_init, (big, big, cmax // g_min, cmax), jnp.float32
      )
    }
    order = sorted(self.kernels, reverse=True)
    for a, b in zip(order[:-1], order[1:]):
      params[f"matrix_{a}to{b}"] = self.param(
        f"matrix_{a}to{b}", lambda _, n=b * b: jnp.eye(n, dtype=jnp.float32)
      )
    if self.bi_transformation:
      params["fp2bin"] = self.param("fp2bin", lambda _: jnp.eye(big * big, dtype=jnp.float32))
    threshold = self.param("input_threshold", nn.initializers.zeros, (cmax,), jnp.float32)
    x = x + threshold
    if binary_activations:
      x = quantizers.approx_sign(x)
    choices = list(itertools.product(self.in_widths, self.kernels, self.groups))

    def branch(choice):
      c, kk, gg = choice

      def run(params, x):
        w = normalize_and_binarize(
          grouped_kernel(params, self.kernels, c, kk, gg, binary_weights),
          binary_weights,
          self.weight_norm,
        )
        y = convolution.conv2d(x[..., :c], w, gg, self.strides, self.conv_forward)
        return _pad_channels(y, cmax)

      return run

    n, h, w_, _ = x.shape
    out_shape = (n, -(-h // self.strides), -(-w_ // self.strides), cmax)
    index = choice_index((width, k, g), choices, active)
    return true_size_switch(index, [branch(c) for c in choices], out_shape, params, x)


class Elastic1x1Conv(nn.Module):
  """The binary 1x1 conv of a block: input width -> output width, dense.

  Filters [:c_out] over input channels [:c_in] of the stored
  (1, 1, max in, max out) weight, one true-size branch per (c_in, c_out)
  pair (see `ElasticGroupConv`); zero-padded to the largest output width.
  """

  in_widths: tuple[int, ...]
  out_widths: tuple[int, ...]
  weight_norm: bool = True

  @nn.compact
  def __call__(
    self,
    x: Array,
    in_width: Array,
    out_width: Array,
    *,
    active: Array = True,
    binary_weights: bool,
    binary_activations: bool,
  ) -> Array:
    max_in, max_out = max(self.in_widths), max(self.out_widths)
    kernel = self.param("kernel", layers.torch_default_init, (1, 1, max_in, max_out), jnp.float32)
    threshold = self.param("input_threshold", nn.initializers.zeros, (max_in,), jnp.float32)
    x = x + threshold
    if binary_activations:
      x = quantizers.approx_sign(x)
    choices = list(itertools.product(self.in_widths, self.out_widths))

    def branch(choice):
      ci, co = choice

      def run(kernel, x):
        w = normalize_and_binarize(kernel[:, :, :ci, :co], binary_weights, self.weight_norm)
        y = jnp.einsum("nhwi,io->nhwo", x[..., :ci], w[0, 0], preferred_element_type=jnp.float32)
        return _pad_channels(y, max_out)

      return run

    index = choice_index((in_width, out_width), choices, active)
    return true_size_switch(
      index, [branch(c) for c in choices], x.shape[:-1] + (max_out,), kernel, x
    )


def repeat_channels(residual: Array, width: Array, out_width: Array, size: int) -> Array:
  """`layers.match_channels` with traced widths: channel c <- residual[c mod width]."""
  idx = jnp.arange(size) % jnp.maximum(width, 1)
  return jnp.take(residual, idx, axis=-1) * channel_mask(out_width, size)


class SupernetBlock(nn.Module):
  """One block slot: binary k x k group conv -> BN -> (+ shortcut) -> RPReLU,
  then binary 1 x 1 conv -> BN -> (+ channel-repeating shortcut) -> RPReLU.

  Submodule names are `reactnet.ReActBlock`'s (conv_kxk, bn_kxk, rprelu_kxk,
  conv_1x1, bn_1x1, rprelu_1x1), so a subnet's block is this one sliced.
  `__call__((x, width), choice) -> ((x, width), None)` is scan-shaped; `choice`
  holds the slot's traced (active, width, kernel, groups), or is None and
  `static_choice` gives (active, input width, width, kernel, groups) as Python
  ints (no switch: e.g. the teacher).
  An inactive slot passes its input through and keeps its BN statistics.
  """

  in_widths: tuple[int, ...]
  spec: nasbnn.StageSpec
  strides: int
  train: bool
  binary_weights: bool
  binary_activations: bool
  bi_transformation: bool = True
  weight_norm: bool = True
  conv_forward: str = "lax"
  static_choice: Optional[tuple[int, int, int, int, int]] = None

  @nn.compact
  def __call__(self, carry: tuple[Array, Array], choice: Optional[Mapping[str, Array]]):
    x, width = carry
    if choice is None:
      active, width, block_width, k, g = self.static_choice
      if not active:  # a static inactive slot: nothing to run
        return (x, jnp.asarray(width, jnp.int32)), None
    else:
      active, block_width, k, g = (
        choice["active"] > 0,
        choice["width"],
        choice["kernel"],
        choice["groups"],
      )
    spec, binary = (
      self.spec,
      dict(binary_weights=self.binary_weights, binary_activations=self.binary_activations),
    )
    in_max, out_max = max(self.in_widths), max(spec.widths)
    out_width = (np if _is_static(active, width) else jnp).where(active, block_width, width)
    mask_in = channel_mask(width, in_max)
    y = ElasticGroupConv(
      self.in_widths,
      spec.kernels,
      spec.groups,
      self.strides,
      self.bi_transformation,
      self.weight_norm,
      self.conv_forward,
      name="conv_kxk",
    )(x, width, k, g, active=active, **binary)
    y = MaskedBatchNorm(name="bn_kxk")(y, mask_in, train=self.train, update=active)
    shortcut = layers.avg_pool_2x2(x) if self.strides == 2 else x
    out1 = MaskedRPReLU(name="rprelu_kxk")(y + shortcut, mask_in)
    y = Elastic1x1Conv(self.in_widths, tuple(spec.widths), self.weight_norm, name="conv_1x1")(
      out1, width, out_width, active=active, **binary
    )
    mask_out = channel_mask(out_width, out_max)
    y = MaskedBatchNorm(name="bn_1x1")(y, mask_out, train=self.train, update=active)
    y = y + repeat_channels(out1, width, out_width, out_max)
    y = MaskedRPReLU(name="rprelu_1x1")(y, mask_out)
    # Only slots after a stage's first (strided, width-changing) block can be
    # inactive, and those keep the shape.
    if not _is_static(active) and y.shape == x.shape:
      y = jnp.where(active, y, x)
    return (y, jnp.asarray(out_width, jnp.int32) if self.static_choice else out_width), None


def _slot_modules(space: nasbnn.SearchSpace) -> list[tuple[str, int, int]]:
  """(module name, stage, first slot) per block module: each stage's first
  block alone, its other blocks (identical slots) as one scanned module."""
  out, i = [], 0
  for s, spec in enumerate(space.stages):
    out.append((f"stage{s}_first", s, i))
    if spec.max_depth > 1:
      out.append((f"stage{s}_rest", s, i + 1))
    i += spec.max_depth
  return out


def slot_variables(tree: Mapping[str, Any], space: nasbnn.SearchSpace, slot: int) -> Any:
  """The variables (any collection's tree) of block slot `slot`, unstacked."""
  s = nasbnn.block_slots(space)[slot]
  if s.block == 0:
    return tree[f"stage{s.stage}_first"]
  return jax.tree.map(lambda a: a[s.block - 1], tree[f"stage{s.stage}_rest"])


class NasBnnSupernet(nn.Module):
  """The supernet of a `nasbnn.SearchSpace`; `__call__(x, arch, train=...)`.

  Variables: stem_conv, stem_bn, stem_rprelu; per stage s, `stage{s}_first`
  (its strided first block) and `stage{s}_rest` (its other, identical slots,
  stacked on a leading axis and run by one `nn.scan`: one traced body per
  stage instead of one per slot, to cut compile time); classifier. `slot_variables` unstacks a slot;
  `extract_subnet_variables` slices a subnet's standalone parameters.
  """

  space: nasbnn.SearchSpace
  num_classes: int
  bi_transformation: bool = True
  weight_norm: bool = True
  conv_forward: str = "lax"
  zero_init_classifier: bool = False

  @nn.compact
  def __call__(
    self,
    x: Array,
    arch: Mapping[str, Array],
    *,
    train: bool = False,
    weight_mode: str = "binary",
    activation_mode: str = "binary",
  ) -> Array:
    space = self.space
    stem_max = max(space.stem_widths)
    # numpy encodings stay static: their subnet is picked at trace time.
    arch = {k: v if isinstance(v, np.ndarray) else jnp.asarray(v) for k, v in arch.items()}
    width = arch["stem_width"]
    stem_mask = channel_mask(width, stem_max)
    # Stem: 8-bit LSQ weights (sliced output filters), BN, RPReLU.
    y = layers.QuantConv(
      stem_max,
      kernel_size=space.stem_kernel,
      strides=space.stem_stride,
      kernel_quantizer="lsq",
      kernel_bits=8,
      input_precision=8,
      name="stem_conv",
    )(x, active_features=width)
    y = MaskedBatchNorm(name="stem_bn")(y * stem_mask, stem_mask, train=train)
    x = MaskedRPReLU(name="stem_rprelu")(y, stem_mask)
    common = dict(
      train=train,
      binary_weights=weight_mode == "binary",
      binary_activations=activation_mode == "binary",
      bi_transformation=self.bi_transformation,
      weight_norm=self.weight_norm,
      conv_forward=self.conv_forward,
    )
    fields = ("active", "width", "kernel", "groups")
    in_widths = tuple(space.stem_widths)
    for name, s, first in _slot_modules(space):
      spec = space.stages[s]
      scan = name.endswith("rest")
      n = spec.max_depth - 1 if scan else 1
      choice = {f: arch[f][first : first + n] for f in fields}
      # A static encoding whose slots in this module are all alike (the
      # teacher) runs without switches; otherwise the choices are traced.
      rows = (
        {tuple(int(choice[f][j]) for f in fields) for j in range(n)}
        if _is_static(width, *choice.values())
        else set()
      )
      static = None
      if len(rows) == 1 and (not scan or width == next(iter(rows))[1]):
        active, w, k, g = rows.pop()
        static = (active, int(width), w, k, g)
      kw = dict(common, name=name, static_choice=static)
      if scan:
        block = nn.scan(
          SupernetBlock,
          variable_axes={"params": 0, "batch_stats": 0, "batch_moments": 0},
          split_rngs={"params": True},
          length=n,
        )(in_widths, spec, 1, **kw)
        xs = None if static else {f: jnp.asarray(v) for f, v in choice.items()}
      else:
        block = SupernetBlock(in_widths, spec, spec.stride, **kw)
        xs = None if static else {f: jnp.asarray(v[0]) for f, v in choice.items()}
      (x, width), _ = block((x, jnp.asarray(width, jnp.int32)), xs)
      if static:
        width = np.int32(static[2] if static[0] else static[1])
      in_widths = tuple(spec.widths)
    x = jnp.mean(x, axis=(1, 2))
    # `zero_init_classifier`: first logits 0 instead of the std ~20 logits the
    # deep residual trunk gives with PyTorch's default init (the reference's);
    # see configs/nasbnn.py.
    return layers.QuantDense(
      self.num_classes, zero_init=self.zero_init_classifier, name="classifier"
    )(x)


def extract_subnet_variables(
  space: nasbnn.SearchSpace,
  arch: nasbnn.Architecture,
  variables: Mapping[str, Any],
  *,
  bi_transformation: bool = True,
) -> dict[str, Any]:
  """Deployment pipeline 1: the supernet's weights sliced to `arch`'s own sizes.

  Returns `{"params", "batch_stats"}` for `reactnet.ReActNet` built from
  `nasbnn_subnet.model_config(space, arch)`; that network then computes the
  same logits as the supernet does for `arch` in binary mode. k x k kernels are
  materialised in their real-valued form (kernel transform and
  Bi-Transformation applied, groups' cyclic input slices resolved); the
  ReActNet layers normalize and binarize them exactly as the supernet does.
  """
  nasbnn.validate(space, arch)
  p, s = variables["params"], variables["batch_stats"]
  w_stem = arch.stem_width
  params: dict[str, Any] = {
    "stem": {
      "conv": {
        "kernel": p["stem_conv"]["kernel"][..., :w_stem],
        "kernel_scale": p["stem_conv"]["kernel_scale"][:w_stem],
      },
      "bn": {k: v[:w_stem] for k, v in p["stem_bn"].items()},
      "rprelu": {k: v[:w_stem] for k, v in p["stem_rprelu"].items()},
    },
  }
  stats: dict[str, Any] = {"stem": {"bn": {k: v[:w_stem] for k, v in s["stem_bn"].items()}}}
  slots = nasbnn.block_slots(space)
  active_slots = [i for i, slot in enumerate(slots) if slot.block < arch.depths[slot.stage]]
  width = w_stem
  for n, i in enumerate(active_slots):
    slot = slots[i]
    spec = space.stages[slot.stage]
    block = arch.stages[slot.stage][slot.block]
    bp, bs = slot_variables(p, space, i), slot_variables(s, space, i)
    kxk = dict(bp["conv_kxk"])
    if not bi_transformation:
      kxk.pop("fp2bin", None)
    c = width
    params[f"block{n}"] = {
      "conv_kxk": {
        "kernel": grouped_kernel(kxk, spec.kernels, c, block.kernel, block.groups, True),
        "input_threshold": bp["conv_kxk"]["input_threshold"][:c],
      },
      "bn_kxk": {k_: v[:c] for k_, v in bp["bn_kxk"].items()},
      "rprelu_kxk": {k_: v[:c] for k_, v in bp["rprelu_kxk"].items()},
      "conv_1x1": {
        "kernel": bp["conv_1x1"]["kernel"][:, :, :c, : block.width],
        "input_threshold": bp["conv_1x1"]["input_threshold"][:c],
      },
      "bn_1x1": {k_: v[: block.width] for k_, v in bp["bn_1x1"].items()},
      "rprelu_1x1": {k_: v[: block.width] for k_, v in bp["rprelu_1x1"].items()},
    }
    stats[f"block{n}"] = {
      "bn_kxk": {k_: v[:c] for k_, v in bs["bn_kxk"].items()},
      "bn_1x1": {k_: v[: block.width] for k_, v in bs["bn_1x1"].items()},
    }
    width = block.width
  params["classifier"] = {
    "kernel": p["classifier"]["kernel"][:width],
    "bias": p["classifier"]["bias"],
  }
  return {"params": params, "batch_stats": stats}
