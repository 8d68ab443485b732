"""A denoising autoencoder with additive Gaussian noise of std 0.2 (Vincent et al., 2010).

Command: `aecore train denoising_gaussian`
Quick check (seconds): `aecore train denoising_gaussian --quick`
Expected: RESULT_denoising_gaussian
Runtime: RUNTIME_denoising_gaussian
"""

import ml_collections

from experiments.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (128,)
    c.objective.corruption = "gaussian"
    c.objective.corruption_level = 0.2
    return finish(c, quick=quick)
