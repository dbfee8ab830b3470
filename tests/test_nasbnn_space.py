"""Tests of the NAS-BNN search space (Lin et al. 2024, Table 1, Eq. 3, Table 6)."""

import collections
import dataclasses
import itertools
import json
import math

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from bnas_jax.errors import UserInputError
from bnas_jax.search_spaces import nasbnn as nb

IMAGENET = nb.SearchSpace.imagenet()
DISTRIBUTIONS = ("uniform", "uniform_depths", "reference")

# A toy space whose width lists OVERLAP across the stage boundary (4 and 6 are in
# both), so Eq. 3 couples the stem, stage 1 and stage 2; Table 1's lists only touch.
TOY = nb.SearchSpace(
  name="toy",
  stem_widths=(2, 4),
  stages=(
    nb.StageSpec(depths=(1, 2), widths=(2, 4, 6), kernels=(1, 3), groups=(1, 2), stride=1),
    nb.StageSpec(depths=(1, 2), widths=(4, 6, 8), kernels=(3,), groups=(1, 2), stride=2),
  ),
  resolution=8,
  num_classes=3,
)
# Small enough to check the sampler's frequencies architecture by architecture.
TINY = nb.SearchSpace(
  name="tiny",
  stem_widths=(2, 4),
  stages=(
    nb.StageSpec(depths=(1, 2), widths=(2, 4), kernels=(3,), groups=(1,), stride=1),
    nb.StageSpec(depths=(1, 2), widths=(4, 6), kernels=(1, 3), groups=(1,), stride=2),
  ),
  resolution=4,
  num_classes=2,
)

# Table 6 transcribed cell by cell in the paper's own "c_k_g" notation, without
# folding repeats: an independent check of the folded strings in nb.NAMED.
TABLE6_CELLS = {
  "A": (
    "stem24|s1:c48_k3_g1,c48_k3_g1|s2:c96_k3_g2,c96_k3_g2|s3:c192_k3_g4,c192_k3_g4|"
    "s4:c384_k3_g8,c384_k3_g8,c384_k3_g8,c384_k3_g8,"
    "c384_k3_g8,c384_k3_g8,c384_k3_g8,c384_k3_g8|"
    "s5:c768_k3_g16,c768_k3_g16"
  ),
  "B": (
    "stem24|s1:c48_k3_g1,c48_k3_g1|s2:c96_k3_g2,c192_k3_g2|s3:c192_k3_g2,c384_k3_g2|"
    "s4:c384_k5_g8,c768_k3_g8,c768_k3_g8,c768_k3_g8,"
    "c768_k3_g8,c768_k3_g4,c768_k3_g4,c768_k3_g8|"
    "s5:c1536_k5_g16,c1536_k5_g16,c1536_k3_g16"
  ),
  "C": (
    "stem24|s1:c48_k3_g1,c64_k3_g1|s2:c96_k5_g2,c192_k3_g1|"
    "s3:c384_k3_g2,c384_k3_g4,c384_k3_g4|"
    "s4:c768_k5_g4,c768_k3_g4,c768_k3_g8,c768_k3_g4,c768_k3_g4,"
    "c768_k3_g8,c768_k5_g8,c768_k3_g8,c768_k3_g4|"
    "s5:c1536_k3_g8,c1536_k5_g16,c1536_k3_g8"
  ),
  "D": (
    "stem48|s1:c48_k3_g1,c96_k3_g1|s2:c192_k5_g2,c192_k3_g2|"
    "s3:c384_k3_g2,c384_k3_g4,c384_k3_g4|"
    "s4:c768_k3_g4,c768_k3_g4,c768_k3_g4,c768_k5_g8,c768_k5_g4,"
    "c768_k3_g4,c768_k5_g4,c768_k5_g8,c768_k3_g4|"
    "s5:c1536_k5_g8,c1536_k5_g8,c1536_k3_g8"
  ),
  "F": (
    "stem48|s1:c48_k3_g1,c96_k3_g1,c96_k3_g1|s2:c192_k3_g1,c192_k3_g1|"
    "s3:c384_k5_g2,c384_k3_g2,c384_k3_g2|"
    "s4:c768_k5_g4,c768_k5_g4,c768_k5_g4,c768_k3_g4,c768_k3_g4,"
    "c768_k3_g4,c768_k5_g4,c768_k5_g4,c768_k5_g4|"
    "s5:c1536_k3_g16,c1536_k5_g8,c1536_k3_g8"
  ),
}


