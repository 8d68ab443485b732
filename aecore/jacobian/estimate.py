"""Clearly named random-probe ESTIMATES of ‖J(x_i)‖²_F with standard errors, for encoders whose
exact penalty costs ~k backward passes; each is unbiased, none is exact below min(k, d) probes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from matfree import stochtrace

from aecore import _checks

ESTIMATOR_METHODS = ("jvp", "vjp", "hutch++", "xtrace")
# Jacobian-vector products (jvp or vjp) per example for p probes, below min(k, d) probes.
PRODUCTS = {
    "jvp": lambda p: p,
    "vjp": lambda p: p,
    "hutch++": lambda p: p + p // 2,
    "xtrace": lambda p: 2 * p,
}


def degrees_of_freedom(method: str, num_probes: int) -> int:
    """ν of the Student-t interval `estimate ± t_ν(1 − α/2) · se` (0: no standard error).

    Hutchinson: p − 1 (p i.i.d. probe values). Hutch++: r − 1 for its r = p − ⌊p/2⌋ residual
    probes (the sketched part has no variance given the sketch). XTrace: p − 1 for its jackknife
    over the p probes. The probe values are skewed, so this t interval under-covers at small p;
    `frobenius_sq_interval` gives calibrated ones.
    """
    _checks.check_choice("method", method, ESTIMATOR_METHODS)
    samples = num_probes - num_probes // 2 if method == "hutch++" else num_probes
    return max(samples - 1, 0)


def _exact(fn, xi, k: int, d: int) -> jax.Array:
    jac = jax.jacrev(fn) if k <= d else jax.jacfwd(fn)
    return jnp.sum(jac(xi) ** 2)


def _jvps(fn, xi, vs):
    """J v for each row of vs [p, d] -> [p, k]."""
    return jax.vmap(lambda v: jax.jvp(fn, (xi,), (v.reshape(xi.shape),))[1].reshape(-1))(vs)


def _mean_se(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    n = values.shape[0]
    se = jnp.std(values, ddof=1) / math.sqrt(n) if n > 1 else jnp.full((), jnp.nan, values.dtype)
    return jnp.mean(values), se


def _hutchinson_rows(fn, xi, key, p: int, method: str) -> jax.Array:
    """Y [p, m]: J v for p Gaussian v ~ N(0, I_d) (jvp), or Jᵀ u for u ~ N(0, I_k) (vjp); the
    probe values are the rows' squared norms."""
    if method == "jvp":
        probes = jax.random.normal(key, (p, *xi.shape), xi.dtype)
        return _jvps(fn, xi, probes.reshape(p, -1))
    out, pullback = jax.vjp(fn, xi)
    probes = jax.random.normal(key, (p, *out.shape), out.dtype)
    return jax.vmap(lambda u: pullback(u)[0])(probes).reshape(p, -1)


def _hutchinson(fn, xi, key, p: int, method: str):
    """Mean and sample SE (ddof=1) of ‖J v‖² over Gaussian v (jvp) or of ‖Jᵀ u‖² (vjp).

    matfree's `estimator_monte_carlo_mean_and_sem` divides by n, not n − 1 (an SE biased low
    by √((p − 1)/p), 30% at 2 probes), so the per-probe values are averaged here.
    """
    return _mean_se(jnp.sum(_hutchinson_rows(fn, xi, key, p, method) ** 2, axis=1))


