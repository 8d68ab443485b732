"""A denoising autoencoder with masking noise: each pixel dropped with probability 0.25
(Vincent et al., 2010).

Command: `aecore train denoising_mask`
Quick check (seconds): `aecore train denoising_mask --quick`
Expected: RESULT_denoising_mask
Runtime: RUNTIME_denoising_mask
"""

import ml_collections

from experiments.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (128,)
    c.objective.corruption = "mask"
    c.objective.corruption_level = 0.25
    return finish(c, quick=quick)
