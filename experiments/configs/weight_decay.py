"""The overcomplete autoencoder with weight decay λ Σ‖W‖²_F.

Command: `aecore train weight_decay`
Quick check (seconds): `aecore train weight_decay --quick`
Expected: RESULT_weight_decay
Runtime: RUNTIME_weight_decay
"""

import ml_collections

from experiments.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (128,)
    c.objective.weight_decay = 1e-4
    return finish(c, quick=quick)
