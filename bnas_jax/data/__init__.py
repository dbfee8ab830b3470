"""The input pipeline's parts; `bnas_jax/input_pipeline.py` is its front (datasets, splits,
determinism and the multi-host contract are described there).

settings       dataset specs, the validated data config, argument checks
sources        scikit-learn digits in memory, TFDS ArrayRecord splits (never downloads)
splits         train / holdout / test indices of a source
preprocessing  image ops, augmentation, normalisation, the row thread pool
iterators      dataset descriptions, the resumable train iterator, eval batches
"""
