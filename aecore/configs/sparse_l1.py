"""An overcomplete sparse autoencoder with the L1 penalty λ Σ_i |h_i| on the code.

Command: `aecore train sparse_l1`
Quick check (seconds): `aecore train sparse_l1 --quick`
Expected (digits, seed 0): test cross-entropy ≈ 14.5 nats/example, mean ‖J‖_F ≈ 10.6,
  saturation ≈ 0.18, linear-probe accuracy ≈ 0.98.
Runtime: about 55 s end to end (3000 steps) on this 2-core CPU, measured while
  other jobs shared it; --quick about 10 s, mostly compilation.
"""

import ml_collections

from aecore.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (128,)
    c.objective.l1 = 1e-2
    return finish(c, quick=quick)
