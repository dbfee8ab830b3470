"""Field rules (issue 18 Sec. 1): every field declared, every preset valid, nonsense rejected."""

import importlib
import math

import pytest

from bnas_jax import config_validation as cv
from bnas_jax.errors import UserInputError
from bnas_jax.search_spaces import nasbnn as nasbnn_space

CONFIG_FILES = ("reactnet", "nasbnn", "bnas", "bats", "bimodal", "dms")


def _module(name):
  return importlib.import_module(f"configs.{name}")


def _violations(name, preset=None, **overrides):
  module = _module(name)
  config = module.get_config(preset)
  with config.unlocked():
    for path, value in overrides.items():
      *parents, leaf = path.split("__")
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value
  return cv.violations(config, module.FIELD_RULES, getattr(module, "RELATIONS", ()))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_preset_is_valid_and_every_field_has_a_rule(name):
  module = _module(name)
  for preset in module.PRESETS:
    config = module.get_config(preset)
    assert cv.violations(config, module.FIELD_RULES, getattr(module, "RELATIONS", ())) == [], preset
    unruled = [
      path for path, _ in cv._flatten(config) if cv.rule_for(path, module.FIELD_RULES) is None
    ]
    assert unruled == [], (preset, unruled)


# The nonsense of issue 18 (each accepted or failing late before), by config.
@pytest.mark.parametrize(
  "name,overrides,field",
  [
    ("reactnet", dict(optimizer__learning_rate=0.0), "optimizer.learning_rate"),
    ("reactnet", dict(optimizer__learning_rate=-1e-3), "optimizer.learning_rate"),
    ("reactnet", dict(optimizer__learning_rate=math.inf), "optimizer.learning_rate"),
    ("reactnet", dict(optimizer__learning_rate=math.nan), "optimizer.learning_rate"),
    ("reactnet", dict(optimizer__b1=2.0), "optimizer.b1"),
    ("reactnet", dict(optimizer__b2=1.0), "optimizer.b2"),
    ("reactnet", dict(optimizer__weight_decay=-1e-4), "optimizer.weight_decay"),
    ("reactnet", dict(optimizer__grad_clip_norm=-1.0), "optimizer.grad_clip_norm"),
    ("reactnet", dict(optimizer__grad_clip_norm=math.nan), "optimizer.grad_clip_norm"),
    ("reactnet", dict(label_smoothing=-0.5), "label_smoothing"),
    ("reactnet", dict(label_smoothing=1.5), "label_smoothing"),
    ("reactnet", dict(label_smoothing=math.nan), "label_smoothing"),
    ("reactnet", dict(num_train_steps=-5), "num_train_steps"),
    ("reactnet", dict(keep_checkpoints=0), "keep_checkpoints"),
    ("reactnet", dict(keep_checkpoints=-1), "keep_checkpoints"),
    ("reactnet", dict(checkpoint_every_steps=-1), "checkpoint_every_steps"),
    ("reactnet", dict(log_every_steps=0), "log_every_steps"),
    ("reactnet", dict(num_devices=-1), "num_devices"),
    ("reactnet", dict(max_eval_examples=-1), "max_eval_examples"),
    ("reactnet", dict(seed=-1), "seed"),
    ("reactnet", dict(seed=99999999999999999999999), "seed"),
    ("reactnet", dict(model__width_multiplier=math.nan), "model.width_multiplier"),
    ("reactnet", dict(data__image_size=100000), "data.image_size"),
    ("reactnet", dict(model__stem_weight_bits=3), "model.stem_weight_bits"),
    ("reactnet", dict(model__blocks=()), "model.blocks"),
    ("reactnet", dict(model__blocks=(1, (8, 1, 3, 1))), "model.blocks"),
    ("reactnet", dict(model__blocks=((8, 3, 3, 1),)), "model.blocks"),
    ("nasbnn", dict(supernet__sampling="bogus"), "supernet.sampling"),
    ("nasbnn", dict(search__sweep_chunk=0), "search.sweep_chunk"),
    ("nasbnn", dict(seed=-1), "seed"),
    ("nasbnn", dict(deploy__ops_targets=(0.1, -1.0)), "deploy.ops_targets"),
    ("bnas", dict(final__drop_path_prob=1.0), "final.drop_path_prob"),
    ("bnas", dict(search__arch_optimizer__b1=-0.1), "search.arch_optimizer.b1"),
    ("dms", dict(model__widths=(10**9,)), "model.widths"),
  ],
)
def test_nonsense_values_are_rejected_naming_the_field(name, overrides, field):
  found = _violations(name, **overrides)
  assert len(found) == 1 and found[0].startswith(f"config.{field}="), found


