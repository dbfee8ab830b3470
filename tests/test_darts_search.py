"""DARTS-family search pieces: MixedOp, derivation with gamma, Eq. 5 gradient, bilevel step."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnas_jax.errors import UserInputError
from bnas_jax.models import darts_cells
from bnas_jax.search import bilevel
from bnas_jax.search_spaces import darts as darts_space
from bnas_jax.models import darts_ops

BNAS = darts_space.BNAS
# Three of the BNAS ops: the bilevel-step tests compile a supernet several
# times, and compile time grows with the number of candidate ops.
SMALL = darts_space.CellSpace(
  "bnas",
  ("none", "max_pool_3x3", "bin_conv_3x3"),
  frozenset({"bin_conv_3x3"}),
  inter_cell_skip=True,
)


def _np_conv(x, w, stride, dilation):
  """Direct NHWC/HWIO convolution with PyTorch padding d*(k-1)//2 (independent of lax)."""
  k = w.shape[0]
  pad = dilation * (k - 1) // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  n, h, wd, _ = x.shape
  span = dilation * (k - 1)
  ho, wo = (h + 2 * pad - span - 1) // stride + 1, (wd + 2 * pad - span - 1) // stride + 1
  out = np.zeros((n, ho, wo, w.shape[-1]))
  for i in range(ho):
    for j in range(wo):
      for a in range(k):
        for b in range(k):
          patch = xp[:, i * stride + a * dilation, j * stride + b * dilation, :]
          out[:, i, j, :] += patch @ w[a, b]
  return out


def test_bnas_conv_op_is_bn_sign_xnor_conv_relu():
  """The binary dilated conv op against a numpy re-implementation (seed notes Sec. 2.5)."""
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 6, 6, 3)))
  op = darts_ops.make_op(BNAS, "bin_dil_conv_3x3", 4, 2, search=True)
  variables = op.init(jax.random.key(1), x, train=True)
  y, _ = op.apply(variables, x, train=True, mutable=["batch_stats"])
  kernel = np.asarray(variables["params"]["conv"]["kernel"])
  xn = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5)  # BN, no affine
  sx = np.where(xn >= 0, 1.0, -1.0)
  wb = np.where(kernel >= 0, 1.0, -1.0) * np.abs(kernel).mean(axis=(0, 1, 2))
  expected = np.maximum(_np_conv(sx, wb, 2, 2), 0.0)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-4)
  assert "bn" not in variables["params"]  # search-time BN has no affine parameters


def test_mixed_op_equals_explicit_weighted_sum():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  w = jax.nn.softmax(jax.random.normal(jax.random.key(1), (len(BNAS.ops),)))
  mixed = darts_cells.MixedOp(BNAS, 4, 1)
  variables = mixed.init(jax.random.key(2), x, w, train=True)
  y, _ = mixed.apply(variables, x, w, train=True, mutable=["batch_stats"])
  expected = 0.0
  for i, name in enumerate(BNAS.ops):
    op = darts_ops.make_op(BNAS, name, 4, 1, search=True)
    own = {
      "params": variables["params"].get(name, {}),
      "batch_stats": variables["batch_stats"].get(name, {}),
    }
    out, _ = op.apply({k: v for k, v in own.items() if v}, x, train=True, mutable=["batch_stats"])
    expected = expected + w[i] * out
  np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-6)


