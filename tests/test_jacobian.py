"""Exactness of aecore.jacobian: every route against the others and against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from aecore import jacobian, make_autoencoder
from aecore.jacobian import routes
from aecore.models import ACTIVATIONS

EXACT_MODES = ("jacfwd", "jacrev", "auto")


def fd_jacobian_sq(fn, x, eps=1e-6):
    """‖J‖²_F per example from a central finite-difference Jacobian, in float64.

    Every ±eps step of every coordinate of every example is one row of a single batch, so `fn`
    (vmapped, jitted once) is evaluated twice in all; the differences are taken in NumPy.
    """
    x = np.asarray(x, np.float64)
    b, shape = x.shape[0], x.shape[1:]
    d = int(np.prod(shape))
    steps = (eps * np.eye(d)).reshape(d, *shape)  # [d, *shape]
    f = jax.jit(jax.vmap(fn))
    plus = np.asarray(f(jnp.asarray((x[:, None] + steps[None]).reshape(b * d, *shape))))
    minus = np.asarray(f(jnp.asarray((x[:, None] - steps[None]).reshape(b * d, *shape))))
    cols = ((plus - minus) / (2 * eps)).reshape(b, d, -1)  # [B, d, k]: column j of J_i
    return np.sum(cols**2, axis=(1, 2))


def fsq_modes(model, x, modes, **kwargs):
    """{mode: `frobenius_sq` of `model.encode`} for several modes, from ONE jitted function:
    one compile of all routes, where eager mode would compile them one primitive at a time."""
    f = lambda m, xb: {  # noqa: E731
        md: jacobian.frobenius_sq(m.encode, xb, mode=md, **kwargs) for md in modes
    }
    return {md: np.asarray(v) for md, v in jax.jit(f)(model, x).items()}


def fsq(model, x, mode, **kwargs):
    return fsq_modes(model, x, [mode], **kwargs)[mode]


def _mlp(hidden, act, key=0, input_shape=(3, 4)):
    return make_autoencoder(input_shape, hidden=hidden, activation=act, key=key, dtype=jnp.float64)


def _x(shape, key=1):
    """float64 N(0, 1) test inputs from NumPy (a jax.random draw compiles once per shape)."""
    return jnp.asarray(np.random.default_rng(key).standard_normal(shape), jnp.float64)


# Every activation in a one-layer encoder (closed form applies) and inside deeper chains (mixed
# per layer, so each activation's derivative also sits between two linear maps of a chain).
ROUTE_CASES = [((7,), act) for act in sorted(ACTIVATIONS)] + [
    ((9, 5), ["tanh", "softplus"]),
    ((9, 5), ["relu", "sigmoid"]),
    ((10, 8, 3), ["sigmoid", "relu", "tanh"]),
    ((10, 8, 3), ["softplus", "identity", "sigmoid"]),
]


@pytest.mark.parametrize("hidden, act", ROUTE_CASES, ids=[f"{h}-{a}" for h, a in ROUTE_CASES])
def test_mlp_routes_agree_with_finite_differences(x64, hidden, act):
    model = _mlp(hidden, act)
    x = _x((4, 3, 4))
    ref = fd_jacobian_sq(model.encode, x)
    modes = ["jacfwd", "auto", "structured"] + (["closed_form"] if len(hidden) == 1 else [])
    got = fsq_modes(model, x, ["jacrev", *modes])
    exact = got["jacrev"]
    np.testing.assert_allclose(exact, ref, rtol=1e-6)
    for mode in modes:  # within round-off of jacrev, hence within FD's error of the truth
        np.testing.assert_allclose(got[mode], exact, rtol=1e-12, err_msg=mode)


def test_closed_form_uses_each_activations_own_derivative(x64):
    # A ReLU layer's Jacobian rows are 0 or W_l: sigmoid's h(1-h) there would be wrong.
    model = _mlp((6,), "relu")
    x = _x((5, 3, 4))
    a = (
        x.reshape(5, -1) @ model.encoder.layers[0].kernel[...]
        + model.encoder.layers[0].bias[...][None]
    )
    row_norms = jnp.sum(model.encoder.layers[0].kernel[...] ** 2, axis=0)
    expected = jnp.sum(jnp.where(a > 0, 1.0, 0.0) * row_norms[None], axis=1)
    got = jacobian.frobenius_sq(model.encode, x, mode="closed_form")
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_conv_encoder_routes_agree_with_finite_differences(x64):
    model = make_autoencoder(
        (8, 8, 1), hidden=(5,), architecture="conv", conv_channels=(2, 3), key=0, dtype=jnp.float64
    )
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 8, 8, 1)), jnp.float64)
    ref = fd_jacobian_sq(model.encode, x)
    for mode, got in fsq_modes(model, x, EXACT_MODES).items():
        np.testing.assert_allclose(got, ref, rtol=1e-6, err_msg=mode)


@pytest.mark.parametrize("hidden", [(7,), (9, 5, 3)])
def test_parameter_gradients_agree_across_routes(x64, hidden):
    model = _mlp(hidden, "sigmoid")
    x = _x((4, 3, 4))

    def penalty(m, mode):
        return jnp.sum(jacobian.frobenius_sq(m.encode, x, mode=mode))

    # jacrev's gradient against central finite differences; every other route's gradient
    # against jacrev's, to round-off (all routes' gradients from one compiled function).
    check_grads(jax.jit(lambda m: penalty(m, "jacrev")), (model,), order=1, modes=["rev"])
    modes = ["jacfwd", "auto", "structured"] + (["closed_form"] if len(hidden) == 1 else [])
    grads = jax.jit(lambda m: {md: jax.grad(penalty)(m, md) for md in ["jacrev", *modes]})(model)
    ref = grads["jacrev"]
    for mode in modes:
        got = grads[mode]
        for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-14, err_msg=mode)


def test_vmap_matches_python_loop_and_jit_matches_eager(x64):
    model = _mlp((9, 5), "tanh")
    x = _x((6, 3, 4))
    for mode in ("jacrev", "structured"):
        batched = jacobian.frobenius_sq(model.encode, x, mode=mode)  # eager
        jitted = jax.jit(lambda m, xb, mode=mode: jacobian.frobenius_sq(m.encode, xb, mode=mode))
        np.testing.assert_allclose(jitted(model, x), batched, rtol=1e-12)
        loop = [jitted(model, x[i : i + 1])[0] for i in range(6)]  # one compile, batch of one
        np.testing.assert_allclose(batched, np.array(loop), rtol=1e-12)


@pytest.mark.parametrize("mode", ["jacfwd", "jacrev", "closed_form", "structured"])
def test_chunked_equals_unchunked(x64, mode):
    model = _mlp((7,), "sigmoid")
    x = _x((10, 3, 4))
    full = fsq(model, x, mode)
    for chunk in (1, 3, 10):
        chunked = fsq(model, x, mode, chunk_size=chunk)
        np.testing.assert_allclose(chunked, full, rtol=1e-12)


def test_auto_picks_reverse_for_narrow_codes_and_forward_for_wide():
    narrow = lambda x: jnp.tanh(x[:3] * x[3:6])  # noqa: E731 - x on two branches: not a chain
    wide = lambda x: jnp.tanh(jnp.concatenate([x, x, x]))  # noqa: E731
    x = jnp.ones((2, 10))
    # Reverse mode: whole-function, or part by part (a vjp of the product, then tanh's diagonal).
    assert jacobian.choose_mode(narrow, x) in ("jacrev", "blocks")
    assert jacobian.choose_mode(wide, x) == "jacfwd"
    one = make_autoencoder((10,), hidden=(4,), key=0)
    deep = make_autoencoder((10,), hidden=(6, 4), key=0)
    assert jacobian.choose_mode(one.encode, x) == "closed_form"
    assert jacobian.choose_mode(deep.encoder, x) == "structured"


@pytest.mark.parametrize("method", ["jvp", "vjp"])
def test_estimators_are_unbiased_within_three_standard_errors(x64, method):
    model = _mlp((9, 5), "sigmoid")
    x = _x((3, 3, 4))
    exact = fsq(model, x, "jacrev")
    n = 4000
    estimate = jax.jit(
        lambda k: jacobian.frobenius_sq_estimate(
            model.encode, x, k, num_probes=n // 4, method=method
        )
    )
    # 4 independent means of n/4 probes each, one compiled estimator
    samples = np.stack([np.asarray(estimate(jax.random.key(s))) for s in range(4)])
    single = jax.jit(
        jax.vmap(
            lambda k: jacobian.frobenius_sq_estimate(
                model.encode, x, k, num_probes=1, method=method
            )
        )
    )(jax.random.split(jax.random.key(99), 2000))
    se = np.std(np.asarray(single), axis=0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - exact), 3 * se)
    assert np.all(se > 0)


def test_frobenius_sq_diff_matches_explicit_jacobians(x64):
    for hidden in [(7,), (9, 5)]:
        model = _mlp(hidden, "sigmoid")
        x, x2 = _x((4, 3, 4)), _x((4, 3, 4), key=5)
        jac = jax.jit(lambda m, v: jacobian.jacobian(m.encode, v, mode="jacfwd"))
        ja, jb = np.asarray(jac(model, x)), np.asarray(jac(model, x2))
        expected = np.sum((ja - jb).reshape(4, -1) ** 2, axis=1)
        modes = ["auto", "jacrev", "jacfwd"] + (["closed_form"] if len(hidden) == 1 else [])
        diffs = jax.jit(
            lambda m, a, b, modes=tuple(modes): {
                md: jacobian.frobenius_sq_diff(m.encode, a, b, mode=md) for md in modes
            }
        )(model, x, x2)
        for mode, got in diffs.items():
            np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=mode)


def test_bad_arguments_name_the_value():
    model = make_autoencoder((4,), hidden=(3, 2), key=0)
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="'jacobi'"):
        jacobian.frobenius_sq(model.encode, x, mode="jacobi")
    with pytest.raises(ValueError, match="2 elementwise segments"):
        jacobian.frobenius_sq(model.encode, x, mode="closed_form")
    with pytest.raises(ValueError, match="needs a chain.*reduce_sum at .*test_jacobian.py"):
        jacobian.frobenius_sq(lambda v: v * jnp.sum(v), x, mode="structured")
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        jacobian.frobenius_sq(model.encode, jnp.ones(4))
    with pytest.raises(ValueError, match="chunk_size"):
        jacobian.frobenius_sq(model.encode, x, mode="jacrev", chunk_size=0)
    with pytest.raises(ValueError, match="num_probes"):
        jacobian.frobenius_sq_estimate(model.encode, x, jax.random.key(0), num_probes=0)


# --- structured route: Gram vs direct product, symmetric custom backward (issue #4) ---------


def test_gram_and_sym_quad_custom_backward_pass_check_grads(x64):
    w = _x((7, 4))
    check_grads(jax.jit(routes.gram), (w,), order=1, modes=["rev"])
    np.testing.assert_allclose(routes.gram(w), w.T @ w, rtol=1e-14)
    m = _x((3, 2, 4), key=2)
    g = routes.gram(_x((6, 4), key=3))
    expected = jnp.einsum("bkn,nm,bkm->b", m, g, m)
    np.testing.assert_allclose(routes.sym_quad(m, g), expected, rtol=1e-13)
    # g must stay symmetric for the custom rule, so check gradients through a Gram matrix.
    check_grads(
        jax.jit(lambda m_, w_: routes.sym_quad(m_, routes.gram(w_))),
        (m, _x((6, 4), key=3)),
        order=1,
        modes=["rev"],
    )
    plain = jax.jit(
        jax.grad(lambda m_, w_: jnp.sum(jnp.einsum("bkn,nm,bkm->b", m_, w_.T @ w_, m_)), (0, 1))
    )
    custom = jax.jit(jax.grad(lambda m_, w_: jnp.sum(routes.sym_quad(m_, routes.gram(w_))), (0, 1)))
    w3 = _x((6, 4), key=3)
    for a, b in zip(custom(m, w3), plain(m, w3), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize(
    ("input_shape", "hidden", "act"),
    [
        ((12,), (5, 3), "sigmoid"),  # d > n_1: Gram is cheaper
        ((12,), (6, 4, 2), "softplus"),
        ((4,), (9, 3), "softplus"),  # d < n_1: direct product is cheaper
        ((3, 4), (15, 7, 2), "sigmoid"),  # d < n_1, depth 3
    ],
)
def test_structured_products_equal_jacrev_values_and_parameter_gradients(
    x64, input_shape, hidden, act
):
    model = make_autoencoder(input_shape, hidden=hidden, activation=act, key=3, dtype=jnp.float64)
    x = _x((5, *input_shape), key=4)

    def values_of(m, route):  # [B] ‖J‖²_F per example
        if route in ("jacrev", "auto"):
            return jacobian.frobenius_sq(m.encode, x, mode=route)
        return jacobian.frobenius_sq_route(m.encode, x, "structured/" + route)

    def penalty(m, route):
        return jnp.sum(values_of(m, route))

    modes = (*jacobian.STRUCTURED_PRODUCTS, "auto")
    # Values and gradients of every route from one compiled function.
    values, grads = jax.jit(
        lambda m: (
            {r: values_of(m, r) for r in ("jacrev", *modes)},
            {r: jax.grad(penalty)(m, r) for r in ("jacrev", *modes)},
        )
    )(model)
    for route in modes:
        np.testing.assert_allclose(values[route], values["jacrev"], rtol=1e-12, err_msg=route)
        for g, r in zip(
            jax.tree.leaves(grads[route]), jax.tree.leaves(grads["jacrev"]), strict=True
        ):
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-14, err_msg=route)


def test_forcing_a_route_that_does_not_apply_names_it():
    model = make_autoencoder((6,), hidden=(4, 2), key=0)
    with pytest.raises(ValueError, match="'structured/cholesky'"):
        jacobian.frobenius_sq_route(model.encode, jnp.ones((2, 6)), "structured/cholesky")
    with pytest.raises(ValueError, match="'closed_form' does not apply"):
        jacobian.frobenius_sq_route(model.encode, jnp.ones((2, 6)), "closed_form")
