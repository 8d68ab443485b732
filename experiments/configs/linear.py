"""The linear autoencoder: identity encoder and decoder, squared error, PCA-normalized
inputs; its 8-unit code spans the principal subspace of the digits (PCA).

Command: `aecore train linear`
Quick check (seconds): `aecore train linear --quick`
Expected: RESULT_linear
Runtime: RUNTIME_linear
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
