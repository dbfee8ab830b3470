"""Binary MBConv networks of the bimodal-perturbation paper: block, search network, final network.

Ahn et al., WACV 2023, supplement Sec. 1 and Fig. 6 (the main text is not
available; every choice marked RECONSTRUCTED is ours).

Block (`MBConvBlock`), for input x with C_in channels, output width C_out:

  binary 1x1 expand (C_in -> e * C_in)
  -> binary k x k GROUP conv, g = 2 (not depthwise; stride s)
  -> binary 1x1 project (e * C_in -> C_out)
  -> + shortcut(x)

Each binary conv is ReActNet's unit as `layers.py` provides it (ReActNet
Sec. 3.2; seed_methods_reference.md Sec. 2.3): learnable bias -> sign
(`approx_sign`, i.e. RSign = the conv's own input quantizer with a learnable
threshold) -> binary conv (weights sign(W) * mean|W| per filter,
`magnitude_aware_sign`) -> BN -> RPReLU. RECONSTRUCTED: the block shortcut is
added to the project conv's BN output, before its RPReLU (ReActNet adds its
identity before RPReLU too); the expand and group convs have no shortcut of
their own (the supplement only names the one "added to the output of the
second 1x1 convolution"); e = 1 keeps the expand conv.

Shortcut (supp. Sec. 1, Fig. 1): identity when stride 1 and C_out = C_in;
otherwise (a reduction block) X_AP = AvgPool2x2(x) (x itself at stride 1)
concatenated with a filler of C_out - C_in channels (`channel_filler`):
'partially_duplicate' (default, the supplement's winner in Table 1; the first
C_out - C_in channels of X_AP, repeated cyclically when C_out - C_in > C_in),
'zero', or 'global_average' (the channel-mean map of X_AP repeated). No
real-valued multiplication. (C_out < C_in, which the supplement does not
cover, keeps the first C_out channels of X_AP.)

Search network (`MBConvSearchNetwork`): every layer is a mixed op, the
softmax(alpha / T)-weighted sum over all (kernel, expansion) candidates
(DARTS Eq. 2, with the conventions of `darts_cells.MixedOp`: T is the
temperature, `op_weight_noise` is added to the softmax weights). Widths are
chosen per stage FBNetV2-style: the stage runs at its largest width and a soft
channel mask m_c = sum_i p_i [c < w_i], p = softmax(beta / T), multiplies
  * the block outputs of the stage, and
  * the binarized inputs of every binary conv that reads them (masking after
    the sign: a zeroed channel would otherwise binarize to +1). The hidden
    channels of a block (e * C_in, split into g groups) get the mask of the
    input width applied group by group, so a hidden width e * w occupies the
    first e * w / g channels of each group, i.e. a narrower g = 2 group conv.
  The reduction shortcut is the p-weighted sum of the shortcuts of every pair
  of (input width, output width) candidates. With one-hot p and alpha and real
  weights the search network computes exactly the final network of that
  choice (tested); with binary weights the per-filter scale mean|W| also
  averages the masked-out input weights, a per-channel factor that the BN
  after each conv cancels in training mode (RECONSTRUCTED; FBNetV2 masks
  real-valued features only).
BN keeps its affine parameters in search (RECONSTRUCTED: the RPReLU blocks
rely on them; DARTS drops them).

Final network (`MBConvNetwork`): the blocks of a choice list. Real-valued
stem (3x3 conv -> BN -> RPReLU) and classifier (global average pool ->
dense), as in supp. Fig. 6's dotted boxes; everything else binary.
"""

import dataclasses
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bnas_jax import cost_model
from bnas_jax import layers
from bnas_jax import quantizers
from bnas_jax.errors import UserInputError
from bnas_jax.search_spaces import mbconv

Array = jax.Array


# ----------------------------------------------------------------------------
# Shortcut.


