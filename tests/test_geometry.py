"""The decoder's pullback metric, its log-determinant and the reconstruction Jacobian on models a
user writes: values and parameter gradients against jax.jacfwd / jax.jacrev in float64,
log-det stability at high condition numbers, finite gradients near singular G, bad input.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aecore import evaluate, jacobian, make_autoencoder, regularizers
from aecore.jacobian import geometry
from aecore.objective import Objective

K = 3


def _randn(seed, shape, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


class _Mlp(nnx.Module):
    """A user's MLP: dense-tanh-dense(-sigmoid)."""

    def __init__(self, d_in, d_hidden, d_out, out_act, seed):
        rngs = nnx.Rngs(seed)
        lin = functools.partial(nnx.Linear, param_dtype=jnp.float64, rngs=rngs)
        self.a, self.b, self.out_act = lin(d_in, d_hidden), lin(d_hidden, d_out), out_act

    def __call__(self, v):
        return self.out_act(self.b(jnp.tanh(self.a(v.reshape(-1)))))


class _ConvEncoder(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(1)
        self.conv = nnx.Conv(1, 2, (3, 3), strides=2, param_dtype=jnp.float64, rngs=rngs)
        self.out = nnx.Linear(8, K, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, x):  # x [4, 4, 1]
        return jnp.tanh(self.out(jax.nn.softplus(self.conv(x)).reshape(-1)))


class _ConvTransposeDecoder(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(2)
        self.inp = nnx.Linear(K, 8, param_dtype=jnp.float64, rngs=rngs)
        self.up = nnx.ConvTranspose(2, 1, (3, 3), strides=2, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, z):  # -> [4, 4, 1]
        return jax.nn.sigmoid(self.up(jnp.tanh(self.inp(z)).reshape(2, 2, 2)))


class _Residual(nnx.Module):
    """A residual MLP: dense, a skip around dense-gelu, dense-tanh."""

    def __init__(self, d_in, d_out, seed):
        rngs = nnx.Rngs(seed)
        lin = functools.partial(nnx.Linear, param_dtype=jnp.float64, rngs=rngs)
        self.inp, self.mid, self.out = lin(d_in, 6), lin(6, 6), lin(6, d_out)

    def __call__(self, v):
        h = self.inp(v.reshape(-1))
        h = h + jax.nn.gelu(self.mid(h))
        return jnp.tanh(self.out(h))


def _jnp_pair():
    """Plain jnp functions of a parameter dict (no module at all)."""
    params = {
        "we": _randn(1, (16, K)) / 4,
        "be": _randn(2, (K,)) / 4,
        "wd": _randn(3, (K, 16)) / 2,
    }

    def make(p):
        def enc(x):
            return jnp.tanh(x.reshape(-1) @ p["we"] + p["be"])

        def dec(z):
            return jax.nn.sigmoid(jnp.sin(z) @ p["wd"]).reshape(4, 4, 1)

        return enc, dec

    return make, params


def _nnx_pair(encoder, decoder):
    graphdef, params = nnx.split((encoder, decoder))
    return (lambda p: nnx.merge(graphdef, p)), params


def _eqx_pair():
    eqx = pytest.importorskip("equinox")
    keys = jax.random.split(jax.random.key(3), 3)
    lin = functools.partial(eqx.nn.Linear, dtype=jnp.float64)
    layers = (lin(16, 5, key=keys[0]), lin(5, K, key=keys[1]), lin(K, 16, key=keys[2]))

    def make(p):
        def enc(x):
            return p[1](jnp.tanh(p[0](x.reshape(-1))))

        def dec(z):
            return jnp.tanh(p[2](z)).reshape(4, 4, 1)

        return enc, dec

    return make, layers


PAIRS = {
    "nnx_mlp": lambda: _nnx_pair(
        _Mlp(16, 5, K, jnp.tanh, 0), _Mlp(K, 5, 16, lambda a: jax.nn.sigmoid(a).reshape(4, 4, 1), 1)
    ),
    "conv_transpose": lambda: _nnx_pair(_ConvEncoder(), _ConvTransposeDecoder()),
    "residual": lambda: _nnx_pair(
        _Residual(16, K, 4), _Mlp(K, 6, 16, lambda a: a.reshape(4, 4, 1), 5)
    ),
    "jnp": _jnp_pair,
    "equinox": _eqx_pair,
}


def _reference(make, p, x):
    enc, dec = make(p)
    jac = jax.jacrev(lambda xi: dec(enc(xi)).reshape(-1))
    return jax.vmap(lambda xi: jnp.sum(jac(xi) ** 2))(x)


def _metric_reference(dec, z):
    jac = jax.vmap(jax.jacrev(lambda zi: dec(zi).reshape(-1)))(z)  # [B, d, k]
    return jnp.einsum("bdk,bdl->bkl", jac, jac)


def _assert_close_tree(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)


def _engine_and_reference(make, p, x, modes, sides=(0, 1)):
    """{name: (aecore's value, autodiff's value)} of the metric, log-det and reconstruction;
    `sides` picks which of the two are computed (None in place of the other)."""
    enc, dec = make(p)
    z = jax.vmap(enc)(x)
    engine, ref = 0 in sides, 1 in sides
    g_ref = _metric_reference(dec, z) if ref else None
    r_ref = _reference(make, p, x) if ref else None
    out = {
        "metric": (jacobian.pullback_metric(dec, z, chunk_size=2) if engine else None, g_ref),
        "logdet": (
            jacobian.pullback_logdet(dec, z) if engine else None,
            jnp.linalg.slogdet(g_ref)[1] if ref else None,
        ),
    }
    for mode in modes:
        value = jacobian.reconstruction_frobenius_sq(enc, dec, x, mode=mode) if engine else None
        out[mode] = (value, r_ref)
    return out


@pytest.mark.parametrize("name", list(PAIRS))
def test_exact_on_user_models(x64, name):
    """pullback_metric, pullback_logdet and reconstruction_frobenius_sq (every mode) equal
    autodiff of the composition to 1e-10 in float64; so do their parameter gradients (the
    engine's routes, on the conv-transpose and residual models; the others check values)."""
    make, params = PAIRS[name]()
    x = jax.random.uniform(jax.random.key(7), (3, 4, 4, 1), jnp.float64)
    # every mode once (jnp); the autodiff modes are jax's own, so elsewhere only auto, factored
    modes = {"jnp": jacobian.RECONSTRUCTION_MODES, "equinox": ("factored",)}.get(
        name, ("auto", "factored")
    )

    def grads(p):  # a weighted sum: one backward pass per side
        weights = {"metric": 1.0, "logdet": 0.3, "factored": 0.7}

        def total(q, which):
            values = _engine_and_reference(make, q, x, ("factored",), sides=(which,))
            return sum(w * jnp.sum(values[key][which]) for key, w in weights.items())

        return jax.grad(lambda q: total(q, 0))(p), jax.grad(lambda q: total(q, 1))(p)

    with jax.numpy_dtype_promotion("standard"):  # flax layers mix float32 constants
        values = jax.jit(lambda p: _engine_and_reference(make, p, x, modes))(params)
        for key, (got, want) in values.items():
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=key)
        if name in ("jnp", "equinox", "nnx_mlp"):  # nnx_mlp: a chain, as in test_jacobian
            return
        got, want = jax.jit(grads)(params)
        _assert_close_tree(got, want)


@pytest.mark.parametrize("name", ["residual"])  # peel and blocks; chains: the next test
def test_every_encoder_route_gives_the_same_row_gram(x64, name):
    """J_f J_fᵀ by each route the engine offers for the encoder equals autodiff's, including a
    chain whose last map permutes the code (the contractive penalty may ignore it; J_f J_fᵀ
    must not)."""
    make, params = PAIRS[name]()
    enc, _ = make(params)
    x = jax.random.uniform(jax.random.key(8), (2, 4, 4, 1), jnp.float64)
    with jax.numpy_dtype_promotion("standard"):
        want = jax.vmap(jax.jacrev(enc))(x).reshape(2, K, -1)
        want = jnp.einsum("bkn,bln->bkl", want, want)
        routes = jacobian.explain(enc, x).costs
        for route in [r for r in routes if r not in ("jacrev", "jacfwd")]:  # the engine's own
            got = geometry.encoder_row_gram(enc, x, route=route)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13, err_msg=route)


