"""Search spaces: architecture descriptions as data plus pure functions (no JAX).

`nasbnn` holds the NAS-BNN space (Lin et al. 2024, Table 1): its `SearchSpace`,
`Architecture`, string/JSON forms, exact counting, sampling, evolution operators,
the fixed-shape numeric encoding used by jitted supernets, and Table 6's models.
"""
