"""Four uses of trained autoencoders on MNIST digits: anomaly detection by reconstruction error,
image denoising, inpainting by iterating a DAE, and retrieval by nearest neighbours in code space.

What it shows (mnist10k when present, else scikit-learn digits):
  1. Anomaly detection: for each digit class c, an AE (32 sigmoid units) is trained on class c
     only; every test digit is scored by its squared reconstruction error and the AUROC of
     "not c" is computed (sklearn.metrics.roc_auc_score), against rank-32 PCA fit on class c.
  2. Denoising: DAEs (256 sigmoid units) trained with Gaussian noise (σ = 0.3) and masking
     noise (q = 0.5); mean PSNR (peak 1) of the corrupted test digits and of their
     reconstructions, against the clean digits.
  3. Inpainting: a centred square (1/3 of the side) is set to 0 and filled by iterating the
     masking DAE, x ← x̂ on the masked pixels only, K = 10 times; PSNR on the region.
  4. Retrieval: precision@10 (same label = relevant) of the nearest training digits of each
     test digit, in the 64-unit code of a masking DAE, in rank-64 PCA, and in raw pixels.

Command:
  python -m experiments.exp_applications            # mnist10k when present, ~4.5 min
  python -m experiments.exp_applications --quick    # seconds (tests)

Expected: AUROC well above 0.5 for every class (the AE close to PCA: both model the normal
class linearly-ish with the same code size); PSNR of reconstructions above that of the noisy
inputs; inpainting raises the region's PSNR; code-space precision@10 close to raw pixels.
Measured here (mnist10k): mean AUROC 0.924 (PCA 0.956); PSNR 10.5 → 20.3 dB (Gaussian σ 0.3),
12.8 → 18.0 dB (mask q 0.5); inpainted region 5.0 → 7.6 dB after one pass, 6.4 dB after 10
(iterating drifts); precision@10 DAE code 0.876, PCA 0.913, raw pixels 0.903.
Runtime here (2 shared CPU cores): see experiments/README.md.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from aecore import Objective, evaluate
from experiments import common

NAME = "applications"


def squared_error(x_hat: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.sum((np.asarray(x_hat, np.float64) - x).reshape(len(x), -1) ** 2, axis=1)


def anomaly_detection(ctx, ds, *, quick: bool, seed: int, code: int = 32) -> dict[str, Any]:
    from sklearn.decomposition import PCA
    from sklearn.metrics import roc_auc_score

    classes = (0, 1) if quick else tuple(range(10))
    train = dict(num_steps=100 if quick else 1000, batch_size=64, learning_rate=3e-3)
    x_test = common.flat(ds.x_test)
    per_class = {}
    for c in classes:
        x_norm = common.flat(ds.x_train[ds.y_train == c])
        fit = common.fit_record(
            ctx,
            f"anomaly_class_{c}",
            x_norm,
            model=dict(hidden=(code,), activation="sigmoid", output="sigmoid"),
            objective=Objective(loss="cross_entropy"),
            train=train,
            seed=seed,
        )
        score_ae = squared_error(evaluate.reconstruct(fit.model, x_test), x_test)
        pca = PCA(n_components=min(code, len(x_norm) - 1)).fit(x_norm)
        score_pca = squared_error(pca.inverse_transform(pca.transform(x_test)), x_test)
        anomalous = ds.y_test != c
        per_class[str(c)] = {
            "auroc_ae": float(roc_auc_score(anomalous, score_ae)),
            "auroc_pca": float(roc_auc_score(anomalous, score_pca)),
        }
    return {
        "per_class": per_class,
        "mean_auroc_ae": float(np.mean([v["auroc_ae"] for v in per_class.values()])),
        "mean_auroc_pca": float(np.mean([v["auroc_pca"] for v in per_class.values()])),
        "code_size": code,
        "train": train,
    }


def centre_mask(image_shape) -> np.ndarray:
    """[H, W, 1] boolean mask of a centred square of side H // 3."""
    h, w = image_shape[:2]
    s = max(h // 3, 1)
    mask = np.zeros(image_shape, bool)
    mask[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s] = True
    return mask


def inpaint(model, x_masked: np.ndarray, mask: np.ndarray, *, iterations: int) -> np.ndarray:
    """x ← x̂ on the masked pixels, `iterations` times; the observed pixels stay as given."""
    x = x_masked.copy()
    for _ in range(iterations):
        x = np.where(mask, evaluate.reconstruct(model, x), x_masked)
    return x


def run(args) -> dict[str, Any]:
    from aecore import plots

    ctx = common.setup(NAME, args, labelled=True)
    out, ds = ctx.out, ctx.ds
    x_train, x_test = ds.x_train, ds.x_test
    if args.quick:
        x_test = x_test[:300]
        ds = dataclasses.replace(ds, x_test=x_test, y_test=ds.y_test[:300])
    rng = np.random.default_rng(args.seed)
    timing = {}

    t0 = time.perf_counter()
    anomaly = anomaly_detection(ctx, ds, quick=args.quick, seed=args.seed)
    timing["anomaly"] = time.perf_counter() - t0

    # Denoising DAEs (also used for inpainting).
    t0 = time.perf_counter()
    train = dict(num_steps=100 if args.quick else 3000, batch_size=64, learning_rate=1e-3)
    model = dict(hidden=(64 if args.quick else 256,), activation="sigmoid", output="sigmoid")
    noises = {"gaussian": 0.3, "mask": 0.5}
    denoise, daes = {}, {}
    for kind, level in noises.items():
        obj = Objective(loss="cross_entropy", corruption=kind, corruption_level=level)
        daes[kind] = common.fit_record(
            ctx,
            f"dae_{kind}",
            x_train,
            x_test,
            model=model,
            objective=obj,
            train=train,
            seed=args.seed,
        ).model
        if kind == "gaussian":
            x_noisy = (x_test + level * rng.standard_normal(x_test.shape)).astype(np.float32)
        else:
            x_noisy = (x_test * (rng.random(x_test.shape) >= level)).astype(np.float32)
        x_hat = evaluate.reconstruct(daes[kind], x_noisy)
        denoise[kind] = {
            "level": level,
            "psnr_noisy_db": float(evaluate.psnr(x_noisy, x_test).mean()),
            "psnr_reconstructed_db": float(evaluate.psnr(x_hat, x_test).mean()),
        }
        plots.save_reconstructions(out / f"denoising_{kind}.png", x_noisy, x_hat)
    timing["denoising"] = time.perf_counter() - t0

    # Inpainting with the masking DAE.
    mask = centre_mask(ds.input_shape)
    x_masked = np.where(mask, 0.0, x_test).astype(np.float32)
    x_filled = inpaint(daes["mask"], x_masked, mask, iterations=10)
    inpainting = {
        "iterations": 10,
        "region": f"centred square of side {int(np.sqrt(mask.sum()))} px",
        "psnr_region_before_db": float(evaluate.psnr(x_masked, x_test, mask).mean()),
        "psnr_region_after_db": float(evaluate.psnr(x_filled, x_test, mask).mean()),
        "psnr_region_one_pass_db": float(
            evaluate.psnr(inpaint(daes["mask"], x_masked, mask, iterations=1), x_test, mask).mean()
        ),
    }
    plots.save_reconstructions(out / "inpainting.png", x_masked, x_filled)

    # Retrieval.
    t0 = time.perf_counter()
    from sklearn.decomposition import PCA

    code = 16 if args.quick else 64
    ret_model = common.fit_record(
        ctx,
        "retrieval_dae",
        x_train,
        x_test,
        model=dict(hidden=(code,), activation="sigmoid", output="sigmoid"),
        objective=Objective(loss="cross_entropy", corruption="mask", corruption_level=0.25),
        train=train,
        seed=args.seed,
    ).model
    a, b = common.flat(x_train), common.flat(x_test)
    pca = PCA(n_components=code).fit(a)
    spaces = {
        "dae_code": (evaluate.encode(ret_model, x_train), evaluate.encode(ret_model, x_test)),
        "pca": (pca.transform(a), pca.transform(b)),
        "raw_pixels": (a, b),
    }
    retrieval = {
        name: evaluate.precision_at_k(tr, ds.y_train, te, ds.y_test, k=10)
        for name, (tr, te) in spaces.items()
    }
    timing["retrieval"] = time.perf_counter() - t0

    worst = min(anomaly["per_class"].items(), key=lambda kv: kv[1]["auroc_ae"])
    checks = [
        common.check(
            f"worst_class_auroc_ae (class {worst[0]})",
            worst[1]["auroc_ae"],
            ">",
            0.5,
            why="reconstruction error detects the other classes, for every class",
        ),
        *(
            common.check(
                f"denoising_{kind}_psnr_gain_db",
                d["psnr_reconstructed_db"] - d["psnr_noisy_db"],
                ">",
                0.0,
                why="the DAE's reconstruction is cleaner than its noisy input",
            )
            for kind, d in denoise.items()
        ),
        common.check(
            "inpainting_one_pass_psnr_gain_db",
            inpainting["psnr_region_one_pass_db"] - inpainting["psnr_region_before_db"],
            ">",
            -3.0 if args.quick else 0.0,
            # 100 quick steps leave the masking DAE blurry (-1.9 dB measured): the quick bound
            # only catches a broken fill; the default run (+2.6 dB here) must beat the zeros.
            why="one DAE pass fills the masked square better than zeros; --quick: > -3 dB",
        ),
        common.check(
            "retrieval_dae_code_over_raw_pixels_precision_at_10",
            retrieval["dae_code"] / retrieval["raw_pixels"],
            ">",
            0.8,
            why="code-space neighbours close to pixel-space ones",
        ),
    ]
    results = {
        "anomaly_detection": anomaly,
        "denoising": denoise,
        "denoising_train": train,
        "denoising_units": model["hidden"][0],
        "inpainting": inpainting,
        "retrieval_precision_at_10": retrieval,
        "retrieval_code_size": code,
        "seconds": {k: round(v, 1) for k, v in timing.items()},
    }
    return common.finish(NAME, ctx, args, results, checks=checks)


main = common.main_for(run, __doc__, default_data=common.mnist_10k_or_digits())


if __name__ == "__main__":
    main()
