"""aecore: autoencoders in JAX/Flax with exact Jacobian (contractive) regularization.

Pure functions composed into any variant: models, losses, regularizers, jacobian, objective,
train, evaluate, data, checkpoint (`aecore.plots` loads matplotlib, so it is imported on first
use only).
"""

import importlib

from aecore import (
    checkpoint,
    data,
    evaluate,
    jacobian,
    losses,
    models,
    objective,
    regularizers,
    train,
)
from aecore.jacobian import frobenius_sq, frobenius_sq_estimate
from aecore.models import Autoencoder, make_autoencoder
from aecore.objective import Objective, objective_terms
from aecore.regularizers import Term
from aecore.train import TrainConfig, fit

__all__ = [
    "Autoencoder",
    "Objective",
    "Term",
    "TrainConfig",
    "checkpoint",
    "data",
    "evaluate",
    "fit",
    "frobenius_sq",
    "frobenius_sq_estimate",
    "jacobian",
    "losses",
    "make_autoencoder",
    "models",
    "objective",
    "objective_terms",
    "plots",
    "regularizers",
    "train",
]
__version__ = "0.2.0"


def __getattr__(name: str):
    if name == "plots":  # lazy: matplotlib is heavy and not needed to train
        return importlib.import_module("aecore.plots")
    raise AttributeError(f"module 'aecore' has no attribute {name!r}")