def width_sum(arch):
  """A toy monotone cost: sum of all layer widths."""
  return arch.stem_width + sum(b.width for _, _, b in arch.layers())


def enumerate_all(space, nd):
  """Every architecture of `space` by brute force (itertools), ND filtered here."""
  stage_options = []
  for spec in space.stages:
    block = list(itertools.product(spec.widths, spec.kernels, spec.groups))
    stage_options.append(
      [combo for d in spec.depths for combo in itertools.product(block, repeat=d)]
    )
  out = []
  for stem in space.stem_widths:
    for stages in itertools.product(*stage_options):
      widths = [stem] + [w for blocks in stages for w, _, _ in blocks]
      if nd and any(b < a for a, b in zip(widths, widths[1:])):
        continue
      out.append(nb.Architecture(stem, stages))
  return out


def random_archs(space, seed, n, distribution="reference"):
  rng = np.random.default_rng(seed)
  return [nb.sample_uniform(space, rng, distribution=distribution) for _ in range(n)]


# ------------------------------------------------------------------ counting


def test_imagenet_counts_are_exact_and_match_paper_magnitudes():
  with_nd = nb.count_architectures(IMAGENET)
  without = nb.count_architectures(IMAGENET, nd=False)
  assert with_nd == 332353674695147520
  assert without == 3960359488725851308032
  assert isinstance(with_nd, int) and isinstance(without, int)
  # Sec. 3.2: "approximately 4.0e21", "3.3e17", "reduced to 0.01%".
  assert round(without / 1e21, 1) == 4.0
  assert round(with_nd / 1e17, 1) == 3.3
  assert round(100 * with_nd / without, 2) == 0.01


def test_imagenet_counts_match_closed_form():
  # Table 1's lists meet only at stage boundaries, so ND binds inside stages:
  # multisets of widths (comb) times free kernel/groups per active block.
  nd, full = len(IMAGENET.stem_widths), len(IMAGENET.stem_widths)
  for spec in IMAGENET.stages:
    m, n = len(spec.kernels) * len(spec.groups), len(spec.widths)
    nd *= sum(math.comb(n + d - 1, d) * m**d for d in spec.depths)
    full *= sum((n * m) ** d for d in spec.depths)
  assert nb.count_architectures(IMAGENET) == nd
  assert nb.count_architectures(IMAGENET, nd=False) == full


@pytest.mark.parametrize("space", [TOY, TINY], ids=["toy", "tiny"])
@pytest.mark.parametrize("nd", [True, False])
def test_dp_count_equals_brute_force(space, nd):
  archs = enumerate_all(space, nd)
  assert len(set(archs)) == len(archs)
  assert nb.count_architectures(space, nd=nd) == len(archs)
  nd_space = dataclasses.replace(space, nd_constraint=nd)
  assert all(nb.is_valid(nd_space, a) for a in archs)


def test_toy_nd_couples_across_stage_boundary():
  # Stage 2 may start at 4 only if stage 1 ended at <= 4: the count is smaller
  # than treating the stages independently would give.
  independent = 1
  for spec in TOY.stages:
    m, n = len(spec.kernels) * len(spec.groups), len(spec.widths)
    independent *= sum(math.comb(n + d - 1, d) * m**d for d in spec.depths)
  assert nb.count_architectures(TOY) < len(TOY.stem_widths) * independent


def test_scaled_space_keeps_structure_and_count():
  tiny = nb.SearchSpace.scaled(width_divisor=8)
  assert tiny.stem_widths == (3, 4, 6)
  assert tiny.stages[4].widths == (96, 128, 192)
  assert [s.depths for s in tiny.stages] == [s.depths for s in IMAGENET.stages]
  assert [s.groups for s in tiny.stages] == [s.groups for s in IMAGENET.stages]
  assert tiny.resolution == 32 and tiny.num_classes == 1000 and tiny.nd_constraint
  assert nb.count_architectures(tiny) == nb.count_architectures(IMAGENET)
  other = nb.SearchSpace.scaled(2, resolution=64, num_classes=10, nd_constraint=False)
  assert other.num_classes == 10 and not other.nd_constraint and other.width_divisor == 2


