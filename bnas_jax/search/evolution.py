"""Resumable evolutionary search over a search space's interface.

NAS-BNN (Lin et al. 2024) trains one supernet, then "use[s] the evolutionary
algorithm to search the Pareto front" of accuracy against OPs (Sec. 4.1.2),
scoring subnets with inherited weights on 50 held-out training images per
class (Sec. 4.1.1) and deploying them with or without finetuning (Sec. 3.4).
This module is that search, written against a space object's methods
(`SPACE_METHODS`, e.g. `bnas_jax.search_spaces.nasbnn.SearchSpace`) and two
callables, never a model:

* `cost_fn(arch) -> float`: cheap host-side cost (e.g. M OPs from the cost
  model); results are cached per architecture and stored in the state.
* `evaluate_fn(list[arch]) -> list[float]`: accuracies. It is called once with
  the whole initial population and once per generation with all of that
  generation's new children, so the caller can run one jit-compiled sweep.

Algorithm (the public code's `EvolutionSearcher`, reference notes Sec. 7, with
the deviations marked *):

1. Initial population of `population_size` distinct architectures:
   `smallest` and `biggest` first, * but only when their cost lies in
   [ops_min, ops_max]. The reference adds both unconditionally, so its biggest
   subnet (331.8 M OPs against the README's 20-180 range) is evaluated and
   opens a bogus out-of-range bucket "332" in the table that `test.py` can then
   select. Here every evaluated subnet is in range, the table and front only
   hold searchable answers, and no evaluation is spent outside the range. The
   rest, refusing repeats, depends on `init_sampling`:
   - "uniform" (the reference): `sample_in_range`, i.e. rejection sampling of
     the space's sampler into [ops_min, ops_max]. In Table 1 the samplers put no
     subnet below ~44 M OPs (measured: the cheapest of 600 uniform draws costs
     43.9 M, 1 % cost under 53 M; the smallest subnet is 20.8 M), so the table's
     low buckets are reached only through the seeded smallest subnet and later
     mutations.
   - * "per_bucket" (default): the table's buckets (`bucket_step` wide, within
     [ops_min, ops_max] and the costs of the smallest and biggest subnets) are
     filled round-robin from the cheapest, one member per bucket per round
     (evenly spaced buckets when there are more buckets than members). A
     bucket's member is drawn by `sample_in_range` into the bucket (up to 100
     tries), else by `mutate_in_range` and then `crossover_in_range` from the
     4 members already drawn nearest in cost (each up to `max_tries`); a bucket
     that none of them reaches is given up, and members still missing are
     drawn as under "uniform". The generation-0 log line gives the buckets
     covered.
2. Each of `generations` generations: parents are the records of the current
   best-per-bucket table (`pareto.best_per_bucket`), as in the reference, which
   draws each parent uniformly from the table's entries. This keeps one elite
   per OPs bucket alive across the whole range, so the search keeps improving
   every budget at once instead of crowding around the few points of the true
   front. `num_mutations` children come from `mutate_in_range` (per-gene
   probability `mutation_prob`) and `num_crossovers` from `crossover_in_range`;
   a child must be in range and never evaluated before (nor already drawn in
   this generation). The reference likewise replaces the population with the
   children; the table remembers every evaluated subnet.
3. * Every draw is bounded by `max_tries`; the reference's `while` loops spin
   forever on an infeasible range. The space's helpers raise
   `InfeasibleRangeError` (a `UserInputError`), which propagates.
4. * The state (config, completed generation count, every record, the generator
   state) is written atomically as JSON after the initial population and after
   every generation; the reference saves only once, at the end. A run that
   finds the state file resumes and ends with exactly the records of an
   uninterrupted run with the same seed: all randomness comes from one
   `np.random.default_rng(seed)` whose `bit_generator.state` is restored, and
   parents are ordered deterministically by bucket.
5. * Results hold both the reference's table and the true, dominance-filtered
   Pareto front, which the reference's table is mislabeled as.

State file (JSON, `STATE_FORMAT`)::

    {"format": "bnas_jax.evolution_state/1",
     "config": {seed, sizes, ranges, bucket_step, mutation_prob, space,
                space_fingerprint, cost_name},
     "generation": 3,                     # completed generations (0 = initial)
     "rng_state": {...},                  # numpy bit_generator.state
     "records": [{"arch": "stem24|...", "ops": 21.3, "acc": 0.51,
                  "generation": 0}, ...]} # in evaluation order

Resuming refuses (UserInputError) when the saved config differs from the
current one, except `generations` (a finished search can be extended, since
generation g never depends on the total) and `max_tries` (it only decides when
a draw gives up, never what a successful draw returns). `force_restart=True`
discards the state instead.

Multi-host: give every process the same seed and call `run_evolution` on all of
them (so collective `evaluate_fn`s line up); pass `save_state=False` on all
but one process when `state_path` is on storage that they share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bnas_jax import atomic_files
from bnas_jax.errors import InfeasibleRangeError
from bnas_jax.errors import UserInputError
from bnas_jax.search import pareto

__all__ = [
  "EvolutionConfig",
  "INIT_SAMPLINGS",
  "STATE_FORMAT",
  "SearchResult",
  "bucket_coverage",
  "run_evolution",
  "validate_config",
  "write_outputs",
]

STATE_FORMAT = "bnas_jax.evolution_state/1"

# The space module protocol: these functions plus `Architecture.from_string`.
# Architectures must be hashable and have `to_string()`.
SPACE_METHODS = (
  "smallest",
  "biggest",
  "parse",
  "sample_in_range",
  "mutate_in_range",
  "crossover_in_range",
)

INIT_SAMPLINGS = ("per_bucket", "uniform")

# Uniform draws tried per bucket before growing a member from its neighbours.
_UNIFORM_TRIES_PER_BUCKET = 100
# Members nearest in cost that serve as parents for a bucket's member.
_BUCKET_PARENTS = 4

# Config fields that may change on resume (see the module docstring).
_RESUMABLE_CHANGES = ("generations", "max_tries")

# Costs of drawn-but-rejected architectures are cached only up to this many
# entries; evaluated architectures' costs are always kept (they are records).
_SCRATCH_CACHE_LIMIT = 1 << 16


@dataclasses.dataclass
class EvolutionConfig:
  """Evolutionary search settings; defaults are NAS-BNN's README values (Sec. 7).

  Attributes:
    population_size: initial population (reference `--population-num`).
    generations: generations after the initial population (`--max-epochs`).
    num_mutations: mutation children per generation (`--mutation-num`).
    num_crossovers: crossover children per generation (`--crossover-num`).
    mutation_prob: per-stage depth and per-layer gene mutation probability
      (`--m-prob`).
    ops_min: lower end of the cost range, in `cost_fn`'s unit (README: 20 M OPs).
    ops_max: upper end, inclusive; may be inf (README: 180 M OPs).
    bucket_step: width of the table's cost buckets (README `--step` 2).
    seed: seed of the one numpy generator behind every random choice.
    max_tries: draws per child (or initial member) before giving up with
      `InfeasibleRangeError`.
    init_sampling: "per_bucket" (an initial population spread over the cost
      buckets) or "uniform" (the reference's rejection sampling into the
      range); see the module docstring.
  """

  population_size: int = 512
  generations: int = 20
  num_mutations: int = 128
  num_crossovers: int = 128
  mutation_prob: float = 0.2
  ops_min: float = 20.0
  ops_max: float = 180.0
  bucket_step: float = 2.0
  seed: int = 0
  max_tries: int = 1000
  init_sampling: str = "per_bucket"


def _int_field(cfg: EvolutionConfig, name: str, minimum: int) -> int:
  value = getattr(cfg, name)
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise UserInputError(f"EvolutionConfig.{name} must be an integer, got {value!r}.")
  if value < minimum:
    raise UserInputError(f"EvolutionConfig.{name} must be >= {minimum}, got {value}.")
  return int(value)


def _float_field(cfg: EvolutionConfig, name: str) -> float:
  value = getattr(cfg, name)
  if isinstance(value, (bool, np.bool_)):
    raise UserInputError(f"EvolutionConfig.{name} must be a number, got {value!r}.")
  try:
    out = float(value)
  except (TypeError, ValueError):
    raise UserInputError(f"EvolutionConfig.{name} must be a number, got {value!r}.") from None
  if math.isnan(out):
    raise UserInputError(f"EvolutionConfig.{name} must be a number, got NaN.")
  return out


def validate_config(cfg: EvolutionConfig) -> EvolutionConfig:
  """Checks `cfg` and returns a copy with plain int/float fields.

  Raises:
    UserInputError: a size is not a positive integer (generations and child
      counts may be 0, but a generation needs at least one child), the
      probability is outside [0, 1], ops_min >= ops_max, ops_min is not finite,
      bucket_step is not a positive finite number, or the seed is negative.
  """
  if not isinstance(cfg, EvolutionConfig):
    raise UserInputError(f"Expected an EvolutionConfig, got {type(cfg).__name__}.")
  out = EvolutionConfig(
    population_size=_int_field(cfg, "population_size", 1),
    generations=_int_field(cfg, "generations", 0),
    num_mutations=_int_field(cfg, "num_mutations", 0),
    num_crossovers=_int_field(cfg, "num_crossovers", 0),
    mutation_prob=_float_field(cfg, "mutation_prob"),
    ops_min=_float_field(cfg, "ops_min"),
    ops_max=_float_field(cfg, "ops_max"),
    bucket_step=_float_field(cfg, "bucket_step"),
    seed=_int_field(cfg, "seed", 0),
    max_tries=_int_field(cfg, "max_tries", 1),
    init_sampling=cfg.init_sampling,
  )
  if out.init_sampling not in INIT_SAMPLINGS:
    raise UserInputError(
      f"EvolutionConfig.init_sampling={cfg.init_sampling!r} is not one of "
      f"{', '.join(map(repr, INIT_SAMPLINGS))}."
    )
  if out.generations and not out.num_mutations + out.num_crossovers:
    raise UserInputError(
      f"EvolutionConfig asks for {out.generations} generations with no children "
      f"(num_mutations = num_crossovers = 0); set at least one to >= 1 or "
      f"generations to 0."
    )
  if not 0.0 <= out.mutation_prob <= 1.0:
    raise UserInputError(
      f"EvolutionConfig.mutation_prob must be in [0, 1], got {cfg.mutation_prob!r}."
    )
  if not math.isfinite(out.ops_min) or not out.ops_min < out.ops_max:
    raise UserInputError(
      f"EvolutionConfig needs a finite ops_min below ops_max, got ops_min="
      f"{cfg.ops_min!r}, ops_max={cfg.ops_max!r} (ops_max may be inf)."
    )
  if not (math.isfinite(out.bucket_step) and out.bucket_step > 0):
    raise UserInputError(
      f"EvolutionConfig.bucket_step must be a positive finite number, got {cfg.bucket_step!r}."
    )
  return out


@dataclasses.dataclass
class SearchResult:
  """Outcome of `run_evolution`.

  Attributes:
    records: every evaluated subnet in evaluation order, as dicts with 'arch'
      (the space's Architecture), 'ops', 'acc' and 'generation' (0 = initial).
    table: the reference's best-per-bucket table, bucket key -> record, ordered
      by bucket (`pareto.best_per_bucket`).
    front: the true Pareto front, records ordered by increasing ops.
    generations_completed: generations finished after the initial population.
    config: the validated config.
    cost_name: name of the cost (e.g. "OPs"), for messages and plots.
  """

  records: list[dict[str, Any]]
  table: dict[str, dict[str, Any]]
  front: list[dict[str, Any]]
  generations_completed: int
  config: EvolutionConfig
  cost_name: str = "OPs"

  def history(self) -> list[dict[str, Any]]:
    """Per generation: best in-range accuracy so far, front size and count."""
    out, seen = [], []
    last = max((r["generation"] for r in self.records), default=-1)
    by_gen: dict[int, list[dict[str, Any]]] = {}
    for r in self.records:
      by_gen.setdefault(r["generation"], []).append(r)
    for g in range(last + 1):
      seen.extend(by_gen.get(g, []))
      out.append(_summary(seen, g, self.config))
    return out


def _summary(
  records: Sequence[dict[str, Any]], generation: int, cfg: EvolutionConfig
) -> dict[str, Any]:
  in_range = [r for r in records if cfg.ops_min <= r["ops"] <= cfg.ops_max]
  best = max(in_range, key=lambda r: r["acc"], default=None)
  return {
    "generation": generation,
    "evaluated": len(records),
    "best_acc": None if best is None else best["acc"],
    "best_ops": None if best is None else best["ops"],
    "front_size": len(pareto.pareto_front(in_range)),
    "table_size": len(pareto.best_per_bucket(in_range, cfg.bucket_step, cfg.ops_min, cfg.ops_max)),
  }


def _record_json(r: dict[str, Any]) -> dict[str, Any]:
  return {
    "arch": r["arch"].to_string(),
    "ops": r["ops"],
    "acc": r["acc"],
    "generation": r["generation"],
  }


def _space_identity(space: Any) -> tuple[str, str]:
  name = str(getattr(space, "name", type(space).__name__))
  # Names alone can collide (imagenet with and without the ND constraint share
  # one), so the full dataclass repr is hashed too.
  return name, hashlib.sha256(repr(space).encode()).hexdigest()[:16]


def _config_json(cfg: EvolutionConfig, space: Any, cost_name: str) -> dict[str, Any]:
  name, fingerprint = _space_identity(space)
  out = dataclasses.asdict(cfg)
  out.update(space=name, space_fingerprint=fingerprint, cost_name=cost_name)
  return out


def _check_space(space: Any) -> None:
  missing = [f for f in SPACE_METHODS if not callable(getattr(space, f, None))]
  if missing:
    raise UserInputError(
      f"Search space {type(space).__name__} lacks {', '.join(missing)}; like "
      f"bnas_jax.search_spaces.nasbnn.SearchSpace it must provide {', '.join(SPACE_METHODS)}."
    )


class _CostCache:
  """cost_fn memoised per architecture; evaluated ones are kept for good."""

  def __init__(self, cost_fn: Callable[[Any], float]):
    self._fn = cost_fn
    self.kept: dict[Any, float] = {}
    self._scratch: dict[Any, float] = {}

  def __call__(self, arch: Any) -> float:
    cost = self.kept.get(arch)
    if cost is None:
      cost = self._scratch.get(arch)
    if cost is None:
      cost = float(self._fn(arch))
      if len(self._scratch) >= _SCRATCH_CACHE_LIMIT:
        self._scratch.clear()  # Rejected draws rarely recur; bound the memory.
      self._scratch[arch] = cost
    return cost

  def keep(self, arch: Any) -> float:
    cost = self(arch)
    self.kept[arch] = cost
    return cost


def _read_state(path: str) -> dict[str, Any]:
  try:
    with open(path, "rb") as f:
      state = json.loads(f.read())
  except (OSError, ValueError) as e:
    raise UserInputError(
      f"Cannot read the search state {path!r} ({e}); delete it or pass "
      f"force_restart=True to start the search over."
    ) from None
  if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
    raise UserInputError(
      f"{path!r} is not a search state of format {STATE_FORMAT!r}; point "
      f"state_path elsewhere or pass force_restart=True to overwrite it."
    )
  return state


def _check_resume(state: dict[str, Any], current: dict[str, Any], path: str) -> None:
  saved = state.get("config", {})
  diffs = [
    f"{k}: saved {saved.get(k)!r}, now {current[k]!r}"
    for k in current
    if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k]
  ]
  if diffs:
    raise UserInputError(
      f"The search state {path!r} was written by a different search ("
      + "; ".join(diffs)
      + "). Resuming would mix two searches; restore those "
      "settings, use another state_path, or pass force_restart=True to discard "
      "the saved state."
    )
  done = state.get("generation")
  if isinstance(done, int) and done > current["generations"]:
    raise UserInputError(
      f"The search state {path!r} already holds {done} generations, more than "
      f"the {current['generations']} requested; ask for generations >= {done}, "
      f"or pass force_restart=True to start over."
    )


def _save_state(
  path: str,
  config: dict[str, Any],
  generation: int,
  rng: np.random.Generator,
  records: list[dict[str, Any]],
) -> None:
  state = {
    "format": STATE_FORMAT,
    "config": config,
    "generation": generation,
    "rng_state": rng.bit_generator.state,
    "records": [_record_json(r) for r in records],
  }
  # repr-exact floats (json's default) make a resumed run bit-identical.
  atomic_files.write_json(path, state)


def _evaluate(
  evaluate_fn: Callable[[list[Any]], Sequence[float]], archs: list[Any], what: str
) -> list[float]:
  accs = list(evaluate_fn(list(archs)))
  if len(accs) != len(archs):
    raise ValueError(
      f"evaluate_fn returned {len(accs)} accuracies for the {len(archs)} "
      f"architectures of {what}; it must return one per architecture."
    )
  out = [float(a) for a in accs]
  bad = [a for a in out if not math.isfinite(a)]
  if bad:
    raise ValueError(f"evaluate_fn returned non-finite accuracies {bad[:3]} for {what}.")
  return out


def run_evolution(
  space: Any,
  cfg: EvolutionConfig,
  *,
  cost_fn: Callable[[Any], float],
  evaluate_fn: Callable[[list[Any]], Sequence[float]],
  state_path: str,
  ops_fn_name: str = "OPs",
  log: Callable[[str], Any] = print,
  force_restart: bool = False,
  save_state: bool = True,
  after_generation: Optional[Callable[[int], Any]] = None,
) -> SearchResult:
  """Runs (or resumes) NAS-BNN's evolutionary search; see the module docstring.

  Args:
    space: the search space (e.g. `nasbnn.SearchSpace.imagenet()`).
    cfg: search settings; validated before anything is evaluated.
    cost_fn: architecture -> cost in the unit of cfg.ops_min/ops_max (cheap,
      host-side, deterministic); cached per architecture.
    evaluate_fn: list of architectures -> list of accuracies, same order.
      Called with the whole initial population, then with each generation's
      new children; never with an architecture it has already scored.
    state_path: JSON search state; resumed from if it exists (see module
      docstring), rewritten atomically after the population and each generation.
    ops_fn_name: the cost's name in messages, logs and the state (e.g. "OPs").
    log: called with one line per generation.
    force_restart: ignore (and overwrite) an existing state instead of resuming.
    save_state: write the state file (False on all but one host when they
      share `state_path`).
    after_generation: called with the generation number once its state is
      saved (e.g. to stop cleanly on SIGTERM by raising).

  Returns:
    A `SearchResult` with every record, the bucket table and the Pareto front.

  Raises:
    UserInputError: bad config; a state of another search (different seed,
      sizes, ranges, space or cost name) without force_restart; an unreadable
      state. `InfeasibleRangeError` (a UserInputError) when no in-range, unseen
      architecture is found within `max_tries` draws.
    ValueError: evaluate_fn returned the wrong number of, or non-finite, values.
  """
  cfg = validate_config(cfg)
  _check_space(space)
  state_path = os.fspath(state_path)
  config = _config_json(cfg, space, ops_fn_name)
  lo, hi = cfg.ops_min, cfg.ops_max
  cost = _CostCache(cost_fn)
  rng = np.random.default_rng(cfg.seed)
  records: list[dict[str, Any]] = []
  evaluated: set[Any] = set()
  done = -1  # Completed generations; -1 = not even the initial population.

  if os.path.exists(state_path) and not force_restart:
    state = _read_state(state_path)
    _check_resume(state, config, state_path)
    try:
      for r in state["records"]:
        arch = space.parse(r["arch"])
        records.append(
          {
            "arch": arch,
            "ops": float(r["ops"]),
            "acc": float(r["acc"]),
            "generation": int(r["generation"]),
          }
        )
        cost.kept[arch] = float(r["ops"])
        evaluated.add(arch)
      rng.bit_generator.state = state["rng_state"]
      done = int(state["generation"])
    except (KeyError, TypeError, ValueError) as e:
      raise UserInputError(
        f"The search state {state_path!r} is corrupt ({type(e).__name__}: {e}); "
        f"delete it or pass force_restart=True."
      ) from None
    _check_cached_costs(records, cost_fn, state_path, ops_fn_name)
    log(
      f"Resuming the search from {state_path}: {done} of {cfg.generations} "
      f"generations done, {len(records)} subnets evaluated."
    )

  def persist(generation: int) -> None:
    if save_state:
      _save_state(state_path, config, generation, rng, records)

  def add(archs: list[Any], accs: list[float], generation: int) -> None:
    for arch, acc in zip(archs, accs):
      records.append({"arch": arch, "ops": cost.keep(arch), "acc": acc, "generation": generation})
      evaluated.add(arch)

  def report(generation: int) -> None:
    s = _summary(records, generation, cfg)
    best = (
      "none" if s["best_acc"] is None else f"{s['best_acc']:.4f} at {s['best_ops']:g} {ops_fn_name}"
    )
    log(
      f"Search generation {generation}/{cfg.generations}: best accuracy in "
      f"[{lo:g}, {hi:g}] {ops_fn_name} {best}; Pareto front {s['front_size']}, "
      f"table {s['table_size']} buckets; {s['evaluated']} subnets evaluated."
    )

  if done < 0:
    population: list[Any] = []
    pending: set[Any] = set()
    for extreme in (space.smallest(), space.biggest()):
      c = cost(extreme)
      if not lo <= c <= hi:
        log(
          f"Not seeding the population with {extreme.to_string()} ({c:g} "
          f"{ops_fn_name}): outside [{lo:g}, {hi:g}] (the reference adds it anyway)."
        )
      elif extreme not in pending and len(population) < cfg.population_size:
        population.append(extreme)
        pending.add(extreme)
    if cfg.init_sampling == "per_bucket":
      _fill_per_bucket(space, cfg, rng, cost, population, pending, ops_fn_name)
    while len(population) < cfg.population_size:
      arch = space.sample_in_range(
        rng,
        cost,
        lo,
        hi,
        accept=lambda a: a not in pending,
        max_tries=cfg.max_tries,
        cost_name=ops_fn_name,
      )
      population.append(arch)
      pending.add(arch)
    add(population, _evaluate(evaluate_fn, population, "the initial population"), 0)
    covered, feasible = bucket_coverage(
      [cost(a) for a in population], cfg, cost(space.smallest()), cost(space.biggest())
    )
    log(
      f"Initial population ({cfg.init_sampling} sampling): {len(population)} subnets cover "
      f"{len(covered)} of the {feasible} {ops_fn_name} buckets of width {cfg.bucket_step:g} "
      f"between the smallest and biggest subnets in [{lo:g}, {hi:g}]; cheapest "
      f"{min(cost(a) for a in population):g}, dearest {max(cost(a) for a in population):g}."
    )
    done = 0
    persist(done)
    report(done)
    if after_generation is not None:
      after_generation(done)

  for generation in range(done + 1, cfg.generations + 1):
    table = pareto.best_per_bucket(records, cfg.bucket_step, lo, hi)
    # Bucket order (not dict insertion history) fixes which index the generator
    # picks, so a resumed run draws the same parents.
    parents = [r["arch"] for r in table.values()]
    children: list[Any] = []
    drawn: set[Any] = set()

    def unseen(arch: Any) -> bool:
      return arch not in evaluated and arch not in drawn

    for _ in range(cfg.num_mutations):
      child = space.mutate_in_range(
        parents,
        rng,
        cost,
        lo,
        hi,
        prob=cfg.mutation_prob,
        accept=unseen,
        max_tries=cfg.max_tries,
        cost_name=ops_fn_name,
      )
      children.append(child)
      drawn.add(child)
    for _ in range(cfg.num_crossovers):
      child = space.crossover_in_range(
        parents, rng, cost, lo, hi, accept=unseen, max_tries=cfg.max_tries, cost_name=ops_fn_name
      )
      children.append(child)
      drawn.add(child)
    add(children, _evaluate(evaluate_fn, children, f"generation {generation}"), generation)
    done = generation
    persist(done)
    report(done)
    if after_generation is not None:
      after_generation(done)

  return SearchResult(
    records=records,
    table=pareto.best_per_bucket(records, cfg.bucket_step, lo, hi),
    front=pareto.pareto_front([r for r in records if lo <= r["ops"] <= hi]),
    generations_completed=done,
    config=cfg,
    cost_name=ops_fn_name,
  )


def bucket_coverage(
  costs: Sequence[float], cfg: EvolutionConfig, smallest_cost: float, biggest_cost: float
) -> tuple[set[str], int]:
  """(bucket keys holding one of `costs` in range, number of buckets a subnet can be in).

  Buckets are `pareto.bucket_key`'s, in [ops_min, ops_max] clipped to the costs
  of the space's smallest and biggest subnets.
  """
  lo, hi = max(cfg.ops_min, smallest_cost), min(cfg.ops_max, biggest_cost)
  keys = {pareto.bucket_key(c, cfg.bucket_step) for c in costs if cfg.ops_min <= c <= cfg.ops_max}
  return keys, len(pareto.bucket_indices(lo, hi, cfg.bucket_step)) if lo <= hi else 0


def _fill_per_bucket(
  space: Any,
  cfg: EvolutionConfig,
  rng: np.random.Generator,
  cost: Callable[[Any], float],
  population: list[Any],
  pending: set[Any],
  cost_name: str,
) -> None:
  """Adds members to `population` round-robin over the cost buckets (module docstring)."""
  lo = max(cfg.ops_min, cost(space.smallest()))
  hi = min(cfg.ops_max, cost(space.biggest()))
  if lo > hi:
    return
  step = cfg.bucket_step
  indices = list(pareto.bucket_indices(lo, hi, step))
  room = cfg.population_size - len(population)
  if len(indices) > room:  # fewer members than buckets: evenly spaced buckets
    picks = np.unique(np.round(np.linspace(0, len(indices) - 1, room)).astype(int))
    indices = [indices[i] for i in picks]
  ranges = [(max(lo, (k - 0.5) * step), min(hi, (k + 0.5) * step)) for k in indices]
  seeds = [space.smallest(), space.biggest()]
  given_up: set[int] = set()
  fresh = lambda a: a not in pending
  while len(population) < cfg.population_size and len(given_up) < len(ranges):
    for b, (b_lo, b_hi) in enumerate(ranges):
      if len(population) >= cfg.population_size:
        return
      if b in given_up:
        continue
      centre = (b_lo + b_hi) / 2
      near = sorted(population or seeds, key=lambda a: abs(cost(a) - centre))
      parents = near[:_BUCKET_PARENTS]
      draws = (
        lambda: space.sample_in_range(
          rng,
          cost,
          b_lo,
          b_hi,
          accept=fresh,
          max_tries=min(cfg.max_tries, _UNIFORM_TRIES_PER_BUCKET),
          cost_name=cost_name,
        ),
        lambda: space.mutate_in_range(
          parents,
          rng,
          cost,
          b_lo,
          b_hi,
          prob=cfg.mutation_prob,
          accept=fresh,
          max_tries=cfg.max_tries,
          cost_name=cost_name,
        ),
        lambda: space.crossover_in_range(
          parents + seeds[:1],
          rng,
          cost,
          b_lo,
          b_hi,
          accept=fresh,
          max_tries=cfg.max_tries,
          cost_name=cost_name,
        ),
      )
      for draw in draws:
        try:
          arch = draw()
        except InfeasibleRangeError:
          continue
        population.append(arch)
        pending.add(arch)
        break
      else:
        given_up.add(b)


def _check_cached_costs(
  records: list[dict[str, Any]],
  cost_fn: Callable[[Any], float],
  path: str,
  cost_name: str,
  samples: int = 8,
) -> None:
  """Refuses a state whose stored costs disagree with the current cost_fn.

  The state caches costs, so a changed cost model (another resolution, another
  OPs convention) would otherwise mix two cost scales silently. A few records
  suffice: a different cost model disagrees almost everywhere.
  """
  for r in records[:samples]:
    now = float(cost_fn(r["arch"]))
    if not math.isclose(now, r["ops"], rel_tol=1e-9, abs_tol=1e-12):
      raise UserInputError(
        f"The search state {path!r} records {r['ops']!r} {cost_name} for "
        f"{r['arch'].to_string()}, but cost_fn now gives {now!r}: the cost model "
        f"changed since the state was written. Use another state_path or pass "
        f"force_restart=True."
      )


def write_outputs(
  result: SearchResult, workdir: str, *, xlabel: Optional[str] = None
) -> dict[str, str]:
  """Writes the search's results to `workdir`, each file atomically.

  Files:
    search_table.json: bucket key -> {"arch", "acc", "ops"}, the reference's
      best-per-bucket table (what its `test.py --ops` selects from).
    pareto_front.json: the true Pareto front, a list sorted by ops.
    search_records.json: every evaluated subnet with its generation.
    search.png: `pareto.plot_search` of all records, front and table.

  Args:
    result: from `run_evolution`.
    workdir: output directory (created if missing).
    xlabel: plot x label; default "OPs (M)" for cost "OPs", else the cost name.

  Returns:
    File kind ("table", "front", "records", "plot") -> path written.
  """
  os.makedirs(workdir, exist_ok=True)
  paths = {
    k: os.path.join(workdir, f)
    for k, f in (
      ("table", "search_table.json"),
      ("front", "pareto_front.json"),
      ("records", "search_records.json"),
      ("plot", "search.png"),
    )
  }

  def dump(path: str, obj: Any) -> None:
    atomic_files.write_json(path, obj)

  brief = lambda r: {"arch": r["arch"].to_string(), "acc": r["acc"], "ops": r["ops"]}
  dump(paths["table"], {k: brief(r) for k, r in result.table.items()})
  dump(paths["front"], [brief(r) for r in result.front])
  dump(paths["records"], [_record_json(r) for r in result.records])
  cfg = result.config
  if xlabel is None:
    xlabel = "OPs (M)" if result.cost_name == "OPs" else result.cost_name
  pareto.plot_search(
    result.records,
    result.front,
    paths["plot"],
    title=(
      f"Evolutionary search: {len(result.records)} subnets, "
      f"{result.generations_completed} generations, "
      f"range [{cfg.ops_min:g}, {cfg.ops_max:g}]"
    ),
    xlabel=xlabel,
    table=list(result.table.values()),
  )
  return paths
