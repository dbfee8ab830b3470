r"""Can grain's DataLoader replace `bnas_jax.data`'s train iterator? (issue 16 §4)

COMMAND (from the repository root; needs `pip install grain==0.2.18`, which is
deliberately not a dependency of the package):
  python benchmarks/studies/grain_loader.py            # table
  python benchmarks/studies/grain_loader.py --json     # last line: one JSON object

On the embedded digits data with the data settings of `configs/reactnet.py`
(image_size 32, batch 64, seed 0) it compares our `TrainIterator` with three
grain pipelines:

  grain-index    the stock recipe: `IndexSampler(shuffle=True, seed)` with
                 `ShardOptions(process_index, process_count)`, our pad+crop
                 (`Preprocessor`) as a `RandomMapTransform` fed the sampler's
                 per-record rng, then `Batch(local batch)`.
  grain-rows     a custom grain `Sampler` that reproduces our contract row by
                 row: epoch permutation from (seed, split, epoch), remainder
                 dropped per epoch, process p reads rows [p*local, (p+1)*local)
                 of every global batch, per-example rng from (seed, split,
                 epoch, position).  Elements are rows, grain batches them.
  grain-batches  the same contract with one grain record per *local batch*:
                 the sampler hands out batch numbers, a data source loads and
                 augments the rows of that batch.

and reports (1) whether the first batches equal ours bit for bit, (2) whether
a restore from `get_state()` continues bit-exactly, also into a fresh
iterator with another worker count or process count, (3) whether the rows of
process_count=2 concatenate to the process_count=1 batch, and (4) batches/s,
measured in interleaved rounds in this one run with the `uptime` load shown,
and the CPU time per batch (this process and grain's workers). The machine
this was written on is shared: wall-clock ratios swing between runs, the CPU
time per batch much less. Findings: benchmarks/studies/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from absl import flags

try:
  import grain.python as grain
except ImportError as e:
  raise SystemExit('This study needs grain: pip install grain==0.2.18') from e

from bnas_jax import input_pipeline
from bnas_jax.data.preprocessing import Preprocessor
from bnas_jax.data.settings import AUGMENT_TAG, PERMUTATION_TAG, SPLIT_IDS, resolve
from bnas_jax.data.splits import class_label_map, split_source

SPLIT = 'train'
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def reactnet_data_config():
  """`config.data` of configs/reactnet.py (loaded by path: configs/ is not a package)."""
  path = os.path.join(REPO_ROOT, 'configs', 'reactnet.py')
  spec = importlib.util.spec_from_file_location('reactnet_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().data


class SplitSource:
  """A split of one of our sources as a grain RandomAccessDataSource: (uint8 image, label)."""

  def __init__(self, data_config):
    settings = resolve(data_config)
    self._source, self._indices = split_source(settings, SPLIT, 1)
    self._label_map = class_label_map(settings)
    self._name = f'{settings.name}/{SPLIT}'

  def __len__(self) -> int:
    return int(self._indices.size)

  def __getitem__(self, index: int):
    image, label = self._source.load(self._indices[index])
    return image, label if self._label_map is None else int(self._label_map[label])

  def __repr__(self) -> str:
    # grain compares repr(source) when a state is restored; keep it data-free.
    return f'SplitSource({self._name}, {len(self)} examples)'


class Augment(grain.RandomMapTransform):
  """Our training preprocessing (pad + random crop) with the rng grain hands each record."""

  def __init__(self, data_config):
    self._preprocess = Preprocessor(resolve(data_config), augment=True)

  def random_map(self, element, rng: np.random.Generator):
    image, label = element
    return {'image': self._preprocess(image, rng), 'label': np.int32(label)}


class GlobalRowSampler:
  """grain Sampler giving this process's rows of our global batches (see module docstring).

  Local element j is row j % local of global batch j // local (counted over
  epochs); its record key and rng are exactly those `TrainIterator` uses.
  """

  def __init__(self, num_examples: int, global_batch_size: int, seed: int,
               process_index: int, process_count: int):
    self._n = num_examples
    self._global = global_batch_size
    self._local = global_batch_size // process_count
    self._offset = process_index * self._local
    self._num_batches = num_examples // global_batch_size
    self._seed = seed
    self._split_id = SPLIT_IDS[SPLIT]
    self._perms = {}

  def __len__(self) -> int:
    return sys.maxsize

  def __repr__(self) -> str:
    # The process is left out on purpose: our state is process-count free.
    return f'GlobalRowSampler(n={self._n}, batch={self._global}, seed={self._seed})'

  def permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      self._perms = {epoch: np.random.default_rng(
          [PERMUTATION_TAG, self._seed, self._split_id, epoch]).permutation(self._n)}
    return self._perms[epoch]

  def position(self, local_index: int) -> tuple[int, int]:
    """(epoch, position in the epoch's permutation) of a local element."""
    batch, row = divmod(local_index, self._local)
    epoch, batch_in_epoch = divmod(batch, self._num_batches)
    return epoch, batch_in_epoch * self._global + self._offset + row

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    epoch, position = self.position(index)
    rng = np.random.default_rng([AUGMENT_TAG, self._seed, self._split_id, epoch, position])
    return grain.RecordMetadata(index=index, record_key=int(self.permutation(epoch)[position]),
                                rng=rng)


class BatchNumberSampler:
  """grain Sampler whose record j is local batch j of a `LocalBatchSource`."""

  def __init__(self, seed: int):
    self._seed = seed

  def __len__(self) -> int:
    return sys.maxsize

  def __repr__(self) -> str:
    return f'BatchNumberSampler(seed={self._seed})'

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    return grain.RecordMetadata(index=index, record_key=index)


class LocalBatchSource:
  """grain data source whose record j is this process's local batch j of our contract.

  DataLoader applies Map/RandomMap/Batch transforms to records but has no
  transform that sees the record index, so the rows are assembled here.
  """

  def __init__(self, data_config, source: SplitSource, rows: GlobalRowSampler, local: int):
    self._augment = Augment(data_config)
    self._source = source
    self._rows = rows
    self._local = local

  def __len__(self) -> int:
    return sys.maxsize

  def __repr__(self) -> str:
    return f'LocalBatchSource({self._source!r}, {self._rows!r})'

  def __getitem__(self, index: int):
    metas = [self._rows[index * self._local + r] for r in range(self._local)]
    out = [self._augment.random_map(self._source[m.record_key], m.rng) for m in metas]
    return {'image': np.stack([o['image'] for o in out]),
            'label': np.stack([o['label'] for o in out])}


def ours(data_config, batch, seed, p=0, count=1, workers=None):
  return input_pipeline.make_train_iterator(
      data_config, SPLIT, batch, seed, process_index=p, process_count=count, num_threads=workers)


# grain's default ReadOptions read ahead 500 records with 16 threads per process; on
# 2 cores that is 5x slower than reading in the consuming thread (see the README).
INLINE_READ = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def grain_loader(kind, data_config, batch, seed, p=0, count=1, workers=0, read=INLINE_READ):
  source = SplitSource(data_config)
  local = batch // count
  if kind == 'grain-index':
    shard = grain.ShardOptions(p, count, drop_remainder=True)
    sampler = grain.IndexSampler(len(source), shard_options=shard, shuffle=True, seed=seed)
    ops = [Augment(data_config), grain.Batch(local, drop_remainder=True)]
  elif kind == 'grain-rows':
    shard = grain.NoSharding()  # the sampler already picks this process's rows
    sampler = GlobalRowSampler(len(source), batch, seed, p, count)
    ops = [Augment(data_config), grain.Batch(local, drop_remainder=True)]
  elif kind == 'grain-batches':
    shard = grain.NoSharding()
    sampler = BatchNumberSampler(seed)
    source = LocalBatchSource(data_config, source,
                              GlobalRowSampler(len(source), batch, seed, p, count), local)
    ops = []
  else:
    raise ValueError(kind)
  return iter(grain.DataLoader(data_source=source, sampler=sampler, operations=ops,
                               worker_count=workers, shard_options=shard, read_options=read))


def close(iterator):
  if hasattr(iterator, 'close'):
    iterator.close()
  else:  # grain's DataLoaderIterator: stop its worker processes now, not at gc.
    iterator._iterator.close()  # pylint: disable=protected-access


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def same(a, b) -> bool:
  return len(a) == len(b) and all(
      x['image'].shape == y['image'].shape and np.array_equal(x['image'], y['image'])
      and np.array_equal(x['label'], y['label']) for x, y in zip(a, b))


def make(kind, cfg, batch, seed, **kw):
  if kind == 'ours':
    kw.pop('workers', None)
    kw.pop('read', None)
    return ours(cfg, batch, seed, **kw)
  return grain_loader(kind, cfg, batch, seed, **kw)


def run_or_error(fn):
  """fn() or the first line of the exception it raised."""
  try:
    return fn()
  except Exception as e:  # noqa: BLE001 -- reported, not hidden
    return f'{type(e).__name__}: {str(e).splitlines()[0][:90]}'


def concat_rows(parts):
  """Joins per-process batch lists into global batches."""
  return [{key: np.concatenate([x[key] for x in xs]) for key in ('image', 'label')}
          for xs in zip(*parts)]


def correctness(cfg, batch, seed, k, n):
  """Checks 1-3 of the module docstring for every pipeline.

  One iterator gives k + n batches (compared with ours) and its state after
  k; fresh iterators restored from that state must give the last n. grain
  worker processes take ~10 s each to start on a loaded 2-core machine, so
  the w=2 rows run checks 2-3 only where the answer is not implied by w=0.
  """
  it = ours(cfg, batch, seed)
  reference = take(it, k + n)
  close(it)
  rows, streams = {}, {}
  plan = (('ours', None, True), ('grain-index', 0, True), ('grain-index', 2, False),
          ('grain-rows', 0, True), ('grain-rows', 2, False), ('grain-batches', 0, True),
          ('grain-batches', 2, True))
  for kind, workers, full in plan:
    row = {}
    it = make(kind, cfg, batch, seed, workers=workers)
    first = take(it, k)
    state = it.get_state()
    batches = first + take(it, n)
    close(it)
    row['same_as_ours'] = same(batches, reference)
    if workers == 0:
      streams[kind] = batches
    elif workers == 2 and kind in streams:
      # grain gives worker i the records i, i + 2, ...; each worker batches its own.
      flat = {key: np.concatenate([x[key] for x in streams[kind][:2]])
              for key in ('image', 'label')}
      row['w2_batches_0_1_are_even_odd_records_of_w0'] = same(
          batches[:2], [{key: flat[key][i::2] for key in flat} for i in (0, 1)])
    fresh = make(kind, cfg, batch, seed, workers=workers)
    fresh.set_state(state)
    row['resume_exact'] = same(take(fresh, n), batches[k:])
    close(fresh)
    row['p2_concat_eq_p1'] = row['resume_other_workers'] = row['resume_on_p2'] = None
    if full:
      # (3) rows of process_count=2 concatenate to the process_count=1 global batch.
      halves = [make(kind, cfg, batch, seed, p=p, count=2, workers=workers) for p in (0, 1)]
      row['p2_concat_eq_p1'] = same(concat_rows([take(h, k + n) for h in halves]), batches)
      for h in halves:
        close(h)
    if full and workers is not None:
      # The state into an iterator with another worker count (grain refuses before
      # starting workers, so this is cheap).
      other = make(kind, cfg, batch, seed, workers=2 - workers)
      row['resume_other_workers'] = run_or_error(
          lambda: (other.set_state(state), same(take(other, n), batches[k:]))[1])
      close(other)
    if full and workers in (None, 0):
      # A process_count=1 state restored on two processes continues the same global batches.
      halves = [make(kind, cfg, batch, seed, p=p, count=2, workers=workers) for p in (0, 1)]

      def restored_on_two(halves=halves):
        for h in halves:
          h.set_state(state)
        return same(concat_rows([take(h, n) for h in halves]), batches[k:])
      row['resume_on_p2'] = run_or_error(restored_on_two)
      for h in halves:
        close(h)
    rows[kind if workers is None else f'{kind} w={workers}'] = row
  return rows


def seed_overlap(num_examples, seed):
  """grain's IndexSampler: does seed s+1 replay seed s shifted by one epoch / one record?"""
  a = grain.IndexSampler(num_examples, shuffle=True, seed=seed)
  b = grain.IndexSampler(num_examples, shuffle=True, seed=seed + 1)
  order = all(a[num_examples + i].record_key == b[i].record_key for i in range(num_examples))
  rng = all(a[i + 1].rng.integers(2**62) == b[i].rng.integers(2**62) for i in range(50))
  return {'epoch1_order_of_seed_eq_epoch0_of_seed_plus_1': order,
          'record_rng_of_seed_index_i_plus_1_eq_seed_plus_1_index_i': rng}


def epoch_structure(cfg, batch, seed):
  """Which examples the first epoch's batches hold: ours vs grain-index."""
  n = len(SplitSource(cfg))
  per_epoch = n // batch
  rows = GlobalRowSampler(n, batch, seed, 0, 1)
  ours_keys = [rows[i].record_key for i in range(per_epoch * batch)]
  index = grain.IndexSampler(n, shuffle=True, seed=seed)
  grain_keys = [index[i].record_key for i in range((per_epoch + 1) * batch)]
  return {'examples': n, 'full_batches_per_epoch': per_epoch,
          'ours_epoch0_distinct': len(set(ours_keys)) == len(ours_keys),
          'ours_dropped_per_epoch': n - len(ours_keys),
          f'grain_batch_{per_epoch}_examples_from_epochs_0_1': [
              n - per_epoch * batch, (per_epoch + 1) * batch - n],
          'grain_first_epoch_is_permutation': sorted(grain_keys[:n]) == list(range(n))}


def throughput(cfg, batch, seed, rounds, batches):
  """Batches/s per pipeline: one iterator each, timed segments interleaved over rounds.

  Each segment first takes 3 untimed batches, which empties whatever the
  iterator (or its idle workers, one batch each) buffered while another one
  was timed.
  """
  variants = {'ours': dict(kind='ours'),
              'grain-index w=0': dict(kind='grain-index', workers=0),
              'grain-index w=0 default read': dict(kind='grain-index', workers=0,
                                                   read=grain.ReadOptions()),
              'grain-index w=2': dict(kind='grain-index', workers=2),
              'grain-batches w=2': dict(kind='grain-batches', workers=2)}
  iterators = {name: make(cfg=cfg, batch=batch, seed=seed, **kw) for name, kw in variants.items()}
  names = list(variants)
  times = {name: [] for name in names}
  cpu = {name: [] for name in names}
  try:
    for r in range(rounds):
      for name in names[r % len(names):] + names[:r % len(names)]:
        take(iterators[name], 3)
        start, start_cpu = time.perf_counter(), cpu_seconds()
        take(iterators[name], batches)
        times[name].append(batches / (time.perf_counter() - start))
        cpu[name].append(1e3 * (cpu_seconds() - start_cpu) / batches)
  finally:
    for it in iterators.values():
      close(it)
  # Median: the typical share of a loaded machine; best: the closest to an idle one.
  rates = {name: statistics.median(v) for name, v in times.items()}
  best = {name: max(v) for name, v in times.items()}
  return {name: {'batches_per_s': round(rate, 1), 'ratio_to_ours': round(rate / rates['ours'], 2),
                 'best': round(best[name], 1), 'best_ratio': round(best[name] / best['ours'], 2),
                 'cpu_ms_per_batch': round(statistics.median(cpu[name]), 1),
                 'rounds': [round(x, 1) for x in times[name]]} for name, rate in rates.items()}


def cpu_seconds() -> float:
  """CPU time of this process and its live children (grain's workers).

  Less sensitive to other users of a shared machine than wall time: it is
  the work a batch costs, not the share of the cores this run was given.
  """
  try:
    import psutil
  except ImportError:  # Without psutil the grain workers' CPU is not counted.
    return time.process_time()
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.Error:
      pass
  return total


def uptime() -> str:
  try:
    return subprocess.run(['uptime'], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'load: ' + ' '.join(f'{x:.2f}' for x in os.getloadavg())


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--resume_after', type=int, default=5,
                      help='k: batches before the state is taken')
  parser.add_argument('--resume_batches', type=int, default=20,
                      help='n: batches compared after it (k + n = 25 crosses an epoch of 22)')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--timed_batches', type=int, default=30)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  # grain reads its own absl flags (worker profiling, traceback filtering): use their defaults.
  flags.FLAGS(sys.argv[:1])

  cfg = reactnet_data_config()
  assert cfg.name == 'digits' and cfg.image_size == 32, cfg
  load_before = uptime()
  result = {
      'date_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime()), 'grain': grain_version(),
      'cpus': os.cpu_count(), 'batch': args.batch, 'seed': args.seed,
      'uptime_before': load_before,
      'epoch_structure': epoch_structure(cfg, args.batch, args.seed),
      'grain_seed_overlap': seed_overlap(len(SplitSource(cfg)), args.seed),
      'checks': correctness(cfg, args.batch, args.seed, args.resume_after,
                            args.resume_batches),
      'throughput': throughput(cfg, args.batch, args.seed, args.rounds, args.timed_batches),
      'uptime_after': uptime()}
  print(f"grain {result['grain']}, digits 32x32, batch {args.batch}, seed {args.seed}, "
        f"{result['cpus']} CPUs, {result['date_utc']} UTC")
  print(f'uptime before: {load_before}')
  notes = []

  def cell(value):
    if value is None:
      return '-'
    if isinstance(value, bool):
      return 'yes' if value else 'NO'
    if value not in notes:
      notes.append(value)
    return f'refused[{notes.index(value) + 1}]'

  print(f"\n{'pipeline':<18}{'same as ours':>13}{'resume':>8}{'P=2 rows':>10}"
        f"{'resume, other workers':>23}{'resume P=1 state on P=2':>25}")
  for name, row in result['checks'].items():
    print(f"{name:<18}{cell(row['same_as_ours']):>13}{cell(row['resume_exact']):>8}"
          f"{cell(row['p2_concat_eq_p1']):>10}{cell(row['resume_other_workers']):>23}"
          f"{cell(row['resume_on_p2']):>25}")
  for i, note in enumerate(notes):
    print(f'  [{i + 1}] {note}')
  print("  ('-' = not run: implied by the w=0 row or too slow to start workers for)")
  for name, row in result['checks'].items():
    if 'w2_batches_0_1_are_even_odd_records_of_w0' in row:
      print(f'  {name}: batches 0, 1 = even, odd records of its w=0 batches 0-1 '
            '(workers split records): '
            f"{cell(row['w2_batches_0_1_are_even_odd_records_of_w0'])}")
  print('\nepoch structure:', result['epoch_structure'])
  print('grain seed overlap:', result['grain_seed_overlap'])
  print(f"\n{'pipeline':<30}{'median b/s':>11}{'vs ours':>9}{'best b/s':>10}{'vs ours':>9}"
        f"{'CPU ms/batch':>14}  rounds (b/s)")
  for name, row in result['throughput'].items():
    print(f"{name:<30}{row['batches_per_s']:>11}{row['ratio_to_ours']:>9}{row['best']:>10}"
          f"{row['best_ratio']:>9}{row['cpu_ms_per_batch']:>14}  {row['rounds']}")
  print(f"uptime after: {result['uptime_after']}")
  print('(shared machine: wall-clock ratios swing between runs, CPU ms/batch much less)')
  if args.json:
    print(json.dumps(result))


def grain_version() -> str:
  from importlib import metadata
  return metadata.version('grain')


if __name__ == '__main__':
  main()
