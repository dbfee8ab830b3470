"""DARTS-topology cell networks: the search supernet and the network of a genotype.

Topology (DARTS, seed_methods_reference.md Sec. 1.1): a cell has two inputs
(the outputs of the two previous cells, each preprocessed to C channels), four
intermediate nodes, each the sum over its incoming edges (14 edges in all),
and the concatenation of the intermediate nodes as output (4C channels).
Reduction cells (stride 2 on the edges from the cell inputs, channels doubled)
sit at 1/3 and 2/3 of the depth.

BNAS cell template (BNAS Sec. 4.2, Fig. 5b; public code `Cell.forward`):
inter-cell skip connections add the cell's raw input c_{k-1} to its output; a
reduction cell projects it with a real BN -> 2x2 stride-2 conv (with bias),
`res_conv`, which the cost summary counts separately (the bimodal supplement's
Table 3 stresses these real FLOPs). The first cell gets no skip (the stem has
3C != 4C channels).

Supernet (`SearchNetwork`): every edge is a MixedOp, the softmax(alpha / T)
weighted sum of all candidate ops (DARTS Eq. 2; BATS's temperature T). Alpha
of the normal and of the reduction cells are two (14, num_ops) arrays in their
own variable collection, "arch" (initialised 1e-3 * N(0, 1) as DARTS). BN has
no affine parameters during search. Every candidate op is computed (no
lax.switch): on XLA:CPU conv gradients inside lax.switch/cond are very slow,
and DARTS needs them all anyway.

Final network (`GenotypeNetwork`): the genotype's op on each of its 8 edges
per cell, BN with affine parameters, binary preprocessing (BNAS final nets),
Zeroise kept as zeros, optional drop-path on op outputs (DARTS/BNAS: 0.2
ramped linearly over the epochs).
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnas_jax import convolution
from bnas_jax import layers
from bnas_jax import quantizers
from bnas_jax.errors import UserInputError
from bnas_jax.search_spaces import darts as darts_space
from bnas_jax.models import darts_ops

Array = jax.Array


def reduction_layers(num_cells: int) -> tuple[int, ...]:
  """Indices of the reduction cells: L//3 and 2L//3 (DARTS `model_search.py`)."""
  return tuple(sorted({num_cells // 3, 2 * num_cells // 3}))


class ResidualProjection(nn.Module):
  """BNAS `preprocess_res`: real BN(affine) -> 2x2 stride-2 conv with bias."""

  features: int

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = darts_ops.batch_norm(train, affine=True, name="bn")(x)
    return layers.QuantConv(
      self.features, kernel_size=2, strides=2, use_bias=True, name="res_conv"
    )(x)


def _inter_cell_skip(out: Array, s1_raw: Array, reduction: bool, train: bool) -> Array:
  if reduction:
    return out + ResidualProjection(out.shape[-1], name="preprocess_res")(s1_raw, train)
  if s1_raw.shape != out.shape:
    raise UserInputError(
      f"The inter-cell skip adds the cell input {s1_raw.shape} to the cell output "
      f"{out.shape}; they differ (a genotype concatenating fewer than 4 nodes?). Use all four "
      "nodes in *_concat or set config.model.inter_cell_skip=False."
    )
  return out + s1_raw


class MixedOp(nn.Module):
  """sum_o w_o * o(x) over all candidate ops of the space (DARTS Eq. 2).

  Zeroise contributes w_z * 0 = 0, so it is not computed.
  """

  space: darts_space.CellSpace
  channels: int
  strides: int
  options: darts_ops.OpOptions = darts_ops.OpOptions()

  @nn.compact
  def __call__(self, x: Array, weights: Array, train: bool) -> Array:
    out = None
    for i, op in enumerate(self.space.ops):
      if op == darts_space.ZEROISE:
        continue
      y = darts_ops.make_op(
        self.space, op, self.channels, self.strides, search=True, options=self.options, name=op
      )(x, train)
      out = weights[i] * y if out is None else out + weights[i] * y
    return out


class _KernelBank(nn.Module):
  """Holds one candidate conv's latent kernel; returns it XNOR-binarized (or real)."""

  shape: tuple[int, ...]
  binary_weights: bool

  @nn.compact
  def __call__(self) -> Array:
    kernel = self.param("kernel", layers.torch_default_init, self.shape, jnp.float32)
    return quantizers.xnor_weight(kernel) if self.binary_weights else kernel


class BnasSourceOps(nn.Module):
  """The BNAS MixedOps of all edges leaving one state, computed together (exactly).

  Every BNAS conv op is BN(affine=False) -> sign -> conv -> ReLU on the same
  input, and an affine-free BN of the same tensor gives the same output (and
  the same running statistics), so the edges leaving a state share one BN and
  one sign, and each candidate conv runs once for all edges with the edges'
  kernels concatenated on the output axis (ReLU is per output channel, so
  nothing mixes). Pooling (+ BN) is likewise shared. The result equals
  `MixedOp` on each edge with the same kernels (tested), with ~5x fewer ops to
  compile. (One 9x9 conv holding all four kernel shapes was tried and was
  ~5x slower on XLA:CPU: its kernel gradient is large.) Kernels stay separate
  parameters, `conv_e{edge}_{op}/kernel`.
  """

  space: darts_space.CellSpace
  channels: int
  strides: int
  edges: tuple[int, ...]  # alpha rows of the outgoing edges
  binary_weights: bool = True

  @nn.compact
  def __call__(self, x: Array, weights: Array, train: bool) -> list[Array]:
    convs = [(i, op) for i, op in enumerate(self.space.ops) if op.startswith("bin_")]
    spec = {op: (int(op[-1]), 2 if "_dil_" in op else 1) for _, op in convs}
    c_in, c = x.shape[-1], self.channels
    xb = quantizers.ste_sign(darts_ops.batch_norm(train, affine=False, name="bn")(x))
    per_op = []
    for _, op in convs:
      k, d = spec[op]
      kernel = jnp.concatenate(
        [
          _KernelBank((k, k, c_in, c), self.binary_weights, name=f"conv_e{e}_{op}")()
          for e in self.edges
        ],
        axis=-1,
      )
      pad = d * (k - 1) // 2
      per_op.append(
        nn.relu(
          jax.lax.conv_general_dilated(
            xb.astype(jnp.float32),
            kernel,
            window_strides=(self.strides, self.strides),
            padding=((pad, pad), (pad, pad)),
            rhs_dilation=(d, d),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=jnp.float32,
          )
        )
      )
    # (B, H, W, edges, conv ops, C)
    y = jnp.stack([p.reshape(p.shape[:3] + (len(self.edges), c)) for p in per_op], axis=-2)
    pools = {}
    for i, op in enumerate(self.space.ops):
      if op.endswith("pool_3x3"):
        pools[i] = darts_ops.Pool(op[:3], self.strides, bn_after=True, name=op)(x, train)
    outs = []
    for j, e in enumerate(self.edges):
      conv_w = jnp.stack([weights[e, i] for i, _ in convs])
      out = jnp.einsum("bhwoc,o->bhwc", y[..., j, :, :], conv_w)
      for i, pooled in pools.items():
        out = out + weights[e, i] * pooled
      outs.append(out)
    return outs


class BatsSourceOps(nn.Module):
  """The BATS MixedOps of all edges leaving one state, computed together (exactly).

  Every BATS grouped-conv op is BN(affine=False) -> sign -> grouped conv ->
  PReLU -> channel shuffle (-> + x at stride 1) on the same input
  (`darts_ops.BatsConv`), so, as in `BnasSourceOps`, the edges leaving a state
  share one BN and one sign, and each candidate conv runs once for all edges:
  the edges' kernels are interleaved group by group on the output axis, so
  that group j of the one grouped conv reads input group j and yields every
  edge's group-j outputs. PReLU, shuffle and the identity then act per edge.
  Pooling is shared; skip_connect is the identity, or one FactorizedReduce per
  edge at stride 2. Equals `MixedOp` on each edge with the same parameters
  (tested); kernels stay separate parameters, `conv_e{edge}_{op}/kernel`.
  """

  space: darts_space.CellSpace
  channels: int
  strides: int
  edges: tuple[int, ...]  # alpha rows of the outgoing edges
  options: darts_ops.OpOptions = darts_ops.OpOptions()

  @nn.compact
  def __call__(self, x: Array, weights: Array, train: bool) -> list[Array]:
    n, c_in, c, g = len(self.edges), x.shape[-1], self.channels, self.options.groups
    xb = quantizers.ste_sign(darts_ops.batch_norm(train, affine=False, name="bn")(x))
    outs = [None] * n

    def add(j, w, y):
      outs[j] = w * y if outs[j] is None else outs[j] + w * y

    for i, op in enumerate(self.space.ops):
      if op.endswith(("group_conv_3x3", "group_conv_5x5")):
        k, d = int(op[-1]), 2 if op.startswith("dil_") else 1
        banks = [
          _KernelBank((k, k, c_in // g, c), self.options.binary_weights, name=f"conv_e{e}_{op}")()
          for e in self.edges
        ]
        # (k, k, c_in/g, edges, g, c/g) -> output axis ordered (group, edge, channel)
        kernel = jnp.stack([b.reshape(k, k, c_in // g, g, c // g) for b in banks], axis=3)
        kernel = kernel.transpose(0, 1, 2, 4, 3, 5).reshape(k, k, c_in // g, g * n * (c // g))
        y = convolution.grouped_conv(xb.astype(jnp.float32), kernel, g, self.strides, dilation=d)
        y = y.reshape(y.shape[:3] + (g, n, c // g)).swapaxes(-3, -2)
        for j, e in enumerate(self.edges):
          ye = darts_ops.PReLU(name=f"prelu_e{e}_{op}")(y[..., j, :, :].reshape(y.shape[:3] + (c,)))
          ye = darts_ops.channel_shuffle(ye, self.options.shuffle_groups)
          if self.strides == 1 and c_in == c:
            ye = ye + x
          add(j, weights[e, i], ye)
      elif op in ("max_pool_3x3", "avg_pool_3x3"):
        pooled = darts_ops.Pool(op[:3], self.strides, name=op)(x, train)
        for j, e in enumerate(self.edges):
          add(j, weights[e, i], pooled)
      elif op == "skip_connect":
        for j, e in enumerate(self.edges):
          if self.strides == 1:
            add(j, weights[e, i], x)
          else:
            reduced = darts_ops.FactorizedReduce(
              c, False, self.options.binary_weights, name=f"skip_e{e}"
            )(x, train)
            add(j, weights[e, i], reduced)
      elif op != darts_space.ZEROISE:
        raise UserInputError(f"BatsSourceOps has no fused form of op {op!r}.")
    return outs


def _preprocess_inputs(
  cell: nn.Module, s0: Array, s1: Array, train: bool, *, search: bool
) -> list[Array]:
  """A cell's two input states at its width (s0 halved if the previous cell reduced);
  the submodules `preprocess0/1` are created in `cell`'s scope."""
  kw = dict(search=search, options=cell.options)
  return [
    darts_ops.make_preprocess(
      cell.space, cell.channels, reduce_input=cell.reduction_prev, name="preprocess0", **kw
    )(s0, train),
    darts_ops.make_preprocess(
      cell.space, cell.channels, reduce_input=False, name="preprocess1", **kw
    )(s1, train),
  ]


class SearchCell(nn.Module):
  """A supernet cell: 14 MixedOp edges, 4 nodes, concat (+ BNAS inter-cell skip)."""

  space: darts_space.CellSpace
  channels: int
  reduction: bool
  reduction_prev: bool
  skip: bool
  options: darts_ops.OpOptions = darts_ops.OpOptions()
  fused: bool = True

  @nn.compact
  def __call__(self, s0: Array, s1: Array, weights: Array, train: bool) -> Array:
    s1_raw = s1
    states = _preprocess_inputs(self, s0, s1, train, search=True)
    source_ops = {"bnas": BnasSourceOps, "bats": BatsSourceOps}.get(self.space.name)
    fused = self.fused and source_ops is not None
    incoming = {}  # node -> list of edge outputs
    for node in range(darts_space.NUM_NODES):
      for src in range(node + 2):
        # Edges leaving `src` go to nodes max(0, src - 1)..3: compute them all
        # at the first of those nodes, when `src` exists.
        if fused and node == max(0, src - 1):
          targets = tuple(range(node, darts_space.NUM_NODES))
          rows = tuple(darts_space.edge_index(t, src) for t in targets)
          strides = 2 if self.reduction and src < 2 else 1
          if source_ops is BnasSourceOps:
            fused_ops = BnasSourceOps(
              self.space,
              self.channels,
              strides,
              rows,
              self.options.binary_weights,
              name=f"source{src}",
            )
          else:
            fused_ops = BatsSourceOps(
              self.space, self.channels, strides, rows, self.options, name=f"source{src}"
            )
          outs = fused_ops(states[src], weights, train)
          for t, out in zip(targets, outs):
            incoming.setdefault(t, []).append(out)
        elif not fused:
          strides = 2 if self.reduction and src < 2 else 1
          incoming.setdefault(node, []).append(
            MixedOp(self.space, self.channels, strides, self.options, name=f"edge{node}_{src}")(
              states[src], weights[darts_space.edge_index(node, src)], train
            )
          )
      states.append(sum(incoming[node]))
    out = jnp.concatenate(states[2:], axis=-1)
    if self.skip:
      out = _inter_cell_skip(out, s1_raw, self.reduction, train)
    return out


class _Stem(nn.Module):
  """CIFAR stem (BNAS code: real BN -> conv3x3 -> ReLU to 3C) or DARTS's ImageNet stem."""

  channels: int
  kind: str
  stem_multiplier: int
  affine: bool

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array, bool]:
    if self.kind == "cifar":
      s = darts_ops.RealConvBnRelu(
        self.stem_multiplier * self.channels, 3, 1, affine=self.affine, name="stem"
      )(x, train)
      return s, s, False
    if self.kind == "imagenet":
      bn = lambda name: darts_ops.batch_norm(train, self.affine, name=name)
      c = self.channels
      s0 = layers.QuantConv(max(1, c // 2), 3, 2, name="stem0_conv_a")(x)
      s0 = nn.relu(bn("stem0_bn_a")(s0))
      s0 = bn("stem0_bn_b")(layers.QuantConv(c, 3, 2, name="stem0_conv_b")(s0))
      s1 = bn("stem1_bn")(layers.QuantConv(c, 3, 2, name="stem1_conv")(nn.relu(s0)))
      return s0, s1, True
    raise UserInputError(f"config.model.stem={self.kind!r} is not 'cifar' or 'imagenet'.")


def _classifier(x: Array, num_classes: int) -> Array:
  x = jnp.mean(x, axis=(1, 2))
  return layers.QuantDense(num_classes, name="classifier")(x)


class SearchNetwork(nn.Module):
  """The DARTS/BNAS supernet with alpha in the "arch" collection.

  Attributes:
    space: the cell space (`darts_space.BNAS` or `darts_space.BATS`).
    num_classes: classifier outputs.
    channels: C, the first cells' width (cells output 4C).
    num_cells: number of cells L (reductions at L//3, 2L//3).
    stem_multiplier: the stem outputs stem_multiplier * C channels (3).
    inter_cell_skip: BNAS Fig. 5b skips (False: the "No Skip" ablation).
    temperature: T of softmax(alpha / T) (BATS; 1 = DARTS/BNAS).
    options: op options (binary weights, BATS groups).
    stem: "cifar" or "imagenet".
    fused: BNAS and BATS: compute the edges leaving a state together
      (`BnasSourceOps` / `BatsSourceOps`, exact); False gives one `MixedOp` per edge.
  """

  space: darts_space.CellSpace
  num_classes: int
  channels: int = 16
  num_cells: int = 8
  stem_multiplier: int = 3
  inter_cell_skip: bool = True
  temperature: float = 1.0
  options: darts_ops.OpOptions = darts_ops.OpOptions()
  stem: str = "cifar"
  fused: bool = True

  def arch_weights(self, alpha: Array) -> Array:
    return jax.nn.softmax(alpha / self.temperature, axis=-1)

  @nn.compact
  def __call__(
    self, x: Array, train: bool = False, op_weight_noise: Optional[dict[str, Array]] = None
  ) -> Array:
    """Logits; `op_weight_noise` (keys of "arch") is added to softmax(alpha / T)."""
    shape = (darts_space.NUM_EDGES, len(self.space.ops))
    init = lambda: 1e-3 * jax.random.normal(self.make_rng("params"), shape, jnp.float32)
    alpha = {k: self.variable("arch", k, init).value for k in ("normal", "reduce")}
    weights = {k: self.arch_weights(v) for k, v in alpha.items()}
    if op_weight_noise is not None:
      weights = {k: weights[k] + op_weight_noise[k] for k in weights}
    s0, s1, reduction_prev = _Stem(
      self.channels, self.stem, self.stem_multiplier, affine=False, name="stem"
    )(x, train)
    c = self.channels
    reductions = reduction_layers(self.num_cells)
    for i in range(self.num_cells):
      reduction = i in reductions
      if reduction:
        c *= 2
      cell = SearchCell(
        self.space,
        c,
        reduction,
        reduction_prev,
        skip=self.inter_cell_skip and i > 0,
        options=self.options,
        fused=self.fused,
        name=f"cell{i}",
      )
      s0, s1 = s1, cell(s0, s1, weights["reduce" if reduction else "normal"], train)
      reduction_prev = reduction
    return _classifier(s1, self.num_classes)


class GenotypeCell(nn.Module):
  """A final-network cell: the genotype's 8 ops, affine BN, binary preprocessing."""

  space: darts_space.CellSpace
  pairs: darts_space.Pairs
  concat: tuple[int, ...]
  channels: int
  reduction: bool
  reduction_prev: bool
  skip: bool
  options: darts_ops.OpOptions = darts_ops.OpOptions()
  drop_path: bool = False

  @nn.compact
  def __call__(self, s0: Array, s1: Array, train: bool, drop_path_prob: Any = 0.0) -> Array:
    s1_raw = s1
    states = _preprocess_inputs(self, s0, s1, train, search=False)
    for node in range(darts_space.NUM_NODES):
      total = 0.0
      for j in (2 * node, 2 * node + 1):
        op, src = self.pairs[j]
        strides = 2 if self.reduction and src < 2 else 1
        y = darts_ops.make_op(
          self.space,
          op,
          self.channels,
          strides,
          search=False,
          options=self.options,
          name=f"edge{j}_{op}",
        )(states[src], train)
        is_identity = op == "skip_connect" and strides == 1
        if self.drop_path and train and op != darts_space.ZEROISE and not is_identity:
          keep = 1.0 - drop_path_prob
          mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (y.shape[0], 1, 1, 1))
          y = y * mask / keep
        total = total + y
      states.append(total)
    out = jnp.concatenate([states[i] for i in self.concat], axis=-1)
    if self.skip:
      out = _inter_cell_skip(out, s1_raw, self.reduction, train)
    return out


class GenotypeNetwork(nn.Module):
  """The network of a genotype (BNAS `NetworkCIFAR` / `NetworkImageNet` layout).

  Attributes:
    genotype: the derived cells.
    num_classes, channels, num_cells, stem_multiplier, inter_cell_skip,
      options, stem: as in `SearchNetwork` (Table 5 gives cells / channels).
    drop_path: apply drop-path with the probability passed to `__call__`
      (needs a "dropout" rng when training).
  """

  genotype: darts_space.Genotype
  num_classes: int
  channels: int = 36
  num_cells: int = 20
  stem_multiplier: int = 3
  inter_cell_skip: bool = True
  options: darts_ops.OpOptions = darts_ops.OpOptions()
  stem: str = "cifar"
  drop_path: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool = False, drop_path_prob: Any = 0.0) -> Array:
    space = darts_space.get_space(self.genotype.space)
    s0, s1, reduction_prev = _Stem(
      self.channels, self.stem, self.stem_multiplier, affine=True, name="stem"
    )(x, train)
    c = self.channels
    reductions = reduction_layers(self.num_cells)
    for i in range(self.num_cells):
      reduction = i in reductions
      if reduction:
        c *= 2
      pairs, concat = (
        (self.genotype.reduce, self.genotype.reduce_concat)
        if reduction
        else (self.genotype.normal, self.genotype.normal_concat)
      )
      cell = GenotypeCell(
        space,
        pairs,
        concat,
        c,
        reduction,
        reduction_prev,
        skip=self.inter_cell_skip and i > 0,
        options=self.options,
        drop_path=self.drop_path,
        name=f"cell{i}",
      )
      s0, s1 = s1, cell(s0, s1, train, drop_path_prob)
      reduction_prev = reduction
    return _classifier(s1, self.num_classes)
