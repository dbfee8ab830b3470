"""Accuracy/OPs trade-off helpers: Pareto front, bucket table and search plot.

NAS-BNN (Lin et al. 2024, Sec. 4.1.2) searches "the Pareto front" of top-1
accuracy against OPs = FLOPs + Int8OPs/8 + BOPs/64. The public code keeps a
different object, a table with the most accurate subnet per OPs bucket, and
calls it the Pareto front (reference notes Sec. 7). Both are here, under their
own names:

* `pareto_front`: the records that no other record dominates (accuracy at
  least as high AND OPs at most as high, one of them strictly).
* `best_per_bucket`: the reference table, with float bucket keys that stay
  distinct for steps below 1 (the reference's `int(round(ops / step) * step)`
  maps every key to 0 for step 0.05, say, so the table collapses to one entry).

A record is any mapping with numeric 'acc' and 'ops' entries (the search also
stores 'arch' and 'generation'); the functions return the records themselves,
never copies, in a deterministic order that depends only on the input order.
"""

import decimal
import math
from typing import Any, Mapping, Optional, Sequence

from bnas_jax import atomic_files

__all__ = ["best_per_bucket", "bucket_key", "pareto_front", "plot_search"]

Record = Mapping[str, Any]


def _acc_ops(record: Record, index: int) -> tuple[float, float]:
  try:
    acc, ops = float(record["acc"]), float(record["ops"])
  except (KeyError, TypeError, ValueError):
    raise ValueError(
      f"Record {index} must be a mapping with numeric 'acc' and 'ops', got {record!r}."
    ) from None
  # Dominance is undefined for NaN, and a NaN would silently break the sort.
  if math.isnan(acc) or math.isnan(ops):
    raise ValueError(f"Record {index} has a NaN accuracy or OPs: {record!r}.")
  return acc, ops


def pareto_front(points: Sequence[Record]) -> list[Record]:
  """The non-dominated records for (accuracy up, OPs down), sorted by OPs.

  Record a dominates b when a.ops <= b.ops and a.acc >= b.acc with at least one
  strict. Ties are deterministic: of several records with the same (ops, acc)
  only the first in `points` is kept, so the front never lists a point twice.
  Equal accuracy at higher OPs is dominated, hence along the returned list OPs
  and accuracy both increase strictly.

  O(n log n): sort by (ops ascending, accuracy descending, input index), then
  one scan keeps a record exactly when it beats the best accuracy seen at
  lower or equal OPs.

  Args:
    points: records with numeric 'acc' and 'ops'.

  Returns:
    The front's records (the same objects), ordered by increasing OPs.

  Raises:
    ValueError: a record lacks 'acc'/'ops' or holds NaN.
  """
  keyed = []
  for i, p in enumerate(points):
    acc, ops = _acc_ops(p, i)
    keyed.append((ops, -acc, i))
  keyed.sort()
  front, best = [], -math.inf
  for ops, neg_acc, i in keyed:
    # Within equal OPs the most accurate (then earliest) record comes first, so a
    # strict comparison drops both exact duplicates and same-OPs losers.
    if -neg_acc > best:
      front.append(points[i])
      best = -neg_acc
  return front


def _step_decimal(step: float) -> decimal.Decimal:
  # repr() is the shortest text that round-trips the float, i.e. what the user
  # typed ("0.05"), so multiples of it format without binary noise (0.15, not
  # 0.15000000000000002).
  return decimal.Decimal(repr(float(step)))


def bucket_key(ops: float, step: float) -> str:
  """The table key of `ops`: round(ops / step) * step as canonical decimal text.

  The multiple is computed in decimal from the step's shortest float text, so
  keys are stable across runs and platforms: step 2 gives "20", "22", ...;
  step 0.05 gives "0.1", "0.15", "0.2"; step 2.5 gives "22.5". Rounding is
  Python's round() (half to even), as in the reference code.

  Raises:
    ValueError: step is not a positive finite number or ops is not finite.
  """
  step_f = float(step)
  if not (math.isfinite(step_f) and step_f > 0):
    raise ValueError(f"The bucket step must be a positive finite number, got {step!r}.")
  if not math.isfinite(float(ops)):
    raise ValueError(f"Cannot bucket the non-finite OPs value {ops!r}.")
  multiple = round(float(ops) / step_f)
  value = (_step_decimal(step_f) * multiple).normalize()
  text = format(value, "f")
  return "0" if text in ("-0", "") else text