def test_row_gram_keeps_a_permutation_of_the_code(x64):
    w = _randn(1, (16, K)) / 4
    perm = jnp.array([2, 0, 1])

    def enc(x):  # a chain whose last linear map is a permutation (isometric)
        return jnp.tanh(x.reshape(-1) @ w)[perm] * jnp.array([1.0, 2.0, 3.0])[perm] ** 0

    x = jax.random.uniform(jax.random.key(9), (2, 16), jnp.float64)
    want = jax.vmap(jax.jacrev(enc))(x)
    want = jnp.einsum("bkn,bln->bkl", want, want)
    for route in [r for r in jacobian.explain(enc, x).costs if r not in ("jacrev", "jacfwd")]:
        got = geometry.encoder_row_gram(enc, x, route=route)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13, err_msg=route)


def _ill_conditioned(cond, dtype, seed=0, d=20, k=4):
    """A decoder z -> U diag(s) Vᵀ z + 0.1 tanh(U diag(s) Vᵀ z)... kept linear so that
    log det G = 2 Σ log s_i holds in closed form; U, V random rotations, s from 1 to 1/cond."""
    u = jnp.linalg.qr(_randn(seed, (d, k)))[0]
    v = jnp.linalg.qr(_randn(seed + 1, (k, k)))[0]
    s = jnp.logspace(0, -np.log10(cond), k, dtype=jnp.float64)
    j = (u * s[None, :]) @ v.T
    return j.astype(dtype), float(2 * jnp.sum(jnp.log(s)))


