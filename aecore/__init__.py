"""aecore: autoencoders in JAX/Flax with exact Jacobian (contractive) regularization.

Pure functions composed into any variant: models, losses, regularizers, jacobian, objective.
"""

from aecore import jacobian, losses, models, objective, regularizers
from aecore.jacobian import frobenius_sq, frobenius_sq_estimate
from aecore.models import Autoencoder, make_autoencoder
from aecore.objective import Objective, objective_terms

__all__ = [
    "Autoencoder",
    "Objective",
    "frobenius_sq",
    "frobenius_sq_estimate",
    "jacobian",
    "losses",
    "make_autoencoder",
    "models",
    "objective",
    "objective_terms",
    "regularizers",
]
__version__ = "0.1.0"
