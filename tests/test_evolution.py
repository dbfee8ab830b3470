"""Tests of the evolutionary search and its Pareto helpers (NAS-BNN Sec. 4.1.2).

The space is the real NAS-BNN space scaled down (Table 1 structure, widths / 8);
cost and accuracy are synthetic and deterministic, so no model is involved.
"""

import dataclasses
import hashlib
import itertools
import json
import math
import os

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from bnas_jax.errors import UserInputError
from bnas_jax.search import evolution as evo
from bnas_jax.search import pareto
from bnas_jax.search_spaces import nasbnn as nb

SPACE = nb.SearchSpace.scaled(width_divisor=8)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_cost(arch):
  """A MAC-like count from the architecture alone: 1x1 plus grouped k x k convs."""
  prev, total = arch.stem_width, 0.0
  for _, _, b in arch.layers():
    total += prev * b.width + prev * prev * b.kernel**2 / b.groups
    prev = b.width
  return total / 1000.0


def synthetic_acc(arch):
  """Smooth in width, depth, kernels and groups, plus hash noise below 1e-3."""
  blocks = [b for _, _, b in arch.layers()]
  width = sum(b.width for b in blocks) / 100.0
  k5 = sum(b.kernel == 5 for b in blocks) / len(blocks)
  groups = sum(math.log2(b.groups) for b in blocks) / len(blocks)
  digest = hashlib.sha256(arch.to_string().encode()).digest()
  noise = int.from_bytes(digest[:4], "little") / 2**32 * 1e-3
  return 0.3 + 0.1 * math.log1p(width) + 0.03 * k5 - 0.01 * groups + noise


class Evaluator:
  """evaluate_fn that records its batches; optionally fails on one call."""

  def __init__(self, fail_on_call=None):
    self.batches = []
    self.fail_on_call = fail_on_call

  def __call__(self, archs):
    if self.fail_on_call is not None and len(self.batches) == self.fail_on_call:
      raise RuntimeError("simulated crash")
    self.batches.append(list(archs))
    return [synthetic_acc(a) for a in archs]


def small_cfg(**overrides):
  # The reference's initial population unless a test asks for per-bucket sampling.
  base = dict(
    population_size=16,
    generations=3,
    num_mutations=8,
    num_crossovers=8,
    mutation_prob=0.2,
    ops_min=150.0,
    ops_max=400.0,
    bucket_step=10.0,
    seed=0,
    max_tries=1000,
    init_sampling="uniform",
  )
  base.update(overrides)
  return evo.EvolutionConfig(**base)


def run(tmp_path, cfg=None, evaluator=None, name="state.json", logs=None, **kwargs):
  evaluator = evaluator or Evaluator()
  logs = [] if logs is None else logs
  result = evo.run_evolution(
    SPACE,
    cfg or small_cfg(),
    cost_fn=synthetic_cost,
    evaluate_fn=evaluator,
    state_path=str(tmp_path / name),
    log=logs.append,
    **kwargs,
  )
  return result, evaluator, logs


def as_rows(records):
  return [(r["arch"].to_string(), r["ops"], r["acc"], r["generation"]) for r in records]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
  """One uninterrupted reference search shared by the read-only tests."""
  return run(tmp_path_factory.mktemp("search"))


# --------------------------------------------------------------------------- #
# pareto.py
# --------------------------------------------------------------------------- #


def brute_force_front(points):
  """O(n^2) dominance filter; the first of identical (ops, acc) points is kept."""
  out = []
  for i, p in enumerate(points):
    dominated = any(
      q["ops"] <= p["ops"] and q["acc"] >= p["acc"] and (q["ops"] < p["ops"] or q["acc"] > p["acc"])
      for q in points
    )
    earlier_twin = any(q["ops"] == p["ops"] and q["acc"] == p["acc"] for q in points[:i])
    if not dominated and not earlier_twin:
      out.append(p)
  return sorted(out, key=lambda r: r["ops"])


# Small integer grids force many ties in ops, in acc and in both.
_points = st.lists(
  st.builds(
    lambda o, a: {"ops": float(o), "acc": a / 10.0}, st.integers(0, 12), st.integers(0, 12)
  ),
  max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_points)
def test_pareto_front_matches_brute_force(points):
  front = pareto.pareto_front(points)
  expected = brute_force_front(points)
  assert [id(p) for p in front] == [id(p) for p in expected]
  # Along the front both coordinates increase strictly.
  assert all(a["ops"] < b["ops"] and a["acc"] < b["acc"] for a, b in zip(front, front[1:]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e3), st.floats(0, 1)), max_size=60))