@pytest.mark.parametrize(("cond", "dtype"), [(1e6, "float64"), (3e3, "float32")])
def test_logdet_is_stable_at_high_condition_numbers(x64, cond, dtype):
    """The QR log-det of a linear decoder with cond(J) = `cond` in a rotated basis matches
    2 Σ log s_i (closed form, float64) within k · cond · eps of the dtype (each log|R_jj| is
    off by at most about cond · eps), where slogdet(JᵀJ) would square the condition number."""
    dtype = jnp.dtype(dtype)
    j, want = _ill_conditioned(cond, dtype)
    z = jnp.zeros((1, j.shape[1]), dtype)
    got = jax.jit(lambda m: jacobian.pullback_logdet(lambda zi: m @ zi, z))(j)
    tol = j.shape[1] * cond * float(jnp.finfo(dtype).eps)
    assert abs(float(got[0]) - want) < tol, (float(got[0]), want, tol)


def test_logdet_gradient_is_finite_near_and_at_singular_metric(x64):
    """Near singular (s_min = 1e-14 in float64) the gradient is finite and equals 2 J G⁻¹ where
    it is representable; at exact rank deficiency the value is -inf and the gradient finite."""
    j, _ = _ill_conditioned(1e14, jnp.float64)
    z = jnp.zeros((1, j.shape[1]))

    def value(m):
        return jnp.sum(jacobian.pullback_logdet(lambda zi: m @ zi, z))

    value_and_grad = jax.jit(jax.value_and_grad(value))
    assert np.all(np.isfinite(value_and_grad(j)[1]))
    singular = j.at[:, -1].set(0.0)
    at_singular, grad = value_and_grad(singular)
    assert float(at_singular) == -np.inf and np.all(np.isfinite(grad))
    well, _ = _ill_conditioned(10.0, jnp.float64)  # and the gradient is 2 J G⁻¹ there
    np.testing.assert_allclose(
        value_and_grad(well)[1], 2 * well @ jnp.linalg.inv(well.T @ well), rtol=1e-10
    )


def test_estimates_use_the_exact_products(x64):
    """IRVAE's estimator equals the ratio of batch means of vᵀGv and vᵀG²v for its probes (G
    exact); Hutch++ of the reconstruction with p >= min(k, d) probes is exact."""
    make, params = PAIRS["jnp"]()
    enc, dec = make(params)
    x = jax.random.uniform(jax.random.key(7), (4, 4, 4, 1), jnp.float64)
    key = jax.random.key(11)

    @jax.jit
    def pairs(x):
        z = jax.vmap(enc)(x)
        g = jacobian.pullback_metric(dec, z)
        v = jax.random.normal(key, (4, 2, K), jnp.float64)  # the estimator's draw
        tr_g = jnp.mean(jnp.einsum("bpk,bkl,bpl->bp", v, g, v), axis=1)
        tr_g2 = jnp.mean(jnp.einsum("bpk,bkl,blm,bpm->bp", v, g, g, v), axis=1)
        return {
            "irvae": (
                jacobian.relaxed_distortion_estimate(dec, z, key, num_probes=2),
                jnp.mean(tr_g2) / jnp.mean(tr_g) ** 2,
            ),
            "hutch++": (
                jacobian.reconstruction_frobenius_sq_estimate(
                    enc, dec, x, key, num_probes=16, method="hutch++"
                ),
                jacobian.reconstruction_frobenius_sq(enc, dec, x),
            ),
        }

    for name, (got, want) in pairs(x).items():
        np.testing.assert_allclose(got, want, rtol=1e-10, err_msg=name)
    # the exact distortion: tr G² / (tr G)² at its minimum 1/k for G = c I
    np.testing.assert_allclose(jacobian.relaxed_distortion(jnp.stack([2 * jnp.eye(K)] * 3)), 1 / K)


