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
    probes (the sketched part has no variance given the sketch). XTrace: p − 1 for the p
    leave-one-out estimates, a convention (they are exchangeable, not independent); its coverage
    is measured in tests/test_estimators.py.
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


def _hutchinson(fn, xi, key, p: int, method: str):
    """Mean and sample SE (ddof=1) of ‖J v‖² over Gaussian v (jvp) or of ‖Jᵀ u‖² (vjp).

    matfree's `estimator_monte_carlo_mean_and_sem` divides by n, not n − 1 (an SE biased low
    by √((p − 1)/p), 30% at 2 probes), so the per-probe values are averaged here.
    """
    if method == "jvp":
        probes = jax.random.normal(key, (p, *xi.shape), xi.dtype)
        values = jnp.sum(_jvps(fn, xi, probes.reshape(p, -1)) ** 2, axis=1)
        return _mean_se(values)
    out, pullback = jax.vjp(fn, xi)
    probes = jax.random.normal(key, (p, *out.shape), out.dtype)
    jtu = jax.vmap(lambda u: pullback(u)[0])(probes)
    return _mean_se(jnp.sum(jtu.reshape(p, -1) ** 2, axis=1))


def _hutch_pp(fn, xi, key, p: int):
    """Hutch++ for ‖J‖²_F (Meyer, Musco, Musco & Woodruff 2021) on J directly.

    s = ⌊p/2⌋ sketch vectors give Q = orth(Jᵀ Ω) [d, s] (s vjps); ‖J Q‖² is exact (s jvps) and
    the rest ‖J (I − QQᵀ)‖² is Hutchinson's with r = p − s residual probes (r jvps). Given Q
    the sum is unbiased for every parameter value, so Q carries no gradient (stop_gradient):
    still an unbiased gradient, and no QR derivative (undefined for rank-deficient sketches).
    matfree has no Hutch++, hence this.
    """
    s, r = p // 2, p - p // 2
    if s == 0:  # one probe: nothing to sketch, Hutchinson's estimate
        return _hutchinson(fn, xi, key, p, "jvp")
    k_sketch, k_res = jax.random.split(key)
    out, pullback = jax.vjp(fn, xi)
    omega = jax.random.normal(k_sketch, (s, *out.shape), out.dtype)
    y = jax.vmap(lambda u: pullback(u)[0].reshape(-1))(omega)  # [s, d]
    q = jax.lax.stop_gradient(jnp.linalg.qr(y.T)[0])  # [d, s]
    exact_part = jnp.sum(_jvps(fn, xi, q.T) ** 2)
    g = jax.random.normal(k_res, (r, q.shape[0]), xi.dtype)
    g = g - (g @ q) @ q.T
    residual, se = _mean_se(jnp.sum(_jvps(fn, xi, g) ** 2, axis=1))
    return exact_part + residual, se


def _nystrom(matvec_flat, omega):
    """matfree's `nystrom_eigh` (Nyström approximation through a pseudo-inverse) written so that
    its derivative stays finite: matfree's `where(mask, vals ** -0.5, 0)` differentiates
    vals ** -0.5 at the masked (near-zero or negative) eigenvalues, which gives NaN gradients
    for ill-conditioned sketches, and its `>=` keeps every eigenvalue of a zero operator (NaN
    values); here masked entries never reach the power or a division."""
    m = omega.shape[1]
    eps = jnp.finfo(omega.dtype).eps
    y = jax.vmap(matvec_flat, in_axes=-1, out_axes=-1)(omega)  # [n, m]
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


def _xtrace(fn, xi, key, p: int, k: int, d: int):
    """XNysTrace (Epperly, Tropp & Webber 2024) on the PSD operator J Jᵀ (k ≤ d) or JᵀJ, by
    matfree with the Nyström step of `_nystrom`: p test vectors, one jvp and one vjp each; mean
    and SE (ddof=1) of the p leave-one-out estimates."""
    out, pullback = jax.vjp(fn, xi)

    def jvp(v):
        return jax.jvp(fn, (xi,), (v.reshape(xi.shape),))[1].reshape(-1)

    def vjp(u):
        return pullback(u.reshape(out.shape))[0].reshape(-1)

    matvec = (lambda u: jvp(vjp(u))) if k <= d else (lambda v: vjp(jvp(v)))
    n = min(k, d)
    samples = stochtrace.sampler_normal(jnp.zeros((n,), xi.dtype), num=p)(key)
    # matfree relies on NumPy's rank promotion; the caller may have made it an error.
    with jax.numpy_rank_promotion("allow"):
        loo = stochtrace.leave_one_out_xnystrace(nystrom=_nystrom)(matvec, samples)
    return _mean_se(loo)


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
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(
            f"frobenius_sq_estimate needs a batch x of shape [B, *input_shape], "
            f"got shape {getattr(x, 'shape', None)}"
        )
    keys = jax.random.split(key, x.shape[0])
    d = int(np.prod(x.shape[1:]))
    k = int(np.prod(jax.eval_shape(fn, x[0]).shape))
    p = num_probes

    def per_example(xi, ki):
        if method in ("jvp", "vjp"):
            return _hutchinson(fn, xi, ki, p, method)
        if p >= min(k, d):
            return _exact(fn, xi, k, d), jnp.zeros((), xi.dtype)
        if method == "hutch++":
            return _hutch_pp(fn, xi, ki, p)
        return _xtrace(fn, xi, ki, p, k, d)

    est, se = jax.vmap(per_example)(x, keys)
    return (est, se) if with_error else est


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


def describe_reports(reports: dict[str, EstimatorReport]) -> str:
    lines = ["estimates (relative s.d. per example, measured over probe draws):"]
    for method, r in reports.items():
        lines.append(
            f"  {method:<18} {r.macs / 1e6:>12.2f} M multiply-adds  "
            f"({r.products} products/example)  rel. s.d. {100 * r.relative_sd:.1f}%"
        )
    return "\n".join(lines)
