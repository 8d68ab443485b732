"""A reconstruction contractive autoencoder (Alain & Bengio, 2014): 64 digit pixels -> 32
sigmoid units -> 64, cross-entropy, plus the EXACT penalty λ ‖∂r(x)/∂x‖²_F of the reconstruction
r = decode ∘ encode, computed as tr(G_dec(h) · J_f J_fᵀ) (two 32 × 32 matrices per example);
`--config.objective.reconstruction_contractive_probes=4` switches to a Hutchinson estimate.

Command: `aecore train reconstruction_contractive`
Quick check (seconds): `aecore train reconstruction_contractive --quick`
Expected (digits, seed 0): EXPECTED_PLACEHOLDER
Runtime: RUNTIME_PLACEHOLDER
"""

import ml_collections

from aecore.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (32,)
    c.objective.reconstruction_contractive = 0.01
    return finish(c, quick=quick)
