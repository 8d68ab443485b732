"""The linear autoencoder: identity encoder and decoder, squared error, PCA-normalized
inputs; its 8-unit code spans the principal subspace of the digits (PCA).

Command: `aecore train linear`
Quick check (seconds): `aecore train linear --quick`
Expected (digits, seed 0): test squared error ≈ 0.0011, equal to rank-8 PCA's 0.0011
  (`pca_reconstruction_error` in metrics.json); linear-probe accuracy ≈ 0.94.
Runtime: about 40 s end to end (3000 steps) on this 2-core CPU, measured while
  other jobs shared it; --quick about 10 s, mostly compilation.
"""

import ml_collections

from experiments.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.data.normalization = "pca"
    c.model.hidden = (8,)
    c.model.activation = "identity"
    c.model.output = "identity"
    c.objective.loss = "squared_error"
    c.train.learning_rate = 1e-3
    return finish(c, quick=quick)
