"""Noise-free CAE+H on encoders a user writes: ‖∂J/∂x‖²_F against autodiff Hessians and the
Gaussian expectation against high-precision quadrature and a 10⁵-draw Monte-Carlo mean (float64).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import integrate
from scipy.special import expit

from aecore import Objective, jacobian, make_autoencoder, models, objective_terms, regularizers
from aecore.jacobian import higher_order


def _nnx_one_layer(act, d=7, k=5, seed=0):
    lin = nnx.Linear(d, k, rngs=nnx.Rngs(seed), param_dtype=jnp.float64)
    return lambda x: act(lin(x))


def _jnp_chain(acts, widths, seed=1, out=None):
    """Plain-jnp dense chain; `out` adds a final dense map of that width."""
    keys = jax.random.split(jax.random.key(seed), 2 * len(widths) + 2)
    ws = [
        jax.random.normal(keys[i], (widths[i + 1], widths[i]), jnp.float64) / np.sqrt(widths[i])
        for i in range(len(widths) - 1)
    ]
    bs = [
        0.3 * jax.random.normal(keys[-1 - i], (w.shape[0],), jnp.float64) for i, w in enumerate(ws)
    ]
    w_out = None if out is None else jax.random.normal(keys[-1], (out, widths[-1]), jnp.float64)

    def fn(x):
        h = x
        for w, b, act in zip(ws, bs, acts, strict=True):
            h = act(w @ h + b)
        return h if w_out is None else w_out @ h

    return fn


def _conv_one_layer(seed=2):
    conv = nnx.Conv(1, 3, (3, 3), strides=2, rngs=nnx.Rngs(seed), param_dtype=jnp.float64)
    return lambda x: jnp.tanh(conv(x)).reshape(-1)


def _autodiff(fn, x):
    return jax.vmap(lambda xi: jnp.sum(jax.hessian(fn)(xi) ** 2))(x)


ENCODERS = {
    "nnx_sigmoid": (lambda: _nnx_one_layer(jax.nn.sigmoid), (7,), "closed_form"),
    "nnx_softplus": (lambda: _nnx_one_layer(jax.nn.softplus), (7,), "closed_form"),
    "conv_tanh": (_conv_one_layer, (6, 6, 1), "closed_form"),
    "jnp_sigmoid_tanh": (
        lambda: _jnp_chain([jax.nn.sigmoid, jnp.tanh], [7, 6, 4]),
        (7,),
        "chain",
    ),
    "jnp_3layer_out": (
        lambda: _jnp_chain([jnp.tanh, jax.nn.sigmoid, jax.nn.softplus], [7, 6, 5, 4], out=3),
        (7,),
        "chain",
    ),
    "residual": (lambda: lambda x: jnp.tanh(x[:4] * x[3:]) + x[:4], (7,), "autodiff"),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_hessian_matches_autodiff(x64, name):
    make, shape, route = ENCODERS[name]
    fn = make()
    x = jax.random.normal(jax.random.key(3), (3, *shape), jnp.float64)
    assert higher_order.hessian_route(fn, x)[0] == route
    got = jax.jit(lambda v: jacobian.hessian_frobenius_sq(fn, v, chunk_size=2))(x)
    np.testing.assert_allclose(got, _autodiff(fn, x), rtol=1e-10)
    assert float(jnp.min(got)) > 0


def test_hessian_modes_agree_and_refuse(x64):
    fn = _nnx_one_layer(jnp.tanh)
    x = jax.random.normal(jax.random.key(4), (4, 7), jnp.float64)
    ref = _autodiff(fn, x)
    for mode in ("closed_form", "chain", "autodiff"):
        np.testing.assert_allclose(jacobian.hessian_frobenius_sq(fn, x, mode=mode), ref, rtol=1e-10)
    chain = _jnp_chain([jnp.tanh, jnp.tanh], [7, 5, 3])
    with pytest.raises(ValueError, match="one elementwise layer"):
        jacobian.hessian_frobenius_sq(chain, x, mode="closed_form")
    with pytest.raises(ValueError, match="mode"):
        jacobian.hessian_frobenius_sq(chain, x, mode="nope")


def test_hessian_gradients_match_autodiff(x64):
    """The chain formula differentiates like the autodiff Hessian (parameters of a user chain)."""
    x = jax.random.normal(jax.random.key(5), (3, 7), jnp.float64)
    w1 = jax.random.normal(jax.random.key(6), (5, 7), jnp.float64) / 3
    w2 = jax.random.normal(jax.random.key(7), (3, 5), jnp.float64) / 2

    def penalty(params, mode):
        fn = lambda v: jnp.tanh(params[1] @ jax.nn.sigmoid(params[0] @ v))  # noqa: E731
        return jnp.mean(jacobian.hessian_frobenius_sq(fn, x, mode=mode))

    g_chain = jax.grad(penalty)((w1, w2), "chain")
    g_auto = jax.grad(penalty)((w1, w2), "autodiff")
    for a, b in zip(g_chain, g_auto, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "softplus"])
def test_unit_integral_matches_quadrature(x64, act):
    """The per-unit Gaussian integral against scipy's adaptive quadrature (σ‖w‖ ≤ 2)."""
    slopes = {
        "sigmoid": (jax.nn.sigmoid, lambda t: expit(t) * (1 - expit(t))),
        "tanh": (jnp.tanh, lambda t: 1 - np.tanh(t) ** 2),
        "softplus": (jax.nn.softplus, expit),
    }
    g, g1 = slopes[act]
    a = np.linspace(-6, 6, 7)
    for s in (0.05, 0.5, 1.0, 2.0):
        # One unit per a, weight row of norm s/σ: h_j = g(w_j x + a_j) with x = 0.
        sigma = 0.25
        w = np.zeros((len(a), 2))
        w[:, 0] = s / sigma
        fn = lambda v, w=w: g(jnp.asarray(w) @ v + jnp.asarray(a))  # noqa: E731
        got = jacobian.frobenius_sq_diff_expected(fn, jnp.zeros((1, 2)), sigma=sigma)[0]
        ref = 0.0
        for aj in a:
            f = lambda z, aj=aj, s=s: (g1(aj) - g1(aj + s * z)) ** 2 * np.exp(-z * z / 2)  # noqa: E731
            ref += (s / sigma) ** 2 * integrate.quad(f, -np.inf, np.inf, epsabs=1e-15)[0]
        np.testing.assert_allclose(float(got), ref / np.sqrt(2 * np.pi), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["nnx_sigmoid", "conv_tanh"])
