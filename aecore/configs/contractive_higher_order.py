"""CAE+H (Rifai et al., 2011b): the contractive penalty plus γ E‖J(x) − J(x+ε)‖²_F with
ε ~ N(0, 0.1²), 4 draws per example.

Command: `aecore train contractive_higher_order`
Quick check (seconds): `aecore train contractive_higher_order --quick`
Expected (digits, seed 0): test cross-entropy ≈ 15.3 nats/example, mean ‖J‖_F ≈ 2.6,
  saturation ≈ 0.03, linear-probe accuracy ≈ 0.98
  (contractive alone at 3000 steps: ‖J‖_F ≈ 2.6).
Runtime: about 40 s end to end (3000 steps) on this 2-core CPU, measured while
  other jobs shared it; --quick about 10 s, mostly compilation.
"""

import ml_collections

from aecore.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (64,)
    c.objective.contractive = 0.1
    c.objective.higher_order = 0.1
    c.objective.higher_order_sigma = 0.1
    c.objective.higher_order_samples = 4
    return finish(c, quick=quick)
