"""bnas_jax: neural architecture search for binary neural networks in JAX/Flax."""

__version__ = "0.1.0"