def test_expectation_matches_monte_carlo(x64, name):
    """Within 3 standard errors of a 10⁵-draw Monte-Carlo mean of ‖J(x) − J(x + ε)‖²_F."""
    make, shape, _ = ENCODERS[name]
    fn = make()
    sigma = 0.3
    x = jax.random.normal(jax.random.key(8), (2, *shape), jnp.float64)
    expected = jacobian.frobenius_sq_diff_expected(fn, x, sigma=sigma)

    @jax.jit
    def draws(key):
        eps = sigma * jax.random.normal(key, (1000, *x.shape), x.dtype)
        return jax.vmap(lambda e: jacobian.frobenius_sq_diff(fn, x, x + e))(eps)

    mc = jax.lax.map(draws, jax.random.split(jax.random.key(9), 100)).reshape(-1, x.shape[0])
    mean, se = jnp.mean(mc, axis=0), jnp.std(mc, axis=0, ddof=1) / np.sqrt(mc.shape[0])
    assert np.all(np.abs(expected - mean) < 3 * se), (expected, mean, se)
    assert np.all(se < 0.01 * mean)  # the check has power: 1% resolution


def test_expectation_refuses_deep_encoders_and_names_alternatives(x64):
    fn = _jnp_chain([jnp.tanh, jnp.tanh], [7, 5, 3])
    with pytest.raises(ValueError, match="hessian_frobenius_sq.*contractive_higher_order"):
        jacobian.frobenius_sq_diff_expected(fn, jnp.zeros((2, 7)), sigma=0.1)


