"""Gaussian-DAE edge detectors on natural image patches (Vincent et al. 2010, JMLR, §9.1 and
Fig. 6): an over-complete DAE learns Gabor-like oriented edges, a plain AE and PCA do not.

Protocol (the paper's, where it says): 12x12 patches of scikit-image's twelve photographs,
whitened as Olshausen & Field (1996) whitened the images the paper used (R(f) = f exp(−(f/f0)⁴)),
at their pixel variance 0.1; 200 tied sigmoid units, affine decoder, squared error; DAE with
Gaussian noise σ = 0.5; a plain AE with weight decay (λ picked from a grid as the value most
favourable to edges, on the first seed) and PCA's top 100 components beside it. Adam at 1e-2
on batches of 64 for 10,000 steps (the paper's optimizer settings are not given).

Measures (`aecore.filters`): the fraction of filters a 2-D Gabor fits with R² above the 95th
percentile of white-noise filters, counted with and without asking the envelope to be
localized (√(σ_u σ_v) <= 3 px, a quarter of the patch: PCA's plane waves fit a patch-wide
Gabor); the fraction above the 95th percentile of each model's own phase-randomized filters
(a stricter null); and the spread/orientedness edge fraction. The verdict uses the localized
Gabor fraction; over seeds (data split, initialization, noise), mean ± SE and one-sided paired
t-tests DAE > AE+wd and DAE > PCA (`aecore.stats.ordering_verdict`).

Diagnosis (why the issue's run "diverged"): learning curves of the logged batch loss and the
held-out loss for the issue's recipe (ZCA ε → 0, unit variance, Adam 1e-3) and one factor
changed at a time; see experiments/README.md.

Command:
  python -m experiments.exp_edges            # default, 37 min on 2 shared CPU cores
  python -m experiments.exp_edges --quick    # seconds (tests)

Expected (paper): DAE filters Gabor-like edges, AE+wd's "no recognizable structure", PCA global.
Measured here (3 seeds): localized Gabor fits DAE 55.3 ± 1.5%, AE+wd 40.3 ± 0.9%, PCA 0%;
above their own phase-randomized filters 96% / 4% / 10%; verdict "reproduced". The issue's run
did not diverge (the logged loss is one batch's); it stalled on a linear plateau: σ = 0.5 must
dominate the data's variance (0.1, as in the paper's images) and Adam needs 1e-2, not 1e-3.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aecore import Objective, filters, stats
from aecore.data import load_dataset
from aecore.models import ModelSpec
from aecore.run import train_model
from aecore.train import TrainConfig
from experiments import common

NAME = "edges"
PATCH = 12
HIDDEN = 200
SIGMA = 0.5
# Olshausen & Field's whitened images have pixel variance 0.1; σ = 0.5 is noise relative to it.
PIXEL_STD = float(np.sqrt(0.1))
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2)
PCA_COMPONENTS = 100


def patches(*, num_patches: int, seed: int, normalization: str = "whiten", **kwargs):
    """Flattened 12x12 natural-image patches [N, 144] (train, test), pixel std `PIXEL_STD`."""
    ds = load_dataset(
        "patches",
        images="skimage",
        patch_size=PATCH,
        num_patches=num_patches,
        normalization=normalization,
        seed=seed,
        **kwargs,
    )
    x_train, x_test = common.flat(ds.x_train), common.flat(ds.x_test)
    scale = PIXEL_STD / float(x_train.std())
    return (x_train * scale).astype(np.float32), (x_test * scale).astype(np.float32), ds


def train_tied(
    x_train: np.ndarray,
    x_test: np.ndarray,
    *,
    objective: Objective,
    steps: int,
    learning_rate: float,
    seed: int,
    points: int = 10,
) -> tuple[Any, dict[str, list[float]]]:
    """200 tied sigmoid units, affine decoder, Adam, batch 64: the model and its learning curve.

    `aecore.run.train_model` (the spec built from the seed, then `fit`) runs in `points` chunks
    in one work folder (each call resumes from the
    last checkpoint, so the run is the same as one call); after each chunk the held-out
    DENOISING loss (the objective itself, on fixed noise) is measured. The curve also holds
    the loss of the single batch `fit` logs every `steps // 50` steps, the number an
    unsmoothed training log shows.
    """
    import tempfile

    spec = ModelSpec(hidden=(HIDDEN,), activation="sigmoid", output="identity", tied=True)
    sigma = objective.corruption_level if objective.corruption == "gaussian" else 0.0
    log_every = max(1, steps // 50)
    out: dict[str, list[float]] = {"step": [], "heldout_loss": [], "batch_step": []}
    out["batch_loss"] = []
    with tempfile.TemporaryDirectory() as workdir:
        for k in range(1, points + 1):
            config = TrainConfig(
                num_steps=max(1, steps * k // points),
                batch_size=64,
                learning_rate=learning_rate,
                seed=seed,
                log_every=log_every,
                progress=False,
            )
            r = train_model(spec, objective, x_train, config=config, workdir=workdir)
            out["step"].append(r.step)
            out["heldout_loss"].append(denoising_loss(r.model, x_test, sigma=sigma, seed=seed + 1))
    out["batch_step"] = [int(h["step"]) for h in r.history]
    out["batch_loss"] = [float(h["loss"]) for h in r.history]
    return r.model, out


@jax.jit
def _denoising_loss(model, x_tilde: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.mean(jnp.sum((jax.vmap(model)(x_tilde) - x) ** 2, axis=1))


def denoising_loss(model, x: np.ndarray, *, sigma: float, seed: int) -> float:
    """Mean Σ_j (x̂_j(x̃) − x_j)² over x [N, D] with x̃ = x + σ ε (fixed noise)."""
    x_tilde = x + sigma * np.random.default_rng(seed).standard_normal(x.shape)
    return float(_denoising_loss(model, jnp.asarray(x_tilde, jnp.float32), jnp.asarray(x)))


@jax.jit
def _codes(model, x: jax.Array) -> jax.Array:
    return jax.vmap(model.encode)(x)


def code_stats(model, x: np.ndarray) -> dict[str, float]:
    h = np.asarray(_codes(model, jnp.asarray(x)))
    return {"mean_activation": float(h.mean()), "fraction_below_0.05": float(np.mean(h < 0.05))}


def score(kernel: np.ndarray, threshold: float, *, seed: int) -> dict[str, float]:
    """Gabor-fit fractions and the spread/orientedness edge fraction of kernel [144, k]."""
    return {
        **filters.gabor_summary(kernel, (PATCH, PATCH), threshold=threshold, seed=seed),
        **filters.edge_fraction(kernel, (PATCH, PATCH)),
    }


def kernel_of(model) -> np.ndarray:
    return np.asarray(model.encoder.layers[0].kernel[...], np.float64)  # [144, 200]


def pca_components(x_train: np.ndarray, k: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=k).fit(x_train).components_.T  # [144, k]


# --------------------------------------------------------------------------------------------
# Diagnosis: what made the run look divergent, and what stalled it.

# (label, data kwargs, pixel std, Adam learning rate); the run first, then one change
# at a time from it, then the recipe.
_ZCA_FULL = {"normalization": "zca", "zca_epsilon": 1e-5}
DIAGNOSIS: tuple[tuple[str, dict, float, float], ...] = (
    ("issue: ZCA ε=1e-5, unit var, lr 1e-3", _ZCA_FULL, 1.0, 1e-3),
    ("ZCA ε=1e-5, unit var, lr 1e-2", _ZCA_FULL, 1.0, 1e-2),
    ("O&F whitening, var 0.1, lr 1e-3", {"normalization": "whiten"}, PIXEL_STD, 1e-3),
    ("O&F whitening, unit var, lr 1e-2", {"normalization": "whiten"}, 1.0, 1e-2),
    ("ZCA ε=0.1, var 0.1, lr 1e-2", {"normalization": "zca", "zca_epsilon": 0.1}, PIXEL_STD, 1e-2),
    ("recipe: O&F whitening, var 0.1, lr 1e-2", {"normalization": "whiten"}, PIXEL_STD, 1e-2),
)  # fmt: skip


def diagnose(
    *,
    num_patches: int,
    steps: int,
    threshold: float,
    seed: int,
    rows=DIAGNOSIS,
    scored: int = 50,
    points: int = 10,
) -> list[dict]:
    """Trains the DAE under each setting of `rows` (label, data kwargs, pixel std, lr)."""
    out = []
    obj = Objective(loss="squared_error", corruption="gaussian", corruption_level=SIGMA)
    for label, data_kwargs, std, lr in rows:
        x_train, x_test, _ = patches(num_patches=num_patches, seed=seed, **data_kwargs)
        x_train, x_test = x_train * (std / PIXEL_STD), x_test * (std / PIXEL_STD)
        t0 = time.perf_counter()
        model, learning = train_tied(
            x_train, x_test, objective=obj, steps=steps, learning_rate=lr, seed=seed, points=points
        )
        g = filters.gabor_summary(kernel_of(model)[:, :scored], (PATCH, PATCH), threshold=threshold)
        out.append(
            {
                "label": label,
                "pixel_std": std,
                "learning_rate": lr,
                "max_abs_input": float(np.abs(x_train).max()),
                "curve": learning,
                # What a zero output scores: the scale the losses above are to be read against.
                "heldout_zero_output_loss": float(np.mean(np.sum(x_test**2, axis=1))),
                **code_stats(model, x_test),
                "gabor_fraction_scored": g["gabor_fraction"],
                "gabor_fraction_vs_surrogate_scored": g["gabor_fraction_vs_surrogate"],
                "s": round(time.perf_counter() - t0, 1),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# The comparison: DAE vs AE + weight decay vs PCA over seeds.

# Units are exchangeable, so the first SCORED filters are a random sample of a model's filters.
SCORED = 100
VERDICT_METRIC = "localized_gabor_fraction"
METRICS = (
    VERDICT_METRIC,
    "gabor_fraction",
    "gabor_fraction_vs_surrogate",
    "edge_like_fraction",
)


def compare(
    *,
    seeds: list[int],
    num_patches: int,
    steps: int,
    threshold: float,
    points: int,
    scored: int = SCORED,
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS,
) -> dict[str, Any]:
    """Trains DAE and AE+wd (λ chosen on seeds[0]) per seed, scores them and PCA."""
    dae_obj = Objective(loss="squared_error", corruption="gaussian", corruption_level=SIGMA)
    data = {s: patches(num_patches=num_patches, seed=s) for s in seeds}
    x_train, x_test, ds = data[seeds[0]]

    # λ for AE+wd: the grid value whose filters look MOST like edges on the first seed by the
    # verdict's measure, the choice most favourable to the baseline (a DAE win then cannot
    # come from a bad λ).
    grid = {}
    for wd in weight_decays if len(weight_decays) > 1 else ():  # one value: nothing to pick
        obj = Objective(loss="squared_error", weight_decay=wd)
        model, _ = train_tied(
            x_train, x_test, objective=obj, steps=steps, learning_rate=1e-2, seed=seeds[0],
            points=1,
        )  # fmt: skip
        grid[str(wd)] = score(kernel_of(model)[:, :scored], threshold, seed=seeds[0])
    best_wd = max(weight_decays, key=lambda wd: grid[str(wd)][VERDICT_METRIC] if grid else 0)
    ae_obj = Objective(loss="squared_error", weight_decay=best_wd)

    per_seed: dict[str, list[dict]] = {"dae": [], "ae_wd": [], "pca": []}
    kernels, curves = {}, {}
    for s in seeds:
        x_train, x_test, _ = data[s]
        for name, obj in (("dae", dae_obj), ("ae_wd", ae_obj)):
            t0 = time.perf_counter()
            model, learning = train_tied(
                x_train, x_test, objective=obj, steps=steps, learning_rate=1e-2, seed=s,
                points=points,
            )  # fmt: skip
            row = score(kernel_of(model)[:, :scored], threshold, seed=s)
            row.update(code_stats(model, x_test), train_s=round(time.perf_counter() - t0, 1))
            row["heldout_denoising_loss"] = denoising_loss(model, x_test, sigma=SIGMA, seed=s + 1)
            per_seed[name].append(row)
            if s == seeds[0]:
                kernels[name], curves[name] = kernel_of(model), learning
        pca = pca_components(x_train, PCA_COMPONENTS)
        per_seed["pca"].append(score(pca[:, :scored], threshold, seed=s))
        if s == seeds[0]:
            kernels["pca"] = pca

    verdicts = {}
    for metric in METRICS:
        # ordering_verdict expects the smaller value first: negate "more edge-like is better".
        neg = {m: [-r[metric] for r in rows] for m, rows in per_seed.items()}
        verdicts[metric] = {
            f"dae>{other}": stats.ordering_verdict(neg, ["dae", other])
            for other in ("ae_wd", "pca")
        }
    return {
        "data": ds.description + f"; rescaled to pixel std {PIXEL_STD:.4f} (variance 0.1)",
        "seeds": seeds,
        "ae_weight_decay_grid": grid,
        "ae_weight_decay": best_wd,
        "per_seed": per_seed,
        "verdicts": verdicts,
        "kernels": kernels,
        "curves": curves,
    }


def summarize(per_seed: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """method -> metric -> [mean, SE] over seeds."""
    return {
        m: {k: list(stats.mean_se([r[k] for r in rows])) for k in METRICS}
        for m, rows in per_seed.items()
    }


# --------------------------------------------------------------------------------------------
# Figures


def _plot_claim(path, kernels, summary, n: int) -> None:
    """The claim to the eye: the first n filters of DAE, AE+wd and PCA side by side."""
    plt = common.pyplot()
    cols = int(np.ceil(np.sqrt(n)))
    titles = {"dae": f"DAE σ={SIGMA}", "ae_wd": "AE + weight decay", "pca": "PCA"}
    fig = plt.figure(figsize=(12, 4.6))
    outer = fig.add_gridspec(1, 3, wspace=0.08)
    for j, name in enumerate(("dae", "ae_wd", "pca")):
        inner = outer[j].subgridspec(cols, cols, wspace=0.05, hspace=0.05)
        w = kernels[name][:, :n].T
        w = w / np.linalg.norm(w, axis=1, keepdims=True)
        for i in range(cols * cols):
            ax = fig.add_subplot(inner[i // cols, i % cols])
            ax.axis("off")
            if i < len(w):
                lim = np.abs(w[i]).max()
                ax.imshow(w[i].reshape(PATCH, PATCH), cmap="gray", vmin=-lim, vmax=lim)
            if i == cols // 2:
                g, se = summary[name]["localized_gabor_fraction"]
                ax.set_title(f"{titles[name]}\nlocalized Gabors {g:.0%} ± {se:.0%}", fontsize=10)
    common.save_figure(fig, path, dpi=90, tight=False, bbox_inches="tight")


def _plot_curves(path, curves: dict[str, dict]) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, c in curves.items():
        (line,) = axes[1].plot(c["step"], c["heldout_loss"], marker="o", ms=3, label=label)
        axes[0].plot(c["batch_step"], c["batch_loss"], lw=0.6, alpha=0.8, color=line.get_color())
    axes[0].set(xlabel="step", ylabel="logged loss (one batch of 64)", yscale="log")
    axes[0].set_title("what a training log shows: one batch per log line", fontsize=9)
    axes[1].set(xlabel="step", ylabel="held-out denoising loss (fixed noise)", yscale="log")
    axes[1].set_title("the objective on 10k held-out patches", fontsize=9)
    axes[1].legend(fontsize=7)
    common.save_figure(fig, path)


# --------------------------------------------------------------------------------------------


def run(args) -> dict[str, Any]:
    ctx = common.setup(NAME, args)
    out = ctx.out
    quick = bool(args.quick)
    num_patches = 3000 if quick else 50000
    steps = 60 if quick else 10000
    points = 1 if quick else 10
    seeds = [args.seed + i for i in range(2 if quick else 3)]

    t0 = time.perf_counter()
    threshold = filters.white_noise_r2_threshold(
        (PATCH, PATCH), num_filters=6 if quick else 200, seed=args.seed
    )
    threshold_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    comparison = compare(
        seeds=seeds,
        num_patches=num_patches,
        steps=steps,
        threshold=threshold,
        points=points,
        scored=4 if quick else SCORED,
        weight_decays=WEIGHT_DECAYS[1:2] if quick else WEIGHT_DECAYS,
    )
    compare_s = time.perf_counter() - t0
    summary = summarize(comparison["per_seed"])
    _plot_claim(out / "edges_claim.png", comparison["kernels"], summary, n=16 if quick else 49)

    t0 = time.perf_counter()
    rows = DIAGNOSIS[:1] if quick else DIAGNOSIS
    diagnosis = diagnose(
        num_patches=num_patches,
        steps=steps,
        threshold=threshold,
        seed=args.seed,
        rows=rows,
        scored=4 if quick else 50,
        points=points,
    )
    diagnosis_s = time.perf_counter() - t0
    _plot_curves(out / "learning_curves.png", {d["label"]: d["curve"] for d in diagnosis})

    main_verdict = comparison["verdicts"][VERDICT_METRIC]
    if quick:
        # 60 steps on 2 seeds cannot confirm a paired test; the quick claim is the measure's
        # own: PCA's plane waves are never localized Gabors, the DAE's filters already some.
        pca = [row[VERDICT_METRIC] for row in comparison["per_seed"]["pca"]]
        dae = [row[VERDICT_METRIC] for row in comparison["per_seed"]["dae"]]
        checks = [
            common.check(
                "quick_dae_minus_pca_localized_gabor_fraction",
                float(np.mean(dae) - np.mean(pca)),
                ">",
                0.0,
                why="quick: DAE filters localized Gabors more often than PCA's; the default "
                "run checks the paired tests",
            )
        ]
    else:
        checks = [
            common.Check(
                f"localized_gabor_fraction {pair}",
                "confirmed (one-sided paired t-test over seeds, Holm-corrected)",
                v["pairs"][0]["status"],
                v["pairs"][0]["status"] == "confirmed",
            )
            for pair, v in main_verdict.items()
        ]
    verdicts = [v["verdict"] for v in main_verdict.values()]
    overall = (
        "reproduced"
        if all(v == "reproduced" for v in verdicts)
        else "not reproduced"
        if all(v == "not reproduced" for v in verdicts)
        else "partly reproduced"
    )
    results = {
        "data": comparison["data"],
        "quick": quick,
        "protocol": {
            "patch": PATCH,
            "hidden": HIDDEN,
            "sigma": SIGMA,
            "pixel_std": PIXEL_STD,
            "steps": steps,
            "batch_size": 64,
            "optimizer": "adam",
            "learning_rate": 1e-2,
            "num_patches": num_patches,
            "scored_filters": SCORED,
            "pca_components": PCA_COMPONENTS,
        },  # fmt: skip
        "white_noise_r2_p95": threshold,
        "seeds": comparison["seeds"],
        "ae_weight_decay_grid": comparison["ae_weight_decay_grid"],
        "ae_weight_decay": comparison["ae_weight_decay"],
        "summary_mean_se": summary,
        "per_seed": comparison["per_seed"],
        "verdicts": comparison["verdicts"],
        "verdict": overall,
        "curves": comparison["curves"],
        "diagnosis": diagnosis,
        "threshold_s": round(threshold_s, 1),
        "compare_s": round(compare_s, 1),
        "diagnosis_s": round(diagnosis_s, 1),
    }
    return common.finish(NAME, ctx, args, results, checks=checks)


main = common.main_for(run, __doc__)


if __name__ == "__main__":
    main()
