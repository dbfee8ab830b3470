"""Every search space through the one interface (`search_spaces/interface.py`).

The four spaces come from their configs through `models/families.from_config`, as the
trainers and `summary` get them. Counts are checked against brute-force enumeration of
tiny spaces: every candidate of a superset is put through `validate`, and the accepted
ones are counted.
"""

import itertools

import numpy as np
import pytest

from bnas_jax.errors import UserInputError
from bnas_jax.models import families
from bnas_jax.search_spaces import darts
from bnas_jax.search_spaces import dms_widths
from bnas_jax.search_spaces import interface
from bnas_jax.search_spaces import mbconv
from bnas_jax.search_spaces import nasbnn
from configs import bimodal as bimodal_config
from configs import bnas as bnas_config
from configs import dms as dms_config
from configs import nasbnn as nasbnn_config

CONFIGS = {
  "nasbnn": lambda: nasbnn_config.get_config(),
  "bnas": lambda: bnas_config.get_config(),
  "mbconv": lambda: bimodal_config.get_config("mbconv"),
  "dms": lambda: dms_config.get_config(),
}
SPACE_TYPES = {
  "nasbnn": nasbnn.SearchSpace,
  "bnas": darts.CellSpace,
  "mbconv": mbconv.MBConvSpace,
  "dms": dms_widths.WidthSpace,
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def named_space(request):
  return request.param, families.from_config(CONFIGS[request.param]()).space


def _accepts(space, arch) -> bool:
  try:
    space.validate(arch)
  except UserInputError:
    return False
  return True


def test_each_config_gives_its_space_with_the_whole_interface(named_space):
  name, space = named_space
  assert type(space) is SPACE_TYPES[name]
  assert isinstance(space, interface.SearchSpace)
  assert isinstance(space, interface.Evolvable) == (name == "nasbnn")
  assert isinstance(space, interface.Differentiable) == (name in ("bnas", "mbconv"))


def test_samples_validate_and_round_trip_through_text_files_and_resolve(named_space, tmp_path):
  _, space = named_space
  rng = np.random.default_rng(0)
  archs = [space.sample(rng) for _ in range(5)]
  assert len({str(a) for a in archs}) > 1  # a real draw, not one fixed architecture
  for k, arch in enumerate(archs):
    assert space.validate(arch) == arch
    text = space.to_string(arch)
    assert space.parse(text) == arch
    assert space.resolve(text) == arch
    path = str(tmp_path / f"arch{k}.json")
    space.save(arch, path)
    assert space.load(path) == arch
    assert space.resolve(path) == arch
  picture = tmp_path / "arch.png"
  space.draw(archs[0], str(picture))
  assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("spec", ["no such architecture", "{not json", "[1, 2"])
def test_resolve_of_garbage_is_a_short_user_error(named_space, spec):
  _, space = named_space
  with pytest.raises(UserInputError) as e:
    space.resolve(spec)
  assert 0 < len(str(e.value)) < 600


def test_count_reports_the_space_and_an_integer_size(named_space):
  _, space = named_space
  counts = space.count()
  assert counts["space"] == space.name
  assert isinstance(counts["architectures"], int) and counts["architectures"] > 1


def test_evolution_operators_give_valid_children():
  space = families.from_config(nasbnn_config.get_config()).space
  rng = np.random.default_rng(1)
  for _ in range(10):
    a, b = space.sample(rng), space.sample(rng)
    space.validate(space.mutate(a, rng))
    space.validate(space.mutate(a, rng, prob=1.0))
    space.validate(space.crossover(a, b, rng))
    assert space.decode(space.encode(a)) == a


def test_nasbnn_count_equals_brute_force():
  space = nasbnn.SearchSpace(
    name="tiny",
    stem_widths=(4, 8),
    stages=(
      nasbnn.StageSpec((1, 2), (8, 16), (3,), (1, 2), stride=1),
      nasbnn.StageSpec((1, 2), (16, 32), (3, 5), (1,), stride=2),
    ),
    resolution=8,
    nd_constraint=True,
  )
  # A superset: every width, kernel and group value of the space in every position.
  blocks = [nasbnn.Block(*b) for b in itertools.product((8, 16, 32), (3, 5), (1, 2))]
  stage_options = [tuple(s) for d in (1, 2) for s in itertools.product(blocks, repeat=d)]
  accepted = sum(
    _accepts(space, nasbnn.Architecture(stem, (s1, s2)))
    for stem in (4, 8, 16)
    for s1 in stage_options
    for s2 in stage_options
  )
  assert space.count()["architectures"] == accepted


def test_cell_count_equals_brute_force():
  space = darts.CellSpace(
    name="tiny", ops=(darts.ZEROISE,), learnable_ops=frozenset(), inter_cell_skip=True
  )
  fixed = space.sample(np.random.default_rng(0)).normal

  def cells():  # every pair of inputs per node, also equal ones, in ascending order
    per_node = [
      [((darts.ZEROISE, a), (darts.ZEROISE, b)) for a in range(n + 2) for b in range(a, n + 2)]
      for n in range(darts.NUM_NODES)
    ]
    for choice in itertools.product(*per_node):
      yield tuple(p for pair in choice for p in pair)

  normal = sum(_accepts(space, darts.Genotype("tiny", c, fixed)) for c in cells())
  reduce = sum(_accepts(space, darts.Genotype("tiny", fixed, c)) for c in cells())
  assert space.count()["cells"] == normal == reduce
  assert space.count()["architectures"] == normal * reduce


def test_mbconv_count_equals_brute_force():
  space = mbconv.make_space(
    4, 1, [(1, 1, (4, 8)), (2, 2, (8,))], kernel_sizes=(3,), expansions=(1, 2), groups=2
  )
  ops = ((3, 1), (3, 2), (5, 1))
  accepted = sum(
    _accepts(space, mbconv.ChoiceList((w1, w2), ((a,), (b, c))))
    for w1, w2 in itertools.product((4, 8, 12), repeat=2)
    for a, b, c in itertools.product(ops, repeat=3)
  )
  assert space.count()["architectures"] == accepted


def test_dms_count_equals_brute_force_and_samples_stay_in_bounds():
  base = (1, 2, 1, 2, 1, 2, 1, 2)
  space = dms_widths.WidthSpace("dms_vgg11", base, max_width=2)
  accepted = sum(
    _accepts(space, dms_widths.Widths(w, binary))
    for w in itertools.product(range(4), repeat=8)
    for binary in (True, False)
  )
  assert space.count()["architectures"] == accepted
  wide = dms_widths.WidthSpace("dms_vgg11", (20,) * 8, max_width=1000, mu=1.5, sigma=1.0)
  ratios = (
    np.asarray([wide.validate(wide.sample(np.random.default_rng(s))).widths for s in range(200)])
    / 20.0
  )
  # r ~ Logistic(1.5, 1) above min_ratio 0.3: its median is F^-1((1 + F(0.3)) / 2).
  cdf = lambda r: 1.0 / (1.0 + np.exp(-(r - 1.5)))
  q = (1.0 + cdf(0.3)) / 2.0
  assert ratios.min() >= 0.3 - 0.5 / 20
  assert abs(np.median(ratios) - (1.5 + np.log(q / (1.0 - q)))) < 0.1
