"""An overcomplete autoencoder (d_h ≥ d_x) without regularization learns to copy its input; each
regularizer (weight decay, tied weights, KL sparsity, denoising, contraction) prevents it.

Digits in [0, 1] (d_x = 64), 256 sigmoid codes, linear decoder, squared error. Per variant:
- train/test reconstruction error (Σ_j over pixels, mean over examples);
- identity distance ‖J_x x̂ − I‖²_F / d of the exact Jacobian of the whole map x ↦ x̂ on test
  inputs (0 for a perfect copier; 1 for a constant map);
- noise ratio ‖x̂(x̃) − x‖² / ‖x̃ − x‖² on test inputs with Gaussian noise σ = 0.2: 1 means the
  noise is copied through (no better than the corrupted input itself), < 1 means it is removed.
The plain AE copies (training error ≈ 0, noise ratio ≈ 1: a noisy input comes out as noisy as
it went in). Weight decay, tied weights, denoising and contraction lower the noise ratio; KL
sparsity moves the map far from the identity but raises the noise ratio (its few active units
have high gain: sparsity is not contraction). Bar chart: overcomplete.png.

Command:  python -m experiments.exp_overcomplete [--quick] [--out DIR]
Expected (default run here): plain train error 0.039 (0.8% of the data variance), noise ratio
  1.04; noise ratio 0.53 (weight decay), 0.81 (tied), 0.28 (denoising), 0.53 (contractive),
  3.65 (sparse, identity distance 1.30 vs plain 0.22).
Runtime:  about 2 min on 2 CPU cores (shared); --quick about 20 s.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aecore import Objective
from aecore import evaluate as ev
from experiments import common

NAME = "overcomplete"
NOISE_SIGMA = 0.2

# name -> (objective, tied). Weights chosen so each regularizer visibly acts at this scale.
VARIANTS: dict[str, tuple[Objective, bool]] = {
    "plain": (Objective(), False),
    "weight decay": (Objective(weight_decay=1e-3), False),
    "tied": (Objective(), True),
    "sparse (KL)": (Objective(kl=0.5, rho=0.05), False),
    "denoising": (Objective(corruption="gaussian", corruption_level=NOISE_SIGMA), False),
    "contractive": (Objective(contractive=0.1), False),
}


@jax.jit
def _map_jacobians(model, x):  # [B, d] -> [B, d, d], exact Jacobian of x ↦ x_hat
    return jax.vmap(jax.jacrev(model))(x)


def identity_distance(model, x: np.ndarray) -> float:
    """Mean over x [N, d] of ‖J_x x̂ − I‖²_F / d (flat inputs)."""
    jac = np.asarray(_map_jacobians(model, jnp.asarray(x)), dtype=np.float64)
    d = x.shape[1]
    return float(np.mean(np.sum((jac - np.eye(d)) ** 2, axis=(1, 2))) / d)


def measure(model, x_train: np.ndarray, x_test: np.ndarray, *, seed: int) -> dict[str, float]:
    """The measures of the module docstring for one trained model."""
    return {
        "train_error": ev.reconstruction_error(model, x_train, loss="squared_error"),
        "test_error": ev.reconstruction_error(model, x_test, loss="squared_error"),
        "identity_distance": identity_distance(model, x_test[:200]),
        "noise_ratio": ev.noise_ratio(model, x_test, sigma=NOISE_SIGMA, seed=seed),
    }


def plot_bars(path, table: dict[str, dict[str, float]], keys: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    titles = {
        "train_error": "train error (Σ pixels)",
        "test_error": "test error (Σ pixels)",
        "identity_distance": "‖J x̂ − I‖²_F / d  (0 = copier)",
        "noise_ratio": "noisy-input ratio (1 = noise copied)",
        "weight_norm": "Σ‖W‖_F",
    }
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.4))
    for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
        ax.bar(range(len(names)), [table[n][key] for n in names], color="C0")
        ax.bar([0], [table[names[0]][key]], color="C3")
        if key == "noise_ratio":
            ax.axhline(1.0, c="k", ls="--", lw=1)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(titles.get(key, key), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def copier_settings(*, quick: bool) -> tuple[int, dict[str, Any]]:
    """(code size, train kwargs) of the overcomplete copier, shared with exp_weight_decay_tied."""
    steps = 500 if quick else 4000
    return (128 if quick else 256), dict(num_steps=steps, batch_size=128, learning_rate=1e-2)


def fit_copier(
    x_train: np.ndarray, objective: Objective, *, tied: bool, hidden: int, train: dict, seed: int
):
    """Trains the copier: `hidden` sigmoid codes, linear decoder, on x_train [N, d]."""
    return common.train_model(
        x_train,
        model=dict(hidden=(hidden,), activation="sigmoid", output="identity", tied=tied),
        objective=objective,
        train=dict(log_every=100, **train),
        seed=seed,
    )


def run(args) -> dict[str, Any]:
    ctx = common.setup(NAME, args)
    out, x_train, x_test = ctx.out, ctx.x_train, ctx.x_test
    hidden, train = copier_settings(quick=args.quick)
    if hidden < x_train.shape[1]:
        hidden = 2 * x_train.shape[1]
    table = {}
    for name, (objective, tied) in VARIANTS.items():
        fit = fit_copier(x_train, objective, tied=tied, hidden=hidden, train=train, seed=args.seed)
        table[name] = measure(fit.model, x_train, x_test, seed=args.seed)
        print(f"{name:>14}: " + ", ".join(f"{k} {v:.4f}" for k, v in table[name].items()))
    plot_bars(out / "overcomplete.png", table, ("train_error", "identity_distance", "noise_ratio"))
    plain = table["plain"]
    data_energy = float(np.mean(np.sum((x_train - x_train.mean(0)) ** 2, axis=1)))
    checks = {
        # The copier's training error is a small fraction of the data's variance.
        "plain_copies_train_error_below_5pct_of_variance": plain["train_error"]
        < 0.05 * data_energy,
        "plain_noise_ratio_near_1": plain["noise_ratio"] > 0.9,
        # Weight decay, tying, denoising and contraction shrink the encoder's gain: less noise
        # passes through. KL sparsity does not (its few active units have high gain), but its map
        # is far from the identity: it stops the copy by the other measure.
        "wd_tied_dae_cae_lower_noise_ratio": all(
            table[k]["noise_ratio"] < plain["noise_ratio"]
            for k in ("weight decay", "tied", "denoising", "contractive")
        ),
        "sparse_map_farther_from_identity": table["sparse (KL)"]["identity_distance"]
        > plain["identity_distance"],
    }
    results = {
        "hidden": hidden,
        "input_dim": int(x_train.shape[1]),
        "noise_sigma": NOISE_SIGMA,
        "train": train,
        "data_variance_sum": data_energy,
        "variants": table,
    }
    return common.finish(NAME, ctx, args, results, checks=checks)


main = common.main_for(run, __doc__)


if __name__ == "__main__":
    main()