def test_pareto_front_matches_brute_force_on_floats(pairs):
  points = [{"ops": o, "acc": a} for o, a in pairs]
  assert [id(p) for p in pareto.pareto_front(points)] == [id(p) for p in brute_force_front(points)]


def test_pareto_front_rejects_nan():
  with pytest.raises(ValueError, match="NaN"):
    pareto.pareto_front([{"ops": 1.0, "acc": float("nan")}])


def test_bucket_keys_for_small_steps_stay_distinct():
  records = [{"ops": o, "acc": 0.5, "i": i} for i, o in enumerate([0.10, 0.15, 0.2, 0.26, 0.31])]
  table = pareto.best_per_bucket(records, 0.05)
  # The reference's int(round(ops / step) * step) maps all of these to 0.
  assert list(table) == ["0.1", "0.15", "0.2", "0.25", "0.3"]
  assert [r["i"] for r in table.values()] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
  "step, ops, key",
  [
    (2, 21.2, "22"),
    (2, 20.9, "20"),
    (2.0, 180.0, "180"),
    (0.05, 0.15, "0.15"),
    (0.1, 0.3, "0.3"),
    (2.5, 22.4, "22.5"),
    (1e-7, 3e-7, "0.0000003"),
    (10, 3.0, "0"),
  ],
)
def test_bucket_key_text_is_canonical(step, ops, key):
  assert pareto.bucket_key(ops, step) == key


@pytest.mark.parametrize(
  "lo,hi,step", [(20.0, 180.0, 2.0), (20.77, 331.81, 2.0), (0.1195, 1.72, 0.05), (3.0, 3.0, 10.0)]
)
def test_bucket_indices_are_the_keys_of_the_range(lo, hi, step):
  costs = np.concatenate([np.linspace(lo, hi, 20001), [lo, hi]])
  keys = {round(float(pareto.bucket_key(c, step)) / step) for c in costs}
  assert keys == set(pareto.bucket_indices(lo, hi, step))


def test_best_per_bucket_keeps_best_then_cheapest_then_earliest():
  records = [
    {"ops": 20.4, "acc": 0.60, "n": "a"},
    {"ops": 19.8, "acc": 0.62, "n": "b"},  # Same bucket "20", more accurate.
    {"ops": 20.2, "acc": 0.62, "n": "c"},  # Tie on acc, but more OPs.
    {"ops": 19.8, "acc": 0.62, "n": "d"},  # Exact tie with b, later.
    {"ops": 23.9, "acc": 0.55, "n": "e"},  # Bucket "24": lower acc, kept anyway.
    {"ops": 30.0, "acc": 0.99, "n": "f"},  # Outside [lo, hi].
  ]
  table = pareto.best_per_bucket(records, 2, lo=19, hi=25)
  assert {k: r["n"] for k, r in table.items()} == {"20": "b", "24": "e"}
  # The table is not a front: "e" is dominated by "b".
  assert [r["n"] for r in pareto.pareto_front(records[:5])] == ["b"]


def test_plot_search_writes_png_atomically(tmp_path):
  rng = np.random.default_rng(0)
  records = [{"ops": float(o), "acc": float(a)} for o, a in rng.random((50, 2))]
  path = tmp_path / "sub" / "plot.png"
  pareto.plot_search(records, pareto.pareto_front(records), str(path), "t")
  assert path.read_bytes()[:8] == PNG_MAGIC
  assert os.listdir(path.parent) == ["plot.png"]  # No temporary file left.


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


def test_config_defaults_are_readme_values():
  cfg = evo.EvolutionConfig()
  assert (
    cfg.population_size,
    cfg.generations,
    cfg.num_mutations,
    cfg.num_crossovers,
    cfg.mutation_prob,
    cfg.ops_min,
    cfg.ops_max,
    cfg.bucket_step,
  ) == (512, 20, 128, 128, 0.2, 20.0, 180.0, 2.0)