@pytest.mark.parametrize(
  "divisor,match",
  [(3, "divisors of all of them: \\[1, 2, 4, 8\\]"), (16, "width_divisor 16"), (0, "positive")],
)
def test_scaled_rejects_bad_divisor(divisor, match):
  with pytest.raises(UserInputError, match=f"(?i){match}"):
    nb.SearchSpace.scaled(width_divisor=divisor)


def test_scaled_rejects_divisor_that_breaks_groups():
  base = nb.SearchSpace(
    name="g4",
    stem_widths=(32,),
    resolution=8,
    stages=(nb.StageSpec((1, 2), (32, 64), (3,), (1, 4), stride=2),),
  )
  with pytest.raises(UserInputError, match="groups 4.*width 2 "):
    nb.SearchSpace.scaled(width_divisor=16, resolution=8, base=base)


def test_space_rejects_bad_resolution_and_fields():
  with pytest.raises(UserInputError, match="resolution 30 .*total stride 32"):
    nb.SearchSpace.scaled(8, resolution=30)
  with pytest.raises(UserInputError, match="odd"):
    nb.StageSpec((1,), (8,), (4,), (1,), stride=1)
  with pytest.raises(UserInputError, match="stride"):
    nb.StageSpec((1,), (8,), (3,), (1,), stride=3)
  with pytest.raises(UserInputError, match="at least one"):
    nb.StageSpec((), (8,), (3,), (1,), stride=1)


def test_spaces_are_hashable_and_imagenet_fields():
  assert hash(IMAGENET) == hash(nb.SearchSpace.imagenet())
  assert IMAGENET.resolution == 224 and IMAGENET.num_classes == 1000
  assert IMAGENET.total_stride == 32 and IMAGENET.num_slots == 21
  assert [s.stride for s in IMAGENET.stages] == [1, 2, 2, 2, 2]
  assert IMAGENET.stages[0].kernels == (3,) and IMAGENET.stages[1].kernels == (3, 5)


# ------------------------------------------------------------------ sampling


def test_uniform_sampler_is_uniform_on_tiny_space():
  archs = enumerate_all(TINY, nd=True)
  rng = np.random.default_rng(1)
  n = 300 * len(archs)
  freq = collections.Counter(nb.sample_uniform(TINY, rng) for _ in range(n))
  assert set(freq) == set(archs)
  p = 1 / len(archs)
  sigma = math.sqrt(n * p * (1 - p))
  assert max(abs(c - n * p) for c in freq.values()) < 5 * sigma


def test_uniform_depth_marginals():
  rng = np.random.default_rng(2)
  n = 3000
  uniform = [nb.sample_uniform(IMAGENET, rng).depths for _ in range(n)]
  by_depth = [
    nb.sample_uniform(IMAGENET, rng, distribution="uniform_depths").depths for _ in range(n)
  ]
  # Uniform over ND-valid archs: P(depth 3) = 640 / 736 in stage 2 (counted).
  assert abs(np.mean([d[1] == 3 for d in uniform]) - 640 / 736) < 0.03
  assert abs(np.mean([d[1] == 3 for d in by_depth]) - 0.5) < 0.04
  assert abs(np.mean([d[3] == 9 for d in by_depth]) - 0.5) < 0.04


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize(
  "space",
  [IMAGENET, TOY, nb.SearchSpace.imagenet(nd_constraint=False)],
  ids=["imagenet", "toy", "imagenet-no-nd"],
)
def test_samples_are_valid(space, distribution):
  for arch in random_archs(space, 3, 300, distribution):
    nb.validate(space, arch)


def test_unknown_distribution():
  with pytest.raises(UserInputError, match="'gaussian'.*uniform_depths"):
    nb.sample_uniform(IMAGENET, np.random.default_rng(0), distribution="gaussian")