def _hutch_pp_parts(fn, xi, key, p: int):
    """Hutch++ for ‖J‖²_F (Meyer, Musco, Musco & Woodruff 2021) on J directly: its exact part
    and the rows [r, k] of its residual products.

    s = ⌊p/2⌋ sketch vectors give Q = orth(Jᵀ Ω) [d, s] (s vjps); ‖J Q‖² is exact (s jvps) and
    the rest ‖J (I − QQᵀ)‖² is Hutchinson's with r = p − s residual probes (r jvps). Given Q
    the sum is unbiased for every parameter value, so Q carries no gradient (stop_gradient):
    still an unbiased gradient, and no QR derivative (undefined for rank-deficient sketches).
    matfree has no Hutch++, hence this.
    """
    s, r = p // 2, p - p // 2
    k_sketch, k_res = jax.random.split(key)
    out, pullback = jax.vjp(fn, xi)
    omega = jax.random.normal(k_sketch, (s, *out.shape), out.dtype)
    y = jax.vmap(lambda u: pullback(u)[0].reshape(-1))(omega)  # [s, d]
    q = jax.lax.stop_gradient(jnp.linalg.qr(y.T)[0])  # [d, s]
    exact_part = jnp.sum(_jvps(fn, xi, q.T) ** 2)
    g = jax.random.normal(k_res, (r, q.shape[0]), xi.dtype)
    g = g - (g @ q) @ q.T
    return exact_part, _jvps(fn, xi, g)


def _hutch_pp(fn, xi, key, p: int):
    """Hutch++'s estimate and SE (ddof=1 over its r residual probes)."""
    if p == 1:  # one probe: nothing to sketch, Hutchinson's estimate
        return _hutchinson(fn, xi, key, p, "jvp")
    exact_part, rows = _hutch_pp_parts(fn, xi, key, p)
    residual, se = _mean_se(jnp.sum(rows**2, axis=1))
    return exact_part + residual, se


def _nystrom(omega, y):
    """matfree's `nystrom_eigh` (Nyström approximation through a pseudo-inverse) written so that
    its derivative stays finite: matfree's `where(mask, vals ** -0.5, 0)` differentiates
    vals ** -0.5 at the masked (near-zero or negative) eigenvalues, which gives NaN gradients
    for ill-conditioned sketches, and its `>=` keeps every eigenvalue of a zero operator (NaN
    values); here masked entries never reach the power or a division."""
    m = omega.shape[1]
    eps = jnp.finfo(omega.dtype).eps
    h = omega.T @ y
    # A zero operator (J = 0) has m equal eigenvalues, where eigh's derivative divides by zero:
    # decompose a stand-in with distinct ones instead (every eigenvalue is masked below).
    zero = jnp.all(h == 0)
    stand_in = jnp.diag(jnp.arange(1, m + 1, dtype=h.dtype))
    vals, vecs = jnp.linalg.eigh(jnp.where(zero, stand_in, (h + h.T) / 2))
    vals = jnp.where(zero, 0.0, vals)
    # Strict: a zero operator (a saturated example, J = 0) masks every eigenvalue, not none.
    mask = vals > eps * m * jnp.abs(vals[-1])
    vecs = jnp.where(mask[None, :], vecs, 0.0)
    left = vecs * jnp.where(mask, jnp.where(mask, vals, 1.0) ** -0.5, 0.0)[None, :]
    f = y @ left  # F Fᵀ = Y H⁺ Yᵀ
    essential = jnp.sum(vecs**2, axis=1) + jnp.sqrt(eps) > 1.0  # leverage of each column
    norms = jnp.linalg.norm(left, axis=1)
    downdate = (f @ left.T) / jnp.where(essential, norms, 1.0)[None, :]
    return f, jnp.where(essential[None, :], downdate, 0.0), jnp.zeros((), y.dtype)


def _xnystrace_loo(omega: jax.Array, y: jax.Array) -> jax.Array:
    """matfree's XNysTrace leave-one-out estimates [m] from test vectors omega [n, m] (m < n)
    and their products y = A omega [n, m]; the operator itself is never applied again."""
    integrand = stochtrace.leave_one_out_xnystrace(nystrom=lambda _, om: _nystrom(om, y))
    # matfree relies on NumPy's rank promotion; the caller may have made it an error.
    with jax.numpy_rank_promotion("allow"):
        return integrand(None, omega.T)


