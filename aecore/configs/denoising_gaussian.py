"""A denoising autoencoder with additive Gaussian noise of std 0.2 (Vincent et al., 2010).

Command: `aecore train denoising_gaussian`
Quick check (seconds): `aecore train denoising_gaussian --quick`
Expected (digits, seed 0): test cross-entropy ≈ 15.0 nats/example, mean ‖J‖_F ≈ 6.6,
  saturation ≈ 0.14, linear-probe accuracy ≈ 0.98.
Runtime: about 45 s end to end (3000 steps) on this 2-core CPU, measured while
  other jobs shared it; --quick about 10 s, mostly compilation.
"""

import ml_collections

from aecore.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (128,)
    c.objective.corruption = "gaussian"
    c.objective.corruption_level = 0.2
    return finish(c, quick=quick)
