"""A tied autoencoder: the decoder weights are the encoder's transposed (64 -> 64 -> 64).

Command: `aecore train tied`
Quick check (seconds): `aecore train tied --quick`
Expected: RESULT_tied
Runtime: RUNTIME_tied
"""

import ml_collections

from experiments.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (64,)
    c.model.tied = True
    return finish(c, quick=quick)
