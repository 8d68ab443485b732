"""An overcomplete sparse autoencoder with the L1 penalty λ Σ_i |h_i| on the code.

Command: `aecore train sparse_l1`
Quick check (seconds): `aecore train sparse_l1 --quick`
Expected: RESULT_sparse_l1
Runtime: RUNTIME_sparse_l1
"""

import ml_collections

from experiments.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (128,)
    c.objective.l1 = 1e-2
    return finish(c, quick=quick)
