"""An isometrically regularized autoencoder (IRVAE's regularizer, Lee et al., ICLR 2022, on a
plain AE): 64 digit pixels -> 16 sigmoid units -> 64, cross-entropy, plus λ times the EXACT
relaxed distortion E[tr G²]/E[tr G]² of the decoder's pullback metric G = J_gᵀJ_g on
mixup-interpolated codes (η = 0.2); `--config.objective.distortion_probes=1` switches to IRVAE's
own 1-probe estimate.

Command: `aecore train isometric`
Quick check (seconds): `aecore train isometric --quick`
Expected (digits, seed 0): EXPECTED_PLACEHOLDER
Runtime: RUNTIME_PLACEHOLDER
"""

import ml_collections

from aecore.configs._base import base_config, finish


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.hidden = (16,)
    c.objective.distortion = 1.0
    c.objective.distortion_eta = 0.2
    return finish(c, quick=quick)