def test_biggest_and_smallest():
  big, small = nb.biggest(IMAGENET), nb.smallest(IMAGENET)
  assert big.stem_width == 48 and small.stem_width == 24
  assert big.depths == (3, 3, 3, 9, 3) and small.depths == (2, 2, 2, 8, 2)
  for spec, blocks in zip(IMAGENET.stages, big.stages):
    assert all(b == nb.Block(max(spec.widths), max(spec.kernels), min(spec.groups)) for b in blocks)
  for spec, blocks in zip(IMAGENET.stages, small.stages):
    assert all(b == nb.Block(min(spec.widths), min(spec.kernels), max(spec.groups)) for b in blocks)
  nb.validate(IMAGENET, big)
  nb.validate(IMAGENET, small)
  costs = [width_sum(a) for a in random_archs(IMAGENET, 4, 200, "uniform")]
  assert width_sum(small) <= min(costs) and max(costs) <= width_sum(big)


# ------------------------------------------------------------------ string / JSON


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), distribution=st.sampled_from(DISTRIBUTIONS))
def test_string_and_json_round_trip(seed, distribution):
  arch = nb.sample_uniform(IMAGENET, np.random.default_rng(seed), distribution=distribution)
  text = arch.to_string()
  again = nb.Architecture.from_string(text, IMAGENET)
  assert again == arch and hash(again) == hash(arch) and again.to_string() == text
  assert nb.Architecture.from_json(arch.to_json(), IMAGENET) == arch
  assert nb.Architecture.from_json(json.loads(arch.to_json())) == arch
  # Humans may add spaces, capitals and unfold repeats.
  unfolded = "stem%d | " % arch.stem_width + " | ".join(
    f"S{s + 1}: " + ", ".join(f"C{b.width}_K{b.kernel}_G{b.groups}" for b in blocks)
    for s, blocks in enumerate(arch.stages)
  )
  assert nb.Architecture.from_string(unfolded) == arch
  assert nb.resolve(IMAGENET, text) == arch
  assert nb.resolve(IMAGENET, arch.to_json()) == arch


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(), st.text(alphabet="stem0123456789|:,kgc_* ", max_size=60)))
def test_parser_only_raises_user_input_error(text):
  try:
    arch = nb.Architecture.from_string(text)
  except UserInputError as e:
    assert "Cannot parse" in str(e) or "must be" in str(e)
  else:
    assert nb.Architecture.from_string(arch.to_string()) == arch


def test_architecture_normalises_and_hashes_by_active_structure():
  a = nb.Architecture(24, [[(48, 3, 1), (48, 3, 1)]])
  b = nb.Architecture(np.int64(24), ((nb.Block(48, 3, 1),) * 2,))
  assert a == b and hash(a) == hash(b) and a.depths == (2,)
  assert repr(a) == "Architecture('stem24|s1:48k3g1*2')"
  with pytest.raises(UserInputError, match="integer"):
    nb.Architecture(24.5, [[(48, 3, 1)]])
  with pytest.raises(UserInputError, match="triple"):
    nb.Architecture(24, [[(48, 3)]])


@pytest.mark.parametrize(
  "text,match",
  [
    ("", "start with the stem"),
    ("stem24", "no stages"),
    ("stem24|s1:48k3", "'48k3' is not of the form"),
    ("stem24|s2:48k3g1*2", "'s1' was expected"),
    ("stem24|s1:", "stage s1 has no blocks"),
    ("stem24|s1:48k3g1*0", "repeats 0 times"),
    ("stem24|s1:48k3g1*1000", "repeats 1000 times"),
    ("s1:48k3g1", "start with the stem"),
    ("stem24|x1:48k3g1", "is not a stage"),
  ],
)
def test_bad_syntax_messages(text, match):
  with pytest.raises(UserInputError, match=match) as e:
    nb.Architecture.from_string(text)
  assert "Expected e.g." in str(e.value)


@pytest.mark.parametrize(
  "data,match",
  [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "top level must be an object"),
    ('{"stem_width": 24}', "exactly the keys"),
    ('{"stem_width": 24, "stages": [[{"width": 48, "kernel": 3}]]}', "stage 1 block 1"),
    (
      '{"stem_width": 24, "stages": [[{"width": 48.0, "kernel": 3, "groups": 1}]]}',
      "width must be an integer",
    ),
    (
      '{"stem_width": true, "stages": [[{"width": 48, "kernel": 3, "groups": 1}]]}',
      "'stem_width' must be an integer",
    ),
    ('{"stem_width": 24, "stages": [[]]}', "stage 1 must be a non-empty"),
  ],
)
def test_bad_json_messages(data, match):
  with pytest.raises(UserInputError, match=match):
    nb.Architecture.from_json(data)


