"""The Jacobian-structure engine on encoders a user writes: soundness against vmap(jacrev).

Random chains (dense, conv, reshape, elementwise pieces) and random chain-breakers; every value
and every parameter gradient is compared with an explicit vmap(jacrev) in float64.
"""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
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


def _assert_exact(make_fn, params, x, mode="auto", rtol=1e-10, gradients=True):
    """Values and parameter gradients of the engine equal vmap(jacrev)'s."""

    def pen(p, use_ref):
        fn = make_fn(p)
        if use_ref:
            return _reference(fn, x)
        if "/" in mode:  # one named route of `explain`
            return jacobian.frobenius_sq_route(fn, x, mode)
        return jacobian.frobenius_sq(fn, x, mode=mode)

    def values_and_grads(p):  # engine (False) and reference (True), one compiled function
        values = {r: pen(p, r) for r in (False, True)}
        if not gradients:
            return values, None
        return values, {r: jax.grad(lambda q, r=r: jnp.sum(pen(q, r)))(p) for r in (False, True)}

    values, grads = jax.jit(values_and_grads)(params)
    np.testing.assert_allclose(values[False], values[True], rtol=rtol, atol=1e-13)
    if not gradients:
        return
    for a, b in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True]), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12)


def _conv(h, k, stride, padding):
    return jax.lax.conv_general_dilated(
        h[None], k, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )[0]


