"""Encoders and decoders written with Equinox or Linen, through every public function: fit (only
their arrays are trained), checkpoint, bit-identical resume, every aecore.evaluate function, the
exact penalty on the same structured route as aecore's own MLP, and the one-line refusals."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from evaluation_checks import check_curve_and_summary
from flax import linen as nn
from flax import nnx

import aecore
from aecore import evaluate, jacobian, models, train

eqx = pytest.importorskip("equinox")

D, H, K, N = 16, 12, 4, 96


def _equinox_model(seed=0, dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.key(seed))
    act, final = jnp.tanh, jax.nn.sigmoid
    enc = eqx.nn.MLP(D, K, H, 1, activation=act, final_activation=final, key=k1, dtype=dtype)
    dec = eqx.nn.Linear(K, D, key=k2, dtype=dtype)
    return aecore.Autoencoder(enc, dec, output="sigmoid")


class LinenEncoder(nn.Module):
    dtype: type = jnp.float32

    @nn.compact
    def __call__(self, x):  # ONE example [D] -> [K]
        dense = lambda n: nn.Dense(n, param_dtype=self.dtype)  # noqa: E731
        return nn.sigmoid(dense(K)(jnp.tanh(dense(H)(x))))


def _linen_model(seed=0, dtype=jnp.float32):
    enc, dec = LinenEncoder(dtype), nn.Dense(D, param_dtype=dtype)
    k1, k2 = jax.random.split(jax.random.key(seed))
    return aecore.Autoencoder(
        models.from_linen(enc, enc.init(k1, jnp.zeros(D, dtype))),
        dec.bind(dec.init(k2, jnp.zeros(K, dtype))),  # a bound module works too
        output="sigmoid",
    )


BUILD = {"equinox": _equinox_model, "linen": _linen_model}
OBJ = aecore.Objective(loss="cross_entropy", contractive=0.05, weight_decay=1e-4)
OPT = optax.adam(1e-2)


def _data(n=N, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, D)).astype(np.float32)


def _config(**kw):
    return train.TrainConfig(**{**dict(num_steps=12, batch_size=16, log_every=2), **kw})


def _leaves(model):
    return [np.asarray(v) for v in jax.tree.leaves(model)]


@pytest.mark.parametrize("library", ["equinox", "linen"])
def test_done_when_library_model_trains_resumes_and_evaluates(library, tmp_path):
    build, x, x_test = BUILD[library], _data(), _data(32, seed=1)
    model = build()
    params = nnx.state(model, nnx.Param)
    assert len(jax.tree.leaves(params)) == 6  # 3 kernels, 3 biases: what fit differentiates
    assert len(models.weight_arrays(model)) == 3
    cfg = _config(progress=False)
    full = train.fit(model, OBJ, x, config=cfg, optimizer=OPT, x_test=x_test)
    assert full.history[-1]["loss"] < full.history[0]["loss"]  # it trains
    moved = [
        not np.array_equal(a, b) for a, b in zip(_leaves(model), _leaves(full.model), strict=True)
    ]
    assert all(moved)  # every array is trained (none is held static)
    wd = str(tmp_path / "run")
    half = _config(num_steps=6, checkpoint_every=3, progress=False)
    train.fit(build(), OBJ, x, config=half, optimizer=OPT, x_test=x_test, workdir=wd)
    resumed = train.fit(build(seed=5), OBJ, x, config=cfg, optimizer=OPT, x_test=x_test, workdir=wd)
    assert resumed.start_step == 6 and resumed.step == 12
    for a, b in zip(_leaves(full.model), _leaves(resumed.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    _check_every_evaluate(resumed.model, x, x_test)


def _library_call(part):  # the part called as its own library calls it, with trained arrays
    if isinstance(part, models.LinenPart):
        return lambda v: part.module.apply({"params": part.params}, v)
    return part.module


def _check_every_evaluate(m, x, x_test):
    codes = evaluate.encode(m, x_test)
    np.testing.assert_allclose(codes, jax.vmap(_library_call(m.encoder))(x_test), rtol=1e-6)
    x_hat = evaluate.reconstruct(m, x_test)
    np.testing.assert_allclose(x_hat, jax.vmap(m)(x_test), rtol=1e-6)
    logits = jax.vmap(lambda v: m.decode_logits(m.encode(v)))(x_test)
    expect = np.mean(aecore.losses.sigmoid_cross_entropy(logits, x_test))
    err = evaluate.reconstruction_error(m, x_test, loss="cross_entropy")
    assert err == pytest.approx(float(expect), rel=1e-5)
    norms = evaluate.jacobian_norms(m, x_test)
    jac = np.asarray(jax.vmap(jax.jacrev(m.encode))(x_test))  # independent: [32, K, D]
    np.testing.assert_allclose(norms, np.sqrt(np.sum(jac**2, axis=(1, 2))), rtol=1e-5)
    spectrum = evaluate.jacobian_spectrum(m, x_test, max_examples=5)
    np.testing.assert_allclose(np.sqrt(np.sum(spectrum**2, axis=1)), norms[:5], rtol=1e-5)
    with pytest.raises(TypeError, match="code activation"):
        evaluate.saturation(m, x_test)  # a library module declares none: the caller names it
    sat = evaluate.saturation(m, x_test, activation="sigmoid")
    assert sat == pytest.approx(np.mean((codes < 0.05) | (codes > 0.95)))
    assert evaluate.noise_ratio(m, x_test, sigma=0.1, seed=0) >= 0
    assert evaluate.psnr(x_hat, x_test).shape == (32,)
    y, y_test = np.arange(N) % 2, np.arange(32) % 2
    codes_train = evaluate.encode(m, x)
    assert 0 <= evaluate.linear_probe(codes_train, y, codes, y_test)["accuracy"] <= 1
    assert 0 <= evaluate.precision_at_k(codes_train, y, codes, y_test, k=3) <= 1
    assert evaluate.pca_angles(m, x).shape == (K,)
    basis = evaluate.decoder_basis(m, K)  # the linear decoder's weight, from its Jacobian
    dec = m.decoder
    weight = dec.params["kernel"].T if isinstance(dec, models.LinenPart) else dec.module.weight
    np.testing.assert_allclose(basis, np.asarray(weight), rtol=1e-6)  # [D, K]
    assert evaluate.principal_angles(basis, basis).max() < 1e-6
    summary = check_curve_and_summary(m, x, x_test, y, y_test, OBJ)
    assert {"reconstruction_error", "mean_jacobian_norm", "linear_probe_accuracy"} <= set(summary)


@pytest.mark.parametrize("library", ["equinox", "linen"])
def test_exact_penalty_takes_the_route_of_aecores_own_mlp(library, x64):
    model = BUILD[library](dtype=jnp.float64)
    acts = ("tanh", "sigmoid")
    own = aecore.make_autoencoder((D,), hidden=(H, K), activation=acts, dtype=jnp.float64)
    x = jnp.asarray(_data(8), jnp.float64)
    text, own_text = str(jacobian.explain(model.encode, x)), str(jacobian.explain(own.encode, x))
    assert text.splitlines()[0] == own_text.splitlines()[0]  # dense 16→12 · tanh · dense ...
    assert "structured/gram" in text and "<- auto" in text
    assert text.splitlines()[1] == own_text.splitlines()[1]  # the same route at the same cost
    jac = jax.vmap(jax.jacfwd(model.encode))(x)  # independent: forward mode, [8, K, D]
    exact = np.sum(np.asarray(jac) ** 2, axis=(1, 2))
    np.testing.assert_allclose(jacobian.frobenius_sq(model.encode, x), exact, rtol=1e-12)


def test_a_linen_module_through_nnx_bridge_becomes_a_linen_part():
    bridged = nnx.bridge.ToNNX(LinenEncoder(), rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(bridged, jnp.zeros(D))
    x = jnp.asarray(_data(8))
    expect = bridged(x[0])  # eagerly: under vmap its RNG counter raises TraceContextError
    dec = nn.Dense(D)
    model = aecore.Autoencoder(
        bridged, dec.bind(dec.init(jax.random.key(1), jnp.zeros(K))), output="sigmoid"
    )
    assert isinstance(model.encoder, models.LinenPart)
    np.testing.assert_allclose(jax.vmap(model.encode)(x)[0], expect, rtol=1e-6)
    result = train.fit(model, OBJ, _data(), config=_config(num_steps=2, progress=False))
    assert result.step == 2


def test_anything_else_holding_arrays_is_refused_in_one_line():
    class Holder:  # neither nnx, Equinox nor Linen: its array could not be trained
        def __init__(self):
            self.w = jnp.ones((D, K))

        def __call__(self, x):
            return x @ self.w

    dec = eqx.nn.Linear(K, D, key=jax.random.key(0))
    with pytest.raises(TypeError, match="encoder Holder holds arrays but is neither") as err:
        aecore.Autoencoder(Holder(), dec, output="sigmoid")
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="Linen module without parameters.*from_linen"):
        aecore.Autoencoder(LinenEncoder(), dec, output="sigmoid")
    with pytest.raises(ValueError, match=r"'params' collection only.*\['batch_stats'\]"):
        models.from_linen(LinenEncoder(), {"params": {}, "batch_stats": {}})
    variables = LinenEncoder().init(jax.random.key(0), jnp.zeros(D))
    bare = models.from_linen(LinenEncoder(), variables["params"])  # the params tree alone
    x = jnp.ones(D)
    np.testing.assert_array_equal(bare(x), LinenEncoder().apply(variables, x))
    with pytest.raises(TypeError, match="from_linen needs a flax.linen.Module, got Holder"):
        models.from_linen(Holder(), {})
    plain = aecore.Autoencoder(lambda x: x[:K], lambda h: jnp.tile(h, 4), output="identity")
    assert (
        plain.encode(jnp.arange(D, dtype=jnp.float32))[0] == 0
    )  # plain functions stay as they are


def test_import_aecore_does_not_import_equinox():
    code = "import sys, aecore; assert 'equinox' not in sys.modules, 'equinox imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
