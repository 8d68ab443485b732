"""The linear autoencoder: identity encoder and decoder, squared error, PCA-normalized
inputs; its 8-unit code spans the principal subspace of its training data (PCA).

Command: `aecore train linear` (digits), or `aecore train linear --data FILE` (your data).
Quick check: `aecore train linear --quick` (20 steps)
Expected (seed 0; `max_pca_angle_rad` in metrics.json is the largest principal angle between
  the decoder's subspace and scikit-learn PCA's 8 components of the training split):
  digits 0.0022 rad, test squared error 0.0010986 against rank-8 PCA's 0.0010985
  (`pca_reconstruction_error`), linear-probe accuracy 0.91; scikit-learn's wine (standardized,
  13 features, saved as wine.npy: `--data wine.npy`) 6.9e-05 rad; a 20-feature synthetic file
  whose training split's 8th and 9th covariance eigenvalues differ by 5% (ratio 1.05) 6.6e-05.
Optimizer: L-BFGS (`train.optimizer="lbfgs"`: optax.lbfgs and its zoom line search) on the full
  batch (train.batch_size=None: each step sees all training examples, digits or your file).
  It is still the autoencoder trained by gradient from random weights; nothing copies PCA in.
  Why: the loss is flat along the rotations of the code's subspace that trade the 8th
  principal direction for the 9th (curvature ∝ λ₈ − λ₉), so a first-order method crawls where
  that gap is small: this config's former optimizer, Adam with 3000 cosine-decayed steps from
  1e-2, left wine (eigenvalues 0.35 and 0.29 at the cut) 0.53 rad away. A quasi-Newton
  method rescales those directions by its curvature estimate. Measured largest angle after
  500 / 1000 / 3000 / 5000 steps of this train step (a loop over it, seed 0): digits 1.12 /
  0.66 / 0.015 / 0.0017 rad, wine 0.023 / 6e-05 / 2.5e-05 / 2.5e-05; hence 5000 steps.
  Minibatches (`--config.train.batch_size=N`) need `--config.train.optimizer=adam` (a line
  search needs one loss to search).
Runtime: 2 min 49 s end to end on digits (91 s of it training, 5000 steps), 2 min 56 s on
  wine, 3 min 27 s on the synthetic file, measured on this 2-core CPU shared with other jobs
  (load average 16-19); --quick 49 s end to end (16 s of it compiling and training).
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
