"""An overcomplete sigmoid autoencoder (64 -> 128 -> 64) without any regularizer: it can
learn a near-identity map, which is what the regularized variants prevent.

Command: `aecore train overcomplete`
Quick check (seconds): `aecore train overcomplete --quick`
Expected (digits, seed 0): test cross-entropy ≈ 14.5 nats/example, mean ‖J‖_F ≈ 12.3,
  saturation ≈ 0.04, linear-probe accuracy ≈ 0.98
  (the largest ‖J‖_F of all configs: nothing stops a near-identity map).
Runtime: about 65 s end to end (3000 steps) on this 2-core CPU, measured while
  other jobs shared it; --quick about 10 s, mostly compilation.
"""

import ml_collections

from aecore.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (128,)
    return finish(c, quick=quick)
