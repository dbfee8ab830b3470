"""Binary MBConv space of the bimodal paper: shortcuts, g = 2, choice lists, derivation,
alpha gradients, costs, and a tiny search -> final run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnas_jax import layers
from bnas_jax.errors import UserInputError
from bnas_jax.models import binary_mbconv
from bnas_jax.search_spaces import mbconv
from bnas_jax.trainers import darts
from configs import bimodal

SPACE = mbconv.make_space(
  4, 1, ((1, 1, (4, 8)), (2, 2, (8, 12))), kernel_sizes=(3, 5), expansions=(1, 3)
)


def _np_avg_pool(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


@pytest.mark.parametrize("c_in,c_out", [(3, 5), (2, 7)])  # 7 - 2 = 5 > 2: cyclic repeat
def test_reduction_shortcut_fillers_match_hand_made_arrays(c_in, c_out):
  x = np.arange(2 * 4 * 4 * c_in, dtype=np.float32).reshape(2, 4, 4, c_in) ** 1.3
  x_ap = _np_avg_pool(x)
  n = c_out - c_in
  expected = {
    "partially_duplicate": np.concatenate(
      [x_ap] + [x_ap[..., [j % c_in]] for j in range(n)], axis=-1
    ),
    "zero": np.concatenate([x_ap, np.zeros(x_ap.shape[:3] + (n,))], axis=-1),
    "global_average": np.concatenate([x_ap] + [x_ap.mean(-1, keepdims=True)] * n, axis=-1),
  }
  if (c_in, c_out) == (2, 7):  # spelled out: X_AP channels 0, 1, then 0, 1, 0, 1, 0
    np.testing.assert_array_equal(expected["partially_duplicate"], x_ap[..., [0, 1, 0, 1, 0, 1, 0]])
  for kind, want in expected.items():
    got = binary_mbconv.block_shortcut(jnp.asarray(x), c_out, 2, kind)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, err_msg=kind)
  # Stride 1 with equal widths: identity.
  same = binary_mbconv.block_shortcut(jnp.asarray(x), c_in, 1, "zero")
  np.testing.assert_array_equal(np.asarray(same), x)


def test_group_conv_has_two_groups():
  block = binary_mbconv.MBConvBlock(features=8, kernel_size=5, expansion=3, strides=2, groups=2)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  params = jax.eval_shape(block.init, jax.random.key(1), x)["params"]
  hidden = 3 * 4
  assert params["conv_group"]["kernel"].shape == (5, 5, hidden // 2, hidden)
  assert params["conv_group"]["kernel"].size == 5 * 5 * hidden * hidden // 2  # g = 2 halves it
  assert params["conv_expand"]["kernel"].shape == (1, 1, 4, hidden)
  assert params["conv_project"]["kernel"].shape == (1, 1, hidden, 8)
  # The conv really is grouped: inputs of group 0 do not reach outputs of group 1,
  # and its per-group form equals the lax grouped convolution.
  conv = layers.QuantConv(
    6,
    3,
    1,
    feature_group_count=2,
    input_quantizer="approx_sign",
    kernel_quantizer="magnitude_aware_sign",
    conv_form="split",
  )
  xs = jax.random.normal(jax.random.key(2), (1, 5, 5, 4))
  v = jax.jit(conv.init)(jax.random.key(3), xs)
  y = jax.jit(conv.apply)(v, xs)
  y2 = jax.jit(conv.apply)(v, xs.at[..., :2].multiply(-1.0))
  np.testing.assert_array_equal(np.asarray(y[..., 3:]), np.asarray(y2[..., 3:]))
  assert not np.allclose(np.asarray(y[..., :3]), np.asarray(y2[..., :3]))
  reference = layers.QuantConv(
    6,
    3,
    1,
    feature_group_count=2,
    input_quantizer="approx_sign",
    kernel_quantizer="magnitude_aware_sign",
  )
  np.testing.assert_allclose(np.asarray(y), np.asarray(jax.jit(reference.apply)(v, xs)), atol=1e-5)


def test_choice_list_round_trips_and_rejects_bad_entries():
  choice = mbconv.ChoiceList((8, 12), (((5, 3),), ((3, 1), (5, 1))))
  text = "c8[MB5(3)] c12[MB3(1) MB5(1)]"
  assert str(choice) == text
  assert mbconv.from_string(text, SPACE) == choice
  assert mbconv.from_json(choice.to_json(), SPACE) == choice
  assert json.loads(choice.to_json()) == {
    "space": "mbconv",
    "stages": [{"width": 8, "layers": [[5, 3]]}, {"width": 12, "layers": [[3, 1], [5, 1]]}],
  }
  with pytest.raises(UserInputError, match=r"stage 2 layer 2 \(layer 3 of 3\)"):
    mbconv.from_string("c8[MB5(3)] c12[MB3(1) MB7(1)]", SPACE)
  with pytest.raises(UserInputError, match="stage 1 has width 6"):
    mbconv.from_string("c6[MB5(3)] c12[MB3(1) MB3(1)]", SPACE)
  with pytest.raises(UserInputError, match="stage 2 has 1 layers"):
    mbconv.from_string("c8[MB5(3)] c12[MB3(1)]", SPACE)
  with pytest.raises(UserInputError, match="stage 1 layer 1 is 'MB5'"):
    mbconv.from_string("c8[MB5] c12[MB3(1) MB3(1)]", SPACE)
  with pytest.raises(UserInputError, match="not of the form"):
    mbconv.from_string("MB3(1) MB3(1)", SPACE)
  bad = choice.to_dict()
  bad["stages"][1]["layers"][0] = [3, 6]
  with pytest.raises(UserInputError, match=r"stage 2 layer 1 \(layer 2 of 3\) is \(3, 6\)"):
    mbconv.from_dict(bad, SPACE)
  with pytest.raises(UserInputError, match="space 'bnas'"):
    mbconv.from_dict({"space": "bnas", "stages": []}, SPACE)
  with pytest.raises(UserInputError, match="multiples of groups=2"):
    mbconv.make_space(4, 1, ((1, 1, (4, 5)),))


def test_derivation_picks_the_argmax():
  ops = np.zeros((3, 4))
  ops[0, 3], ops[1, 0], ops[2, 2] = 1.0, 0.5, 2.0  # columns: MB3(1) MB3(3) MB5(1) MB5(3)
  arch = {
    "ops": ops,
    "width_stage0": np.array([[0.1, 0.3]]),
    "width_stage1": np.array([[0.2, -1.0]]),
  }
  assert SPACE.op_names == ("MB3(1)", "MB3(3)", "MB5(1)", "MB5(3)")
  assert str(mbconv.derive(arch, SPACE)) == "c8[MB5(3)] c8[MB3(1) MB5(1)]"
  assert mbconv.space_size(SPACE) == 4**3 * 2 * 2


def test_alpha_gets_gradients_through_the_search_network():
  space = mbconv.make_space(2, 1, ((1, 2, (2, 4)),), kernel_sizes=(3, 5), expansions=(1, 2))
  net = binary_mbconv.MBConvSearchNetwork(space, num_classes=3)
  x = jax.random.normal(jax.random.key(0), (4, 4, 4, 3))
  v = jax.jit(net.init)(jax.random.key(1), x)
  assert {k: a.shape for k, a in v["arch"].items()} == {"ops": (1, 4), "width_stage0": (1, 2)}

  def loss(arch):
    logits, _ = net.apply(
      {"params": v["params"], "arch": arch, "batch_stats": v["batch_stats"]},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

  grads = jax.jit(jax.grad(loss))(v["arch"])
  for key, g in grads.items():
    assert np.all(np.abs(np.asarray(g)) > 0), key


def test_cost_summary_matches_a_hand_count():
  space = mbconv.make_space(2, 1, ((1, 2, (4,)),), kernel_sizes=(3,), expansions=(2,))
  choice = mbconv.from_string("c4[MB3(2)]", space)
  net = binary_mbconv.MBConvNetwork(space, choice, num_classes=10)
  costs = binary_mbconv.cost_summary(net, (8, 8, 3))
  stem = 8 * 8 * 2 * (3 * 3 * 3)  # real 3x3 conv 3 -> 2 at 8x8
  classifier = (4 + 1) * 10  # dense 4 -> 10 with bias
  expand = 8 * 8 * 4 * 2  # 1x1, 2 -> e * 2 = 4 at 8x8
  group = 4 * 4 * 4 * (3 * 3 * 4 // 2)  # 3x3 stride 2, g = 2: 2 inputs per output channel
  project = 4 * 4 * 4 * 4  # 1x1, 4 -> 4 at 4x4
  assert costs["flops"] == stem + classifier == 3506
  assert costs["real_flops_by_layer"] == {"stem/conv": stem, "classifier": classifier}
  assert costs["bops"] == expand + group + project == 1920
  assert costs["equivalent_ops"] == pytest.approx(3506 + 1920 / 64)
  assert costs["binary_params"] == 2 * 4 + 9 * 2 * 4 + 4 * 4


def _tiny_config():
  c = bimodal.get_config("mbconv")
  c.num_devices = 1
  c.data.image_size = 8
  c.model.stem_width = 2
  c.model.stages = ((1, 2, (2, 4)),)
  c.model.kernel_sizes = (3, 5)
  c.model.expansions = (1, 2)
  c.search.batch_size = 16
  c.search.num_train_steps = 2
  c.final.batch_size = 16
  c.final.num_epochs = 0
  c.final.num_train_steps = 2
  c.eval_batch_size = 32
  c.max_eval_examples = 32
  c.progress_bar = False
  return c


def test_search_derive_and_final_training_end_to_end(tmp_path, capsys):
  report = darts.train_and_evaluate(_tiny_config(), str(tmp_path / "run"))
  saved = json.loads((tmp_path / "run" / "report.json").read_text())
  space = mbconv.space_from_config(_tiny_config().model)
  choice = mbconv.from_dict(saved["genotype"], space)
  history = saved["search_history"]
  assert history[-1]["step"] == 2 and history[-1]["learnable_share"] == 1.0
  # The saved "genotype" is the derivation of the best held-out epoch's alpha.
  assert mbconv.load(str(tmp_path / "run" / "search" / "genotype_best.json"), space) == choice
  assert 0 <= report["final"]["test_accuracy"] <= 1
  costs = report["final"]["costs"]
  assert costs["bops"] > 0 and costs["equivalent_ops"] == costs["flops"] + costs["bops"] / 64
  assert (tmp_path / "run" / "cells.png").exists()
  assert "test accuracy" in capsys.readouterr().out

  # A given choice list (a file with the string form) is used without a search.
  c = _tiny_config()
  c.final.num_train_steps = 0  # its training is the same code as above
  (tmp_path / "choice.txt").write_text("c2[MB5(2)]\n")
  c.genotype_file = str(tmp_path / "choice.txt")
  given = darts.train_and_evaluate(c, str(tmp_path / "given"))
  assert given["genotype"] == {"space": "mbconv", "stages": [{"width": 2, "layers": [[5, 2]]}]}
  assert not (tmp_path / "given" / "search").exists()

  c.genotype_file = "c2[MB7(2)]"
  with pytest.raises(UserInputError, match="stage 1 layer 1"):
    darts.train_and_evaluate(c, str(tmp_path / "bad"))
  c.genotype_file = ""
  c.model.shortcut = "ones"
  with pytest.raises(UserInputError, match="shortcut"):
    darts.train_and_evaluate(c, str(tmp_path / "bad"))


def _embed(final_block: dict, super_block: dict, w_in: int, e: int, groups: int = 2) -> dict:
  """The supernet candidate's params with the final block's params in its active slices."""
  h_max = super_block["conv_expand"]["kernel"].shape[-1]
  h = e * w_in
  hid = np.concatenate([j * (h_max // groups) + np.arange(h // groups) for j in range(groups)])
  inp, q = np.arange(w_in), np.arange(h // groups)
  out = jax.tree.map(np.array, super_block)
  f = final_block
  w_out = f["conv_project"]["kernel"].shape[-1]
  outc = np.arange(w_out)
  out["conv_expand"]["kernel"][np.ix_([0], [0], inp, hid)] = f["conv_expand"]["kernel"]
  out["conv_expand"]["input_threshold"][inp] = f["conv_expand"]["input_threshold"]
  out["conv_group"]["kernel"][np.ix_(range(3), range(3), q, hid)] = f["conv_group"]["kernel"]
  out["conv_group"]["input_threshold"][hid] = f["conv_group"]["input_threshold"]
  out["conv_project"]["kernel"][np.ix_([0], [0], hid, outc)] = f["conv_project"]["kernel"]
  out["conv_project"]["input_threshold"][hid] = f["conv_project"]["input_threshold"]
  for name, idx in (("expand", hid), ("group", hid), ("project", outc)):
    for p in ("scale", "bias"):
      out[f"bn_{name}"][p][idx] = f[f"bn_{name}"][p]
    for p in ("bias_in", "slope", "bias_out"):
      out[f"rprelu_{name}"][p][idx] = f[f"rprelu_{name}"][p]
  return out


def test_one_hot_search_network_computes_the_chosen_network():
  """Width masks (input, group-wise hidden, output) and the mixed shortcut select exactly
  the chosen sub-network (real weights: the per-filter scale mean|W| of binary weights
  would also average the masked-out inputs, which BN cancels only approximately)."""
  space = mbconv.make_space(
    2, 1, ((1, 2, (2, 4)), (2, 1, (4, 6))), kernel_sizes=(3,), expansions=(1, 2)
  )
  choice = mbconv.from_string("c2[MB3(2)] c6[MB3(1) MB3(2)]", space)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  final = binary_mbconv.MBConvNetwork(space, choice, 3, binary_weights=False)
  search = binary_mbconv.MBConvSearchNetwork(space, 3, binary_weights=False)
  fv = jax.jit(final.init)(jax.random.key(1), x)
  sv = jax.jit(search.init)(jax.random.key(2), x)
  params = jax.tree.map(np.array, sv["params"])
  params["stem"] = fv["params"]["stem"]
  w_in = 2
  for i, (w_out, _, k, e) in enumerate(choice.blocks(space)):
    name = f"layer{i}_{mbconv.op_name(k, e)}"
    params[name] = _embed(fv["params"][f"block{i}"], params[name], w_in, e)
    w_in = w_out
  params["classifier"]["kernel"][:6] = fv["params"]["classifier"]["kernel"]
  params["classifier"]["bias"] = fv["params"]["classifier"]["bias"]
  arch = {
    "ops": np.full((3, 2), -1e4, np.float32),
    "width_stage0": np.array([[1e4, -1e4]], np.float32),
    "width_stage1": np.array([[-1e4, 1e4]], np.float32),
  }
  arch["ops"][[0, 1, 2], [1, 0, 1]] = 1e4  # MB3(2), MB3(1), MB3(2)
  want, _ = jax.jit(lambda v: final.apply(v, x, train=True, mutable=["batch_stats"]))(fv)
  got, _ = jax.jit(
    lambda p, a: search.apply(
      {"params": p, "arch": a, "batch_stats": sv["batch_stats"]},
      x,
      train=True,
      mutable=["batch_stats"],
    )
  )(params, arch)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
