"""rCAE and the score (Alain & Bengio 2014): a regularized autoencoder's reconstruction r(x) − x
points along the score of the data density, r(x) − x ≈ λ ∇log p(x).

Alain & Bengio (2014): the Gaussian DAE with noise σ, min E‖r(x + ε) − x‖², and
the reconstruction-contractive AE (rCAE), min E‖r(x) − x‖² + λ‖∂r(x)/∂x‖²_F, have the same
small-noise optimum when λ = σ²: r(x) = x + σ² ∇log p(x) + o(σ²). We use that form: the target
field is λ ∇log p with λ = σ² for both.

Densities with a known score (equal-weight mixtures of isotropic Gaussians, score in closed form):
  - "mixture": three Gaussians of std 0.3;
  - "circle", "spiral": `aecore.data.sample_manifold` with noise 0.1, i.e. the curve's uniform
    distribution convolved with N(0, 0.1² I); its score is that of the mixture of the noise
    Gaussian centred on 2000 curve points (drawn by the same function with noise 0).
Per density and seed, one model (2 → 64 → 64 softplus, linear decoder, squared error) trained
four ways for the same steps: plain AE (control), Gaussian DAE (σ), exact rCAE (λ = σ²,
`Objective(reconstruction_contractive=λ)`) and rCAE with a 1-probe Hutchinson estimate of it.
Measured at the points of a 64 × 64 grid within 2 std of a centre (where the data are): mean
cosine between r(x) − x and ∇log p, and the relative error ‖(r(x) − x) − λ∇log p‖ / ‖λ∇log p‖
(root of summed squares over the grid); the same against λ∇log p_λ, p smoothed by N(0, λ I),
the DAE's exact optimum at finite σ (Tweedie), to which the o(σ²) remainder of both optima
points. Exact against Hutchinson: `aecore.stats.ordering_verdict` on the relative error over
seeds (exact first).
Figure: vector fields against the true λ∇log p (score_fields.png).

Command:  python -m experiments.exp_score [--quick] [--out DIR]
Expected: on the mixture and the circle, DAE and rCAE fields aligned with the score (mean cosine
  > 0.8; relative error to λ∇log p_λ < 0.5), the plain AE's not (cosine < 0.8); on the spiral
  neither fits the field in this budget (recorded, not checked; see CHECKED); exact against
  Hutchinson rCAE: what is measured.
Runtime:  about 12 min on 2 CPU cores shared with other jobs (load ~15); --quick about
  50 s under that load (see experiments/README.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import softmax

from aecore import Objective, stats
from aecore.data import sample_manifold
from aecore.models import eval_mode
from experiments import common

NAME = "score"
SPEC = dict(hidden=(64, 64), activation="softplus", output="identity")
MANIFOLD_NOISE = 0.1
# DAE noise per density; λ = σ². The o(σ²) remainder is not small at these values: for one
# Gaussian of std s both optima are x + σ²/(s² + σ²)·(μ − x), i.e. λ∇log p_λ of the density
# smoothed by N(0, λ I) (Tweedie's formula, exact for the DAE at any σ), which we report too.
# Smaller σ (0.1 on the mixture, 0.05 on the curves) left r(x) − x (~0.03) below what these
# networks fit in the steps given: DAE mean cosine 0.59 and 0.12 (single seed, 4000 steps at lr
# 3e-3, compared where p >= 10% of its grid maximum; measured 2026-12-06).
SIGMA = {"mixture": 0.2, "circle": 0.1, "spiral": 0.1}
CONTROL, DAE, EXACT, HUTCHINSON = "AE", "DAE", "rCAE", "rCAE/hutchinson1"
GRID = 64
NEAR = 2.0  # the grid points compared: within NEAR · std of a mixture centre


@dataclasses.dataclass(frozen=True)
class Density:
    """An equal-weight mixture of isotropic Gaussians N(mean_c, std² I)."""

    name: str
    means: np.ndarray  # [C, 2]
    std: float

    def near(self, x: np.ndarray, *, radius: float) -> np.ndarray:  # [N, 2] -> bool [N]
        d2 = np.sum((x[:, None, :] - self.means[None]) ** 2, axis=-1)  # [N, C]
        return d2.min(axis=1) <= (radius * self.std) ** 2

    def smoothed(self, variance: float) -> Density:
        """The density convolved with N(0, variance · I)."""
        return Density(self.name, self.means, float(np.sqrt(self.std**2 + variance)))

    def score(self, x: np.ndarray) -> np.ndarray:  # [N, 2] -> ∇log p [N, 2]
        diff = self.means[None] - x[:, None, :]  # [N, C, 2]
        w = softmax(-np.sum(diff**2, axis=-1) / (2 * self.std**2), axis=1)  # [N, C]
        return np.einsum("nc,ncd->nd", w, diff) / self.std**2


def density(name: str) -> Density:
    if name == "mixture":
        means = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]])
        return Density(name, means, 0.3)
    curve, _ = sample_manifold(name, num_points=2000, noise=0.0, seed=12345)
    return Density(name, curve.astype(np.float64), MANIFOLD_NOISE)


def sample(d: Density, n: int, *, seed: int) -> np.ndarray:
    """n points of d [n, 2] float32 (the manifolds through `sample_manifold`)."""
    if d.name != "mixture":
        return sample_manifold(d.name, num_points=n, noise=MANIFOLD_NOISE, seed=seed)[0]
    rng = np.random.default_rng(seed)
    c = rng.integers(len(d.means), size=n)
    return (d.means[c] + d.std * rng.standard_normal((n, 2))).astype(np.float32)


def objectives(sigma: float) -> dict[str, Objective]:
    lam = sigma**2
    return {
        CONTROL: Objective(loss="squared_error"),
        DAE: Objective(loss="squared_error", corruption="gaussian", corruption_level=sigma),
        EXACT: Objective(loss="squared_error", reconstruction_contractive=lam),
        HUTCHINSON: Objective(
            loss="squared_error",
            reconstruction_contractive=lam,
            reconstruction_contractive_probes=1,
        ),
    }


def grid(d: Density) -> np.ndarray:
    """The points of a GRID × GRID grid over the centres' box (± NEAR std) that lie within
    NEAR std of a centre [G, 2]: where the data are (the density's mass), not its far tails."""
    lo, hi = d.means.min(axis=0) - NEAR * d.std, d.means.max(axis=0) + NEAR * d.std
    axes = [np.linspace(lo[i], hi[i], GRID) for i in range(2)]
    points = np.stack(np.meshgrid(*axes), axis=-1).reshape(-1, 2)
    return points[d.near(points, radius=NEAR)]


@jax.jit
def _displacement(model, x):  # [G, 2] -> r(x) − x [G, 2]
    m = eval_mode(model)
    return jax.vmap(lambda x1: m.decode(m.encode(x1)))(x) - x


def alignment(field: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean cosine of field and target [G, 2], and ‖field − target‖ / ‖target‖ over the grid."""
    norms = np.linalg.norm(field, axis=1) * np.linalg.norm(target, axis=1)
    cos = np.sum(field * target, axis=1) / np.maximum(norms, 1e-30)
    rel = np.sqrt(np.sum((field - target) ** 2) / np.sum(target**2))
    return {"mean_cosine": float(np.mean(cos)), "relative_error": float(rel)}


def run_density(name: str, *, n: int, train: dict, seeds: int) -> dict[str, Any]:
    d = density(name)
    sigma = SIGMA[name]
    trainers = {v: common.trainer(SPEC, o, **train) for v, o in objectives(sigma).items()}
    keys = [f"{m}{s}" for s in ("", "_smoothed") for m in ("mean_cosine", "relative_error")]
    table = {v: {key: [] for key in keys} for v in trainers}
    x_grid = grid(d)
    target = sigma**2 * d.score(x_grid)  # Alain & Bengio's λ∇log p
    smoothed = sigma**2 * d.smoothed(sigma**2).score(x_grid)  # λ∇log p_λ (Tweedie)
    fields = {"true λ∇log p": target}
    for seed in range(seeds):
        x = sample(d, n, seed=seed)
        for variant, train_model in trainers.items():
            model, _ = train_model(x, seed)
            field = np.asarray(_displacement(model, jnp.asarray(x_grid, jnp.float32)), np.float64)
            for suffix, t in (("", target), ("_smoothed", smoothed)):
                for key, value in alignment(field, t).items():
                    table[variant][key + suffix].append(value)
            if seed == 0:
                fields[variant] = field
    errors = {v: table[v]["relative_error"] for v in (EXACT, HUTCHINSON)}
    verdict = stats.ordering_verdict(errors, [EXACT, HUTCHINSON]) if seeds > 1 else None
    summary = {
        v: {key: stats.mean_se(values) for key, values in row.items()} for v, row in table.items()
    }
    print(name, {v: {k: round(m, 3) for k, (m, _) in s.items()} for v, s in summary.items()})
    return {
        "sigma": sigma,
        "lambda": sigma**2,
        "grid_points": len(x_grid),
        "runs": table,
        "mean_se": summary,
        "verdict_relative_error_exact_below_hutchinson1": verdict,
        "_fields": (x_grid, fields),
    }


def plot_fields(path, results: dict[str, dict]) -> None:
    plt = common.pyplot()
    names = ["true λ∇log p", CONTROL, DAE, EXACT, HUTCHINSON]
    fig, axes = plt.subplots(len(results), len(names), figsize=(3 * len(names), 3 * len(results)))
    for row, (density_name, r) in zip(np.atleast_2d(axes), results.items(), strict=True):
        x_grid, fields = r["_fields"]
        keep = np.arange(len(x_grid)) % 7 == 0
        longest = np.linalg.norm(fields["true λ∇log p"], axis=1).max()
        for ax, name in zip(row, names, strict=True):
            f = fields[name][keep]  # drawn to one scale: the longest true arrow 0.15 long
            ax.quiver(
                *x_grid[keep].T,
                *f.T,
                angles="xy",
                scale_units="xy",
                scale=longest / 0.15,
                width=0.006,
            )
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            cos = (
                ""
                if name not in r["mean_se"]
                else f" cos {r['mean_se'][name]['mean_cosine'][0]:.2f}"
            )
            ax.set_title(f"{density_name}: {name}{cos}", fontsize=8)
    common.save_figure(fig, path, dpi=80)


# The densities whose fields the checks bind. On the spiral (arms 0.6 apart, noise 0.1) the
# field flips direction every ~0.3 across the arms, and neither the DAE nor the rCAE fits it in
# this budget: mean cosine 0.21 / 0.24 (3 seeds); a DAE alone with 256-256 or 128-128-128
# softplus layers for 3000 steps reached 0.27 and 0.13 (measured 2026-12-06). Its numbers are
# recorded, not checked.
CHECKED = ("mixture", "circle")
# (cosine above, relative error to λ∇log p_λ below, the control's cosine below). --quick (300
# steps on 1000 points) cannot reach the default run's fit: there, means over its 2 seeds, DAE /
# rCAE cosines 0.79 / 0.84, relative errors 0.61 / 0.59, the control's cosine 0.40 (measured
# 2026-12-06; 200 steps gave cosines 0.61 / 0.58).
BOUNDS = {"default": (0.8, 0.5, 0.8), "quick": (0.6, 0.8, 0.6)}


def claims(results: dict[str, dict], *, quick: bool) -> list[common.Check]:
    cos_min, error_max, control_max = BOUNDS["quick" if quick else "default"]
    checks = []
    for name in CHECKED:
        if name not in results:
            continue
        s = results[name]["mean_se"]
        for v in (DAE, EXACT):
            why = "r(x) − x along the score (Alain & Bengio)"
            checks.append(
                common.check(f"{name}_{v}_cosine", s[v]["mean_cosine"][0], ">", cos_min, why=why)
            )
            why = "r(x) − x ≈ λ∇log p_λ, the DAE's exact optimum (Tweedie)"
            error = s[v]["relative_error_smoothed"][0]
            checks.append(
                common.check(f"{name}_{v}_relative_error_smoothed", error, "<", error_max, why=why)
            )
        why = "the control: without a regularizer r(x) − x does not follow the score"
        cos = s[CONTROL]["mean_cosine"][0]
        checks.append(common.check(f"{name}_{CONTROL}_cosine", cos, "<", control_max, why=why))
    return checks


def run(args) -> dict[str, Any]:
    ctx = common.setup(NAME, args)
    if args.quick:
        names, n, seeds = ("mixture",), 1000, 2
        train = dict(num_steps=300, batch_size=100, learning_rate=3e-2, lr_schedule="cosine")
    else:
        names, n, seeds = ("mixture", "circle", "spiral"), 10000, 3
        train = dict(num_steps=2000, batch_size=128, learning_rate=1e-2, lr_schedule="cosine")
    results = {name: run_density(name, n=n, train=train, seeds=seeds) for name in names}
    plot_fields(ctx.out / "score_fields.png", results)
    checks = claims(results, quick=args.quick)
    for r in results.values():
        del r["_fields"]
    fields = {
        "data": f"synthetic 2-D densities {list(names)}, {n} training points each",
        "model": SPEC,
        "train": train,
        "seeds": seeds,
        "densities": results,
    }
    return common.finish(NAME, ctx, args, fields, checks=checks)


main = common.main_for(run, __doc__)


if __name__ == "__main__":
    main()
