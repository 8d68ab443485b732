"""Calibrated intervals for ‖J‖²_F estimates (`jacobian.frobenius_sq_interval`): coverage at 95%
on user-written linear maps x -> A x of set spectra, and the standard errors behind them.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from matfree import stochtrace
from scipy import stats

from aecore import jacobian
from aecore.jacobian import estimate

K, D = 40, 48  # code and input sizes: min(k, d) = 40 > 32 probes, so no method is exact
INTERVALS = 500  # per (method, probes, spectrum) cell


def _spectra() -> dict[str, np.ndarray]:
    """Singular values of A: ‖A‖²_F = Σ s², tr(AᵀA)²/‖AᵀA‖²_F from 1 (rank one) to K (flat)."""
    i = np.arange(K)
    return {
        "flat": np.ones(K),
        "decaying": 0.85**i,
        "rank one": (i == 0) * 1.0,
        "rank two + noise": np.where(i == 0, 1.0, np.where(i == 1, 0.7, 0.1)),
    }


def _held_out_spectra() -> dict[str, np.ndarray]:
    """Spectra the constructions were NOT chosen on, to check they were not fitted to the four
    above (measured for the docs; the suite runs Hutchinson on them at 4 probes)."""
    i = np.arange(K)
    return {
        "0.7^i": 0.7**i,
        "0.95^i": 0.95**i,
        "1/(i+1)": 1 / (i + 1),
        "rank five + 0.05": np.where(i < 5, 1.0, 0.05),
        "rank one + 0.3": np.where(i == 0, 1.0, 0.3),
    }


def _matrix(s: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(K, K)))[0]
    v = np.linalg.qr(rng.normal(size=(D, D)))[0]
    return (u * s) @ v[:K]


def coverage_and_width(method: str, probes: int, intervals: int = INTERVALS, spectra=None):
    """Per spectrum: (coverage, mean width / truth) of `intervals` 95% intervals, in one jit for
    all spectra (the matrix is an argument). One interval per step of a lax.map, so that no
    batched eigh/QR is large enough for jaxlib to split over XLA:CPU's thread pool (seen to
    deadlock on 2 cores)."""
    spectra = _spectra() if spectra is None else spectra
    mats = np.stack([_matrix(s) for s in spectra.values()])
    truth = np.array([np.sum(s**2) for s in spectra.values()])[:, None]
    keys = jax.random.split(jax.random.key(probes), (len(spectra), intervals))

    def one(args):
        a, key = args
        low, high = jacobian.frobenius_sq_interval(
            lambda xi: a @ xi, jnp.zeros((1, D), a.dtype), key, num_probes=probes, method=method
        )
        return low[0], high[0]

    a = jnp.repeat(jnp.asarray(mats), intervals, axis=0)
    low, high = jax.jit(lambda a, k: jax.lax.map(one, (a, k)))(a, keys.reshape(-1))
    low, high = (np.asarray(v).reshape(len(spectra), intervals) for v in (low, high))
    covered = np.mean((low <= truth) & (truth <= high), axis=1)
    width = np.mean(high - low, axis=1) / truth[:, 0]
    return dict(zip(spectra, covered, strict=True)), dict(zip(spectra, width, strict=True))


# Exact cells: Hutch++'s sketch holds a rank-one A whole; XTrace is exact at rank one and, by its
# resphering, for a flat spectrum. There the interval is the value ± rounding and always covers.
EXACT = {"hutch++": {"rank one"}, "xtrace": {"rank one", "flat"}}
# Coverage bounds at nominal 95% over 500 intervals, the issue's [0.92, 0.99], for every method.
# Hutch++ has no interval below 7 probes (INTERVAL_MIN_PROBES).
BOUNDS = (0.92, 0.99)
# XTrace's interval costs p + 100·(p + 1) XNysTraces (its jackknife and bootstrap): the suite
# runs its 8-probe cell, where the jackknife t interval it replaced over-covered (0.986-0.996);
# its 4-, 16- and 32-probe cells are measured by `coverage_and_width` for the docs.
CELLS = [("jvp", p) for p in (4, 8, 16, 32)] + [("hutch++", p) for p in (8, 16, 32)]
CELLS += [("vjp", 4), ("xtrace", 8)]  # vjp: jvp's interval on its own rows


@pytest.mark.parametrize(("method", "probes"), CELLS)
def test_intervals_cover_at_their_level(x64, method, probes):
    spectra = {n: s for n, s in _spectra().items() if n not in EXACT.get(method, ())}
    coverage, width = coverage_and_width(method, probes, spectra=spectra)
    for spectrum, c in coverage.items():
        assert BOUNDS[0] <= c <= BOUNDS[1], (spectrum, c, width[spectrum])


@pytest.mark.parametrize("method", ["hutch++", "xtrace"])
def test_intervals_of_exact_estimates_are_the_value_up_to_rounding(x64, method):
    spectra = {n: s for n, s in _spectra().items() if n in EXACT[method]}
    coverage, width = coverage_and_width(method, 8, intervals=50, spectra=spectra)
    for spectrum, c in coverage.items():
        assert c == 1.0 and width[spectrum] < 1e-9, (spectrum, c, width[spectrum])


def test_chi2_quantile_table_matches_scipy(x64):
    nu = jnp.asarray([4.0, 4.5, 17.3, 100.0, 640.0], jnp.float64)
    for q in (0.025, 0.975):
        got = estimate._chi2_quantile(nu, q, 4, 640)
        np.testing.assert_allclose(got, stats.chi2.ppf(q, np.asarray(nu)), rtol=1e-4)


def test_off_diagonal_gram_is_unbiased_for_frobenius_sq_of_jtj(x64):
    """With Y = J Ω, the mean over i < j of (YᵀY)²_ij estimates ‖JᵀJ‖²_F (ν's denominator)."""
    a = jnp.asarray(_matrix(_spectra()["decaying"]))
    omega = jax.random.normal(jax.random.key(0), (2_000, D, 4), jnp.float64)
    gram = jnp.einsum("tdi,tdj->tij", a @ omega, a @ omega)
    off = np.asarray(gram[:, np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]] ** 2).mean(1)
    truth = float(jnp.sum((a.T @ a) ** 2))
    assert abs(off.mean() - truth) < 3 * off.std(ddof=1) / np.sqrt(off.size), (off.mean(), truth)


