"""Contractive autoencoders (Rifai et al., 2011): the exact Jacobian penalty makes the encoder
sensitive along the data and contracted across it.

(a) 2-D data along a line u1 (30°) with small noise along u2: a one-layer sigmoid CAE's
    Jacobian J(x) [k, 2] has its leading right singular vector along u1 at every point (mean
    |cos(v1, u1)| checked > 0.9) and a much smaller second singular value (figure cae_2d.png).
(b) Digits (or --data mnist10k): AE, DAE (mask 0.25), CAE (λ = 0.03) and CAE+H (γ = 1, σ = 0.3),
    128 sigmoid codes, sigmoid decoder, cross-entropy: contraction curves
    ‖h(x) − h(x')‖ / ‖x − x'‖ against ‖x − x'‖ (contraction.png), Jacobian spectra, mean ‖J‖_F
    and the fraction of saturated codes.
(c) The closed-form penalty Σ_j g'(a_j)² ‖W_j‖² and the exact autodiff one (jacrev) train the
    one-layer sigmoid CAE identically: same seed, both modes, max |Δθ| at float32 round-off.

Command:  python -m experiments.exp_contractive [--quick] [--out DIR] [--data digits|mnist10k]
Expected: (a) mean |cos| > 0.9 (1.0000 here); (b) mean ‖J‖_F of CAE and CAE+H below the AE's
  (CAE+H lowest); (c) max |Δθ| ~1e-7 (float32; 1.2e-7 here after 500 steps).
Runtime:  about 3.5 min on 2 shared CPU cores (digits); --quick about 20 s.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aecore import Objective, jacobian, plots
from aecore import evaluate as ev
from experiments import common

NAME = "contractive"
ANGLE = np.pi / 6
U1 = np.array([np.cos(ANGLE), np.sin(ANGLE)])
U2 = np.array([-np.sin(ANGLE), np.cos(ANGLE)])


def line_data(n: int, *, noise: float, seed: int) -> np.ndarray:
    """n points t·u1 + ε·u2, t ~ U(−1, 1), ε ~ N(0, noise²): [n, 2] float32."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-1.0, 1.0, n)
    return (t[:, None] * U1 + noise * rng.standard_normal(n)[:, None] * U2).astype(np.float32)


@jax.jit
def _jacobians(model, x):  # [B, d] -> [B, k, d]
    return jacobian.jacobian(model.encode, x, mode="jacrev")


def part_a(ctx, *, n: int, steps: int, weight: float, seed: int, out) -> dict[str, Any]:
    x = line_data(n, noise=0.05, seed=seed)
    fit = common.fit_record(
        ctx,
        "2d_line",
        x,
        model=dict(hidden=(16,), activation="sigmoid", output="identity"),
        objective=Objective(loss="squared_error", contractive=weight),
        train=dict(num_steps=steps, batch_size=min(128, n), learning_rate=1e-2, log_every=100),
        seed=seed,
    )
    x_eval = line_data(200, noise=0.05, seed=seed + 1)
    jac = np.asarray(_jacobians(fit.model, jnp.asarray(x_eval)), dtype=np.float64)  # [B, k, 2]
    _, s, vt = np.linalg.svd(jac)  # vt[:, 0] leading right singular vector
    cos = np.abs(vt[:, 0] @ U1)
    plot_2d(out / "cae_2d.png", x, x_eval, s, vt)
    return {
        "n_train": n,
        "contractive_weight": weight,
        "mean_abs_cos_v1_u1": float(cos.mean()),
        "min_abs_cos_v1_u1": float(cos.min()),
        "mean_singular_values": s.mean(axis=0),
        "singular_value_ratio_s2_over_s1": float(np.mean(s[:, 1] / s[:, 0])),
        "train_reconstruction": fit.history[-1]["reconstruction"],
    }


def plot_2d(path, x, x_eval, s, vt) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    ax.scatter(x[:, 0], x[:, 1], s=2, c="0.7")
    idx = np.argsort(x_eval @ U1)[::10]
    scale = 0.1 / s[:, 0].max()
    for i in idx:
        for j, c in ((0, "C3"), (1, "C0")):
            d = vt[i, j] * s[i, j] * scale
            p = x_eval[i]
            ax.plot([p[0] - d[0], p[0] + d[0]], [p[1] - d[1], p[1] + d[1]], c=c, lw=1.5)
    ax.plot([], [], c="C3", label="v1 · s1")
    ax.plot([], [], c="C0", label="v2 · s2")
    ax.set_aspect("equal")
    ax.legend(fontsize=8)
    ax.set_title("right singular vectors of J(x), scaled by singular values", fontsize=9)
    t = x_eval @ U1
    order = np.argsort(t)
    axes[1].semilogy(t[order], s[order, 0], label="s1 (along data)")
    axes[1].semilogy(t[order], s[order, 1], label="s2 (across data)")
    axes[1].set(xlabel="position along u1", ylabel="singular value of J")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