@pytest.mark.parametrize(
  "overrides, match",
  [
    (dict(population_size=0), "population_size"),
    (dict(population_size=2.5), "population_size"),
    (dict(generations=-1), "generations"),
    (dict(num_mutations=0, num_crossovers=0), "no children"),
    (dict(mutation_prob=1.5), "mutation_prob"),
    (dict(mutation_prob=float("nan")), "mutation_prob"),
    (dict(ops_min=400.0, ops_max=150.0), "ops_min"),
    (dict(ops_min=150.0, ops_max=150.0), "ops_min"),
    (dict(bucket_step=0.0), "bucket_step"),
    (dict(bucket_step=float("inf")), "bucket_step"),
    (dict(seed=-1), "seed"),
    (dict(max_tries=0), "max_tries"),
    (dict(seed=True), "seed"),
    (dict(init_sampling="stratified"), "init_sampling"),
  ],
)
def test_bad_config_is_refused_before_any_evaluation(tmp_path, overrides, match):
  evaluator = Evaluator()
  with pytest.raises(UserInputError, match=match):
    run(tmp_path, small_cfg(**overrides), evaluator)
  assert not evaluator.batches
  assert not (tmp_path / "state.json").exists()


def test_infeasible_range_raises_clear_error_quickly(tmp_path):
  evaluator = Evaluator()
  # Above the biggest architecture's cost (~1013): no draw can ever land here.
  with pytest.raises(nb.InfeasibleRangeError, match=r"infeasible.*biggest"):
    run(tmp_path, small_cfg(ops_min=5000.0, ops_max=6000.0, max_tries=200), evaluator)
  assert not evaluator.batches
  assert issubclass(nb.InfeasibleRangeError, UserInputError)


# --------------------------------------------------------------------------- #
# The search
# --------------------------------------------------------------------------- #


def test_every_evaluated_arch_is_valid_in_range_and_new(searched):
  result, evaluator, _ = searched
  cfg = result.config
  archs = [r["arch"] for r in result.records]
  assert len(archs) == 16 + 3 * 16
  assert len(set(archs)) == len(archs)  # Nothing evaluated twice.
  for r in result.records:
    assert nb.is_valid(SPACE, r["arch"])  # In Table 1 and ND-valid (Eq. 3).
    assert cfg.ops_min <= r["ops"] <= cfg.ops_max
    assert r["ops"] == synthetic_cost(r["arch"])
    assert r["acc"] == synthetic_acc(r["arch"])
  # The extremes cost ~60 and ~1013, outside [150, 400], so they are not seeded.
  assert nb.smallest(SPACE) not in archs and nb.biggest(SPACE) not in archs


def test_evaluate_fn_gets_whole_batches(searched):
  result, evaluator, _ = searched
  assert [len(b) for b in evaluator.batches] == [16, 16, 16, 16]
  assert [r["arch"] for r in result.records] == list(itertools.chain(*evaluator.batches))
  assert [r["generation"] for r in result.records] == [0] * 16 + [1] * 16 + [2] * 16 + [3] * 16


def test_search_improves_best_in_range_accuracy(searched):
  result, _, logs = searched
  history = result.history()
  best = [h["best_acc"] for h in history]
  assert len(best) == 4
  assert all(a <= b for a, b in zip(best, best[1:]))
  assert best[-1] > best[0]
  # Per OPs bucket too: children displace initial members from the table.
  initial = pareto.best_per_bucket(
    [r for r in result.records if r["generation"] == 0], 10.0, 150.0, 400.0
  )
  improved = [k for k, r in initial.items() if result.table[k]["acc"] > r["acc"]]
  assert len(improved) >= len(initial) // 3
  gen_lines = [l for l in logs if l.startswith("Search generation")]
  assert len(gen_lines) == 4 and "subnets evaluated" in gen_lines[-1]
  assert any("Not seeding" in l for l in logs)


def test_result_front_and_table_are_consistent(searched):
  result, _, _ = searched
  assert result.front == pareto.pareto_front(result.records)
  assert result.table == pareto.best_per_bucket(result.records, 10.0, 150.0, 400.0)
  best = max(result.records, key=lambda r: r["acc"])
  assert result.front[-1] is best
  for key, r in result.table.items():
    assert pareto.bucket_key(r["ops"], 10.0) == key


def _brute_force_bucket_count(cfg):
  """Buckets of width step between the smallest and the biggest subnet's cost, in range."""
  lo = max(cfg.ops_min, synthetic_cost(nb.smallest(SPACE)))
  hi = min(cfg.ops_max, synthetic_cost(nb.biggest(SPACE)))
  return len({round(x / cfg.bucket_step) for x in np.linspace(lo, hi, 100000)})


