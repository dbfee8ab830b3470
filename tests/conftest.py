"""Test-wide JAX settings: fast CPU compiles for tiny shapes."""

import jax

# Tiny test models are compile-bound; XLA's optimisations cost more than they save.
jax.config.update("jax_disable_most_optimizations", True)
