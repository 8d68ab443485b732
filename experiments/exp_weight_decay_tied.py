"""Weight decay and tied weights as regularizers of an overcomplete autoencoder: held-out
reconstruction, noisy-input ratio, weight norms ‖W‖_F and the encoder filters of each variant.

Digits in [0, 1], 256 sigmoid codes, linear decoder, squared error (the copier of
exp_overcomplete). Variants: plain, weight decay λ ∈ {1e-4, 1e-3, 1e-2}, tied (W* = Wᵀ), and
tied + weight decay 1e-3. Weight decay trades clean reconstruction for smaller weights and less
copied noise; tying removes the decoder's freedom to undo an arbitrary encoder.
Figures: filters_<variant>.png (rows of W as 8×8 images), weight_decay_tied.png (bars).

Command:  python -m experiments.exp_weight_decay_tied [--quick] [--out DIR]
Expected: ‖W‖_F falls and test error rises with λ; noisy-input ratio < plain's for λ ≥ 1e-3.
Runtime:  about 2 min on 2 CPU cores; --quick about 15 s.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from aecore import Objective, plots
from aecore import evaluate as ev
from experiments import common
from experiments.exp_overcomplete import NOISE_SIGMA, noise_ratio, plot_bars

NAME = "weight_decay_tied"

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
    started = time.perf_counter()
    out = common.out_dir(NAME, args.out)
    ds = common.load_data(args.data, data_dir=args.data_dir, seed=args.seed)
    x_train, x_test = common.flat(ds.x_train), common.flat(ds.x_test)
    image_shape = ds.input_shape
    if args.quick:
        hidden, train = 128, dict(num_steps=500, batch_size=128, learning_rate=1e-2)
    else:
        hidden, train = 256, dict(num_steps=4000, batch_size=128, learning_rate=1e-2)
    table = {}
    for name, (objective, tied) in VARIANTS.items():
        fit = common.train_model(
            x_train,
            model=dict(hidden=(hidden,), activation="sigmoid", output="identity", tied=tied),
            objective=objective,
            train=dict(log_every=100, **train),
            seed=args.seed,
        )
        model = fit.model
        table[name] = {
            "weight_decay": objective.weight_decay,
            "tied": tied,
            "train_error": ev.reconstruction_error(model, x_train, loss="squared_error"),
            "test_error": ev.reconstruction_error(model, x_test, loss="squared_error"),
            "noise_ratio": noise_ratio(model, x_test, sigma=NOISE_SIGMA, seed=args.seed),
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
    plot_bars(
        out / "weight_decay_tied.png",
        table,
        ("test_error", "noise_ratio", "encoder_weight_norm"),
    )
    wd = [table[n] for n in ("plain", "wd 1e-4", "wd 1e-3", "wd 1e-2")]
    checks = {
        "encoder_norm_decreases_with_weight_decay": all(
            a["encoder_weight_norm"] > b["encoder_weight_norm"]
            for a, b in zip(wd[:-1], wd[1:], strict=True)
        ),
        "test_error_increases_with_weight_decay": all(
            a["test_error"] < b["test_error"] for a, b in zip(wd[1:-1], wd[2:], strict=True)
        ),
    }
    return common.write_results(
        out,
        {
            "data": ds.description,
            "quick": bool(args.quick),
            "hidden": hidden,
            "train": train,
            "noise_sigma": NOISE_SIGMA,
            "variants": table,
            "checks": checks,
        },
        started=started,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(common.parser(__doc__.splitlines()[0]).parse_args(argv))


if __name__ == "__main__":
    main()