def test_per_bucket_initial_population_covers_every_bucket(tmp_path):
  # 40 members for 20 buckets of [0, 200]; the space's sampler rarely goes below ~150
  # here (as Table 1's never goes below ~44 M OPs), so uniform sampling leaves the
  # cheap buckets to the seeded smallest subnet.
  cfg = small_cfg(population_size=40, generations=0, ops_min=0.0, ops_max=200.0, bucket_step=10.0)
  rng = np.random.default_rng(0)
  draws = [synthetic_cost(nb.sample_uniform(SPACE, rng)) for _ in range(3000)]
  assert np.mean(np.asarray(draws) < 100) < 0.01
  expected = _brute_force_bucket_count(cfg)
  assert expected == 15  # smallest ~60 -> bucket 6 ... bucket 20
  covered, rows = {}, {}
  for mode in ("uniform", "per_bucket"):
    logs = []
    mode_cfg = dataclasses.replace(cfg, init_sampling=mode)
    result, _, _ = run(tmp_path, mode_cfg, name=f"{mode}.json", logs=logs)
    keys = {pareto.bucket_key(r["ops"], 10.0) for r in result.records}
    covered[mode], rows[mode] = keys, as_rows(result.records)
    line = next(l for l in logs if l.startswith("Initial population"))
    assert f"cover {len(keys)} of the {expected} OPs buckets" in line, line
    assert len(set(r["arch"] for r in result.records)) == 40 == len(result.records)
    assert all(0.0 <= r["ops"] <= 200.0 for r in result.records)
  assert len(covered["per_bucket"]) == expected
  assert len(covered["uniform"]) < expected - 3
  # Deterministic like the rest of the search.
  again, _, _ = run(
    tmp_path, dataclasses.replace(cfg, init_sampling="per_bucket"), name="again.json"
  )
  assert as_rows(again.records) == rows["per_bucket"]


def test_extremes_are_seeded_when_in_range(tmp_path):
  cfg = small_cfg(ops_min=50.0, ops_max=1100.0, generations=1, bucket_step=50.0)
  result, evaluator, _ = run(tmp_path, cfg)
  assert evaluator.batches[0][:2] == [nb.smallest(SPACE), nb.biggest(SPACE)]
  assert len(set(evaluator.batches[0])) == 16


def test_same_seed_same_search_other_seed_differs(tmp_path, searched):
  again, _, _ = run(tmp_path, name="a.json")
  assert as_rows(again.records) == as_rows(searched[0].records)
  other, _, _ = run(tmp_path, small_cfg(seed=1), name="b.json")
  assert as_rows(other.records) != as_rows(searched[0].records)


@pytest.mark.parametrize("fail_on_call", [0, 1, 2, 3])
def test_resume_after_crash_equals_uninterrupted(tmp_path, searched, fail_on_call):
  crashing = Evaluator(fail_on_call=fail_on_call)
  with pytest.raises(RuntimeError, match="simulated crash"):
    run(tmp_path, evaluator=crashing)
  state_file = tmp_path / "state.json"
  if fail_on_call == 0:
    assert not state_file.exists()  # Nothing was evaluated, nothing saved.
  else:
    state = json.loads(state_file.read_text())
    assert state["format"] == evo.STATE_FORMAT
    assert state["generation"] == fail_on_call - 1
    assert len(state["records"]) == 16 * fail_on_call
  resumed, evaluator, logs = run(tmp_path)
  reference = searched[0]
  assert as_rows(resumed.records) == as_rows(reference.records)
  assert as_rows(resumed.front) == as_rows(reference.front)
  assert list(resumed.table) == list(reference.table)
  assert as_rows(resumed.table.values()) == as_rows(reference.table.values())
  # Only the missing work was redone, in the same batches.
  assert len(evaluator.batches) == 4 - fail_on_call
  assert (any(l.startswith("Resuming") for l in logs)) == (fail_on_call > 0)
  assert os.listdir(tmp_path) == ["state.json"]  # No temporary files left.


def test_finished_search_reruns_without_evaluating_and_can_be_extended(tmp_path):
  first, _, _ = run(tmp_path, small_cfg(generations=2))
  again, evaluator, _ = run(tmp_path, small_cfg(generations=2))
  assert not evaluator.batches
  assert as_rows(again.records) == as_rows(first.records)
  # Extending to 3 generations equals a 3-generation run from scratch.
  extended, evaluator, _ = run(tmp_path, small_cfg(generations=3))
  assert len(evaluator.batches) == 1
  fresh, _, _ = run(tmp_path, small_cfg(generations=3), name="fresh.json")
  assert as_rows(extended.records) == as_rows(fresh.records)
  with pytest.raises(UserInputError, match="already holds 3 generations"):
    run(tmp_path, small_cfg(generations=1))


