"""Weight decay and tied weights as regularizers of an overcomplete autoencoder: held-out
reconstruction, noisy-input ratio, weight norms ‖W‖_F and the encoder filters of each variant.

Digits in [0, 1], 256 sigmoid codes, linear decoder, squared error (the copier of
exp_overcomplete). Variants: plain, weight decay λ ∈ {1e-4, 1e-3, 1e-2}, tied (W* = Wᵀ), and
tied + weight decay 1e-3. Weight decay trades clean reconstruction for smaller weights and less
copied noise; tying removes the decoder's freedom to undo an arbitrary encoder.
Figures: filters_<variant>.png (rows of W as 8×8 images), weight_decay_tied.png (bars).

Command:  python -m experiments.exp_weight_decay_tied [--quick] [--out DIR]
Expected: ‖W‖_F falls and test error rises with λ; noisy-input ratio < plain's for λ ≥ 1e-3.
Runtime:  about 3 min on 2 CPU cores; --quick about 15 s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aecore import Objective, plots
from aecore import evaluate as ev
from experiments import common

NAME = "weight_decay_tied"
NOISE_SIGMA = common.COPIER_NOISE_SIGMA

VARIANTS: dict[str, tuple[Objective, bool]] = {
    "plain": (Objective(), False),
    "wd 1e-4": (Objective(weight_decay=1e-4), False),
    "wd 1e-3": (Objective(weight_decay=1e-3), False),
    "wd 1e-2": (Objective(weight_decay=1e-2), False),
    "tied": (Objective(), True),
    "tied + wd 1e-3": (Objective(weight_decay=1e-3), True),
}


def weight_norms(model) -> dict[str, float]:
    """Frobenius norms of the encoder weight and of the decoder weight (Wᵀ when tied)."""
    enc = np.asarray(model.encoder.layers[0].kernel[...], dtype=np.float64)
    dec = enc if model.tied else np.asarray(model.decoder.layers[-1].kernel[...], np.float64)
    return {
        "encoder_weight_norm": float(np.linalg.norm(enc)),
        "decoder_weight_norm": float(np.linalg.norm(dec)),
    }


def run(args) -> dict[str, Any]:
    ctx = common.setup(NAME, args)
    out, ds, x_train, x_test = ctx.out, ctx.ds, ctx.x_train, ctx.x_test
    image_shape = ds.input_shape
    data = common.dataset(ds.name, x_train, x_test)
    hidden = common.copier_width(args.quick)
    table = {}
    for name, (objective, tied) in VARIANTS.items():
        config = common.copier_record(
            objective, tied=tied, hidden=hidden, quick=args.quick, seed=args.seed
        )
        model = common.train_record(ctx, name, config, data).model
        table[name] = {
            "weight_decay": objective.weight_decay,
            "tied": tied,
            "train_error": ev.reconstruction_error(model, x_train, loss="squared_error"),
            "test_error": ev.reconstruction_error(model, x_test, loss="squared_error"),
            "noise_ratio": ev.noise_ratio(model, x_test, sigma=NOISE_SIGMA, seed=args.seed),
            **weight_norms(model),
        }
        slug = name.replace(" + ", "_").replace(" ", "_")
        plots.save_filters(
            out / f"filters_{slug}.png",
            np.asarray(model.encoder.layers[0].kernel[...]),
            image_shape=image_shape,
            n=64,
        )
        print(f"{name:>15}: " + ", ".join(f"{k} {v}" for k, v in table[name].items()))
    common.plot_bars(
        out / "weight_decay_tied.png",
        table,
        ("test_error", "noise_ratio", "encoder_weight_norm"),
    )
    wd = [table[n] for n in ("plain", "wd 1e-4", "wd 1e-3", "wd 1e-2")]
    checks = [
        common.Check(
            "encoder_norm_decreases_with_weight_decay",
            "‖W_enc‖_F strictly falls as λ: 0 → 1e-4 → 1e-3 → 1e-2",
            [w["encoder_weight_norm"] for w in wd],
            all(
                a["encoder_weight_norm"] > b["encoder_weight_norm"]
                for a, b in zip(wd[:-1], wd[1:], strict=True)
            ),
        ),
        common.Check(
            "test_error_increases_with_weight_decay",
            "test error strictly rises as λ: 1e-4 → 1e-3 → 1e-2",
            [w["test_error"] for w in wd[1:]],
            all(a["test_error"] < b["test_error"] for a, b in zip(wd[1:-1], wd[2:], strict=True)),
        ),
        common.Check(
            "tied_decoder_norm_equals_encoder_norm",
            "ratio 1 within 1e-6 (the tied decoder is Wᵀ)",
            table["tied"]["decoder_weight_norm"] / table["tied"]["encoder_weight_norm"],
            abs(table["tied"]["decoder_weight_norm"] / table["tied"]["encoder_weight_norm"] - 1)
            < 1e-6,
        ),
    ]
    results = {"hidden": hidden, "noise_sigma": NOISE_SIGMA, "variants": table}
    return common.finish(NAME, ctx, args, results, checks=checks)


main = common.main_for(run, __doc__)


if __name__ == "__main__":
    main()
