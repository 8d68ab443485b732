"""A contractive autoencoder (Rifai et al., 2011): 64 -> 64 sigmoid units, cross-entropy, and
the exact penalty λ ‖J_x h‖²_F (closed form for one sigmoid layer).

Command: `aecore train contractive`
Quick check (seconds): `aecore train contractive --quick`
Expected (digits, seed 0): test cross-entropy ≈ 14.7 nats/example, mean ‖J‖_F ≈ 2.0,
  saturation ≈ 0.06, linear-probe accuracy ≈ 0.96;
  ‖J‖_F is ~3x lower than undercomplete's (6.7) at similar reconstruction.
Runtime: about 40 s end to end (10000 steps, 18 s of it training; five figures) on this
  2-core CPU, measured while other jobs shared it; --quick about 10 s, mostly compilation.
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
