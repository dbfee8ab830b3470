"""Architecture search over a search space's pure functions (host-side, no JAX).

`evolution` runs NAS-BNN's evolutionary search (Lin et al. 2024, Sec. 4.1.2:
"we use the evolutionary algorithm to search the Pareto front") with a
resumable JSON state; `pareto` holds the accuracy/OPs trade-off helpers: the
true Pareto front, the reference code's best-per-OPs-bucket table and the
search plot.
"""
