"""Cost model against paper numbers and hand counts."""

import flax.linen as nn
import jax.numpy as jnp
import pytest

from bnas_jax import cost_model
from bnas_jax import layers
from bnas_jax.errors import UserInputError
from bnas_jax.models import reactnet


def test_reactnet_a_matches_the_reactnet_paper():
  # ReActNet (Liu et al. 2020) Table 3: ReActNet-A has 4.82e9 BOPs, 0.12e8 FLOPs
  # and 0.87e8 OPs; its stem conv is counted as full-precision FLOPs.
  model = reactnet.ReActNet(num_classes=1000, stem_weight_bits=None, kernel_norm=None)
  report = cost_model.count_costs(model, (1, 224, 224, 3), train=False)
  assert report.bops == pytest.approx(4.82e9, rel=0.002)
  assert report.flops == pytest.approx(0.12e8, rel=0.02)
  assert report.ops == pytest.approx(0.87e8, rel=0.005)
  assert report.int8_ops == 0


def test_8_bit_stem_counts_as_int8_ops():
  # NAS-BNN counts the 8-bit stem as Int8OPs (OPs contribution MACs / 8).
  model = reactnet.ReActNet(num_classes=1000, stem_weight_bits=8)
  report = cost_model.count_costs(model, (1, 224, 224, 3), train=False)
  stem_macs = 3 * 3 * 3 * 32 * 112 * 112
  assert report.int8_ops == stem_macs
  assert report.ops == pytest.approx(report.flops + stem_macs / 8 + report.bops / 64)


class _Tiny(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = layers.QuantConv(4, kernel_size=3, strides=2, name="fp_conv")(x)
    x = layers.batch_norm(train, name="bn")(x)
    x = layers.QuantConv(
      8,
      kernel_size=3,
      feature_group_count=2,
      input_quantizer="ste_sign",
      kernel_quantizer="magnitude_aware_sign",
      name="bin_conv",
    )(x)
    x = layers.QuantConv(8, kernel_size=1, input_quantizer="approx_sign", name="fwba_conv")(x)
    return layers.QuantDense(10, name="classifier")(jnp.mean(x, axis=(1, 2)))


def test_hand_counted_tiny_network():
  report = cost_model.count_costs(_Tiny(), (1, 8, 8, 3), train=False)
  fp_conv = 3 * 3 * 3 * 4 * 4 * 4  # k*k*cin * cout * 4x4 outputs
  bin_conv = 3 * 3 * 2 * 8 * 4 * 4  # grouped: cin/g = 2
  fwba_conv = 1 * 1 * 8 * 8 * 4 * 4  # binary inputs, real weights -> 32-bit MACs
  fc = (8 + 1) * 10  # bias counted per output
  assert report.bops == bin_conv
  assert report.flops == fp_conv + fwba_conv + fc
  assert report.binary_params == 3 * 3 * 2 * 8
  fp_params = 3 * 3 * 3 * 4 + 2 * 4 + 8 * 8 + 8 * 10 + 10  # fp conv, BN scale+bias, 1x1, fc
  assert report.fp_params == fp_params
  assert report.model_size_bytes == (3 * 3 * 2 * 8) / 8 + fp_params * 4
  assert [l.name for l in report.layers] == ["fp_conv", "bn", "bin_conv", "fwba_conv", "classifier"]
  # NAS-BNN's size convention: real-valued parameters at 16 bits; binary ones stay 1 bit.
  half = cost_model.count_costs(_Tiny(), (1, 8, 8, 3), train=False, real_param_bits=16)
  assert half.model_size_bytes == (3 * 3 * 2 * 8) / 8 + fp_params * 2
  assert (half.params, half.ops) == (report.params, report.ops)
  with pytest.raises(UserInputError, match="real_param_bits"):
    cost_model.count_costs(_Tiny(), (1, 8, 8, 3), train=False, real_param_bits=12)


def test_table_and_json_forms():
  report = cost_model.count_costs(_Tiny(), (1, 8, 8, 3), train=False)
  table = cost_model.format_table(report)
  assert "bin_conv" in table and "OPs = FLOPs + Int8OPs/8 + BOPs/64" in table
  d = report.to_dict()
  for key in ("flops", "bops", "int8_ops", "ops", "params", "binary_params", "model_size_bytes"):
    assert key in d
