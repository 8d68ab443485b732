"""A reconstruction contractive autoencoder (Alain & Bengio, 2014): 64 digit pixels -> 32
sigmoid units -> 64, cross-entropy, plus the EXACT penalty λ ‖∂r(x)/∂x‖²_F of the reconstruction
r = decode ∘ encode, computed as tr(G_dec(h) · J_f J_fᵀ) (two 32 × 32 matrices per example);
`--config.objective.reconstruction_contractive_probes=4` switches to a Hutchinson estimate.

Command: `aecore train reconstruction_contractive`
Quick check (seconds): `aecore train reconstruction_contractive --quick`
Expected (digits, seed 0): test cross-entropy ≈ 15.2 nats/example, mean encoder ‖J‖_F
  ≈ 5.1, linear-probe accuracy ≈ 0.98 (measured 2026-12-06: 15.239, 5.08, 0.978; the same AE
  without the term, `aecore train undercomplete`: 15.239, 6.65, 0.969): the same
  reconstruction with a less sensitive encoder.
Runtime: 56 s of training (3000 steps) on this 2-core CPU, about 90 s end to end, measured
  while other jobs loaded it heavily (load average ~14; undercomplete trained in 18 s under the
  same load); --quick about 25 s, mostly compilation.
"""

import ml_collections

from aecore.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (32,)
    c.objective.reconstruction_contractive = 0.01
    return finish(c, quick=quick)
