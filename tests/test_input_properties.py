"""Property-based checks of user-typed inputs (issue 6 Sec. 5): architecture
strings and JSON either parse into a valid architecture that round-trips, or
fail with a `UserInputError` (exit status 2), never another exception."""

import json

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from bnas_jax.errors import UserInputError
from bnas_jax.search_spaces import nasbnn

SPACE = nasbnn.SearchSpace.scaled(width_divisor=8)

# Fragments of the grammar, so random strings often get close to valid ones.
_TOKENS = st.sampled_from(
  [
    "stem",
    "stem24",
    "|",
    "s1:",
    "s2:",
    "s5:",
    "s9:",
    ",",
    "*",
    "*2",
    "48k3g1",
    "96k5g2",
    "k",
    "g",
    "c",
    "_",
    "0",
    "3",
    "-1",
    "{",
    "}",
    " ",
    "x",
    "99999999999",
  ]
)
_TEXT = st.one_of(st.text(max_size=40), st.lists(_TOKENS, max_size=16).map("".join))


def _accepts_or_user_error(fn, *args):
  try:
    return fn(*args)
  except UserInputError as e:
    assert str(e).strip()
    return None


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_TEXT)
def test_any_architecture_text_parses_or_raises_user_input_error(text):
  arch = _accepts_or_user_error(nasbnn.resolve, SPACE, text)
  if arch is not None:
    assert nasbnn.resolve(SPACE, arch.to_string()) == arch
    assert nasbnn.Architecture.from_json(arch.to_json(), SPACE) == arch


_JSON = st.recursive(
  st.none() | st.booleans() | st.integers(-3, 2000) | st.text(max_size=6),
  lambda children: (
    st.lists(children, max_size=5)
    | st.dictionaries(
      st.sampled_from(["stem_width", "stages", "width", "kernel", "groups", "x"]),
      children,
      max_size=4,
    )
  ),
  max_leaves=20,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_JSON)
def test_any_json_value_parses_or_raises_user_input_error(value):
  arch = _accepts_or_user_error(
    nasbnn.resolve, SPACE, json.dumps(value) if not isinstance(value, dict) else value
  )
  if arch is not None:
    assert nasbnn.Architecture.from_json(arch.to_json(), SPACE) == arch


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["uniform", "uniform_depths"]))
def test_sampled_architectures_round_trip_through_both_forms(seed, distribution):
  arch = nasbnn.sample_uniform(SPACE, np.random.default_rng(seed), distribution=distribution)
  assert nasbnn.Architecture.from_string(arch.to_string(), SPACE) == arch
  assert nasbnn.Architecture.from_json(json.loads(arch.to_json()), SPACE) == arch
  decoded = nasbnn.decode(SPACE, nasbnn.encode(SPACE, arch))
  assert decoded == arch


@pytest.mark.parametrize(
  "text", ["stem24|s1:48k3g1", "stem24|s1:48k7g1*2|s2:96k3g2*2", "stem25|s1:48k3g1*2"]
)
def test_out_of_space_errors_name_the_problem(text):
  with pytest.raises(UserInputError):
    nasbnn.resolve(SPACE, text)


# Genotypes (DARTS cell search): any JSON value is a genotype or a UserInputError.
_GENO_JSON = st.recursive(
  st.none()
  | st.booleans()
  | st.integers(-2, 8)
  | st.sampled_from(["bnas", "bats", "conv3", "max3", "none", "zeroise", "dil5", "x"]),
  lambda children: (
    st.lists(children, max_size=9)
    | st.dictionaries(
      st.sampled_from(["space", "normal", "reduce", "normal_concat", "reduce_concat", "y"]),
      children,
      max_size=5,
    )
  ),
  max_leaves=40,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_GENO_JSON)
def test_any_genotype_json_parses_or_raises_user_input_error(value):
  from bnas_jax.search_spaces import darts as darts_space  # pylint: disable=g-import-not-at-top

  geno = _accepts_or_user_error(darts_space.from_json, json.dumps(value))
  if geno is not None:
    assert darts_space.from_json(geno.to_json()) == geno


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["bnas", "bats"]), st.booleans())
def test_random_genotypes_round_trip_and_validate(seed, space_name, keep_zeroise):
  from bnas_jax.search_spaces import darts as darts_space  # pylint: disable=g-import-not-at-top

  geno = darts_space.random_genotype(
    darts_space.get_space(space_name), np.random.default_rng(seed), keep_zeroise=keep_zeroise
  )
  assert darts_space.from_json(geno.to_json()) == geno
  assert darts_space.validate(geno) == geno
