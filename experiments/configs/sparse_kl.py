"""An overcomplete sparse autoencoder with the KL penalty β Σ_l KL(ρ‖ρ̂_l), ρ = 0.05
(Ng, CS294A notes).

Command: `aecore train sparse_kl`
Quick check (seconds): `aecore train sparse_kl --quick`
Expected: RESULT_sparse_kl
Runtime: RUNTIME_sparse_kl
"""

import ml_collections

from experiments.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (128,)
    c.objective.kl = 0.1
    c.objective.rho = 0.05
    return finish(c, quick=quick)
