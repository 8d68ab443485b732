"""CAE+H (Rifai et al., 2011b): the contractive penalty plus γ E‖J(x) − J(x+ε)‖²_F with
ε ~ N(0, 0.1²), 4 draws per example.

Command: `aecore train contractive_higher_order`
Quick check (seconds): `aecore train contractive_higher_order --quick`
Expected: RESULT_contractive_higher_order
Runtime: RUNTIME_contractive_higher_order
"""

import ml_collections

from experiments.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (64,)
    c.objective.contractive = 0.1
    c.objective.higher_order = 0.1
    c.objective.higher_order_sigma = 0.1
    c.objective.higher_order_samples = 4
    return finish(c, quick=quick)
