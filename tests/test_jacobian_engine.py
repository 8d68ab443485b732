"""The Jacobian-structure engine on encoders a user writes: soundness against vmap(jacrev).

Random chains (dense, conv, reshape, elementwise pieces) and random chain-breakers; every value
and every parameter gradient is compared with an explicit vmap(jacrev) in float64.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aecore import jacobian

ACTS = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "swish_jnp": lambda a: a * (1 / (1 + jnp.exp(-a))),
}
BREAKERS = ("skip", "branch_product", "layer_norm", "stop_gradient", "data_where")
SHAPE = (4, 4, 1)  # one example; fixed for every hypothesis example


def _reference(fn, x):
    return jax.vmap(lambda xi: jnp.sum(jax.jacrev(fn)(xi) ** 2))(x)


def _assert_exact(make_fn, params, x, mode="auto", rtol=1e-10):
    """Values and parameter gradients of the engine equal vmap(jacrev)'s."""

    def pen(p, use_ref):
        fn = make_fn(p)
        return _reference(fn, x) if use_ref else jacobian.frobenius_sq(fn, x, mode=mode)

    def value_and_grad(use_ref):
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(pen(p, use_ref)), has_aux=False))

    got, ref = jax.jit(pen, static_argnums=1)(params, False), pen(params, True)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=1e-13)
    g_got = value_and_grad(False)(params)[1]
    g_ref = value_and_grad(True)(params)[1]
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12)


def _conv(h, k, stride, padding):
    return jax.lax.conv_general_dilated(
        h[None], k, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )[0]


@st.composite
def chains(draw):
    """A random chain's pieces: conv (while image-shaped), dense, reshape, activations."""
    pieces, image, channels = [], True, 1
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "dense", "reshape"] if image else ["dense"]))
        if kind == "conv":
            stride = draw(st.sampled_from([1, 2])) if channels == 1 else 1
            pieces.append(("conv", channels, stride, draw(st.sampled_from(["SAME", "VALID"]))))
            channels = 2
        else:
            pieces.append((kind,))
            image = False
        act = draw(st.sampled_from([None, *ACTS]))
        if act is not None:
            pieces.append(("act", act))
    return pieces, draw(st.integers(0, 2**16))


def _apply(piece, p, i, h):
    if piece[0] == "conv":
        return _conv(h, p[f"k{i}"], piece[2], piece[3])
    if piece[0] == "reshape":
        return h.reshape(-1)
    if piece[0] == "dense":
        return h.reshape(-1) @ p[f"w{i}"] + p[f"b{i}"]
    return ACTS[piece[1]](h)


def _build(chain, x0):
    """(fn(params, x_i), params) of a random chain, float64 weights drawn from its seed."""
    pieces, seed = chain
    keys = iter(jax.random.split(jax.random.key(seed), 2 * len(pieces)))
    params, h = {}, x0
    for i, piece in enumerate(pieces):
        if piece[0] == "conv":
            params[f"k{i}"] = 0.5 * jax.random.normal(next(keys), (3, 3, piece[1], 2), x0.dtype)
        if piece[0] == "dense":
            n = int(np.prod(h.shape))
            params[f"w{i}"] = jax.random.normal(next(keys), (n, 5), x0.dtype) / np.sqrt(n)
            params[f"b{i}"] = 0.1 * jax.random.normal(next(keys), (5,), x0.dtype)
        h = _apply(piece, params, i, h)

    def fn(p, xi):
        h = xi
        for i, piece in enumerate(pieces):
            h = _apply(piece, p, i, h)
        return h.reshape(-1)

    return fn, params


PROPS = settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))


@PROPS
@given(chain=chains())
def test_random_chains_are_exact_in_values_and_parameter_gradients(x64, chain):
    x = jax.random.normal(jax.random.key(7), (3, *SHAPE), jnp.float64)
    fn, params = _build(chain, x[0])
    report = jacobian.explain(functools.partial(fn, params), x)
    assert report.fallback is None, (chain, report)
    for mode in ("auto", "structured"):
        _assert_exact(lambda p: functools.partial(fn, p), params, x, mode=mode)


def _breaker(name, p, h):
    if name == "skip":
        return h + jnp.tanh(h @ p["s"])
    if name == "branch_product":
        return (h @ p["s"]) * jnp.tanh(h)
    if name == "layer_norm":
        c = h - jnp.mean(h)
        return c / jnp.sqrt(jnp.mean(c**2) + 1e-3)
    if name == "stop_gradient":
        return jnp.tanh(h) * jax.lax.stop_gradient(h)
    return jnp.where(jnp.sum(h) > 0, jnp.tanh(h), h)  # data-dependent where


@PROPS
@given(
    chain=chains(),
    breaker=st.sampled_from(BREAKERS),
    tail=st.sampled_from([None, "tanh", "relu"]),
)
def test_random_chain_breakers_fall_back_and_stay_exact(x64, chain, breaker, tail):
    x = jax.random.normal(jax.random.key(8), (3, *SHAPE), jnp.float64)
    inner, params = _build(chain, x[0])
    n = int(np.prod(jax.eval_shape(functools.partial(inner, params), x[0]).shape))
    params["s"] = jax.random.normal(jax.random.key(3), (n, n), jnp.float64) / np.sqrt(n)

    def fn(p, xi):
        h = _breaker(breaker, p, inner(p, xi))
        return ACTS[tail](h) if tail else h

    report = jacobian.explain(functools.partial(fn, params), x)
    assert report.fallback is not None and report.choice in ("jacrev", "jacfwd"), report
    _assert_exact(lambda p: functools.partial(fn, p), params, x)
