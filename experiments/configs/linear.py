"""The linear autoencoder: identity encoder and decoder, squared error, PCA-normalized
inputs; its 8-unit code spans the principal subspace of the digits (PCA).

Command: `aecore train linear`
Quick check (seconds): `aecore train linear --quick`
Expected (digits, seed 0): test squared error 0.0010985, equal to rank-8 PCA's 0.0010985
  (`pca_reconstruction_error` in metrics.json); largest principal angle between the decoder's
  subspace and scikit-learn PCA's 8 components 4e-6 rad (`max_pca_angle_rad`; 0.0047 rad with
  batches of 1024); linear-probe accuracy 0.91. Adam on the full batch (train.batch_size=None:
  every step sees all 1438 training digits, or all of your own data with --data, whatever its
  size) with a cosine-decayed step: with minibatches of 64 at a constant step the
  near-degenerate directions keep moving (angle ≈ 0.9 rad at equal error).
Runtime: 27 s end to end (3000 steps; 10 s of it training) on this 2-core CPU shared with
  other jobs; --quick a few seconds.
"""

import ml_collections
from ml_collections import config_dict

from experiments.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.data.normalization = "pca"
    c.model.hidden = (8,)
    c.model.activation = "identity"
    c.model.output = "identity"
    c.objective.loss = "squared_error"
    # None = full batch (the whole training set, whatever its size): the PCA subspace is then an
    # exact optimum of every step. `--config.train.batch_size=N` sets a minibatch instead.
    c.train.batch_size = config_dict.placeholder(int)
    c.train.learning_rate = 1e-2
    c.train.lr_schedule = "cosine"
    return finish(c, quick=quick)