def _xtrace_products(fn, xi, key, p: int, k: int, d: int):
    """p Gaussian test vectors omega [n, p] of the PSD operator A = J Jᵀ (k ≤ d) or JᵀJ, n =
    min(k, d), and y = A omega (one jvp and one vjp each)."""
    out, pullback = jax.vjp(fn, xi)

    def jvp(v):
        return jax.jvp(fn, (xi,), (v.reshape(xi.shape),))[1].reshape(-1)

    def vjp(u):
        return pullback(u.reshape(out.shape))[0].reshape(-1)

    matvec = (lambda u: jvp(vjp(u))) if k <= d else (lambda v: vjp(jvp(v)))
    samples = stochtrace.sampler_normal(jnp.zeros((min(k, d),), xi.dtype), num=p)(key)
    return samples.T, jax.vmap(matvec)(samples).T


def _leave_one_out(p: int) -> np.ndarray:
    """[p, p − 1]: row j lists the probes other than j."""
    return np.array([[i for i in range(p) if i != j] for j in range(p)])


def _jackknife_se(loo: jax.Array) -> jax.Array:
    """Jackknife SE (Efron & Stein 1981) from a statistic's p leave-one-out values X_(j):
    √((p − 1)/p · Σ_j (X_(j) − X̄)²). Efron–Stein: its square is biased upward for a symmetric
    statistic, so it errs wide."""
    p = loo.shape[0]
    return jnp.sqrt((p - 1) / p * jnp.sum((loo - jnp.mean(loo)) ** 2))


def _xtrace_jackknife(omega: jax.Array, y: jax.Array) -> jax.Array:
    """Jackknife SE of XNysTrace over its p probes: XNysTrace recomputed on each
    leave-one-probe-out set from the same products."""
    # One set at a time (lax.map, not vmap): each eigh/QR then has the batch of the estimate
    # itself. jaxlib splits a large batched LAPACK call over XLA:CPU's thread pool and waits
    # inside a pool thread, which we saw deadlock on 2 cores.
    loo = jax.lax.map(
        lambda idx: jnp.mean(_xnystrace_loo(omega[:, idx], y[:, idx])),
        _leave_one_out(omega.shape[1]),
    )
    return _jackknife_se(loo)


def _xtrace(fn, xi, key, p: int, k: int, d: int, with_error: bool):
    """XNysTrace (Epperly, Tropp & Webber 2024) on J Jᵀ or JᵀJ by matfree with the Nyström step
    of `_nystrom`: the mean of the p leave-one-out estimates, and its jackknife SE. (The s.d. of
    the leave-one-out estimates over √p, as before, is too small: they are positively
    correlated; the authors say it "tends to underestimate the true error".)"""
    omega, y = _xtrace_products(fn, xi, key, p, k, d)
    est = jnp.mean(_xnystrace_loo(omega, y))
    if not with_error or p == 1:
        return est, jnp.full((), jnp.nan, est.dtype)
    return est, _xtrace_jackknife(jax.lax.stop_gradient(omega), jax.lax.stop_gradient(y))


def _per_example(name: str, fn: Callable, x: jax.Array, key: jax.Array):
    """(keys [B], d, k) of an estimator's batch: one key per example, input and output sizes;
    x must be a batch [B, *input_shape]."""
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(
            f"{name} needs a batch x of shape [B, *input_shape], "
            f"got shape {getattr(x, 'shape', None)}"
        )
    keys = jax.random.split(key, x.shape[0])
    return keys, int(np.prod(x.shape[1:])), int(np.prod(jax.eval_shape(fn, x[0]).shape))