def channel_filler(x_ap: Array, c_out: int, kind: str) -> Array:
  """[X_AP, filler] with C_out channels (supp. Sec. 1, Fig. 1a-c)."""
  c_in = x_ap.shape[-1]
  if c_out <= c_in:
    return x_ap[..., :c_out]
  n = c_out - c_in
  if kind == "partially_duplicate":
    reps = -(-n // c_in)
    filler = jnp.concatenate([x_ap] * reps, axis=-1)[..., :n]
  elif kind == "zero":
    filler = jnp.zeros(x_ap.shape[:-1] + (n,), x_ap.dtype)
  elif kind == "global_average":
    filler = jnp.repeat(jnp.mean(x_ap, axis=-1, keepdims=True), n, axis=-1)
  else:
    raise UserInputError(f"config.model.shortcut={kind!r} is not one of {mbconv.SHORTCUTS}.")
  return jnp.concatenate([x_ap, filler], axis=-1)


def block_shortcut(x: Array, c_out: int, strides: int, kind: str) -> Array:
  """Identity, or AvgPool (stride 2) + channel filler for a reduction block."""
  x_ap = layers.avg_pool_2x2(x) if strides == 2 else x
  return x_ap if x.shape[-1] == c_out else channel_filler(x_ap, c_out, kind)


# ----------------------------------------------------------------------------
# Soft width masks of the search network.


def width_mask(widths: Sequence[int], probs: Array) -> Array:
  """m_c = sum_i p_i [c < w_i] over max(widths) channels (FBNetV2's channel mask)."""
  c = np.arange(max(widths))
  hard = np.stack([(c < w).astype(np.float32) for w in widths])  # (candidates, C)
  return jnp.einsum("i,ic->c", probs, hard)


def hidden_mask(widths: Sequence[int], probs: Array, expansion: int, groups: int) -> Array:
  """Mask of the e * max(widths) hidden channels, group by group.

  Width w uses the first e * w / g channels of each of the g groups.
  """
  per_group = expansion * max(widths) // groups
  q = np.arange(per_group)
  hard = np.stack(
    [np.tile((q < expansion * w // groups).astype(np.float32), groups) for w in widths]
  )
  return jnp.einsum("i,ic->c", probs, hard)


def _masked_sign(x: Array, mask: Array) -> Array:
  """approx_sign then a per-channel mask (the search network's binary-conv input)."""
  return quantizers.approx_sign(x) * mask


# ----------------------------------------------------------------------------
# Block.


class MBConvBlock(nn.Module):
  """One binary MBConv block (module docstring).

  Attributes:
    features: C_out (the largest candidate width in the search network).
    kernel_size: k of the group conv.
    expansion: e (hidden width e * C_in).
    strides: stride of the group conv.
    groups: groups of the k x k conv (2).
    shortcut: filler type of the reduction shortcut.
    binary_weights: False gives binary activations with real weights.
    kernel_norm: weight normalization before the sign (None = ReActNet).
  """

  features: int
  kernel_size: int = 3
  expansion: int = 1
  strides: int = 1
  groups: int = 2
  shortcut: str = "partially_duplicate"
  binary_weights: bool = True
  kernel_norm: Optional[str] = None

  def _unit(
    self,
    name: str,
    x: Array,
    train: bool,
    features: int,
    kernel_size: int,
    strides: int = 1,
    groups: int = 1,
    in_mask: Optional[Array] = None,
  ) -> Array:
    """RSign -> binary conv -> BN (RPReLU is left to the caller)."""
    quantizer = "approx_sign" if in_mask is None else functools.partial(_masked_sign, mask=in_mask)
    # conv_form "auto": one plain conv per group on XLA:CPU. Measured on the
    # digits supernet gradient (3 layers x 6 candidates, batch 64, 2 busy
    # cores): grouped lax conv 35 s compile / 4.5 s per step,
    # `convolution.conv2d` (im2col gradients) 62 s / 0.85 s, one conv per
    # group 35 s / 0.70 s.
    y = layers.QuantConv(
      features,
      kernel_size,
      strides,
      feature_group_count=groups,
      input_quantizer=quantizer,
      learnable_threshold=True,
      kernel_quantizer="magnitude_aware_sign" if self.binary_weights else None,
      kernel_norm=self.kernel_norm,
      conv_form="auto",
      name=f"conv_{name}",
    )(x)
    return layers.batch_norm(train, name=f"bn_{name}")(y)

  @nn.compact
  def __call__(
    self,
    x: Array,
    train: bool = False,
    shortcut: Optional[Array] = None,
    in_mask: Optional[Array] = None,
    hid_mask: Optional[Array] = None,
  ) -> Array:
    """Block output; `shortcut`, `in_mask`, `hid_mask` are given by the search network."""
    hidden = self.expansion * x.shape[-1]
    h = self._unit("expand", x, train, hidden, 1, in_mask=in_mask)
    h = layers.RPReLU(name="rprelu_expand")(h)
    h = self._unit(
      "group", h, train, hidden, self.kernel_size, self.strides, self.groups, in_mask=hid_mask
    )
    h = layers.RPReLU(name="rprelu_group")(h)
    y = self._unit("project", h, train, self.features, 1, in_mask=hid_mask)
    if shortcut is None:
      shortcut = block_shortcut(x, self.features, self.strides, self.shortcut)
    return layers.RPReLU(name="rprelu_project")(y + shortcut)


class Stem(nn.Module):
  """Real-valued 3x3 conv -> BN -> RPReLU."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = layers.QuantConv(self.features, 3, self.strides, name="conv")(x)
    return layers.RPReLU(name="rprelu")(layers.batch_norm(train, name="bn")(x))


def _classifier(x: Array, num_classes: int) -> Array:
  return layers.QuantDense(num_classes, name="classifier")(jnp.mean(x, axis=(1, 2)))


# ----------------------------------------------------------------------------
# Networks.


class MBConvNetwork(nn.Module):
  """The network of a choice list (stem, binary MBConv blocks, classifier).

  Attributes:
    space: the search space (stem, stages).
    choices: the chosen kernel/expansion per layer and width per stage.
    num_classes: classifier outputs.
    shortcut: reduction-shortcut filler ('partially_duplicate', 'zero',
      'global_average').
    binary_weights, kernel_norm: as `MBConvBlock`.
  """

  space: mbconv.MBConvSpace
  choices: mbconv.ChoiceList
  num_classes: int
  shortcut: str = "partially_duplicate"
  binary_weights: bool = True
  kernel_norm: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False, drop_path_prob: Any = 0.0) -> Array:
    """Logits. `drop_path_prob` is accepted for the trainer's step and unused."""
    del drop_path_prob
    x = Stem(self.space.stem_width, self.space.stem_stride, name="stem")(x, train)
    for i, (width, strides, k, e) in enumerate(self.choices.blocks(self.space)):
      x = MBConvBlock(
        width,
        k,
        e,
        strides,
        self.space.groups,
        self.shortcut,
        self.binary_weights,
        self.kernel_norm,
        name=f"block{i}",
      )(x, train)
    return _classifier(x, self.num_classes)


class MBConvSearchNetwork(nn.Module):
  """The supernet: mixed (kernel, expansion) ops per layer, soft width masks per stage.

  Architecture parameters ("arch" collection, `mbconv.arch_shapes`):
  "ops" (layers, |ops|) and "width_stage{s}" (1, |widths of s|), initialised
  1e-3 * N(0, 1) as DARTS.

  Attributes:
    space, num_classes, shortcut, binary_weights, kernel_norm: as
      `MBConvNetwork`.
    temperature: T of softmax(alpha / T).
  """

  space: mbconv.MBConvSpace
  num_classes: int
  shortcut: str = "partially_duplicate"
  binary_weights: bool = True
  kernel_norm: Optional[str] = None
  temperature: float = 1.0

  @nn.compact
  def __call__(
    self, x: Array, train: bool = False, op_weight_noise: Optional[dict[str, Array]] = None
  ) -> Array:
    """Logits; `op_weight_noise` (keys of "arch") is added to softmax(alpha / T)."""
    space = self.space
    probs = {}
    for key, shape in mbconv.arch_shapes(space).items():
      init = lambda s=shape: 1e-3 * jax.random.normal(self.make_rng("params"), s)
      probs[key] = jax.nn.softmax(self.variable("arch", key, init).value / self.temperature, -1)
      if op_weight_noise is not None:
        probs[key] = probs[key] + op_weight_noise[key]
    x = Stem(space.stem_width, space.stem_stride, name="stem")(x, train)
    in_widths, in_probs = (space.stem_width,), jnp.ones((1,))
    for slot in space.layers:
      stage = space.stages[slot.stage]
      out_widths, out_probs = stage.widths, probs[mbconv.width_key(slot.stage)][0]
      soft_in = len(in_widths) > 1
      in_mask = width_mask(in_widths, in_probs) if soft_in else None
      if slot.position == 0:
        shortcut = _mixed_shortcut(
          x, in_widths, in_probs, out_widths, out_probs, slot.stride, self.shortcut
        )
      else:
        shortcut = x
      out = 0.0
      for o, (k, e) in enumerate(space.ops):
        hid = hidden_mask(in_widths, in_probs, e, space.groups) if soft_in else None
        y = MBConvBlock(
          max(out_widths),
          k,
          e,
          slot.stride,
          space.groups,
          self.shortcut,
          self.binary_weights,
          self.kernel_norm,
          name=f"layer{slot.index}_{mbconv.op_name(k, e)}",
        )(x, train, shortcut, in_mask, hid)
        out = out + probs[mbconv.OPS_KEY][slot.index, o] * y
      x = out * width_mask(out_widths, out_probs) if len(out_widths) > 1 else out
      in_widths, in_probs = out_widths, out_probs
    return _classifier(x, self.num_classes)


def _mixed_shortcut(
  x: Array,
  in_widths: Sequence[int],
  in_probs: Array,
  out_widths: Sequence[int],
  out_probs: Array,
  strides: int,
  kind: str,
) -> Array:
  """sum over (w_in, w_out) of p(w_in) p(w_out) * shortcut(x[:w_in] -> w_out), padded."""
  c_max = max(out_widths)
  total = 0.0
  for a, w_in in enumerate(in_widths):
    for b, w_out in enumerate(out_widths):
      s = block_shortcut(x[..., :w_in], w_out, strides, kind)
      s = jnp.pad(s, ((0, 0),) * 3 + ((0, c_max - w_out),))
      total = total + in_probs[a] * out_probs[b] * s
  return total


# ----------------------------------------------------------------------------
# Construction from a config and costs.


def check_shortcut(kind: str) -> str:
  if kind not in mbconv.SHORTCUTS:
    raise UserInputError(
      f"config.model.shortcut={kind!r} is not one of {mbconv.SHORTCUTS} "
      "(supp. Sec. 1; 'partially_duplicate' is the paper's choice)."
    )
  return kind


def search_network(config: Any, space: mbconv.MBConvSpace, num_classes: int) -> MBConvSearchNetwork:
  m = config.model
  return MBConvSearchNetwork(
    space,
    num_classes,
    check_shortcut(m.shortcut),
    binary_weights=config.search.binary_weights,
    kernel_norm=m.kernel_norm,
    temperature=config.search.temperature,
  )


def final_network(
  config: Any, space: mbconv.MBConvSpace, choices: mbconv.ChoiceList, num_classes: int
) -> MBConvNetwork:
  m = config.model
  return MBConvNetwork(
    space,
    choices,
    num_classes,
    check_shortcut(m.shortcut),
    binary_weights=m.binary_weights,
    kernel_norm=m.kernel_norm,
  )


def cost_summary(model: nn.Module, image_shape: tuple[int, ...]) -> dict[str, Any]:
  """BOPs and real FLOPs reported separately; equivalent OPs = FLOPs + BOPs / 64.

  (supp. Table 3.) Real-valued MACs are those of the stem and the classifier;
  the MBConv shortcuts (AvgPool + concatenation) cost nothing, so
  `shortcut_flops` is 0 (kept for the trainer's report format).
  """
  report = cost_model.count_costs(model, (1, *image_shape), train=False)
  real = {l.name: l.macs[32] for l in report.layers if l.macs.get(32)}
  return {
    "flops": report.flops,
    "bops": report.bops,
    "equivalent_ops": report.flops + report.bops / 64,
    "ops": report.ops,
    "real_flops_by_layer": real,
    "params": report.params,
    "binary_params": report.binary_params,
    "model_size_bytes": report.model_size_bytes,
    "shortcut_flops": 0,
    "shortcut_params": 0,
    "flops_without_shortcuts": report.flops,
    "ops_without_shortcuts": report.ops,
  }


@dataclasses.dataclass(frozen=True)
class MBConvFamily:
  """The MBConv space on one config (the DARTS-family trainer, `config.space="mbconv"`)."""

  config: Any
  space: mbconv.MBConvSpace

  def check_config(self) -> None:
    """The shortcut kind, and no drop-path (the MBConv network has none)."""
    check_shortcut(self.config.model.shortcut)
    if self.config.final.drop_path_prob:
      raise UserInputError(
        "config.final.drop_path_prob must be 0 for config.space='mbconv' "
        "(the MBConv network has no drop-path)."
      )

  def search_network(self, num_classes: int) -> MBConvSearchNetwork:
    return search_network(self.config, self.space, num_classes)

  def network(self, choices: mbconv.ChoiceList, num_classes: int) -> MBConvNetwork:
    return final_network(self.config, self.space, choices, num_classes)

  def cost(
    self, choices: mbconv.ChoiceList, num_classes: int, image_shape: tuple[int, ...]
  ) -> dict[str, Any]:
    return cost_summary(self.network(choices, num_classes), image_shape)
