"""An overcomplete sigmoid autoencoder (64 -> 128 -> 64) without any regularizer: it can
learn a near-identity map, which is what the regularized variants prevent.

Command: `aecore train overcomplete`
Quick check (seconds): `aecore train overcomplete --quick`
Expected: RESULT_overcomplete
Runtime: RUNTIME_overcomplete
"""

import ml_collections

from experiments.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (128,)
    return finish(c, quick=quick)