def bucket_indices(lo: float, hi: float, step: float) -> range:
  """Multiples k of the buckets that [lo, hi] meets: bucket k holds the costs whose
  `bucket_key` is k * step, i.e. about [(k - 1/2) step, (k + 1/2) step]."""
  return range(int(math.floor(lo / step + 0.5)), int(math.floor(hi / step + 0.5)) + 1)


def best_per_bucket(
  records: Sequence[Record], step: float, lo: float = -math.inf, hi: float = math.inf
) -> dict[str, Record]:
  """The reference's search table: the most accurate record per OPs bucket.

  Only records with lo <= ops <= hi take part (the search range). Each record
  goes to bucket `bucket_key(ops, step)`; the bucket keeps the record with the
  highest accuracy, then the lowest OPs, then the earliest in `records` (the
  reference keeps the incumbent on ties, i.e. the earliest evaluated). Unlike
  a Pareto front, a higher bucket can hold a lower accuracy.

  Args:
    records: records with numeric 'acc' and 'ops'.
    step: bucket width in the records' OPs unit (reference `--step`, README 2).
    lo: lower end of the OPs range, inclusive.
    hi: upper end of the OPs range, inclusive.

  Returns:
    Bucket key -> record, ordered by increasing bucket value.

  Raises:
    ValueError: bad step, or a record lacks 'acc'/'ops' or holds NaN.
  """
  best: dict[str, tuple[tuple[float, float, int], int, Record]] = {}
  for i, r in enumerate(records):
    acc, ops = _acc_ops(r, i)
    if not lo <= ops <= hi:
      continue
    key = bucket_key(ops, step)
    rank = (-acc, ops, i)  # Smaller is better.
    multiple = round(ops / float(step))
    if key not in best or rank < best[key][0]:
      best[key] = (rank, multiple, r)
  ordered = sorted(best.items(), key=lambda kv: kv[1][1])
  return {key: r for key, (_, _, r) in ordered}


def plot_search(
  records: Sequence[Record],
  front: Sequence[Record],
  path: str,
  title: str = "Evolutionary search",
  *,
  xlabel: str = "OPs (M)",
  ylabel: str = "Accuracy",
  table: Optional[Sequence[Record]] = None,
) -> None:
  """Saves a PNG scatter of every evaluated subnet with the Pareto front on top.

  Every record is a small grey dot (OPs on x, accuracy on y). The front is drawn
  as a post-step line, the best accuracy reachable within each OPs budget,
  with a marker on each front record. If `table` is given (the bucket table),
  its records are ringed, which shows where it departs from the front.

  Uses matplotlib's object API with the Agg canvas, not pyplot, so no global
  backend or figure state is touched (safe next to other plotting code and
  without a display). The file is written atomically (`atomic_files`).

  Args:
    records: every evaluated record.
    front: the Pareto front (as from `pareto_front`).
    path: output .png path; its directory is created.
    title: figure title.
    xlabel: x axis label; the records' OPs unit.
    ylabel: y axis label.
    table: optional best-per-bucket records to ring.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(7, 4.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ax.scatter(
    [float(r["ops"]) for r in records],
    [float(r["acc"]) for r in records],
    s=6,
    c="0.65",
    alpha=0.6,
    linewidths=0,
    label=f"evaluated ({len(records)})",
  )
  if table:
    ax.scatter(
      [float(r["ops"]) for r in table],
      [float(r["acc"]) for r in table],
      s=30,
      facecolors="none",
      edgecolors="tab:orange",
      linewidths=0.8,
      label=f"best per bucket ({len(table)})",
    )
  if front:
    ordered = sorted(front, key=lambda r: float(r["ops"]))
    xs = [float(r["ops"]) for r in ordered]
    ys = [float(r["acc"]) for r in ordered]
    ax.step(xs, ys, where="post", color="tab:blue", linewidth=1.2)
    ax.plot(xs, ys, "o", color="tab:blue", markersize=4, label=f"Pareto front ({len(front)})")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, linewidth=0.3, alpha=0.5)
  if records or front:
    ax.legend(loc="lower right", fontsize="small")
  fig.tight_layout()
  atomic_files.write_figure(path, fig)