class _UserEncoder(nnx.Module):
    """A user's own two-layer nnx encoder, 12 -> 10 -> 8."""

    def __init__(self, rngs):
        self.l1 = nnx.Linear(12, 10, rngs=rngs, param_dtype=jnp.float64)
        self.l2 = nnx.Linear(10, 8, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        return jnp.tanh(self.l2(jnp.tanh(self.l1(x))))


@pytest.mark.fast
@pytest.mark.parametrize("method", ["jvp", "hutch++", "xtrace"])  # vjp: in the coverage cells
def test_interval_surrounds_the_estimate_and_the_truth(x64, method):
    encoder = _UserEncoder(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 12), jnp.float64)

    @jax.jit
    def both(key):
        interval = jacobian.frobenius_sq_interval(
            encoder, x, key, num_probes=7, method=method, level=0.999
        )
        return interval, jacobian.frobenius_sq_estimate(
            encoder, x, key, num_probes=7, method=method
        )

    (low, high), est = both(jax.random.key(2))
    exact = jacobian.frobenius_sq(encoder, x, mode="jacrev")
    assert np.all((low <= est) & (est <= high) & (low >= 0)), (low, est, high)
    assert np.all((low <= exact) & (exact <= high)), (low, exact, high)


@pytest.mark.fast
def test_refuses_where_no_interval_is_calibrated(x64):
    fn = lambda v: jnp.tanh(v[:4])  # noqa: E731
    x = jnp.ones((2, 6), jnp.float64)
    for method, fewest in estimate.INTERVAL_MIN_PROBES.items():
        message = re.escape(f"num_probes >= {fewest} for method '{method}'")
        with pytest.raises(ValueError, match=message):
            jacobian.frobenius_sq_interval(
                fn, x, jax.random.key(0), num_probes=fewest - 1, method=method
            )
    with pytest.raises(ValueError, match="level"):
        jacobian.frobenius_sq_interval(
            fn, x, jax.random.key(0), num_probes=4, method="jvp", level=1.0
        )