MODELS = {
    "AE": Objective(loss="cross_entropy"),
    "DAE": Objective(loss="cross_entropy", corruption="mask", corruption_level=0.25),
    # λ = 0.03 keeps the CAE's sigmoid codes nonlinear (at λ = 0.3 they shrink into the linear
    # regime where J is nearly constant and the higher-order term has nothing left to do).
    "CAE": Objective(loss="cross_entropy", contractive=0.03),
    "CAE+H": Objective(
        loss="cross_entropy", contractive=0.03, higher_order=1.0, higher_order_sigma=0.3
    ),
}


def part_b(ctx, x_train, x_test, *, hidden: int, train: dict, seed: int, out) -> dict[str, Any]:
    curves, table, spectra = {}, {}, {}
    x_eval = x_test[:500]
    dist = float(np.median(np.linalg.norm(x_eval[:100] - x_eval[100:200], axis=1)))
    radii = dist * np.geomspace(0.01, 1.0, 12)
    for name, objective in MODELS.items():
        fit = common.fit_record(
            ctx,
            f"digits_{name}",
            x_train,
            x_test,
            model=dict(hidden=(hidden,), activation="sigmoid", output="sigmoid"),
            objective=objective,
            train=train,
            seed=seed,
        )
        model = fit.model
        curves[name] = ev.contraction_curve(
            model, x_eval, radii=radii, num_pairs=200, key=jax.random.key(seed)
        )
        spectra[name] = ev.jacobian_spectrum(model, x_eval, max_examples=100)
        table[name] = {
            "test_cross_entropy": ev.reconstruction_error(model, x_test, loss="cross_entropy"),
            "mean_jacobian_frobenius": float(ev.jacobian_norms(model, x_eval).mean()),
            "saturated_fraction": ev.saturation(model, x_eval, tol=0.05),
            "top_singular_values": np.median(spectra[name], axis=0)[:5],
        }
        print(f"{name}: {table[name]}")
    plots.save_contraction_curves(out / "contraction.png", curves)
    plots.save_spectrum(out / "spectrum_CAE.png", spectra["CAE"])
    plots.save_spectrum(out / "spectrum_AE.png", spectra["AE"])
    return {"models": table, "curves": curves, "median_pair_distance": dist}


def part_c(ctx, x_train, *, hidden: int, steps: int, seed: int) -> dict[str, Any]:
    params = {}
    for mode in ("closed_form", "jacrev"):
        fit = common.fit_record(
            ctx,
            f"route_{mode}",
            x_train,
            model=dict(hidden=(hidden,), activation="sigmoid", output="sigmoid"),
            objective=Objective(loss="cross_entropy", contractive=0.3, jacobian_mode=mode),
            train=dict(num_steps=steps, batch_size=64, learning_rate=1e-3, log_every=steps),
            seed=seed,
        )
        params[mode] = [np.asarray(p, np.float64) for p in jax.tree.leaves(fit.model)]
    diffs = [np.abs(a - b).max() for a, b in zip(*params.values(), strict=True)]
    scale = max(np.abs(a).max() for a in params["jacrev"])
    return {
        "steps": steps,
        "max_abs_param_diff": float(max(diffs)),
        "max_abs_param": float(scale),
    }


def run(args) -> dict[str, Any]:
    ctx = common.setup(NAME, args)
    out, x_train, x_test = ctx.out, ctx.x_train, ctx.x_test
    if args.quick:
        a = part_a(ctx, n=500, steps=1000, weight=0.1, seed=args.seed, out=out)
        x_train, x_test = x_train[:600], x_test[:200]
        train = dict(num_steps=300, batch_size=64, learning_rate=3e-3, log_every=100)
        b = part_b(ctx, x_train, x_test, hidden=64, train=train, seed=args.seed, out=out)
        c = part_c(ctx, x_train, hidden=32, steps=50, seed=args.seed)
    else:
        a = part_a(ctx, n=2000, steps=3000, weight=0.1, seed=args.seed, out=out)
        train = dict(num_steps=3000, batch_size=64, learning_rate=3e-3, log_every=100)
        b = part_b(ctx, x_train, x_test, hidden=128, train=train, seed=args.seed, out=out)
        c = part_c(ctx, x_train, hidden=128, steps=500, seed=args.seed)
    m = b["models"]
    ae_norm = m["AE"]["mean_jacobian_frobenius"]
    checks = [
        common.check(
            "2d_mean_abs_cos_v1_u1",
            a["mean_abs_cos_v1_u1"],
            ">",
            0.9,
            why="the leading singular vector of J lies along the data line",
        ),
        common.check(
            "cae_jacobian_norm_over_ae",
            m["CAE"]["mean_jacobian_frobenius"] / ae_norm,
            "<",
            1.0,
            why="the penalty contracts",
        ),
        common.check(
            "caeh_jacobian_norm_over_ae",
            m["CAE+H"]["mean_jacobian_frobenius"] / ae_norm,
            "<",
            1.0,
            why="CAE+H contracts too",
        ),
        common.check(
            "closed_form_vs_jacrev_max_abs_param_diff",
            c["max_abs_param_diff"],
            "<",
            1e-4,
            why="the closed form trains the same weights as autodiff",
        ),
    ]
    results = {"part_a_2d": a, "part_b_contraction": b, "part_c_closed_form_vs_exact": c}
    return common.finish(NAME, ctx, args, results, checks=checks)


main = common.main_for(run, __doc__)


if __name__ == "__main__":
    main()
