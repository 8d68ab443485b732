"""An undercomplete sigmoid autoencoder: 64 digit pixels -> 32 sigmoid units -> 64.

Command: `aecore train undercomplete`
Quick check (seconds): `aecore train undercomplete --quick`
Expected: RESULT_undercomplete
Runtime: RUNTIME_undercomplete
"""

import ml_collections

from experiments.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (32,)
    return finish(c, quick=quick)