# ------------------------------------------------------------------ validation


def _with(stage_text_by_index):
  """NAS-BNN-A with some stages replaced (1-based index -> stage body)."""
  parts = nb.NAMED["A"].split("|")
  for i, body in stage_text_by_index.items():
    parts[i] = f"s{i}:{body}"
  return "|".join(parts)


@pytest.mark.parametrize(
  "text,match",
  [
    (_with({2: "100k3g2,100k3g2"}), r"S2-L1 has width 100, stage 2 allows \{96, 128, 192\}"),
    (_with({3: "192k3g8,192k3g4"}), r"S3-L1 has groups 8, stage 3 allows \{2, 4\}"),
    (_with({1: "48k5g1,48k3g1"}), r"S1-L1 has kernel 5, stage 1 allows \{3\}"),
    (
      _with({4: "768k3g8,384k3g8*7"}),
      r"S4-L2 has width 384 after S4-L1 with width 768.*Non-Decreasing constraint \(Eq. 3\)",
    ),
    (_with({4: "384k3g8*7"}), r"stage 4 has depth 7, allowed \{8, 9\}"),
    ("stem16|" + nb.NAMED["A"].split("|", 1)[1], r"the stem has width 16, allowed \{24, 32, 48\}"),
    (nb.NAMED["A"].rsplit("|", 1)[0], r"it has 4 stages but the space has 5 \(S1-S5\)"),
  ],
)
def test_validation_names_layer_and_allowed_values(text, match):
  arch = nb.Architecture.from_string(text)
  with pytest.raises(UserInputError, match=match) as e:
    nb.validate(IMAGENET, arch)
  assert "not in search space 'imagenet'" in str(e.value)
  assert not nb.is_valid(IMAGENET, arch)
  with pytest.raises(UserInputError):
    nb.Architecture.from_string(text, IMAGENET)


def test_nd_violation_allowed_without_constraint():
  arch = nb.Architecture.from_string(_with({4: "768k3g8,384k3g8*7"}))
  nb.validate(nb.SearchSpace.imagenet(nd_constraint=False), arch)


def test_validation_reports_several_problems_in_one_message():
  arch = nb.Architecture.from_string(_with({2: "100k3g3,96k3g2"}))
  with pytest.raises(UserInputError, match="S2-L1 has width 100.*S2-L1 has groups 3"):
    nb.validate(IMAGENET, arch)
  with pytest.raises(UserInputError, match="use resolve"):
    nb.validate(IMAGENET, nb.NAMED["A"])


# ------------------------------------------------------------------ evolution


@pytest.mark.parametrize("space", [IMAGENET, TOY], ids=["imagenet", "toy"])
def test_mutation_keeps_nd_over_many_draws(space):
  rng = np.random.default_rng(5)
  parents = random_archs(space, 6, 100) + [nb.biggest(space), nb.smallest(space)]
  changed = 0
  for i in range(2500):
    parent = parents[i % len(parents)]
    child = nb.mutate(space, parent, rng, prob=(0.2, 0.5, 1.0)[i % 3])
    nb.validate(space, child)
    changed += child != parent
  assert changed > 1500


def test_mutation_fixes_reference_bug_case():
  # The reference could move S4-L1 to 768 while S4-L2 stays 384 (notes Sec. 7).
  parent = nb.Architecture.from_string(_with({4: "384k3g8*8"}), IMAGENET)
  rng = np.random.default_rng(7)
  for _ in range(500):
    nb.validate(IMAGENET, nb.mutate(IMAGENET, parent, rng, prob=1.0))


def test_mutation_prob_zero_is_identity_and_checks_inputs():
  rng = np.random.default_rng(8)
  for arch in random_archs(IMAGENET, 9, 50):
    assert nb.mutate(IMAGENET, arch, rng, prob=0.0) == arch
  with pytest.raises(UserInputError, match=r"\[0, 1\]"):
    nb.mutate(IMAGENET, nb.smallest(IMAGENET), rng, prob=1.5)
  bad = nb.Architecture.from_string(_with({4: "768k3g8,384k3g8*7"}))
  with pytest.raises(UserInputError, match="S4-L2"):
    nb.mutate(IMAGENET, bad, rng)


