"""Every config field's valid values, checked in one pass before any compute.

A `Rule` states what a field accepts ("an integer >= 1", "a finite number in
[0, 1)", one of a set). Rules are declared in two places:

* `COMMON_RULES` below, by field *name*: the fields every config shares
  (`presets.data_config`, optimizers, durations, checkpointing, batch sizes)
  mean the same thing wherever they appear (`optimizer.learning_rate`,
  `search.arch_optimizer.learning_rate`, ...);
* `FIELD_RULES` at the end of a config file, by dotted *path*, next to the
  fields only that config has (`search.sweep_chunk`, `model.blocks`, ...),
  plus optional `RELATIONS` between fields (image size vs. total stride).

`validate(config, field_rules, relations)` walks every leaf: a path rule wins
over a name rule; a leaf without either must still be well formed (finite
floats, integers that fit in 64 bits, short strings). All violations found are
reported together in one `UserInputError` paragraph. The trainers' own
`validate` functions (dataset sizes, shapes, search-space checks) run after
this, still before any compute, from `bnas_jax.main`.
"""

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections

from bnas_jax import user_files
from bnas_jax.errors import UserInputError

# Integers beyond this cannot reach JAX/NumPy (int64) and no count is that large.
MAX_INT = 2**62
MAX_TEXT = 1024  # characters of a string field (names, paths)
MAX_REPORTED = 6  # violations quoted in the message
MAX_QUOTE = 60  # characters of a value quoted in the message


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a field accepts: `accepts(value)` and the phrase `expect` for the message."""

  accepts: Callable[[Any], bool]
  expect: str
  # Further checks of an accepted value that explain themselves (raise UserInputError).
  inspect: Optional[Callable[[Any], None]] = None


@dataclasses.dataclass(frozen=True)
class Relation:
  """A condition between fields: `holds(config)`, else the message `explain(config)`."""

  fields: tuple[str, ...]
  holds: Callable[[Any], bool]
  explain: Callable[[Any], str]


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(x: float) -> str:
  return str(x) if isinstance(x, int) else f"{x:g}"


def _interval(lo, hi, lo_open, hi_open) -> str:
  if lo is not None and hi is not None:
    return f"in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
  if lo is not None:
    return f"{'>' if lo_open else '>='} {_fmt(lo)}"
  if hi is not None:
    return f"{'<' if hi_open else '<='} {_fmt(hi)}"
  return ""


def number(
  lo: Optional[float] = None,
  hi: Optional[float] = None,
  *,
  lo_open: bool = False,
  hi_open: bool = False,
  integer: bool = False,
  optional: bool = False,
  meaning: str = "",
) -> Rule:
  """A finite number (an int if `integer`) in the interval; None too if `optional`."""

  def accepts(v):
    if v is None:
      return optional
    if not _is_number(v) or (integer and not isinstance(v, int)):
      return False
    if isinstance(v, int) and abs(v) >= MAX_INT:
      return False
    if not math.isfinite(v):
      return False
    if lo is not None and (v <= lo if lo_open else v < lo):
      return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))

  kind = "an integer" if integer else "a finite number"
  expect = " ".join(p for p in (kind, _interval(lo, hi, lo_open, hi_open)) if p)
  if optional:
    expect += " or None"
  if meaning:
    expect += f" ({meaning})"
  return Rule(accepts, expect)


def one_of(*values: Any, meaning: str = "") -> Rule:
  """One of `values` (compared with ==, type-strict for bool and None)."""
  allowed = tuple(values)

  def accepts(v):
    return any(type(v) is type(a) and v == a or (a is None and v is None) for a in allowed)

  expect = "one of " + ", ".join(repr(a) for a in allowed)
  return Rule(accepts, expect + (f" ({meaning})" if meaning else ""))


def flag() -> Rule:
  """True or False."""
  return Rule(lambda v: isinstance(v, bool), "True or False")


def text(*, optional: bool = False, meaning: str = "") -> Rule:
  """A string of at most `MAX_TEXT` characters without control characters."""

  def accepts(v):
    if v is None:
      return optional
    return (
      isinstance(v, str)
      and len(v) <= MAX_TEXT
      and not any(ord(ch) < 32 or ord(ch) == 127 for ch in v)
    )

  expect = f"a string of at most {MAX_TEXT} printable characters"
  if optional:
    expect += " or None"
  return Rule(accepts, expect + (f" ({meaning})" if meaning else ""))


def sequence_of(
  item: Rule, *, min_len: int = 0, max_len: int = 10_000, optional: bool = False, meaning: str = ""
) -> Rule:
  """A tuple/list of `min_len`..`max_len` items, each accepted by `item`."""

  def accepts(v):
    if v is None:
      return optional
    return (
      isinstance(v, (tuple, list))
      and min_len <= len(v) <= max_len
      and all(item.accepts(x) for x in v)
    )

  length = f"{min_len} or more" if max_len >= 10_000 else f"{min_len} to {max_len}"
  expect = f"a tuple of {length} items, each {item.expect}"
  if optional:
    expect += ", or None"
  return Rule(accepts, expect + (f" ({meaning})" if meaning else ""))


def record(*items: Rule, meaning: str = "") -> Rule:
  """A fixed-length tuple whose i-th item is accepted by `items[i]`."""

  def accepts(v):
    return (
      isinstance(v, (tuple, list))
      and len(v) == len(items)
      and all(r.accepts(x) for r, x in zip(items, v))
    )

  expect = "a tuple (" + "; ".join(r.expect for r in items) + ")"
  return Rule(accepts, expect + (f" ({meaning})" if meaning else ""))


def arch_spec(*, optional: bool = False, meaning: str = "") -> Rule:
  """An architecture/genotype given inline or as a file, read through `user_files.check_spec`."""
  base = text(optional=optional, meaning=meaning)

  def inspect(v):
    if v:  # '' / None: none given
      user_files.check_spec(v, "the architecture")

  return Rule(base.accepts, base.expect, inspect)


def seed() -> Rule:
  return number(0, 2**31, hi_open=True, integer=True, meaning="a random seed")


POSITIVE = number(0, lo_open=True)
NON_NEGATIVE = number(0)
COUNT = number(1, integer=True)  # counts where 0 means nothing
OPTIONAL_COUNT = number(0, integer=True)  # 0 = "not used" / "derive it", as documented
FRACTION = number(0, 1, hi_open=True)  # betas, smoothing, probabilities of dropping
PROBABILITY = number(0, 1)
LEARNING_RATE = number(0, 1, lo_open=True, meaning="the optimizer's step size")
WIDTH = number(1, 1 << 16, integer=True)  # channels: >= 1, and allocatable
STRIDE = one_of(1, 2)
KERNEL = Rule(
  lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 15 and v % 2 == 1,
  "an odd integer in [1, 15]",
)


def field(config: Any, path: str) -> Any:
  """The value at dotted `path` of `config`."""
  for part in path.split("."):
    config = config[part]
  return config


def min_map_size(
  image_field: str, fields: tuple[str, ...], total_stride: Callable[[Any], int], what: str
) -> Relation:
  """The input is at least as large as the network's total stride (a >= 1x1 final map).

  With 'SAME' padding a stride-2 layer on a 1x1 map still outputs 1x1, so shapes
  alone never fail, but the layers past that point only see padding (six
  stride-2 blocks at 16x16 gave NaN at step 1, issue 18), so such a layout is
  rejected here.
  """

  def explain(c):
    return (
      f"config.{image_field}={field(c, image_field)!r} is smaller than the total stride "
      f"{total_stride(c)} of {what}: the last layers would see less than one pixel; "
      "use a larger image or fewer stride-2 blocks"
    )

  return Relation(
    (image_field,) + fields, lambda c: field(c, image_field) >= total_stride(c), explain
  )


def some_training(epochs_field: str, steps_field: str) -> Relation:
  """A phase that must train: epochs > 0 or steps > 0."""
  return Relation(
    (epochs_field, steps_field),
    lambda c: field(c, epochs_field) > 0 or field(c, steps_field) > 0,
    lambda c: (
      f"config.{epochs_field} and config.{steps_field} are both 0: the phase "
      "would not train at all; set one of them > 0"
    ),
  )


# Fields shared across configs, by name (see the module docstring).
COMMON_RULES: dict[str, Rule] = {
  # Run.
  "trainer": one_of("supervised", "darts", "dms", "nasbnn", meaning="bnas_jax/trainers/"),
  "arch_resolver": one_of(
    "bnas_jax.models.darts_arch", "bnas_jax.models.dms_arch", "bnas_jax.models.nasbnn_subnet"
  ),
  "seed": seed(),
  "split_seed": seed(),
  "num_devices": number(0, integer=True, meaning="0 = all visible devices"),
  "progress_bar": flag(),
  "two_step": flag(),
  "log_every_steps": COUNT,
  "checkpoint_every_steps": number(0, integer=True, meaning="0 = once per epoch"),
  "keep_checkpoints": number(1, integer=True, meaning="checkpoints kept for resuming"),
  "eval_every_epochs": number(0, meaning="0 = only at the end"),
  "max_eval_examples": number(0, integer=True, meaning="0 = the whole split"),
  # Durations.
  "num_epochs": NON_NEGATIVE,
  "num_train_steps": OPTIONAL_COUNT,
  "finetune_epochs": NON_NEGATIVE,
  "finetune_steps": OPTIONAL_COUNT,
  "warmup_epochs": NON_NEGATIVE,
  "student_warmup_epochs": NON_NEGATIVE,
  "fp_pretrain_epochs": NON_NEGATIVE,
  "restart_epochs": POSITIVE,
  "boundaries_epochs": sequence_of(NON_NEGATIVE),
  # Batches.
  "batch_size": COUNT,
  "eval_batch_size": COUNT,
  "calibration_batch_size": COUNT,
  # Data (presets.data_config).
  "name": text(),
  "image_size": number(1, 1024, integer=True, meaning="pixels per side"),
  "data_dir": text(optional=True),
  "cache_dir": text(optional=True),
  "holdout_per_class": number(0, integer=True),
  "holdout_fraction": FRACTION,
  "class_subset": sequence_of(number(0, integer=True), min_len=2, optional=True),
  # Optimizers and losses.
  "learning_rate": LEARNING_RATE,
  "min_lr": NON_NEGATIVE,
  "schedule": text(),
  "b1": FRACTION,
  "b2": FRACTION,
  "momentum": FRACTION,
  "weight_decay": NON_NEGATIVE,
  "step1_weight_decay": NON_NEGATIVE,
  "grad_clip_norm": number(0, lo_open=True, optional=True, meaning="None = no clipping"),
  "div_factor": number(1),
  "final_div_factor": number(1),
  "decay_factor": number(0, 1, lo_open=True),
  "label_smoothing": FRACTION,
  "teacher_label_smoothing": FRACTION,
  "drop_path_prob": FRACTION,
  # Models.
  "binary_weights": flag(),
  "binary": flag(),
  "kernel_norm": one_of("channelwise", None, meaning="NAS-BNN Eq. 6, or None"),
  "stem_weight_bits": one_of(8, None, meaning="8-bit LSQ stem, or None = full precision"),
  "width_multiplier": number(0, 16, lo_open=True),
  "stem_features": WIDTH,
  "stem_width": WIDTH,
  "stem_multiplier": number(1, 16, integer=True),
  "channels": WIDTH,
  "num_cells": number(1, 1024, integer=True),
  "groups": COUNT,
  "shuffle_groups": COUNT,
  "random_baseline": flag(),
}


def _flatten(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
  out = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.extend(_flatten(value, path + "."))
    else:
      out.append((path, value))
  return out


def _well_formed(v: Any) -> bool:
  """The rule of a leaf without a declared rule: finite, bounded, short."""
  if isinstance(v, bool) or v is None:
    return True
  if isinstance(v, int):
    return abs(v) < MAX_INT
  if isinstance(v, float):
    return math.isfinite(v)
  if isinstance(v, str):
    return len(v) <= MAX_TEXT
  if isinstance(v, (tuple, list)):
    return len(v) <= 10_000 and all(_well_formed(x) for x in v)
  return True


def rule_for(path: str, field_rules: Mapping[str, Rule]) -> Optional[Rule]:
  """The rule of the field at dotted `path`: its path rule, else its name rule."""
  if path in field_rules:
    return field_rules[path]
  return COMMON_RULES.get(path.rsplit(".", 1)[-1])


def violations(
  config: Any, field_rules: Mapping[str, Rule] = (), relations: Sequence[Relation] = ()
) -> list[str]:
  """One `config.PATH=VALUE must be ...` phrase per field or relation that fails."""
  field_rules = dict(field_rules)
  out = []
  bad_fields = set()
  for path, value in _flatten(config):
    rule = rule_for(path, field_rules)
    if rule is None:
      ok, expect = _well_formed(value), "finite and of a sensible size"
    else:
      ok, expect = rule.accepts(value), rule.expect
    if not ok:
      bad_fields.add(path)
      out.append(f"config.{path}={user_files.quote(value, MAX_QUOTE)} must be {expect}")
    elif rule is not None and rule.inspect is not None:
      try:
        rule.inspect(value)
      except UserInputError as e:
        bad_fields.add(path)
        out.append(f"config.{path}: {str(e).rstrip('.')}")
  for relation in relations:
    if bad_fields.intersection(relation.fields):
      continue  # the field itself is already reported
    try:
      holds = relation.holds(config)
    except (AttributeError, KeyError, TypeError, ValueError, ArithmeticError):
      holds = False
    if not holds:
      out.append(relation.explain(config))
  return out


def validate(
  config: Any, field_rules: Mapping[str, Rule] = (), relations: Sequence[Relation] = ()
) -> None:
  """Raises one `UserInputError` naming every field outside its valid values."""
  found = violations(config, field_rules, relations)
  if not found:
    return
  more = len(found) - MAX_REPORTED
  listed = "; ".join(found[:MAX_REPORTED]) + (f"; and {more} more" if more > 0 else "")
  raise UserInputError(
    f"The config has values that cannot work: {listed}. Fix them in the config file or "
    "with --config.FIELD=VALUE; nothing was run."
  )


def validate_for_file(config: Any, spec: str) -> None:
  """`validate` with the `FIELD_RULES` / `RELATIONS` of the config file `spec` (`path[:preset]`)."""
  module = user_files.load_config_module(spec)
  validate(config, getattr(module, "FIELD_RULES", {}), getattr(module, "RELATIONS", ()))