@pytest.mark.fast
def test_hutchinson_standard_error_uses_ddof_1(x64):
    """The same Gaussian probes drawn by hand: SE = s.d.(ddof=1)/√p, √(p/(p−1)) above matfree's."""
    a = jnp.asarray(_matrix(_spectra()["decaying"]))
    x, key, p = jnp.zeros((2, D), jnp.float64), jax.random.key(3), 4
    _, se = jax.jit(
        lambda key: jacobian.frobenius_sq_estimate(
            lambda v: a @ v, x, key, num_probes=p, method="jvp", with_error=True
        )
    )(key)
    for i, ki in enumerate(jax.random.split(key, 2)):
        v = jax.random.normal(ki, (p, D), jnp.float64)
        values = np.sum(np.asarray(v @ a.T) ** 2, axis=1)
        np.testing.assert_allclose(se[i], values.std(ddof=1) / np.sqrt(p), rtol=1e-12)
        np.testing.assert_allclose(se[i], values.std() / np.sqrt(p) * np.sqrt(p / (p - 1)))


@pytest.mark.fast
def test_xtrace_standard_error_is_the_jackknife_over_probes(x64):
    """Against matfree's own XNysTrace (its `nystrom_eigh`, the matrix applied afresh) on each
    leave-one-probe-out set of the same test vectors."""
    a = jnp.asarray(_matrix(_spectra()["rank two + noise"]))
    x, key, p = jnp.zeros((1, D), jnp.float64), jax.random.key(4), 6
    est, se = jax.jit(
        lambda key: jacobian.frobenius_sq_estimate(
            lambda v: a @ v, x, key, num_probes=p, method="xtrace", with_error=True
        )
    )(key)
    omega = stochtrace.sampler_normal(jnp.zeros((K,), jnp.float64), num=p)(
        jax.random.split(key, 1)[0]
    )
    integrand = stochtrace.leave_one_out_xnystrace()

    @jax.jit
    def xnystrace(om):  # [m, K] test vectors -> XNysTrace
        with jax.numpy_rank_promotion("allow"):
            return jnp.mean(integrand(lambda u: a @ (a.T @ u), om))

    full = xnystrace(omega)
    subsets = np.array([np.delete(np.arange(p), j) for j in range(p)])
    loo = np.asarray(jax.vmap(xnystrace)(omega[subsets]))
    np.testing.assert_allclose(est[0], full, rtol=1e-10)
    jackknife = np.sqrt((p - 1) / p * np.sum((loo - loo.mean()) ** 2))
    np.testing.assert_allclose(se[0], jackknife, rtol=1e-8)


@pytest.mark.fast
def test_xtrace_bootstrap_pieces_match_matfree_and_numpy(x64):
    """The bootstrap's p × p XNysTrace equals matfree's on the same probes (A applied to Ω), and
    its quantiles are NumPy's median-unbiased ones."""
    a = jnp.asarray(_matrix(_spectra()["decaying"]))
    big_a = a @ a.T  # [K, K], PSD
    omega = jax.random.normal(jax.random.key(5), (K, 8), jnp.float64)
    y = big_a @ omega
    gram = estimate._xnystrace_gram(omega.T @ y, y.T @ y, omega.T @ omega, K)
    np.testing.assert_allclose(gram, estimate._xnystrace_loo(omega, y), rtol=1e-9)
    _, se = estimate._xnystrace_gram_jackknife(omega.T @ y, y.T @ y, omega.T @ omega, K)
    np.testing.assert_allclose(se, estimate._xtrace_jackknife(omega, y), rtol=1e-8)
    values = np.random.default_rng(0).normal(size=100)
    qs = (0.025, 0.975)
    for q, got in zip(qs, estimate._quantiles(jnp.asarray(values), qs), strict=True):
        np.testing.assert_allclose(got, np.quantile(values, q, method="median_unbiased"))


@pytest.mark.parametrize("method", ["jvp", "vjp"])
def test_hutchinson_intervals_cover_on_spectra_they_were_not_chosen_on(x64, method):
    coverage, width = coverage_and_width(method, 4, spectra=_held_out_spectra())
    for spectrum, c in coverage.items():
        assert BOUNDS[0] <= c <= BOUNDS[1], (spectrum, c, width[spectrum])


if __name__ == "__main__":  # docs/engine/estimators.md's tables: python tests/...intervals.py
    jax.config.update("jax_enable_x64", True)
    for spectra in (_spectra(), _held_out_spectra()):
        print("| method | p | " + " | ".join(spectra) + " |", flush=True)
        for method in estimate.ESTIMATOR_METHODS:
            for probes in (4, 8, 16, 32):
                if probes < estimate.INTERVAL_MIN_PROBES[method]:
                    continue
                coverage, width = coverage_and_width(method, probes, spectra=spectra)
                cells = " | ".join(f"{coverage[s]:.3f} / {width[s]:.2g}" for s in coverage)
                print(f"| {method} | {probes} | {cells} |", flush=True)