@pytest.mark.parametrize(
  "overrides",
  [
    dict(seed=1),
    dict(ops_max=390.0),
    dict(population_size=17),
    dict(num_crossovers=7),
    dict(bucket_step=5.0),
    dict(mutation_prob=0.3),
  ],
)
def test_config_mismatch_refuses_to_resume(tmp_path, overrides):
  run(tmp_path, small_cfg(generations=1))
  changed = next(iter(overrides))
  with pytest.raises(UserInputError, match=f"different search.*{changed}.*force_restart"):
    run(tmp_path, small_cfg(generations=1, **overrides))
  result, evaluator, _ = run(tmp_path, small_cfg(generations=1, **overrides), force_restart=True)
  assert len(evaluator.batches) == 2
  saved = json.loads((tmp_path / "state.json").read_text())
  assert saved["config"][changed] == overrides[changed]


def test_other_space_or_cost_refuses_to_resume(tmp_path):
  run(tmp_path, small_cfg(generations=0))
  no_nd = nb.SearchSpace.scaled(width_divisor=8, nd_constraint=False)
  assert no_nd.name == SPACE.name  # Same name, so the fingerprint must catch it.
  with pytest.raises(UserInputError, match="space_fingerprint"):
    evo.run_evolution(
      no_nd,
      small_cfg(generations=0),
      cost_fn=synthetic_cost,
      evaluate_fn=Evaluator(),
      state_path=str(tmp_path / "state.json"),
      log=lambda _: None,
    )
  with pytest.raises(UserInputError, match="cost model changed"):
    evo.run_evolution(
      SPACE,
      small_cfg(generations=0),
      cost_fn=lambda a: 2 * synthetic_cost(a),
      evaluate_fn=Evaluator(),
      state_path=str(tmp_path / "state.json"),
      log=lambda _: None,
    )


def test_save_state_false_writes_nothing(tmp_path):
  result, _, _ = run(tmp_path, small_cfg(generations=1), save_state=False)
  assert len(result.records) == 32 and not os.listdir(tmp_path)


def test_space_interface_is_checked(tmp_path):
  with pytest.raises(UserInputError, match="lacks smallest, biggest, parse, sample_in_range"):
    evo.run_evolution(
      object(),
      small_cfg(),
      cost_fn=synthetic_cost,
      evaluate_fn=Evaluator(),
      state_path=str(tmp_path / "state.json"),
      log=lambda _: None,
    )


def test_corrupt_state_is_refused(tmp_path):
  (tmp_path / "state.json").write_text("{not json")
  with pytest.raises(UserInputError, match="force_restart"):
    run(tmp_path)


def test_bad_evaluate_fn_output_is_reported(tmp_path):
  with pytest.raises(ValueError, match="one per architecture"):
    evo.run_evolution(
      SPACE,
      small_cfg(),
      cost_fn=synthetic_cost,
      evaluate_fn=lambda archs: [0.5],
      state_path=str(tmp_path / "s.json"),
      log=lambda _: None,
    )


def test_write_outputs(tmp_path, searched):
  result = searched[0]
  paths = evo.write_outputs(result, str(tmp_path / "out"))
  assert sorted(os.listdir(tmp_path / "out")) == [
    "pareto_front.json",
    "search.png",
    "search_records.json",
    "search_table.json",
  ]
  assert (tmp_path / "out" / "search.png").read_bytes()[:8] == PNG_MAGIC
  table = json.loads(open(paths["table"]).read())
  assert list(table) == list(result.table)
  for key, entry in table.items():
    assert set(entry) == {"arch", "acc", "ops"}
    assert nb.Architecture.from_string(entry["arch"], SPACE) == result.table[key]["arch"]
  front = json.loads(open(paths["front"]).read())
  assert [e["ops"] for e in front] == sorted(e["ops"] for e in front)
  assert [e["arch"] for e in front] == [r["arch"].to_string() for r in result.front]
  records = json.loads(open(paths["records"]).read())
  assert len(records) == len(result.records)
  assert records[0]["generation"] == 0


def test_stop_after_a_saved_generation_then_resume_equals_uninterrupted(tmp_path, searched):
  class Stop(Exception):
    pass

  def stop_after_first(generation):  # what the trainer does on SIGTERM
    if generation == 1:
      raise Stop()

  with pytest.raises(Stop):
    run(tmp_path, after_generation=stop_after_first)
  assert json.loads((tmp_path / "state.json").read_text())["generation"] == 1
  seen = []
  resumed, evaluator, _ = run(tmp_path, after_generation=seen.append)
  assert as_rows(resumed.records) == as_rows(searched[0].records)
  assert len(evaluator.batches) == 2 and seen == [2, 3]
