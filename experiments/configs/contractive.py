"""A contractive autoencoder (Rifai et al., 2011): 64 -> 64 sigmoid units, cross-entropy, and
the exact penalty λ ‖J_x h‖²_F (closed form for one sigmoid layer).

Command: `aecore train contractive`
Quick check (seconds): `aecore train contractive --quick`
Expected: RESULT_contractive
Runtime: RUNTIME_contractive
"""

import ml_collections

from experiments.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (64,)
    c.objective.contractive = 0.1
    c.train.num_steps = 10000
    c.train.checkpoint_every = 2000
    return finish(c, quick=quick)