def _assert_edges_equal_mixed_ops(space, channels, strides, options, x, weights, rows, outs, copy):
  """Each fused edge output == a per-edge MixedOp whose parameters `copy(row, params)` sets."""
  for row, out in zip(rows, outs):
    mixed = darts_cells.MixedOp(space, channels, strides, options)
    own = mixed.init(jax.random.key(3), x, weights[row], train=True)
    params = jax.tree.map(lambda a: a, own["params"])
    copy(row, params)
    ref, _ = mixed.apply(
      {"params": params, "batch_stats": own["batch_stats"]},
      x,
      weights[row],
      train=True,
      mutable=["batch_stats"],
    )
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_fused_source_ops_equal_per_edge_mixed_ops():
  """BnasSourceOps (all edges leaving a state at once) == one MixedOp per edge."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  weights = jax.nn.softmax(jax.random.normal(jax.random.key(1), (14, len(BNAS.ops))), -1)
  rows = (2, 5, 9)  # edges 0 -> nodes 1, 2, 3
  fused = darts_cells.BnasSourceOps(BNAS, 4, 2, rows)
  variables = fused.init(jax.random.key(2), x, weights, train=True)
  outs, _ = fused.apply(variables, x, weights, train=True, mutable=["batch_stats"])

  def copy(row, params):
    for op in ("bin_conv_3x3", "bin_conv_5x5", "bin_dil_conv_3x3", "bin_dil_conv_5x5"):
      params[op]["conv"]["kernel"] = variables["params"][f"conv_e{row}_{op}"]["kernel"]

  _assert_edges_equal_mixed_ops(BNAS, 4, 2, darts_ops.OpOptions(), x, weights, rows, outs, copy)


@pytest.mark.parametrize("strides", [1, 2])
def test_bats_fused_source_ops_equal_per_edge_mixed_ops(strides):
  """BatsSourceOps (grouped convs of all edges in one, interleaved by group) == MixedOp per edge."""
  bats = darts_space.BATS
  options = darts_ops.OpOptions(binary_weights=True, groups=4, shuffle_groups=2)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  weights = jax.nn.softmax(jax.random.normal(jax.random.key(1), (14, len(bats.ops))), -1)
  rows = (2, 5, 9)
  fused = darts_cells.BatsSourceOps(bats, 8, strides, rows, options)
  variables = fused.init(jax.random.key(2), x, weights, train=True)
  # PReLU slopes away from their shared init, so a mixed-up edge would show
  variables = {
    "params": jax.tree_util.tree_map_with_path(
      lambda path, v: (
        v + 0.1 * jax.random.normal(jax.random.key(len(str(path))), v.shape)
        if "prelu" in str(path)
        else v
      ),
      variables["params"],
    ),
    "batch_stats": variables["batch_stats"],
  }
  outs, _ = fused.apply(variables, x, weights, train=True, mutable=["batch_stats"])
  convs = [op for op in bats.ops if op.endswith(("group_conv_3x3", "group_conv_5x5"))]
  assert len(convs) == 4

  def copy(row, params):
    for op in convs:
      params[op]["conv"]["kernel"] = variables["params"][f"conv_e{row}_{op}"]["kernel"]
      params[op]["prelu"]["slope"] = variables["params"][f"prelu_e{row}_{op}"]["slope"]
    if strides == 2:
      params["skip_connect"] = variables["params"][f"skip_e{row}"]

  _assert_edges_equal_mixed_ops(bats, 8, strides, options, x, weights, rows, outs, copy)


def _alpha_favouring(choices):
  """alpha with a large value at (edge row, op) for each (node, source, op) choice."""
  alpha = np.zeros((14, len(BNAS.ops)))
  for node, src, op, value in choices:
    alpha[darts_space.edge_index(node, src), BNAS.op_index(op)] = value
  return alpha


def test_derivation_matches_hand_derived_genotype():
  normal = _alpha_favouring(
    [
      (0, 0, "bin_conv_3x3", 3.0),
      (0, 1, "max_pool_3x3", 2.0),
      (1, 2, "bin_conv_5x5", 3.0),
      (1, 0, "avg_pool_3x3", 2.5),
      (1, 1, "bin_conv_3x3", 1.0),
      (2, 3, "none", 4.0),
      (2, 1, "bin_dil_conv_3x3", 3.0),
      (2, 0, "bin_conv_3x3", 0.5),
      (3, 4, "bin_dil_conv_5x5", 2.0),
      (3, 2, "bin_conv_3x3", 2.5),
      (3, 0, "none", 1.0),
    ]
  )
  reduce = _alpha_favouring(
    [
      (0, 1, "max_pool_3x3", 3.0),
      (0, 0, "max_pool_3x3", 2.0),
      (1, 1, "none", 3.0),
      (1, 2, "bin_conv_3x3", 2.0),
      (2, 0, "avg_pool_3x3", 3.0),
      (2, 3, "bin_conv_5x5", 2.0),
      (3, 4, "bin_conv_3x3", 3.0),
      (3, 3, "bin_conv_3x3", 2.0),
    ]
  )
  g = darts_space.derive(normal, reduce, BNAS)
  assert g.normal == (
    ("bin_conv_3x3", 0),
    ("max_pool_3x3", 1),
    ("avg_pool_3x3", 0),
    ("bin_conv_5x5", 2),
    ("bin_dil_conv_3x3", 1),
    ("none", 3),
    ("bin_conv_3x3", 2),
    ("bin_dil_conv_5x5", 4),
  )
  assert g.reduce == (
    ("max_pool_3x3", 0),
    ("max_pool_3x3", 1),
    ("none", 1),
    ("bin_conv_3x3", 2),
    ("avg_pool_3x3", 0),
    ("bin_conv_5x5", 3),
    ("bin_conv_3x3", 3),
    ("bin_conv_3x3", 4),
  )
  # DARTS rule (No Zeroise): Zeroise is never picked; node 4 (index 2) then
  # ranks input 1 (dil conv) and input 0 above the Zeroise-dominated input 3.
  g_darts = darts_space.derive(normal, reduce, BNAS, keep_zeroise=False)
  assert all(op != "none" for op, _ in g_darts.normal + g_darts.reduce)
  assert g_darts.normal[4:6] == (("bin_conv_3x3", 0), ("bin_dil_conv_3x3", 1))


def test_gamma_divides_the_zeroise_entry():
  # One edge where Zeroise has p = 0.5 and a conv 0.3: gamma = 1 picks Zeroise,
  # gamma = 2 (0.25 < 0.3) picks the conv (Eq. 4 on softmax probabilities).
  p = np.full(len(BNAS.ops), 0.2 / 5)
  p[BNAS.zero_index], p[BNAS.op_index("bin_conv_3x3")] = 0.5, 0.3
  alpha = np.tile(np.log(p), (14, 1))
  assert darts_space.derive_cell(alpha, BNAS, gamma=1.0)[0][0] == "none"
  assert darts_space.derive_cell(alpha, BNAS, gamma=2.0)[0][0] == "bin_conv_3x3"


def test_larger_gamma_picks_zeroise_less_often():
  rng = np.random.default_rng(0)
  counts = []
  for gamma in (1.0, 1.5, 3.0, 10.0):
    n = 0
    for _ in range(100):
      a = rng.normal(size=(14, len(BNAS.ops)))
      a[:, BNAS.zero_index] += 1.0  # Zeroise often dominant, as in binary search
      n += sum(op == "none" for op, _ in darts_space.derive_cell(a, BNAS, gamma=gamma))
    counts.append(n)
  assert counts[0] > 300  # mostly Zeroise at gamma = 1
  assert all(a > b for a, b in zip(counts, counts[1:])), counts


def test_entropy_regularizer_gradient_matches_analytic():
  arch = {
    "normal": jax.random.normal(jax.random.key(0), (14, 7)),
    "reduce": jax.random.normal(jax.random.key(1), (14, 7)),
  }
  lam, tau, epoch, temp = 1.0, 7.7, 3.0, 0.5
  grads = jax.grad(bilevel.diversity_regularizer)(arch, epoch, lam, tau, temp)
  for k in arch:
    a = np.asarray(arch[k], np.float64) / temp
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    h = -(p * np.log(p)).sum(1, keepdims=True)
    # dH_row/d alpha = -(1/T) p (log p + H_row); mean over 28 rows; x lambda exp(-t/tau)
    expected = -p * (np.log(p) + h) / temp / 28 * lam * np.exp(-epoch / tau)
    np.testing.assert_allclose(np.asarray(grads[k]), expected, rtol=1e-4, atol=1e-7)
  value = bilevel.diversity_regularizer(arch, 0.0, 1.0, 7.7)
  uniform = {k: jnp.zeros_like(v) for k, v in arch.items()}
  assert float(bilevel.diversity_regularizer(uniform, 0.0, 1.0, 7.7)) == pytest.approx(np.log(7))
  assert float(value) < np.log(7)


def test_unrolled_arch_gradient_on_a_quadratic():
  # L_train = 0.5 |w - A a|^2, L_val = 0.5 |w - b|^2 + c.a ; w' = w - xi (w - A a + wd w)
  # dL_val(w'(a), a)/da = xi A^T (w' - b) + c.
  rng = np.random.default_rng(0)
  A, b, c = rng.normal(size=(3, 2)), rng.normal(size=3), rng.normal(size=2)
  w, a, xi, wd = rng.normal(size=3), rng.normal(size=2), 0.1, 0.01
  train = lambda w_, a_: 0.5 * jnp.sum((w_ - A @ a_) ** 2)
  val = lambda w_, a_: 0.5 * jnp.sum((w_ - b) ** 2) + c @ a_
  g = bilevel.unrolled_arch_grad(train, val, jnp.asarray(w), jnp.asarray(a), xi, wd)
  w_virtual = w - xi * (w - A @ a + wd * w)
  np.testing.assert_allclose(np.asarray(g), xi * A.T @ (w_virtual - b) + c, rtol=1e-5)


def test_genotype_json_round_trip_and_errors(tmp_path):
  g = darts_space.random_genotype(BNAS, np.random.default_rng(1))
  path = str(tmp_path / "g.json")
  darts_space.save(g, path)
  assert darts_space.load(path) == g
  assert darts_space.from_json(g.to_json()) == g
  good = g.to_dict()
  bad_cases = [
    ({**good, "normal": good["normal"][:7]}, "8 \\[op, input\\] pairs"),
    ({**good, "normal": [["sep_conv_3x3", 0]] + good["normal"][1:]}, "sep_conv_3x3"),
    ({**good, "reduce": good["reduce"][:6] + [["none", 6], ["none", 0]]}, "inputs 0..4"),
    ({**good, "normal": [["none", 1], ["none", 1]] + good["normal"][2:]}, "different inputs"),
    ({**good, "normal_concat": [2, 2]}, "distinct node indices"),
    ({**good, "space": "nasnet"}, "Unknown cell space"),
    ({**good, "extra": 1}, "unknown keys"),
  ]
  for d, message in bad_cases:
    with pytest.raises(UserInputError, match=message):
      darts_space.from_json(json.dumps(d))
  with pytest.raises(UserInputError, match="not valid JSON"):
    darts_space.from_json("{normal: }")
  with pytest.raises(UserInputError, match="does not exist"):
    darts_space.load(str(tmp_path / "missing.json"))


def test_draw_writes_a_png(tmp_path):
  g = darts_space.random_genotype(BNAS, np.random.default_rng(2))
  darts_space.draw(g, str(tmp_path / "cells.png"))
  assert (tmp_path / "cells.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------
# The bilevel step.


class _Cfg:
  """Minimal optimizer configs (attribute + .get access like ConfigDict)."""

  def __init__(self, **kw):
    self.__dict__.update(kw)

  def get(self, k, default=None):
    return self.__dict__.get(k, default)


@functools.lru_cache(maxsize=None)
def _tiny_model_and_variables():
  model = darts_cells.SearchNetwork(SMALL, 3, channels=2, num_cells=1, stem_multiplier=1)
  v = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 3)), train=False))(jax.random.key(0))
  v["arch"] = jax.tree.map(lambda a: a * 1000.0, v["arch"])  # N(0, 1) alpha: non-trivial softmax
  return model, v


@functools.lru_cache(maxsize=None)
def _tiny_step(second_order=False, noise=bilevel.NoiseConfig()):
  """One compiled step per setting, shared by the tests (compiling dominates their time)."""
  model, v = _tiny_model_and_variables()
  _, _, sched = _tiny_optimizers(v)
  cfg = bilevel.SearchStepConfig(
    num_classes=3, steps_per_epoch=10, second_order=second_order, noise=noise
  )
  return jax.jit(bilevel.make_search_step(model, cfg, sched))


def _tiny_optimizers(v):
  params = {"weights": v["params"], "arch": v["arch"]}
  w_cfg = _Cfg(name="sgd", learning_rate=0.05, schedule="cosine", momentum=0.9, weight_decay=3e-4)
  a_cfg = _Cfg(learning_rate=3e-4, b1=0.5, b2=0.999, weight_decay=1e-3)
  return bilevel.make_optimizers(w_cfg, a_cfg, params, 100, 10)


def _tiny_search(second_order=False, noise=bilevel.NoiseConfig()):
  model, v = _tiny_model_and_variables()
  w_tx, a_tx, _ = _tiny_optimizers(v)
  state = bilevel.SearchState.create(
    params={"weights": v["params"], "arch": v["arch"]},
    batch_stats=v["batch_stats"],
    weight_tx=w_tx,
    arch_tx=a_tx,
    rng=jax.random.key_data(jax.random.key(1)),
  )
  return model, state, _tiny_step(second_order, noise)


def _batch(seed):
  r = np.random.default_rng(seed)
  return {
    "image": r.normal(size=(4, 8, 8, 3)).astype(np.float32),
    "label": r.integers(0, 3, 4).astype(np.int32),
    "val_image": r.normal(size=(4, 8, 8, 3)).astype(np.float32),
    "val_label": r.integers(0, 3, 4).astype(np.int32),
  }


def test_first_order_step_uses_val_batch_for_alpha_and_train_batch_for_weights():
  model, state, step = _tiny_search()
  batch = _batch(0)
  w0, a0, stats = state.params["weights"], state.params["arch"], state.batch_stats
  new, metrics = step(state, batch)

  def ce(w, a, x, y):
    logits, _ = model.apply(
      {"params": w, "arch": a, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
    )
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y])

  # alpha: g = dL/da with L = CE(val) - H(alpha) (lambda = 1, epoch 0); the
  # step reports |g|, and Adam's first step is -lr * (g + wd a) / (|g + wd a| + eps).
  def arch_obj(a):
    return ce(w0, a, batch["val_image"], batch["val_label"]) - bilevel.mean_entropy(a)

  g = jax.jit(jax.grad(arch_obj))(a0)
  norm = np.sqrt(sum(np.sum(np.asarray(v) ** 2) for v in jax.tree.leaves(g)))
  assert float(metrics["arch_grad_norm"]) == pytest.approx(norm, rel=1e-2)
  for k in a0:
    gk = np.asarray(g[k]) + 1e-3 * np.asarray(a0[k])
    expected = np.asarray(a0[k]) - 3e-4 * gk / (np.abs(gk) + 1e-8)
    np.testing.assert_allclose(np.asarray(new.params["arch"][k]), expected, rtol=1e-5, atol=1e-8)
  # weights: SGD's first step -lr * (g + wd * w on kernels) at the *updated* alpha, train batch.
  a1 = new.params["arch"]
  gw = jax.jit(jax.grad(ce))(w0, a1, batch["image"], batch["label"])
  flat_w0 = jax.tree_util.tree_flatten_with_path(w0)[0]
  flat_g = jax.tree.leaves(gw)
  flat_new = jax.tree.leaves(new.params["weights"])
  for (path, w), gl, wn in zip(flat_w0, flat_g, flat_new):
    name = "/".join(str(getattr(p, "key", p)) for p in path)
    decay = 3e-4 if name.endswith("kernel") and ("conv" in name or "classifier" in name) else 0.0
    expected = np.asarray(w) - 0.05 * (np.asarray(gl) + decay * np.asarray(w))
    np.testing.assert_allclose(np.asarray(wn), expected, rtol=1e-4, atol=1e-6, err_msg=name)
  # A different train batch leaves alpha's gradient unchanged; a different
  # held-out batch changes it.
  _, state_b, _ = _tiny_search()
  other = dict(batch, image=_batch(5)["image"], label=_batch(5)["label"])
  new_b, metrics_b = step(state_b, other)
  jax.tree.map(np.testing.assert_array_equal, new_b.params["arch"], new.params["arch"])
  assert float(metrics_b["arch_grad_norm"]) == float(metrics["arch_grad_norm"])
  _, state_c, _ = _tiny_search()
  _, metrics_c = step(state_c, dict(batch, val_image=_batch(6)["val_image"]))
  assert float(metrics_c["arch_grad_norm"]) != pytest.approx(float(metrics["arch_grad_norm"]))
  assert float(metrics["entropy"]) > 0


def test_second_order_step_runs_and_differs_from_first_order():
  _, s1, step1 = _tiny_search()
  _, s2, step2 = _tiny_search(second_order=True)
  batch = _batch(0)
  _, m1 = step1(s1, batch)
  _, m2 = step2(s2, batch)
  assert np.isfinite(float(m2["arch_grad_norm"]))
  # Same forward at w, but the gradient is taken at the virtual w'.
  assert float(m2["val_loss"]) == pytest.approx(float(m1["val_loss"]), rel=1e-5)
  assert float(m2["arch_grad_norm"]) != pytest.approx(float(m1["arch_grad_norm"]), rel=1e-4)


def test_noise_scales():
  tree = {"a": {"conv": {"kernel": jnp.full((1000,), 2.0)}}, "classifier": {"kernel": jnp.ones(3)}}
  rel = bilevel.sample_noise(jax.random.key(0), tree, 0.25, "uniform", True, bilevel.is_conv_kernel)
  assert 0.45 < float(jnp.max(jnp.abs(rel["a"]["conv"]["kernel"]))) <= 0.5  # 0.25 * mean|w| = 0.5
  assert float(jnp.abs(rel["classifier"]["kernel"]).sum()) == 0.0
  absolute = bilevel.sample_noise(jax.random.key(0), tree, 0.2, "uniform", False)
  assert 0.18 < float(jnp.max(jnp.abs(absolute["a"]["conv"]["kernel"]))) <= 0.2
  with pytest.raises(UserInputError, match="distribution"):
    bilevel.NoiseConfig(distribution="laplace").validate()


def test_channel_shuffle_matches_pytorch_order():
  x = jnp.arange(8.0).reshape(1, 1, 1, 8)
  # PyTorch: view(b, 4, 2, h, w).transpose(1, 2) -> channels 0,2,4,6,1,3,5,7
  np.testing.assert_array_equal(
    np.asarray(darts_ops.channel_shuffle(x, 4)).ravel(), [0, 2, 4, 6, 1, 3, 5, 7]
  )


def test_bats_space_supernet_and_final_network_run():
  bats = darts_space.BATS
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  options = darts_ops.OpOptions(binary_weights=False, groups=2, shuffle_groups=2)
  net = darts_cells.SearchNetwork(
    bats,
    5,
    channels=4,
    num_cells=2,
    inter_cell_skip=False,
    temperature=0.5,
    options=options,
    fused=False,
  )
  v = net.init(jax.random.key(1), x, train=False)
  assert v["arch"]["normal"].shape == (14, len(bats.ops))
  assert net.apply(v, x, train=False).shape == (2, 5)
  g = darts_space.random_genotype(bats, np.random.default_rng(0))
  final = darts_cells.GenotypeNetwork(
    g,
    5,
    channels=4,
    num_cells=2,
    inter_cell_skip=False,
    options=darts_ops.OpOptions(groups=2, shuffle_groups=2),
  )
  v = final.init(jax.random.key(2), x, train=False)
  assert final.apply(v, x, train=False).shape == (2, 5)
  with pytest.raises(UserInputError, match="groups=3"):
    darts_ops.BatsConv(4, 3, groups=3).init(jax.random.key(0), jnp.zeros((1, 4, 4, 4)))


def test_weight_noise_changes_the_weight_gradient_only_when_on():
  norms = []
  for noise in (
    bilevel.NoiseConfig(),
    bilevel.NoiseConfig(),
    bilevel.NoiseConfig(weight_scale=0.25, arch_scale=0.2),
  ):
    _, state, step = _tiny_search(noise=noise)
    _, m = step(state, _batch(0))
    norms.append(float(m["grad_norm"]))
  assert norms[0] == norms[1] and norms[2] != pytest.approx(norms[0])


def test_config_presets_carry_the_paper_settings():
  from configs import bats, bimodal, bnas  # pylint: disable=g-import-not-at-top

  for module in (bnas, bats, bimodal):
    for preset in module.PRESETS:
      module.get_config(preset)
  c = bnas.get_config("cifar10")
  assert (c.model.num_cells, c.model.channels, c.search.num_epochs) == (8, 16, 50)
  assert (c.final.num_cells, c.final.channels, c.final.num_epochs, c.final.batch_size) == (
    20,
    36,
    600,
    256,
  )
  assert c.final.optimizer.schedule == "one_cycle" and c.final.optimizer.learning_rate == 0.05
  assert c.final.optimizer.weight_decay == 3e-6 and c.search.diversity_tau == 7.7
  assert (c.search.arch_optimizer.learning_rate, c.search.arch_optimizer.b1) == (3e-4, 0.5)
  i = bnas.get_config("imagenet")
  assert (i.final.num_cells, i.final.channels, i.derive.gamma) == (12, 64, 3.0)
  assert (i.final.optimizer.restart_epochs, i.final.optimizer.min_lr) == (50, 1e-5)
  n = bimodal.get_config().search.noise
  assert (n.arch_scale, n.weight_scale) == (0.2, 0.25)
  with pytest.raises(UserInputError, match="Unknown preset"):
    bnas.get_config("cifar11")