@pytest.mark.parametrize(
  "space",
  [IMAGENET, TOY, nb.SearchSpace.imagenet(nd_constraint=False)],
  ids=["imagenet", "toy", "imagenet-no-nd"],
)
def test_crossover_is_valid_and_inherits_genes(space):
  rng = np.random.default_rng(10)
  pool = random_archs(space, 11, 60)
  for _ in range(1500):
    i, j = rng.choice(len(pool), size=2, replace=False)
    a, b = pool[i], pool[j]
    child = nb.crossover(space, a, b, rng)
    nb.validate(space, child)
    assert child.stem_width in (a.stem_width, b.stem_width)
    for s, blocks in enumerate(child.stages):
      assert len(blocks) in (len(a.stages[s]), len(b.stages[s]))
      for k, blk in enumerate(blocks):
        genes = [p.stages[s][k] for p in (a, b) if k < len(p.stages[s])]
        assert blk.width in {g.width for g in genes}
        assert blk.kernel in {g.kernel for g in genes}
        assert blk.groups in {g.groups for g in genes}


def test_crossover_falls_back_when_chosen_depths_admit_no_nd_child():
  # Taking stage 1's depth from b (ending at 6) and stage 2's from a (whose
  # second block only offers 4) leaves no ND-valid mix across the boundary.
  a = nb.Architecture.from_string("stem2|s1:2k1g1|s2:4k3g1,4k3g1", TOY)
  b = nb.Architecture.from_string("stem2|s1:6k1g1,6k1g1|s2:8k3g1", TOY)
  rng = np.random.default_rng(19)
  depths = collections.Counter()
  for _ in range(400):
    child = nb.crossover(TOY, a, b, rng)
    nb.validate(TOY, child)
    depths[child.depths] += 1
  assert (2, 2) not in depths and set(depths) <= {(1, 1), (1, 2), (2, 1)}


def test_crossover_of_twins_and_mixing():
  rng = np.random.default_rng(12)
  a = nb.resolve(IMAGENET, "C")
  assert all(nb.crossover(IMAGENET, a, a, rng) == a for _ in range(20))
  b = nb.resolve(IMAGENET, "F")
  children = {nb.crossover(IMAGENET, a, b, rng) for _ in range(200)}
  assert len(children) > 150  # Many genes differ, so children rarely repeat.


# ------------------------------------------------------------------ bounded search


class CountingCost:
  def __init__(self):
    self.calls = 0

  def __call__(self, arch):
    self.calls += 1
    return width_sum(arch)


def test_in_range_helpers_find_feasible_children():
  rng = np.random.default_rng(13)
  lo, hi = 9000, 11000
  seen = set()
  arch = nb.sample_in_range(IMAGENET, rng, width_sum, lo, hi, accept=lambda a: a not in seen)
  assert lo <= width_sum(arch) <= hi
  seen.add(arch)
  child = nb.mutate_in_range(IMAGENET, arch, rng, width_sum, lo, hi, accept=lambda a: a not in seen)
  assert lo <= width_sum(child) <= hi and child not in seen
  seen.add(child)
  kid = nb.crossover_in_range(IMAGENET, [arch, child], rng, width_sum, lo, hi)
  assert lo <= width_sum(kid) <= hi
  nb.validate(IMAGENET, kid)


@pytest.mark.parametrize("helper", ["sample", "mutate", "crossover"])
def test_impossible_range_raises_bounded_clear_error(helper):
  rng = np.random.default_rng(14)
  cost = CountingCost()
  small, big = width_sum(nb.smallest(IMAGENET)), width_sum(nb.biggest(IMAGENET))
  parents = [nb.smallest(IMAGENET), nb.resolve(IMAGENET, "B")]
  call = {
    "sample": lambda: nb.sample_in_range(IMAGENET, rng, cost, 1, 2, max_tries=40),
    "mutate": lambda: nb.mutate_in_range(IMAGENET, parents, rng, cost, 1, 2, max_tries=40),
    "crossover": lambda: nb.crossover_in_range(IMAGENET, parents, rng, cost, 1, 2, max_tries=40),
  }[helper]
  with pytest.raises(nb.InfeasibleRangeError) as e:
    call()
  msg = str(e.value)
  assert isinstance(e.value, UserInputError)
  assert "after 40 tries" in msg and "likely infeasible" in msg
  assert f"smallest architecture costs {small}" in msg and f"biggest {big} OPs" in msg
  assert cost.calls == 40 + 2  # Bounded: the tries plus smallest and biggest.


