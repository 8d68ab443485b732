"""An undercomplete sigmoid autoencoder: 64 digit pixels -> 32 sigmoid units -> 64.

Command: `aecore train undercomplete`
Quick check (seconds): `aecore train undercomplete --quick`
Expected (digits, seed 0): test cross-entropy ≈ 15.2 nats/example, mean ‖J‖_F ≈ 6.7,
  saturation ≈ 0.08, linear-probe accuracy ≈ 0.97.
Runtime: about 50 s end to end (3000 steps) on this 2-core CPU, measured while
  other jobs shared it; --quick about 10 s, mostly compilation.
"""

import ml_collections

from aecore.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (32,)
    return finish(c, quick=quick)