def test_explain_reconstruction_reports_routes_and_costs(x64):
    make, params = _jnp_pair()
    enc, dec = make(params)
    x = jnp.zeros((8, 4, 4, 1), jnp.float64)
    report = jacobian.explain_reconstruction(enc, dec, x)
    assert set(report.costs) == {"factored", "jacrev", "jacfwd"}
    assert report.choice == min(report.costs, key=report.costs.get)
    text = str(report)
    assert "tr(G_dec(h)" in text and "<- auto" in text and report.encoder.choice in text


def _tuple_decoder(z):
    return z, z


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: jacobian.pullback_metric(jnp.tanh, jnp.zeros(3)), "codes z of shape [B, k]"),
        (lambda: jacobian.pullback_metric(_tuple_decoder, jnp.zeros((2, 3))), "one array"),
        (lambda: jacobian.pullback_logdet(jnp.sum, jnp.zeros((2, 3))), "at least k = 3"),
        (
            lambda: jacobian.reconstruction_frobenius_sq(
                lambda x: x, lambda z: z[None], jnp.zeros((2, 3))
            ),
            "one example's shape (3,)",
        ),
        (
            lambda: jacobian.reconstruction_frobenius_sq(
                lambda x: jnp.outer(x, x), lambda z: z, jnp.zeros((2, 3))
            ),
            "code vector [k], got shape (3, 3)",
        ),
        (
            lambda: jacobian.reconstruction_frobenius_sq(
                jnp.tanh, jnp.tanh, jnp.zeros((2, 3)), mode="exact"
            ),
            "unknown mode 'exact'",
        ),
    ],
)
def test_bad_input_is_refused_in_one_line(call, message):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_isometry_and_distortion_penalties_match_their_definitions(x64):
    g = jnp.einsum("bdk,bdl->bkl", _randn(1, (3, 5, K)), _randn(1, (3, 5, K)))
    eye = jnp.eye(K)[None]
    c = jnp.trace(g, axis1=1, axis2=2)[:, None, None] / K
    tr = jnp.trace(g, axis1=1, axis2=2)
    tr2 = jnp.trace(g @ g, axis1=1, axis2=2)
    pairs = jax.jit(
        lambda g: {
            "free": (regularizers.isometry(g, weight=2.0), 2 * jnp.sum((g - c * eye) ** 2, (1, 2))),
            "fixed": (
                regularizers.isometry(g, weight=1.0, scale=0.5),
                jnp.sum((g - 0.5 * eye) ** 2, axis=(1, 2)),
            ),
            "zero": (regularizers.isometry(3 * jnp.concatenate([eye] * 2), weight=1.0), 0.0),
            "distortion": (
                regularizers.relaxed_distortion(g, weight=1.0),
                jnp.mean(tr2) / jnp.mean(tr) ** 2,
            ),
        }
    )(g)
    for name, (got, want) in pairs.items():
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)
    z = _randn(2, (6, K))
    mixed = np.asarray(regularizers.mixup_codes(jax.random.key(0), z, eta=0.2))
    # each mixed code lies on the line through its code and one partner, t within [-η, 1 + η]
    partner = np.asarray(z)[
        np.asarray(jax.random.permutation(jax.random.split(jax.random.key(0))[0], 6))
    ]
    z = np.asarray(z)
    moved = np.any(partner != z, axis=1)[:, None]  # a code paired with itself stays put
    safe = np.where(moved, z - partner, 1.0)
    t = np.where(moved, (mixed - partner)[:, :1] / safe[:, :1], 0.5)
    np.testing.assert_allclose(mixed, np.where(moved, t * z + (1 - t) * partner, z), rtol=1e-10)
    assert t.min() >= -0.2 and t.max() <= 1.2