def test_exhausted_accept_predicate_is_explained():
  rng = np.random.default_rng(15)
  with pytest.raises(nb.InfeasibleRangeError, match="refused by the accept predicate.*exhausted"):
    nb.sample_in_range(IMAGENET, rng, width_sum, 0, math.inf, accept=lambda a: False, max_tries=10)


def test_in_range_argument_checks():
  rng = np.random.default_rng(16)
  with pytest.raises(UserInputError, match="empty: lo must be <= hi"):
    nb.sample_in_range(IMAGENET, rng, width_sum, 10, 5)
  with pytest.raises(UserInputError, match="max_tries must be >= 1"):
    nb.sample_in_range(IMAGENET, rng, width_sum, 0, 5, max_tries=0)
  with pytest.raises(UserInputError, match="parent pool is empty"):
    nb.mutate_in_range(IMAGENET, [], rng, width_sum, 0, 5)


# ------------------------------------------------------------------ encoding


@pytest.mark.parametrize(
  "space", [IMAGENET, nb.SearchSpace.scaled(8), TOY], ids=["imagenet", "scaled", "toy"]
)
def test_encode_decode_round_trip_with_fixed_shapes(space):
  archs = (
    random_archs(space, 17, 150)
    + random_archs(space, 18, 150, "uniform")
    + [nb.biggest(space), nb.smallest(space)]
  )
  n, s = space.num_slots, space.num_stages
  for arch in archs:
    enc = nb.encode(space, arch)
    assert set(enc) == set(nb.ENCODING_KEYS)
    assert enc["stem_width"].shape == () and enc["depth"].shape == (s,)
    assert all(enc[k].shape == (n,) for k in ("active", "width", "kernel", "groups"))
    assert all(v.dtype == np.int32 for v in enc.values())
    assert enc["active"].sum() == sum(arch.depths)
    for slot, w, k, g in zip(nb.block_slots(space), enc["width"], enc["kernel"], enc["groups"]):
      spec = space.stages[slot.stage]  # Inactive slots hold legal values too.
      assert w in spec.widths and k in spec.kernels and g in spec.groups
    if space.nd_constraint:
      assert np.all(np.diff(enc["width"]) >= 0) and enc["width"][0] >= enc["stem_width"]
    assert nb.decode(space, enc) == arch


def test_block_slots_layout():
  slots = nb.block_slots(IMAGENET)
  assert len(slots) == 21
  assert [s.stride for s in slots if s.block == 0] == [1, 2, 2, 2, 2]
  assert sum(s.stride for s in slots) == 21 + 4


def test_decode_ignores_inactive_slots_and_rejects_inconsistent_input():
  arch = nb.resolve(IMAGENET, "A")
  enc = nb.encode(IMAGENET, arch)
  other = {k: v.copy() for k, v in enc.items()}
  other["kernel"][2] = 5  # S1-L3 is inactive in A.
  assert nb.decode(IMAGENET, other) == arch
  bad = {k: v.copy() for k, v in enc.items()}
  bad["active"][2] = 1
  with pytest.raises(UserInputError, match="stage 1 is inconsistent"):
    nb.decode(IMAGENET, bad)
  with pytest.raises(UserInputError, match="shape"):
    nb.decode(IMAGENET, {**enc, "width": enc["width"][:-1]})
  with pytest.raises(UserInputError, match="exactly the keys"):
    nb.decode(IMAGENET, {"depth": enc["depth"]})
  wrong = {k: v.copy() for k, v in enc.items()}
  wrong["groups"][3] = 4
  with pytest.raises(UserInputError, match="S2-L1 has groups 4"):
    nb.decode(IMAGENET, wrong)


# ------------------------------------------------------------------ named models