@pytest.mark.parametrize(
  "name,overrides,expected",
  [
    # Six stride-2 blocks after the stride-2 stem at 16x16: total stride 128 > 16.
    (
      "reactnet",
      dict(data__image_size=16, model__blocks=((8, 2, 3, 1),) * 6),
      "smaller than the total stride 128",
    ),
    ("reactnet", dict(data__image_size=7), "smaller than the total stride 16"),
    ("reactnet", dict(num_epochs=0), "both 0"),
    # Two reduction cells after the ImageNet stem (stride 8): 32 > 16.
    ("bnas", dict(final__stem="imagenet"), "smaller than the total stride 32 of the final"),
  ],
)
def test_relations_between_fields(name, overrides, expected):
  found = _violations(name, **overrides)
  assert len(found) == 1 and expected in found[0], found


def test_image_exactly_the_total_stride_is_valid():
  assert _violations("reactnet", data__image_size=16) == []  # stem 2 x three stride-2 blocks


def test_sampling_rule_matches_the_spaces_distributions():
  rule = _module("nasbnn").FIELD_RULES["supernet.sampling"]
  assert all(rule.accepts(d) for d in nasbnn_space._DISTRIBUTIONS)  # pylint: disable=protected-access
  assert not rule.accepts("bogus")


@pytest.mark.parametrize(
  "rule,good,bad",
  [
    (cv.number(0, 1, hi_open=True), [0, 0.0, 0.5, 0.999], [1, 1.0, -1e-9, math.nan, True, "0.5"]),
    (cv.number(1, integer=True), [1, 7, 2**40], [0, 1.5, -3, 2**70, False, None]),
    (cv.number(0, lo_open=True, optional=True), [None, 1e-30, 5.0], [0, 0.0, math.inf, -1]),
    (cv.one_of(8, None), [8, None], [3, 8.5, True, "8"]),
    (cv.one_of(1, 2), [1, 2], [True, 1.0, 3]),
    (cv.sequence_of(cv.COUNT, min_len=1), [(1,), [2, 3]], [(), (0,), 5, ("a",)]),
    (cv.text(), ["", "adam"], [None, "a\x00b", "x" * 5000, 3]),
    (cv.KERNEL, [1, 3, 5, 15], [2, 0, 17, -3, 3.0]),
  ],
)
def test_rule_values(rule, good, bad):
  assert [v for v in good if not rule.accepts(v)] == []
  assert [v for v in bad if rule.accepts(v)] == []


def test_validate_reports_all_violations_in_one_paragraph():
  module = _module("reactnet")
  config = module.get_config()
  config.optimizer.learning_rate = 0.0
  config.keep_checkpoints = 0
  with pytest.raises(UserInputError) as e:
    cv.validate(config, module.FIELD_RULES, module.RELATIONS)
  message = str(e.value)
  assert "\n" not in message
  assert "config.keep_checkpoints=0" in message and "config.optimizer.learning_rate=0.0" in message


def test_long_values_are_quoted_short():
  found = _violations("reactnet", data__name="x" * 5000)
  assert len(found) == 1 and len(found[0]) < 200