def test_small_sigma_limit(x64):
    """E‖J(x) − J(x + ε)‖² / σ² → ‖∂J/∂x‖² as σ → 0 (the two exact forms agree)."""
    fn = _nnx_one_layer(jax.nn.sigmoid)
    x = jax.random.normal(jax.random.key(10), (3, 7), jnp.float64)
    hess = jacobian.hessian_frobenius_sq(fn, x)
    for sigma, tol in ((1e-2, 1e-2), (1e-3, 1e-4)):
        ratio = jacobian.frobenius_sq_diff_expected(fn, x, sigma=sigma) / sigma**2
        np.testing.assert_allclose(ratio, hess, rtol=tol)


def test_explain_higher_order_lists_routes(x64):
    one = higher_order.explain_higher_order(_nnx_one_layer(jax.nn.sigmoid), jnp.zeros((4, 7)))
    assert {"expected", "hessian/closed_form", "hessian/autodiff"} <= set(one.costs)
    assert one.costs["expected"] < one.costs["hessian/autodiff"]
    deep = higher_order.explain_higher_order(
        _jnp_chain([jnp.tanh] * 2, [7, 5, 3]), jnp.zeros((4, 7))
    )
    assert deep.choice == "chain" and "expected" not in deep.costs
    assert "<- hessian auto" in str(deep)


def test_higher_order_term_modes(x64):
    """The regularizer's exact modes: expected equals the function; hessian is σ² × Hessian."""
    fn = _nnx_one_layer(jax.nn.sigmoid)
    x = jax.random.normal(jax.random.key(11), (4, 7), jnp.float64)
    key = jax.random.key(0)
    kw = dict(weight=2.0, sigma=0.1)
    exp = regularizers.contractive_higher_order(fn, x, key, form="expected", **kw)
    hes = regularizers.contractive_higher_order(fn, x, key, form="hessian", **kw)
    mc = regularizers.contractive_higher_order(
        fn, x, key, form="monte_carlo", num_corruptions=400, **kw
    )
    np.testing.assert_allclose(exp, 2 * jacobian.frobenius_sq_diff_expected(fn, x, sigma=0.1))
    np.testing.assert_allclose(hes, 2 * 0.01 * jacobian.hessian_frobenius_sq(fn, x))
    np.testing.assert_allclose(jnp.mean(mc), jnp.mean(exp), rtol=0.15)
    with pytest.raises(ValueError, match="form"):
        regularizers.contractive_higher_order(fn, x, key, form="exact", **kw)


@pytest.mark.parametrize("form", ["expected", "hessian"])
def test_objective_higher_order_mode(x64, form):
    """Objective(higher_order_mode=...) runs the exact form on aecore's own model, keyless."""
    model = make_autoencoder((4, 4, 1), hidden=(6,), key=0, dtype=jnp.float64)
    x = jax.random.uniform(jax.random.key(0), (5, 4, 4, 1), jnp.float64)
    obj = Objective(higher_order=0.5, higher_order_sigma=0.2, higher_order_mode=form)
    _, terms = jax.jit(objective_terms, static_argnums=3)(model, x, jax.random.key(1), obj)
    eval_model = models.eval_mode(model)
    want = regularizers.contractive_higher_order(
        eval_model.encode, x, None, weight=0.5, sigma=0.2, form=form
    )
    np.testing.assert_allclose(terms["higher_order"], jnp.mean(want), rtol=1e-10)
    with pytest.raises(ValueError, match="higher_order_mode"):
        Objective(higher_order=0.5, higher_order_mode="exact")