def test_objective_fields_build_the_geometry_terms(x64):
    """Each field switches its term on, and the term is the library function on the model."""
    model = make_autoencoder((6,), hidden=(2,), key=0, dtype=jnp.float64)
    x = jax.random.uniform(jax.random.key(1), (4, 6), jnp.float64)
    objective = Objective(
        isometry=1.0, distortion=1.0, logdet_variance=1.0, reconstruction_contractive=1.0
    )
    names = [t.name for t in objective.terms()]
    assert names == ["isometry", "distortion", "logdet_variance", "reconstruction_contractive"]
    estimated = Objective(
        distortion=1.0,
        distortion_probes=1,
        reconstruction_contractive=1.0,
        reconstruction_contractive_probes=2,
    )

    @jax.jit
    def values(model, key):
        h = jax.vmap(model.encode)(x)
        terms = objective.terms()
        got = {t.name: t(model, x, x, h, jax.random.fold_in(key, i)) for i, t in enumerate(terms)}
        g = jacobian.pullback_metric(model.decode, h)
        z_mix = regularizers.mixup_codes(jax.random.split(jax.random.fold_in(key, 1))[0], h)
        want = {
            "isometry": jnp.mean(regularizers.isometry(g, weight=1.0)),
            "distortion": jacobian.relaxed_distortion(
                jacobian.pullback_metric(model.decode, z_mix)
            ),
            "logdet_variance": jnp.var(jacobian.pullback_logdet(model.decode, h)),
            "reconstruction_contractive": jnp.mean(
                _reference(lambda p: (p.encode, p.decode), model, x)
            ),
        }
        estimates = [t(model, x, x, h, key) for t in estimated.terms()]
        return got, want, estimates

    got, want, estimates = values(model, jax.random.key(2))
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, err_msg=name)
    assert all(np.isfinite(float(e)) for e in estimates)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("isometry", -1.0, "isometry must be a finite number >= 0, got -1.0"),
        ("isometry_scale", -0.5, "isometry_scale must be a finite number >= 0"),
        ("distortion_probes", -1, "distortion_probes must be an integer >= 0, got -1"),
        ("reconstruction_contractive", float("nan"), "reconstruction_contractive must be"),
    ],
)
def test_objective_refuses_bad_geometry_fields_in_one_line(field, value, message):
    with pytest.raises(ValueError, match=None) as info:
        Objective(**{field: value})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_decoder_geometry_metrics_match_numpy():
    """evaluate.decoder_geometry against the metric formed by jacrev and NumPy's float64
    eigenvalues of G (an independent route: no QR, no SVD of J)."""
    model = make_autoencoder((6,), hidden=(3,), key=0)
    x = np.random.default_rng(0).uniform(size=(7, 6)).astype(np.float32)
    got = evaluate.decoder_geometry(model, x)
    z = jax.vmap(model.encode)(jnp.asarray(x))
    jac = np.asarray(jax.vmap(jax.jacrev(model.decode))(z), np.float64)  # [7, 6, 3]
    eig = np.linalg.eigvalsh(np.einsum("bdk,bdl->bkl", jac, jac))  # ascending
    want = {
        "decoder_distortion": np.mean(np.sum(eig**2, 1)) / np.mean(np.sum(eig, 1)) ** 2,
        "metric_condition_median": np.median(eig[:, -1] / eig[:, 0]),
        "mean_logdet_metric": np.mean(np.sum(np.log(eig), 1)),
    }
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, err_msg=name)  # float32 model


def test_decoder_geometry_of_an_overcomplete_decoder_leaves_out_what_is_singular():
    """k > d: G is singular by construction, so its condition number and log-det are left out
    (never Infinity in metrics.json); the distortion is still G's, from J's singular values."""
    model = make_autoencoder((3,), hidden=(5,), key=0)
    x = np.random.default_rng(1).uniform(size=(4, 3)).astype(np.float32)
    got = evaluate.decoder_geometry(model, x)
    z = jax.vmap(model.encode)(jnp.asarray(x))
    jac = np.asarray(jax.vmap(jax.jacrev(model.decode))(z), np.float64)  # [4, 3, 5]
    eig = np.linalg.eigvalsh(np.einsum("bdk,bdl->bkl", jac, jac))
    want = np.mean(np.sum(eig**2, 1)) / np.mean(np.sum(eig, 1)) ** 2
    assert set(got) == {"decoder_distortion", "metric_singular_fraction"}
    assert got["metric_singular_fraction"] == 1.0
    np.testing.assert_allclose(got["decoder_distortion"], want, rtol=1e-4)


def test_decoder_geometry_does_not_report_a_numerically_singular_metric():
    """A decoder whose J_g has a direction below float32's resolution (an output unit that
    ignores the code): G's condition number and log-det would be rounding noise, so they are
    left out and the singular fraction says why."""
    w = np.diag([1.0, 1.0, 1e-9]).astype(np.float32)  # [k=3, d=3]: third direction unresolved

    class Flat(nnx.Module):
        output = "identity"

        def __init__(self):
            self.w = nnx.Param(jnp.asarray(w))

        def encode(self, x):
            return x

        def decode_logits(self, h):
            return h @ self.w[...]

        def decode(self, h):
            return self.decode_logits(h)

    x = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)
    got = evaluate.decoder_geometry(Flat(), x)
    assert got["metric_singular_fraction"] == 1.0
    assert "metric_condition_median" not in got and "mean_logdet_metric" not in got
    np.testing.assert_allclose(got["decoder_distortion"], 2 / 4, rtol=1e-6)  # tr G² / (tr G)²