def frobenius_sq_estimate(
    fn: Callable,
    x: jax.Array,
    key: jax.Array,
    *,
    num_probes: int = 1,
    method: str = "jvp",
    with_error: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """ESTIMATE of ‖J(x_i)‖²_F by random probes: unbiased, not exact (below min(k, d) probes).

    Methods (p = num_probes; products per example in `PRODUCTS`):
      "jvp": Hutchinson, mean over v ~ N(0, I_d) of ‖J v‖² (p jvps);
      "vjp": Hutchinson, mean over u ~ N(0, I_k) of ‖Jᵀ u‖² (p vjps);
      "hutch++": a sketch of ⌊p/2⌋ vectors taken exactly plus Hutchinson on the rest
        (⌊p/2⌋ vjps + p jvps), lower variance when the spectrum decays;
      "xtrace": XNysTrace on J Jᵀ through matfree (p jvps + p vjps), lower still there.
    Hutch++ and XTrace are exact (standard error 0) when p >= min(k, d): they then form J by
    min(k, d) products. Hutchinson stays a Monte-Carlo mean at any p.

    Args:
      fn: maps ONE example to a vector [k].
      x: batch [B, *input_shape].
      key: PRNG key for the probes (split per example).
      num_probes: p >= 1.
      method: one of `ESTIMATOR_METHODS`.
      with_error: also return each estimate's standard error.

    Returns:
      [B] estimates, or (estimates [B], standard errors [B]) with `with_error=True`. The SE is
      NaN where it is undefined (`degrees_of_freedom` is 0: one Hutchinson probe, or fewer
      than two residual probes for Hutch++); a 1 − α interval is
      estimate ± t_ν(1 − α/2) · se with ν = `degrees_of_freedom(method, p)`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from aecore.jacobian import frobenius_sq, frobenius_sq_estimate
      >>> w = jax.random.normal(jax.random.key(0), (20, 30)) / 5
      >>> encode = lambda v: jnp.tanh(w @ v)  # [30] -> [20]
      >>> x = jax.random.normal(jax.random.key(1), (8, 30))
      >>> exact = frobenius_sq(encode, x)
      >>> key = jax.random.key(2)
      >>> est, se = frobenius_sq_estimate(encode, x, key, num_probes=256, with_error=True)
      >>> est.shape, se.shape
      ((8,), (8,))
      >>> bool(abs(jnp.mean(est) / jnp.mean(exact) - 1) < 0.05)  # unbiased, not exact
      True
      >>> full = frobenius_sq_estimate(encode, x, key, num_probes=20, method="hutch++")
      >>> bool(jnp.allclose(full, exact, rtol=1e-4))  # p >= min(k, d) = 20 probes: exact
      True
    """
    _checks.check_choice("method", method, ESTIMATOR_METHODS)
    _checks.check_positive_int("num_probes", num_probes)
    keys, d, k = _per_example("frobenius_sq_estimate", fn, x, key)
    p = num_probes

    def per_example(xi, ki):
        if method in ("jvp", "vjp"):
            return _hutchinson(fn, xi, ki, p, method)
        if p >= min(k, d):
            return _exact(fn, xi, k, d), jnp.zeros((), xi.dtype)
        if method == "hutch++":
            return _hutch_pp(fn, xi, ki, p)
        return _xtrace(fn, xi, ki, p, k, d, with_error)

    est, se = jax.vmap(per_example)(x, keys)
    return (est, se) if with_error else est


# Fewest probes with a measured, calibrated interval (`frobenius_sq_interval` refuses fewer):
# the χ² intervals need r >= 4 probes of the part they estimate (Hutch++: 7 probes leave 4
# residual ones); with 3 they covered 0.975-0.994, with 2 they cannot tell a flat spectrum from
# a missed spike. Below 4 probes XTrace's jackknife covered 0.66-0.86.
INTERVAL_MIN_PROBES = {"jvp": 4, "vjp": 4, "hutch++": 7, "xtrace": 4}


def _chi2_quantile(nu: jax.Array, q: float, nu_min: int, nu_max: int) -> jax.Array:
    """χ²_ν quantile q for ν in [nu_min, nu_max], interpolated in log ν on a 257-point table
    of scipy's quantiles (built at trace time: relative error < 1e-4 there)."""
    from scipy import stats  # noqa: PLC0415 - only when an interval is traced

    grid = np.geomspace(nu_min, max(nu_max, nu_min + 1), 257)
    table = np.log(stats.chi2.ppf(q, grid))
    log_nu = jnp.log(nu)
    return jnp.exp(jnp.interp(log_nu, jnp.asarray(np.log(grid), nu.dtype), table.astype(nu.dtype)))


def _hutchinson_interval(rows: jax.Array, rank: int, level: float):
    """(low, high) for tr A from r >= 4 Gaussian-probe rows y_i [r, m] with y_iᵀy_j = ω_iᵀ A ω_j.

    The mean T of the probe values ω_iᵀAω_i is tr A times a weighted mean of χ²₁ terms;
    Satterthwaite (1946): T ≈ tr A · χ²_ν/ν with ν = r tr²/‖A‖²_F, so [νT/χ²_ν(1 − α/2),
    νT/χ²_ν(α/2)]. ‖A‖²_F has two unbiased estimates from the same products: the mean of the
    squared off-diagonal Gram entries (E[(ω_iᵀAω_j)²] = ‖A‖²_F for i ≠ j) and half the sample
    variance of the probe values (Var ω_iᵀAω_i = 2‖A‖²_F); the larger, F̂, is used (a smaller
    ν, a wider interval: the estimate misses a spike exactly when both are low). ν is a ratio
    with F̂ below, and E[1/F̂] > 1/‖A‖²_F (Jensen): for F̂ ≈ ‖A‖²_F·χ²_f/f with f = r(r − 1)/2
    pairs, E[1/F̂] = f/(f − 2)/‖A‖²_F, so ν̂ = (f − 2)/f · r T²/F̂ − 2 (E[T²] = tr² +
    2‖A‖²_F/r), clipped to [r, r·rank], the range of r·tr²/‖A‖²_F over PSD spectra of that
    rank. Without the factor a 1/(i + 1) spectrum covered 0.913 at r = 4; with it 0.945–0.984
    on every spectrum tried (docs/engine/estimators.md).
    """
    r = rows.shape[0]
    alpha = 1.0 - level
    gram = rows @ rows.T  # [r, r]
    values = jnp.diagonal(gram)
    mean = jnp.mean(values)
    pairs = r * (r - 1) / 2
    off = jnp.sum(jnp.triu(gram, 1) ** 2) / pairs
    frob_sq = jnp.maximum(off, jnp.var(values, ddof=1) / 2)
    plug_in = r * mean**2 / jnp.where(frob_sq > 0, frob_sq, 1.0)
    nu = jnp.clip((pairs - 2) / pairs * plug_in - 2, r, r * rank)
    nu = jnp.where(frob_sq > 0, nu, r * rank)
    low = nu * mean / _chi2_quantile(nu, 1 - alpha / 2, r, r * rank)
    high = nu * mean / _chi2_quantile(nu, alpha / 2, r, r * rank)
    return low, high


# Draws of XTrace's studentised bootstrap (`_xtrace_interval`): with 20 its p = 32 cells covered
# 0.89-0.91, with 60-100 0.94-0.97.
XTRACE_BOOTSTRAP_DRAWS = 100


def _spd_inverse(a: jax.Array) -> jax.Array:
    """Inverse of a symmetric positive definite [p, p] by p sweeps (Goodnight 1979), in plain
    array operations: the bootstrap inverts ~100·p² small matrices per example under vmap, and
    batched LAPACK calls that large were seen to deadlock XLA:CPU's thread pool on 2 cores."""

    def sweep(k, a):
        d = a[k, k]
        col, row = a[:, k], a[k, :]
        a = a - jnp.outer(col, row) / d
        a = a.at[:, k].set(col / d).at[k, :].set(row / d)
        return a.at[k, k].set(-1 / d)

    out = -jax.lax.fori_loop(0, a.shape[0], sweep, a)
    return (out + out.T) / 2


def _xnystrace_gram(h: jax.Array, m: jax.Array, g: jax.Array, n: int) -> jax.Array:
    """XNysTrace's leave-one-out values [p] (with resphering) from the Grams of p probes Ω of an
    n × n PSD A: h = ΩᵀAΩ (invertible), m = ΩᵀA²Ω, g = ΩᵀΩ. By Schur complements: the Nyström
    trace without probe i is tr(h⁻¹m) − (h⁻¹mh⁻¹)_ii/(h⁻¹)_ii, the residual's quadratic form at
    ω_i is 1/(h⁻¹)_ii and ‖ω_i‖² off the others' span is 1/(g⁻¹)_ii; O(p³), no n-vectors."""
    p = h.shape[0]
    h_inv, g_inv = _spd_inverse(h), _spd_inverse(g)
    him = h_inv @ m
    diag = jnp.diagonal(h_inv)
    rest = jnp.diagonal(him @ h_inv) / diag
    return jnp.trace(him) - rest + (n - p + 1) * jnp.diagonal(g_inv) / diag


def _xnystrace_gram_jackknife(h, m, g, n: int) -> tuple[jax.Array, jax.Array]:
    """(XNysTrace, its jackknife SE over the probes) from the Grams of `_xnystrace_gram`
    (vmap over the sets is safe here: the sweeps call no LAPACK)."""

    def without(idx):
        sub = jnp.ix_(idx, idx)
        return jnp.mean(_xnystrace_gram(h[sub], m[sub], g[sub], n))

    loo = jax.vmap(without)(_leave_one_out(h.shape[0]))
    return jnp.mean(_xnystrace_gram(h, m, g, n)), _jackknife_se(loo)


def _quantiles(values: jax.Array, qs: tuple[float, ...]) -> list[jax.Array]:
    """Median-unbiased sample quantiles (Hyndman & Fan 1996, type 8) of values [B]
    (`jnp.quantile` has no type 8; `np.quantile(method="median_unbiased")` is it)."""
    b = values.shape[0]
    ordered = jnp.sort(values)
    out = []
    for q in qs:
        pos = min(max((b + 1 / 3) * q + 1 / 3, 1.0), float(b))  # 1-based
        lo = int(math.floor(pos))
        hi = min(lo + 1, b)
        out.append(ordered[lo - 1] + (pos - lo) * (ordered[hi - 1] - ordered[lo - 1]))
    return out


def _xtrace_interval(omega: jax.Array, y: jax.Array, key: jax.Array, level: float):
    """(low, high) for tr A around XTrace's estimate from its p probes omega [n, p] and products
    y = A omega: a studentised ("bootstrap-t") parametric bootstrap with the jackknife SE as the
    pivot (Efron & Tibshirani 1993, ch. 12; Hall 1988).

    The jackknife SE has the right shape but errs wide by a factor that depends on the spectrum
    (1.3-2.8x here: Efron & Stein 1981, and XTrace's error falls fast with p). Its ratio to the
    actual error is measured on a stand-in built from the same products: the Nyström
    approximation Â = Q S Qᵀ (y = QR, S = R (Ωᵀy)⁺ Rᵀ, masked as in `_nystrom`) plus a
    flat tail μ(I − QQᵀ) with tr = the estimate. For B fresh Gaussian Ω* (drawn as
    Q Z₁ + Q⊥ Z₂, so everything is p × p), XTrace and its jackknife on the stand-in give
    r_b = (est* − tr)/SE*; the interval is
    [est − q(1 − α/2)·SE, est − q(α/2)·SE]. No product with J; B·(p + 1) XNysTraces of p × p
    Grams. Where a draw is not finite, the conservative estimate ± t_{p−1}·SE instead.
    """
    from scipy import stats  # noqa: PLC0415

    n, p = omega.shape
    est = jnp.mean(_xnystrace_loo(omega, y))
    se = _xtrace_jackknife(omega, y)
    # Ωᵀy's pseudo-inverse, masked as in `_nystrom`.
    h = omega.T @ y
    vals, vecs = jnp.linalg.eigh((h + h.T) / 2)
    keep = vals > jnp.finfo(h.dtype).eps * p * jnp.abs(vals[-1])
    h_pinv = (vecs * jnp.where(keep, 1 / jnp.where(keep, vals, 1.0), 0.0)[None, :]) @ vecs.T
    r = jnp.linalg.qr(y)[1]
    s = r @ h_pinv @ r.T
    s = (s + s.T) / 2
    mu = jnp.maximum(est - jnp.trace(s), 0.0) / (n - p)
    truth = jnp.trace(s) + mu * (n - p)

    def ratio(k):
        k1, k2 = jax.random.split(k)
        z1 = jax.random.normal(k1, (p, p), y.dtype)
        z2 = jax.random.normal(k2, (n - p, p), y.dtype)
        w = z2.T @ z2
        grams = (z1.T @ s @ z1 + mu * w, z1.T @ s @ s @ z1 + mu**2 * w, z1.T @ z1 + w)
        est_b, se_b = _xnystrace_gram_jackknife(*grams, n)
        return (est_b - truth) / se_b

    ratios = jax.lax.map(ratio, jax.random.split(key, XTRACE_BOOTSTRAP_DRAWS))
    q_low, q_high = _quantiles(ratios, ((1 - level) / 2, (1 + level) / 2))
    t = float(stats.t.ppf((1 + level) / 2, p - 1))
    finite = jnp.all(jnp.isfinite(ratios))
    return (
        est - jnp.where(finite, q_high, t) * se,
        est - jnp.where(finite, q_low, -t) * se,
    )


def frobenius_sq_interval(
    fn: Callable,
    x: jax.Array,
    key: jax.Array,
    *,
    num_probes: int,
    method: str,
    level: float = 0.95,
) -> tuple[jax.Array, jax.Array]:
    """A `level` confidence interval for each ‖J(x_i)‖²_F from the probes of
    `frobenius_sq_estimate(fn, x, key, num_probes=p, method=method)` (the same products, so
    the interval surrounds that estimate).

    Constructions (A = JᵀJ or J Jᵀ, tr A = ‖J‖²_F; probes are Gaussian):
      "jvp"/"vjp" (Hutchinson 1990): a Satterthwaite (1946) χ² interval, its ν estimated
        from the probes' Gram matrix (`_hutchinson_interval`);
      "hutch++" (Meyer, Musco, Musco & Woodruff 2021): the exact sketched part plus the same
        interval for the residual's trace from its r = p − ⌊p/2⌋ >= 4 residual probes (given
        the sketch they are Gaussian probes of the deflated operator);
      "xtrace" (Epperly, Tropp & Webber 2024): the jackknife SE over the probes as the pivot
        of a studentised parametric bootstrap on a stand-in built from the same products
        (`_xtrace_interval`): the jackknife alone errs wide from 8 probes (Efron & Stein
        1981), covering 0.988-1.000 at 16 and 32 probes.
    Where the estimate is exact (Hutch++ and XTrace from min(k, d) probes) the interval is the
    estimate ± its rounding. Measured coverage and width: docs/engine/estimators.md.

    Args:
      fn: maps ONE example to a vector [k].
      x: batch [B, *input_shape].
      key: PRNG key for the probes (split per example, as `frobenius_sq_estimate` does).
      num_probes: p >= `INTERVAL_MIN_PROBES[method]`.
      method: one of `ESTIMATOR_METHODS`.
      level: nominal coverage in (0, 1).

    Returns:
      (low [B], high [B]), low >= 0.
    """
    _checks.check_choice("method", method, ESTIMATOR_METHODS)
    _checks.check_positive_int("num_probes", num_probes)
    _checks.check_open_unit("level", level)
    if num_probes < INTERVAL_MIN_PROBES[method]:
        raise ValueError(
            f"frobenius_sq_interval needs num_probes >= {INTERVAL_MIN_PROBES[method]} for "
            f"method {method!r} (no calibrated interval from fewer), got {num_probes}"
        )
    keys, d, k = _per_example("frobenius_sq_interval", fn, x, key)
    n, p = min(k, d), num_probes

    def per_example(xi, ki):
        if method in ("hutch++", "xtrace") and p >= n:
            est = _exact(fn, xi, k, d)
            return est, est
        if method in ("jvp", "vjp"):
            rows = _hutchinson_rows(fn, xi, ki, p, method)
            return _hutchinson_interval(rows, n, level)
        if method == "hutch++":
            exact_part, rows = _hutch_pp_parts(fn, xi, ki, p)
            low, high = _hutchinson_interval(rows, min(k, d - p // 2), level)
            return exact_part + low, exact_part + high
        omega, y = _xtrace_products(fn, xi, ki, p, k, d)
        # The probes use ki itself; the bootstrap's draws a key derived from it.
        return _xtrace_interval(omega, y, jax.random.fold_in(ki, 1), level)

    low, high = jax.lax.stop_gradient(jax.vmap(per_example)(x, keys))
    # Rounding: the products and a reference value each carry ~n·eps relative error.
    slack = 8 * n * jnp.finfo(low.dtype).eps * jnp.abs(high)
    return jnp.maximum(low - slack, 0.0), high + slack


def relative_error(estimates: jax.Array, se: jax.Array) -> jax.Array:
    """Estimated relative standard error of the batch mean of `estimates` [B] (a scalar); 0
    where every standard error is 0 (exact estimates, also of a zero penalty)."""
    total = jnp.sqrt(jnp.sum(se**2))
    scale = estimates.shape[0] * jnp.abs(jnp.mean(estimates))
    return jnp.where(total == 0, 0.0, total / jnp.where(total == 0, 1.0, scale))


# ---------------------------------------------------------------------------------------------
# explain(fn, x, num_probes=p): each estimator's cost and expected relative error


@dataclasses.dataclass(frozen=True)
class EstimatorReport:
    """One estimator at p probes: products per example, multiply-adds per batch (a product
    counted as 2 forward passes) and its relative s.d. per example, measured."""

    products: int
    macs: int
    relative_sd: float


def _forward_macs(fn: Callable, x0: jax.Array) -> int:
    try:
        analysis = jax.jit(fn).lower(x0).compile().cost_analysis()
        flops = analysis.get("flops", 0.0)  # type: ignore[union-attr]  # None: caught below
    except Exception:  # noqa: BLE001 - a backend without cost analysis: cost unknown
        return 0
    return max(int(flops // 2), 1)


def estimator_reports(
    fn: Callable, x: jax.Array, num_probes: int, *, examples: int = 4, draws: int = 64
) -> dict[str, EstimatorReport]:
    """Each method at `num_probes`: its cost and relative s.d. measured over `draws` probe draws
    on the first `examples` examples of x against their exact values (jacrev)."""
    _checks.check_positive_int("num_probes", num_probes)
    xs = x[:examples]
    exact = jax.vmap(lambda xi: _exact(fn, xi, 1, 2))(xs)  # jacrev
    fwd = _forward_macs(fn, x[0])
    k = int(np.prod(jax.eval_shape(fn, x[0]).shape))
    d = int(np.prod(x.shape[1:]))
    reports = {}
    for method in ESTIMATOR_METHODS:
        exact_now = method in ("hutch++", "xtrace") and num_probes >= min(k, d)
        draw = jax.jit(
            jax.vmap(
                lambda key, m=method: frobenius_sq_estimate(
                    fn, xs, key, num_probes=num_probes, method=m
                )
            )
        )
        ests = draw(jax.random.split(jax.random.key(0), draws))  # [draws, examples]
        rel = float(jnp.mean(jnp.std(ests, axis=0) / exact))
        products = min(k, d) if exact_now else PRODUCTS[method](num_probes)
        reports[method] = EstimatorReport(products, x.shape[0] * products * 2 * fwd, rel)
    return reports


# Measured coverage of `frobenius_sq_interval` at nominal 95% (500 intervals per cell, 9
# spectra, p = 4-32, float64; tests/test_estimator_intervals.py, docs/engine/estimators.md;
# exact cells and one where XTrace is exact to rounding left out).
INTERVAL_COVERAGE = {
    "jvp": "93.2-98.8%",
    "vjp": "93.6-98.2%",
    "hutch++": "94.2-98.6% (from 7 probes)",
    "xtrace": "92.8-97.4%",
}


def describe_reports(reports: dict[str, EstimatorReport]) -> str:
    lines = ["estimates (relative s.d. per example, measured over probe draws):"]
    for method, r in reports.items():
        lines.append(
            f"  {method:<18} {r.macs / 1e6:>12.2f} M multiply-adds  "
            f"({r.products} products/example)  rel. s.d. {100 * r.relative_sd:.1f}%"
        )
    lines.append(
        "95% intervals (jacobian.frobenius_sq_interval) covered, measured: "
        + ", ".join(f"{m} {c}" for m, c in INTERVAL_COVERAGE.items() if m in reports)
    )
    return "\n".join(lines)