def test_named_models_validate_and_match_cell_transcription():
  assert set(nb.NAMED) == set("ABCDEF")
  for name, text in nb.NAMED.items():
    arch = nb.Architecture.from_string(text, IMAGENET)
    assert arch.to_string() == text  # Stored in canonical form.
    if name in TABLE6_CELLS:
      assert nb.Architecture.from_string(TABLE6_CELLS[name]) == arch, name
  depths = {n: nb.resolve(IMAGENET, n).depths for n in nb.NAMED}
  assert depths == {
    "A": (2, 2, 2, 8, 2),
    "B": (2, 2, 2, 8, 3),
    "C": (2, 2, 3, 9, 3),
    "D": (2, 2, 3, 9, 3),
    "E": (2, 2, 3, 9, 3),
    "F": (3, 2, 3, 9, 3),
  }


def test_named_models_agree_with_paper_text():
  # The README's known artefact: our copy prints E with D's cells.
  assert nb.NAMED["E"] == nb.NAMED["D"]
  # A (21 M OPs) is the space's smallest subnet (20.77 M in the reference notes).
  assert nb.resolve(IMAGENET, "A") == nb.smallest(IMAGENET)
  # Sec. 5.1: in F the share of 5x5 kernels is 1/5 in stages 2-3 and 2/3 in stage 4.
  f = nb.resolve(IMAGENET, "F")
  k5 = lambda blocks: sum(b.kernel == 5 for b in blocks)
  assert (k5(f.stages[1]) + k5(f.stages[2])) * 5 == len(f.stages[1]) + len(f.stages[2])
  assert k5(f.stages[3]) * 3 == 2 * len(f.stages[3])
  # Sec. 5.1: B's stage 4 uses mostly 8 groups.
  b = nb.resolve(IMAGENET, "B")
  assert sum(blk.groups == 8 for blk in b.stages[3]) > len(b.stages[3]) / 2


def test_resolve_accepts_names_specs_and_rejects_unknown():
  assert nb.resolve(IMAGENET, "nas-bnn-c") == nb.resolve(IMAGENET, " c ")
  assert nb.resolve(IMAGENET, "Biggest") == nb.biggest(IMAGENET)
  assert nb.resolve(IMAGENET, "smallest") == nb.smallest(IMAGENET)
  d = nb.resolve(IMAGENET, "D")
  assert nb.resolve(IMAGENET, d.to_dict()) == d and nb.resolve(IMAGENET, d) == d
  tiny = nb.SearchSpace.scaled(8)
  assert nb.resolve(tiny, "A") == nb.smallest(tiny)
  assert nb.resolve(tiny, "F").stem_width == 6
  with pytest.raises(UserInputError, match="Unknown architecture 'G'.*A, B, C, D, E, F"):
    nb.resolve(IMAGENET, "G")
  with pytest.raises(UserInputError, match="got int"):
    nb.resolve(IMAGENET, 3)
  with pytest.raises(UserInputError, match="S1-L1 has width 6"):
    nb.resolve(IMAGENET, nb.resolve(tiny, "A").to_string())


# ------------------------------------------------------------------ determinism


def test_seeded_rng_is_deterministic():

  def run(seed):
    rng = np.random.default_rng(seed)
    out = [nb.sample_uniform(IMAGENET, rng, distribution=d) for d in DISTRIBUTIONS * 5]
    out += [nb.mutate(IMAGENET, out[i], rng, 0.5) for i in range(10)]
    out += [nb.crossover(IMAGENET, out[i], out[i + 1], rng) for i in range(10)]
    out.append(nb.sample_in_range(IMAGENET, rng, width_sum, 9000, 11000))
    return [a.to_string() for a in out]

  assert run(123) == run(123)
  assert run(123) != run(124)


def test_resolving_e_says_it_is_ds_network(caplog):
  """Our copy of Table 6 prints E = D: using E must say so (issue 17 §6)."""
  with caplog.at_level("WARNING"):
    d = nb.resolve(IMAGENET, "D")
  assert "identical to D" not in caplog.text
  with caplog.at_level("WARNING"):
    e = nb.resolve(IMAGENET, "nas-bnn-e")
  assert e == d and "identical to D's" in caplog.text
