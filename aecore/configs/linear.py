"""The linear autoencoder: identity encoder and decoder, squared error, PCA-normalized
inputs; its 8-unit code spans the principal subspace of its training data (PCA).

Command: `aecore train linear` (digits), or `aecore train linear --data FILE` (your data).
Quick check (seconds): `aecore train linear --quick`
Expected (seed 0; `max_pca_angle_rad` in metrics.json: the largest principal angle between the
  decoder's subspace and scikit-learn PCA's 8 components of the training split):
  digits 0.0017 rad, test squared error 0.0010985 = rank-8 PCA's (`pca_reconstruction_error`);
  scikit-learn's wine (standardized, 13 features, saved as .npy) 2.5e-05 rad;
  a synthetic set whose 8th and 9th eigenvalues differ by 5% (ratio 1.05) 1.1e-04 rad.
Optimizer: L-BFGS (`train.optimizer="lbfgs"`, optax.lbfgs with its zoom line search) on the
  full batch (train.batch_size=None: every step sees all training examples). The model is still
  the autoencoder trained by gradient from random weights; nothing copies PCA in. Why: the
  loss is flat along rotations of the code's subspace that trade the 8th principal direction
  for the 9th, with curvature ∝ λ₈ − λ₉, so a first-order method crawls where the eigengap is
  small (Adam, 3000 cosine-decayed steps: wine ended 0.54 rad away, its eigenvalues 0.35 and
  0.29 at the cut), while a quasi-Newton method rescales those directions by its curvature
  estimate. Measured (float32, seed 0) largest angle after 500 / 1000 / 3000 / 5000 steps:
  digits 1.12 / 0.66 / 0.015 / 0.0017 rad, wine 0.023 / 6e-5 / 2.5e-5, small-gap 0.004 /
  1.1e-4 rad at 500 / 1000. Minibatches (`--config.train.batch_size=N`) need
  `--config.train.optimizer=adam` (a line search needs one loss to search).
Runtime: RUNTIME_TBD
"""

import ml_collections
from ml_collections import config_dict

from aecore.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.data.normalization = "pca"
    c.model.hidden = (8,)
    c.model.activation = "identity"
    c.model.output = "identity"
    c.objective.loss = "squared_error"
    # None = full batch (the whole training set, whatever its size): the PCA subspace is then an
    # exact optimum of every step, and the line search has one loss to search.
    c.train.batch_size = config_dict.placeholder(int)
    c.train.optimizer = "lbfgs"  # the line search sets each step's length: no learning rate
    c.train.num_steps = 5000
    return finish(c, quick=quick)