@st.composite
def chains(draw):
    """A random chain's pieces: conv (while image-shaped), dense, reshape, activations."""
    pieces, image, channels, size = [], True, 1, SHAPE[0]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "dense", "reshape"] if image else ["dense"]))
        if kind == "conv":
            stride = draw(st.sampled_from([1, 2])) if channels == 1 else 1
            # a 3x3 VALID conv on an image under 3 pixels wide has an empty output: no encoder
            padding = draw(st.sampled_from(["SAME", "VALID"] if size >= 3 else ["SAME"]))
            size = -(-size // stride) if padding == "SAME" else (size - 3) // stride + 1
            pieces.append(("conv", channels, stride, padding))
            channels = 2
        else:
            pieces.append((kind,))
            image = False
        act = draw(st.sampled_from([None, *ACTS]))
        if act is not None:
            pieces.append(("act", act))
    return pieces, draw(st.integers(0, 2**16))


def _randn(seed, shape, dtype=jnp.float32):
    """N(0, 1) test data from NumPy (`seed`: an int or a Generator); a jax.random draw would
    compile once per shape and dtype, and the random chains below have many shapes."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal(shape), dtype)


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
    rng = np.random.default_rng(seed)
    params, h = {}, x0
    for i, piece in enumerate(pieces):
        if piece[0] == "conv":
            params[f"k{i}"] = 0.5 * _randn(rng, (3, 3, piece[1], 2), x0.dtype)
        if piece[0] == "dense":
            n = int(np.prod(h.shape))
            params[f"w{i}"] = _randn(rng, (n, 5), x0.dtype) / np.sqrt(n)
            params[f"b{i}"] = 0.1 * _randn(rng, (5,), x0.dtype)
        # shapes only: an eager pass would compile every op of every random chain
        h = jax.eval_shape(lambda v, piece=piece, i=i: _apply(piece, params, i, v), h)

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
    x = _randn(7, (3, *SHAPE), jnp.float64)
    fn, params = _build(chain, x[0])
    report = jacobian.explain(functools.partial(fn, params), x)
    assert report.fallback is None, (chain, report)
    # The structured routes are checked even where the cost model prefers autodiff.
    modes = ["auto"] if report.choice not in ("jacrev", "jacfwd") else ["auto", "structured"]
    for mode in modes:
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


# Each example compiles every route of its encoder (~5 s on 2 cores): 5 here, fresh ones per run.
@settings(PROPS, max_examples=5)
@given(
    chain=chains(),
    breaker=st.sampled_from(BREAKERS),
    tail=st.sampled_from([None, "tanh", "relu"]),
)
def test_random_chain_breakers_fall_back_and_stay_exact(x64, chain, breaker, tail):
    x = _randn(8, (3, *SHAPE), jnp.float64)
    inner, params = _build(chain, x[0])
    n = int(np.prod(jax.eval_shape(functools.partial(inner, params), x[0]).shape))
    params["s"] = _randn(3, (n, n), jnp.float64) / np.sqrt(n)

    def fn(p, xi):
        h = _breaker(breaker, p, inner(p, xi))
        return ACTS[tail](h) if tail else h

    report = jacobian.explain(functools.partial(fn, params), x)
    assert report.fallback is not None and "structured/direct" not in report.costs, report
    # Whole-function autodiff's gradients would be compared with themselves; the values guard
    # against a misread structure all the same. The peel (a leading affine map, then autodiff
    # of the rest) is checked in values and gradients under every inner mode.
    peels = [r for r in report.costs if r.startswith("peel")]
    first = next((p[0] for p in chain[0] if p[0] != "reshape"), None)
    assert bool(peels) == (first in ("conv", "dense")), report
    parts = [r for r in report.costs if r.startswith("blocks")]
    for mode in ("auto", *peels, *parts):
        grads = mode != "auto" or report.choice.startswith(("peel", "blocks"))
        _assert_exact(lambda p: functools.partial(fn, p), params, x, mode=mode, gradients=grads)


# --- random encoders assembled from blocks: residual, norms, gating, concat ------------------

BLOCKS = ("residual", "layer_norm", "rms_norm", "gating", "concat", "act")
WIDTH = 6


@st.composite
def block_encoders(draw):
    """A random encoder: an input piece (conv, dense, or an activation first), blocks, a code."""
    head = draw(st.sampled_from(["dense", "conv", "act_first"]))
    blocks = draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=3))
    acts = draw(st.lists(st.sampled_from(sorted(ACTS)), min_size=len(blocks) + 1, max_size=9))
    return head, blocks, acts, draw(st.integers(0, 2**16))


def _norm(h, p, i, kind):
    if kind == "layer_norm":
        h = h - jnp.mean(h)
    return h / jnp.sqrt(jnp.mean(h * h) + 1e-3) * p[f"g{i}"] + p[f"c{i}"]


def _block(kind, p, i, h, act):
    dense = lambda v, j=i: v @ p[f"w{j}"] + p[f"b{j}"]  # noqa: E731
    if kind == "residual":
        return h + act(dense(h))
    if kind in ("layer_norm", "rms_norm"):
        return _norm(h, p, i, kind)
    if kind == "gating":
        return act(dense(h)) * jax.nn.sigmoid(h)
    if kind == "concat":
        return jnp.concatenate([act(h), dense(h)])[: WIDTH + 1] @ p[f"v{i}"]
    return act(h)


def _build_blocks(spec, dtype=jnp.float64):
    head, blocks, acts, seed = spec
    rng = np.random.default_rng(seed)
    d = int(np.prod(SHAPE))
    params = {
        "k": 0.5 * _randn(rng, (3, 3, 1, 2), dtype),
        "w_in": _randn(rng, (d if head != "conv" else 2 * 2 * 2, WIDTH), dtype) / 3,
        "w_out": _randn(rng, (WIDTH, 3), dtype) / 2,
    }
    for i in range(len(blocks)):
        params |= {
            f"w{i}": _randn(rng, (WIDTH, WIDTH), dtype) / 2,
            f"b{i}": 0.1 * _randn(rng, (WIDTH,), dtype),
            f"g{i}": 1 + 0.1 * _randn(rng, (WIDTH,), dtype),
            f"c{i}": 0.1 * _randn(rng, (WIDTH,), dtype),
            f"v{i}": _randn(rng, (WIDTH + 1, WIDTH), dtype) / 2,
        }

    def fn(p, xi):
        if head == "conv":
            h = jnp.tanh(_conv(xi, p["k"], 2, "SAME")).reshape(-1) @ p["w_in"]
        else:
            h = xi.reshape(-1)
            h = (ACTS[acts[-1]](h) if head == "act_first" else h) @ p["w_in"]
        for i, kind in enumerate(blocks):
            h = _block(kind, p, i, h, ACTS[acts[i]])
        return ACTS[acts[len(blocks)]](h @ p["w_out"])

    return fn, params


@settings(PROPS, max_examples=4)
@given(spec=block_encoders())
def test_random_block_encoders_are_exact_under_every_route(x64, spec):
    x = _randn(9, (3, *SHAPE), jnp.float64)
    fn, params = _build_blocks(spec)
    report = jacobian.explain(functools.partial(fn, params), x)
    head = spec[0]
    if report.fallback is not None:  # not a chain: the input-side peel where x enters a map
        assert any(r.startswith("peel") for r in report.costs) == (head != "act_first"), report
    exact = [r for r in report.costs if r not in ("jacrev", "jacfwd")]
    for mode in ("auto", *exact):
        grads = mode != "auto" or report.choice not in ("jacrev", "jacfwd")
        _assert_exact(lambda p: functools.partial(fn, p), params, x, mode=mode, gradients=grads)


# --- encoders a user writes: nnx layers, plain jnp, linen, under jit / vmap / chunking ----------


class _TwoLinear(nnx.Module):
    def __init__(self, dtype):
        rngs = nnx.Rngs(0)
        self.a = nnx.Linear(12, 7, rngs=rngs, param_dtype=dtype)
        self.b = nnx.Linear(7, 3, rngs=rngs, param_dtype=dtype)

    def __call__(self, x):
        return jax.nn.gelu(self.b(jax.nn.silu(self.a(x.reshape(-1)))))


class _ConvNet(nnx.Module):
    def __init__(self, dtype):
        self.conv = nnx.Conv(1, 3, (3, 3), strides=2, rngs=nnx.Rngs(0), param_dtype=dtype)

    def __call__(self, x):
        return jax.nn.relu(self.conv(x)).reshape(-1)


def _user_encoders(dtype):
    w = _randn(0, (12, 5), dtype) / 3
    plain = lambda v: jnp.tanh(v.reshape(-1) @ w)  # noqa: E731 - closes over an array
    shared = _randn(1, (12, 12), dtype) / 4
    tied = lambda v: jnp.tanh(shared @ jnp.tanh(shared @ v.reshape(-1)))  # noqa: E731
    return {
        "nnx-two-linear": (
            _TwoLinear(dtype),
            (12,),
            "dense 12→7 · silu · dense 7→3 · integer_pow+mul+add+tanh",
        ),
        "nnx-conv": (_ConvNet(dtype), (8, 8, 1), "conv 8x8→4x4x3 · relu"),
        "plain-jnp": (plain, (12,), "dense 12→5 · tanh"),
        "weight-shared": (tied, (12,), "dense 12→12 · tanh · dense 12→12 · tanh"),
    }


@pytest.mark.parametrize("name", ["nnx-two-linear", "nnx-conv", "plain-jnp", "weight-shared"])
def test_user_encoders_take_the_structured_routes_and_agree_with_finite_differences(x64, name):
    from test_jacobian import fd_jacobian_sq

    fn, shape, structure = _user_encoders(jnp.float64)[name]
    x = _randn(2, (3, *shape), jnp.float64)
    report = jacobian.explain(fn, x)
    assert report.structure == structure and report.fallback is None
    assert report.choice not in ("jacrev", "jacfwd"), str(report)
    got, ref = jax.jit(lambda v: (jacobian.frobenius_sq(fn, v), _reference(fn, v)))(x)
    np.testing.assert_allclose(got, fd_jacobian_sq(fn, x), rtol=1e-6)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_nnx_module_parameter_gradients_match_jacrev_to_1e10(x64):
    x = _randn(2, (4, 12), jnp.float64)
    model = _TwoLinear(jnp.float64)
    grads = nnx.jit(
        lambda model: (
            {
                mode: nnx.grad(
                    lambda m, mode=mode: jnp.sum(jacobian.frobenius_sq(m, x, mode=mode))
                )(model)
                for mode in ("auto", "structured")
            }
            | {"ref": nnx.grad(lambda m: jnp.sum(_reference(m, x)))(model)}
        )
    )(model)
    for mode in ("auto", "structured"):
        for a, b in zip(jax.tree.leaves(grads[mode]), jax.tree.leaves(grads["ref"]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_linen_apply_partial_is_a_chain(x64):
    linen = pytest.importorskip("flax.linen")

    class Enc(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.sigmoid(linen.Dense(4, param_dtype=jnp.float64)(x.reshape(-1)))

    x = _randn(2, (3, 6), jnp.float64)
    params = Enc().init(jax.random.key(0), x[0])
    fn = functools.partial(Enc().apply, params)
    assert jacobian.explain(fn, x).choice == "closed_form"
    got, ref = jax.jit(lambda v: (jacobian.frobenius_sq(fn, v), _reference(fn, v)))(x)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_float32_jit_vmap_and_chunking_on_a_user_conv():
    model = _ConvNet(jnp.float32)
    x = jnp.asarray(np.random.default_rng(3).uniform(size=(7, 8, 8, 1)), jnp.float32)
    eager = jacobian.frobenius_sq(model, x)

    def all_ways(m, xb):
        return {
            "ref": _reference(m, xb),
            "jit": jacobian.frobenius_sq(m, xb),
            # chunks of 1, 3 (a ragged last chunk) and 7 (the whole batch)
            **{f"chunk {c}": jacobian.frobenius_sq(m, xb, chunk_size=c) for c in (1, 3, 7)},
            # vmap over two batches: the trace sees one example of one batch at a time
            "vmap": jax.vmap(lambda b: jacobian.frobenius_sq(m, b))(jnp.stack([xb, 2 * xb]))[0],
        }

    got = jax.jit(all_ways)(model, x)
    ref = got.pop("ref")
    np.testing.assert_allclose(eager, ref, rtol=1e-5)
    for way, value in got.items():
        np.testing.assert_allclose(value, ref, rtol=1e-5, err_msg=way)


def test_frobenius_sq_diff_on_user_chains_matches_explicit_jacobians(x64):
    for name in ("nnx-two-linear", "nnx-conv"):
        fn, shape, _ = _user_encoders(jnp.float64)[name]
        x = _randn(4, (3, *shape), jnp.float64)
        x2 = x + 0.1 * _randn(5, x.shape, jnp.float64)
        jac = jax.jit(lambda v, fn=fn: jacobian.jacobian(fn, v))
        ja, jb = np.asarray(jac(x)), np.asarray(jac(x2))
        expected = np.sum((ja - jb).reshape(3, -1) ** 2, axis=1)
        diffs = jax.jit(
            lambda a, b, fn=fn: {
                mode: jacobian.frobenius_sq_diff(fn, a, b, mode=mode, chunk_size=2)
                for mode in ("auto", "structured", "jacrev")
            }
        )(x, x2)
        for mode, got in diffs.items():
            np.testing.assert_allclose(got, expected, rtol=1e-10, err_msg=f"{name} {mode}")


def test_forcing_a_structured_route_on_a_non_chain_names_the_primitive_and_line():
    def skip(v):
        return v + jnp.tanh(v)[::-1]

    x = jnp.ones((2, 5))
    report = jacobian.explain(skip, x)
    assert report.structure == "residual[tanh]" and "test_jacobian_engine.py" in report.fallback
    for mode in ("structured", "closed_form"):
        with pytest.raises(ValueError, match=r"^mode .* is not one \(\w+ at .*\n?") as err:
            jacobian.frobenius_sq(skip, x, mode=mode)
        assert "\n" not in str(err.value)


def test_forcing_peel_or_blocks_on_a_chain_says_what_it_needs_in_one_line():
    x = jnp.ones((2, 5))
    for mode in ("peel", "blocks"):
        with pytest.raises(ValueError, match=rf"^mode '{mode}' needs a function that is not a"):
            jacobian.frobenius_sq(jnp.tanh, x, mode=mode)


def _shape_op_encoders():
    k = _randn(0, (3, 3, 1, 4), jnp.float64) / 3
    kg = _randn(1, (3, 3, 2, 4), jnp.float64) / 3
    w = _randn(2, (16, 6), jnp.float64) / 4
    c = _randn(3, (16,), jnp.float64)

    def conv(h, kernel, **kw):
        return jax.lax.conv_general_dilated(
            h[None],
            kernel,
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            **kw,
        )[0]

    return {
        "slice-pad-concat": lambda v: jnp.tanh(
            jnp.concatenate([jnp.pad(v.reshape(-1)[2:14], 2) * c, jnp.ones(3)]) @ jnp.ones((19, 4))
        ),
        "reduce-broadcast": lambda v: jnp.tanh(
            jnp.broadcast_to(jnp.sum(v.reshape(4, 4), axis=0), (3, 4)).reshape(-1)
        ),
        "transpose-div-sub": lambda v: jax.nn.sigmoid((1.0 - v.reshape(4, 4).T / 3.0).reshape(-1)),
        "grouped-conv": lambda v: jnp.tanh(
            conv(jnp.tanh(conv(v, k)), kg, feature_group_count=2)
        ).reshape(-1),
        "conv-transpose": lambda v: jnp.tanh(
            conv(jnp.tanh(conv(v, k)), jnp.ones((2, 2, 4, 1)) / 4, lhs_dilation=(2, 2))
        ).reshape(-1),
        "linear-tail": lambda v: jnp.tanh(v.reshape(-1) @ w) @ w.T[:, :5],
        "linear-only": lambda v: (v.reshape(-1) @ w) * 2.0,
        "elementwise-first": lambda v: jnp.tanh(jax.nn.softplus(v.reshape(-1)) @ w),
    }


# Named here, not from _shape_op_encoders(): building those at collection time would create
# float64 arrays before x64 is on (truncated to float32, with a warning).
SHAPE_OPS = [
    "conv-transpose",
    "elementwise-first",
    "grouped-conv",
    "linear-only",
    "linear-tail",
    "reduce-broadcast",
    "slice-pad-concat",
    "transpose-div-sub",
]


@pytest.mark.parametrize("name", SHAPE_OPS)
def test_shape_ops_and_linear_variants_stay_exact(x64, name):
    encoders = _shape_op_encoders()
    assert sorted(encoders) == SHAPE_OPS
    fn = encoders[name]
    x = _randn(5, (3, *SHAPE), jnp.float64)
    report = jacobian.explain(fn, x)
    assert report.fallback is None, str(report)
    routes = tuple(report.costs)
    got = jax.jit(
        lambda v: (
            {r: jacobian.frobenius_sq_route(fn, v, r) for r in routes} | {"ref": _reference(fn, v)}
        )
    )(x)
    for route in routes:
        np.testing.assert_allclose(got[route], got["ref"], rtol=1e-10, err_msg=route)


# --- the input-side peel and the conv rule's pullback on encoders a user writes ---------------


class _NnxResLN(nnx.Module):
    def __init__(self, dtype):
        rngs = nnx.Rngs(0)
        self.inp = nnx.Linear(12, 6, rngs=rngs, param_dtype=dtype)
        self.norm = nnx.LayerNorm(6, rngs=rngs, param_dtype=dtype)
        self.dense = nnx.Linear(6, 6, rngs=rngs, param_dtype=dtype)
        self.out = nnx.Linear(6, 3, rngs=rngs, param_dtype=dtype)

    def __call__(self, x):
        h = self.inp(x.reshape(-1))
        h = h + jax.nn.gelu(self.dense(self.norm(h)))
        return jnp.tanh(self.out(h))


def _eqx_res_ln(dtype):
    eqx = pytest.importorskip("equinox")
    keys = jax.random.split(jax.random.key(0), 3)

    class Enc(eqx.Module):
        inp: eqx.nn.Linear
        norm: eqx.nn.LayerNorm
        dense: eqx.nn.Linear
        out: eqx.nn.Linear

        def __call__(self, x):
            h = self.inp(x.reshape(-1))
            h = h + jax.nn.gelu(self.dense(self.norm(h)))
            return jnp.tanh(self.out(h))

    lin = functools.partial(eqx.nn.Linear, dtype=dtype)
    return Enc(
        lin(12, 6, key=keys[0]),
        eqx.nn.LayerNorm(6, dtype=dtype),
        lin(6, 6, key=keys[1]),
        lin(6, 3, key=keys[2]),
    )


@pytest.mark.parametrize("kind", ["nnx", "equinox", "jnp"])
def test_residual_layer_norm_encoders_take_the_peel_and_stay_exact(x64, kind):
    x = _randn(6, (4, 12), jnp.float64)
    if kind == "jnp":
        w = {"a": _randn(1, (12, 6), jnp.float64) / 3, "b": _randn(2, (6, 3), jnp.float64) / 2}

        def make(p):
            def enc(v):
                h = v @ p["a"]
                return jnp.tanh(
                    (h + jnp.tanh(_norm(h, {"g0": 1.0, "c0": 0.0}, 0, "layer_norm"))) @ p["b"]
                )

            return enc

        params = w
    else:
        model = _NnxResLN(jnp.float64) if kind == "nnx" else _eqx_res_ln(jnp.float64)
        graphdef, params = nnx.split(model) if kind == "nnx" else (None, model)
        make = (lambda p: nnx.merge(graphdef, p)) if kind == "nnx" else (lambda p: p)
    # flax's LayerNorm promotes float64 with float32, which strict promotion refuses.
    with jax.numpy_dtype_promotion("standard"):
        report = jacobian.explain(make(params), x)
        assert report.structure.startswith("dense 12→6 | "), report
        assert report.choice == "blocks/gram", report
        norm = "centre (vjp) · rms_norm (vjp) · linear" if kind == "jnp" else "layer_norm (vjp)"
        assert f"dense 12→6 (Gram) · residual[{norm}" in report.blocks, report
        for mode in ("auto", "peel", "blocks", "blocks/direct"):
            _assert_exact(make, params, x, mode=mode)


class _NnxResConv(nnx.Module):
    """A small convolutional ResNet: strided stem, a residual conv block, a dense code."""

    def __init__(self, dtype):
        rngs = nnx.Rngs(1)
        conv = functools.partial(nnx.Conv, kernel_size=(3, 3), rngs=rngs, param_dtype=dtype)
        self.stem = conv(1, 3, strides=2)
        self.block = conv(3, 3)
        self.out = nnx.Linear(4 * 4 * 3, 3, rngs=rngs, param_dtype=dtype)

    def __call__(self, x):
        h = jax.nn.relu(self.stem(x))
        h = h + jnp.tanh(self.block(h))
        return jax.nn.sigmoid(self.out(h.reshape(-1)))


def test_conv_residual_encoder_is_pulled_back_block_by_block_and_stays_exact(x64):
    model = _NnxResConv(jnp.float64)
    graphdef, params = nnx.split(model)
    x = _randn(7, (3, 8, 8, 1), jnp.float64)
    report = jacobian.explain(model, x)
    assert report.choice.startswith("blocks"), report
    assert "residual[conv 4x4x3→4x4x3 (pull) · tanh (diagonal)]" in report.blocks, report
    for mode in ("auto", "blocks/direct", "blocks/gram", "peel"):
        _assert_exact(lambda p: nnx.merge(graphdef, p), params, x, mode=mode)


def test_a_part_no_rule_covers_falls_back_for_that_part_alone(x64):
    w = {k: _randn(i, (6, 6), jnp.float64) / 2 for i, k in enumerate("abc")}

    def make(p):
        def enc(v):
            h = jnp.tanh(v @ p["a"])
            h = h + jnp.tanh(jnp.cumsum(h @ p["b"]))  # cumsum: no rule covers it
            return jnp.tanh(h @ p["c"])

        return enc

    x = _randn(8, (4, 6), jnp.float64)
    report = jacobian.explain(make(w), x)
    assert "residual[dense 6→6 (pull) · block[cumsum] (vjp) · tanh (diagonal)]" in report.blocks
    assert "dense 6→6 (matrix) · tanh (diagonal)" in report.blocks, report
    for mode in ("auto", "blocks/direct", "blocks/gram"):
        _assert_exact(make, w, x, mode=mode)


def _ln(h):
    c = h - jnp.mean(h)
    return c / jnp.sqrt(jnp.mean(c * c) + 1e-5)


def test_block_routes_on_awkward_functions_stay_exact_or_step_aside(x64):
    """An output that is a second result of its equation, an integer value between parts, a
    part that changes the dtype, an output that ignores x: every route `auto` may take."""
    w = _randn(1, (5, 6), jnp.float64)
    cases = {
        "second output": lambda v: jnp.split(_ln(w @ v), [2])[1],
        "integer between parts": lambda v: (
            w.T @ _ln(jnp.round(_ln(w @ v)).astype(int).astype(v.dtype) + 0.5)
        ),
        "dtype change": lambda v: (
            w.T
            @ (lambda h: h.astype(jnp.float64) * jnp.tanh(h).astype(jnp.float64))(
                _ln(w.astype(jnp.float32) @ v.astype(jnp.float32))
            )
        ),
        "ignores x": lambda v: jnp.ones(3),
    }
    x = _randn(2, (3, 6), jnp.float64)
    for name, fn in cases.items():
        costs = jacobian.explain(fn, x).costs
        expected = _reference(fn, x)
        rtol = 1e-5 if name == "dtype change" else 1e-10
        for route in ("auto", *[r for r in costs if r.startswith(("blocks", "peel"))]):
            got = (
                jacobian.frobenius_sq_route(fn, x, route)
                if "/" in route
                else jacobian.frobenius_sq(fn, x)
            )
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-12, err_msg=name)
    assert "blocks/direct" in jacobian.explain(cases["second output"], x).costs
    assert not any(r.startswith("blocks") for r in jacobian.explain(cases["ignores x"], x).costs)


def test_conv_pullback_in_other_layouts_with_dilation_and_asymmetric_padding(x64):
    rng = np.random.default_rng(4)
    p = {
        "k1": _randn(rng, (3, 1, 3, 3), jnp.float64) / 3,  # OIHW
        "k2": _randn(rng, (2, 3, 2, 2), jnp.float64) / 3,
        "w": _randn(rng, (2 * 3 * 2, 4), jnp.float64) / 3,
    }
    dn = ("NCHW", "OIHW", "NCHW")

    def make(q):
        def enc(v):  # v [1, 8, 8]
            h = jax.lax.conv_general_dilated(
                v[None],
                q["k1"],
                (2, 1),
                ((1, 0), (0, 2)),
                rhs_dilation=(1, 2),
                dimension_numbers=dn,
            )
            h = jax.lax.conv_general_dilated(
                jnp.tanh(h), q["k2"], (2, 2), "VALID", dimension_numbers=dn
            )
            return jax.nn.softplus(h.reshape(-1)[: 2 * 3 * 2] @ q["w"])

        return enc

    x = _randn(5, (3, 1, 8, 8), jnp.float64)
    report = jacobian.explain(make(p), x)
    assert "structured/direct" in report.costs, report
    for mode in ("auto", "structured/direct"):
        _assert_exact(make, p, x, mode=mode)


def test_frobenius_sq_diff_through_the_peel_matches_explicit_jacobians(x64):
    w = _randn(1, (12, 6), jnp.float64) / 3
    v = _randn(2, (6, 3), jnp.float64) / 2

    def enc(x):
        h = x @ w
        return jnp.tanh((h + jnp.tanh(_norm(h, {"g0": 1.0, "c0": 0.0}, 0, "rms_norm"))) @ v)

    x = _randn(3, (4, 12), jnp.float64)
    x2 = x + 0.1 * _randn(4, x.shape, jnp.float64)
    assert jacobian.explain(enc, x).choice.startswith(("peel", "blocks"))
    ja, jb = jax.jit(lambda a, b: (jacobian.jacobian(enc, a), jacobian.jacobian(enc, b)))(x, x2)
    expected = np.sum((np.asarray(ja) - np.asarray(jb)).reshape(4, -1) ** 2, axis=1)
    modes = ("auto", "peel", "blocks")
    got = jax.jit(lambda a, b: [jacobian.frobenius_sq_diff(enc, a, b, mode=m) for m in modes])(
        x, x2
    )
    for value in got:
        np.testing.assert_allclose(value, expected, rtol=1e-10)
    chunked = jax.jit(lambda a, b: jacobian.frobenius_sq_diff(enc, a, b, chunk_size=3))(x, x2)
    np.testing.assert_allclose(chunked, expected, rtol=1e-10)


def test_each_primitive_has_at_most_one_rule_and_unknown_ones_none():
    from aecore.jacobian import rules

    names = [name for rule in rules.RULES for name in rule.primitives]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    named = lambda name: types.SimpleNamespace(name=name)  # noqa: E731 - what rule_for reads
    assert rules.rule_for(named("dot_general")) is rules.dense.RULE
    assert rules.rule_for(named("cumsum")) is None  # no rule: not a linear map, autodiff
