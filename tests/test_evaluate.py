"""Tests of aecore.evaluate against closed forms, scipy and hand-built models."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from aecore import evaluate, jacobian
from aecore.models import make_autoencoder
from aecore.objective import Objective, reconstruction
from aecore.train import TrainConfig, fit


def _set_layer(layer, kernel, bias):
    layer.kernel[...] = jnp.asarray(kernel, layer.kernel[...].dtype)
    layer.bias[...] = jnp.asarray(bias, layer.bias[...].dtype)


def _dataset(x_train, x_test, y_train=None, y_test=None):
    return types.SimpleNamespace(
        name="toy",
        x_train=x_train,
        x_test=x_test,
        y_train=y_train,
        y_test=y_test,
        value_range="unit",
        description="toy",
    )


# ---- principal angles ------------------------------------------------------------------------


@pytest.mark.parametrize("k1,k2", [(3, 3), (2, 5), (5, 2), (1, 4)])
def test_principal_angles_match_scipy(k1, k2):
    rng = np.random.default_rng(k1 * 10 + k2)
    a, b = rng.normal(size=(9, k1)), rng.normal(size=(9, k2))
    ours = evaluate.principal_angles(a, b)
    ref = scipy.linalg.subspace_angles(a, b)
    assert ours.shape == (min(k1, k2),)
    np.testing.assert_allclose(np.sort(ours), np.sort(ref), atol=1e-10)
    np.testing.assert_allclose(ours, ref, atol=1e-10)  # same (descending) order


def test_principal_angles_zero_for_same_subspace_and_small_angle_accurate():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 3))
    mixing = rng.normal(size=(3, 3)) + 3 * np.eye(3)  # invertible change of basis
    np.testing.assert_allclose(evaluate.principal_angles(a, a @ mixing), 0.0, atol=1e-12)
    # A tiny rotation of one vector out of the plane: the angle is read from its sine.
    e = np.eye(4)
    eps = 1e-9
    b = np.stack([e[0], np.cos(eps) * e[1] + np.sin(eps) * e[2]], axis=1)
    angles = evaluate.principal_angles(e[:, :2], b)
    np.testing.assert_allclose(angles, [eps, 0.0], atol=1e-15, rtol=1e-6)


def test_principal_angles_orthogonal_and_bad_shapes():
    e = np.eye(4)
    np.testing.assert_allclose(evaluate.principal_angles(e[:, :2], e[:, 2:]), np.pi / 2)
    with pytest.raises(ValueError, match="shapes"):
        evaluate.principal_angles(np.ones((4, 2)), np.ones((5, 2)))


# ---- linear AE recovers the PCA subspace -----------------------------------------------------


def test_pca_angles_small_for_trained_linear_autoencoder():
    rng = np.random.default_rng(0)
    n, d, k = 512, 8, 2
    # Rank-3 signal with clearly separated variances, plus small isotropic noise.
    basis = np.linalg.qr(rng.normal(size=(d, 3)))[0]
    x = (rng.normal(size=(n, 3)) * np.array([3.0, 2.0, 0.5])) @ basis.T
    x = x + 0.01 * rng.normal(size=(n, d))
    x = ((x - x.mean(0)) / np.sqrt(n)).astype(np.float32)
    model = make_autoencoder((d,), hidden=(k,), activation="identity", output="identity", key=1)
    before = evaluate.pca_angles(model, x)
    result = fit(
        model,
        Objective(loss="squared_error"),
        x,
        config=TrainConfig(
            num_steps=600, batch_size=128, learning_rate=3e-2, progress=False, log_every=600
        ),
    )
    angles = evaluate.pca_angles(result.model, x)
    assert angles.shape == (k,)
    assert before.max() > 0.1  # the test is not vacuous: a random decoder is far off
    assert angles.max() < 1e-2, angles
    # And its reconstruction error reaches the PCA floor (centred data, so biases are ~0).
    err = evaluate.reconstruction_error(result.model, x, loss="squared_error")
    floor = evaluate.pca_reconstruction_error(x, x, k)
    assert floor <= err * (1 + 1e-3) + 1e-6
    assert err < floor * 1.05 + 1e-5


def test_pca_angles_tied_uses_encoder_kernel():
    model = make_autoencoder((6,), hidden=(2,), activation="identity", output="identity", tied=True)
    w = np.zeros((6, 2))
    w[0, 0] = w[1, 1] = 1.0
    _set_layer(model.encoder.layers[0], w, np.zeros(2))
    x = np.zeros((50, 6), np.float32)
    rng = np.random.default_rng(0)
    x[:, 0] = 3 * rng.normal(size=50)
    x[:, 1] = 2 * rng.normal(size=50)
    x[:, 2:] = 0.01 * rng.normal(size=(50, 4))
    assert evaluate.pca_angles(model, x).max() < 0.05


def test_pca_reconstruction_error_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    x = x - x.mean(0)
    err = evaluate.pca_reconstruction_error(x, x, 2)
    eig = np.sort(np.linalg.eigvalsh(np.cov(x.T, bias=True)))[::-1]
    np.testing.assert_allclose(err, eig[2:].sum(), rtol=1e-8)
    with pytest.raises(ValueError, match="k must be"):
        evaluate.pca_reconstruction_error(x, x, 6)


# ---- Jacobians -------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [(3,), (5, 3)])
def test_jacobian_norms_squared_equal_frobenius_sq(x64, hidden):
    model = make_autoencoder((4, 2), hidden=hidden, activation="tanh", key=0, dtype=jnp.float64)
    x = np.random.default_rng(0).normal(size=(7, 4, 2))
    norms = evaluate.jacobian_norms(model, x, batch_size=3)  # padded last batch
    ref = jacobian.frobenius_sq(model.encode, jnp.asarray(x), mode="jacrev")
    np.testing.assert_allclose(norms**2, ref, rtol=1e-12)
    assert norms.shape == (7,)


def test_jacobian_spectrum_matches_norms(x64):
    model = make_autoencoder((6,), hidden=(4, 3), activation="sigmoid", key=2, dtype=jnp.float64)
    x = np.random.default_rng(1).normal(size=(10, 6))
    sv = evaluate.jacobian_spectrum(model, x, max_examples=5)
    assert sv.shape == (5, 3)
    assert np.all(np.diff(sv, axis=1) <= 0)
    np.testing.assert_allclose(
        np.sqrt(np.sum(sv**2, axis=1)), evaluate.jacobian_norms(model, x[:5]), rtol=1e-10
    )


# ---- codes, reconstructions, errors ----------------------------------------------------------


def test_encode_reconstruct_and_error_match_vmap():
    model = make_autoencoder((5,), hidden=(3,), key=0)
    x = np.random.default_rng(0).uniform(size=(11, 5)).astype(np.float32)
    xj = jnp.asarray(x)
    h = jax.vmap(model.encode)(xj)
    np.testing.assert_allclose(evaluate.encode(model, x, batch_size=4), h, rtol=1e-6)
    np.testing.assert_allclose(evaluate.reconstruct(model, x, batch_size=4), jax.vmap(model)(xj))
    for loss in ("squared_error", "cross_entropy"):
        ref = float(jnp.mean(reconstruction(model, xj, h, loss=loss)))
        got = evaluate.reconstruction_error(model, x, loss=loss, batch_size=4)
        assert isinstance(got, float)
        np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_shape_errors_name_both_shapes():
    model = make_autoencoder((5,), hidden=(3,), key=0)
    with pytest.raises(ValueError, match=r"input_shape \(5,\).*\(4, 6\)"):
        evaluate.encode(model, np.zeros((4, 6), np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate.encode(model, np.zeros((4, 5), np.float32), batch_size=0)
    with pytest.raises(ValueError, match="loss"):
        evaluate.reconstruction_error(model, np.zeros((4, 5), np.float32), loss="l1")


# ---- saturation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "activation,bias,expected",
    [
        ("sigmoid", 100.0, 1.0),
        ("sigmoid", -100.0, 1.0),
        ("sigmoid", 0.0, 0.0),
        ("tanh", 100.0, 1.0),
        ("tanh", 0.0, 0.0),
        ("relu", -1.0, 1.0),
        ("relu", 1.0, 0.0),
        ("softplus", -100.0, 1.0),
        ("softplus", 100.0, 0.0),
        ("identity", 0.0, 0.0),
    ],
)
def test_saturation_hand_built(activation, bias, expected):
    model = make_autoencoder((4,), hidden=(3,), activation=activation, key=0)
    _set_layer(model.encoder.layers[0], np.zeros((4, 3)), np.full(3, bias))
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    assert evaluate.saturation(model, x) == expected


def test_saturation_mixed_units():
    model = make_autoencoder((2,), hidden=(4,), activation="sigmoid", key=0)
    # Two of four units are pinned at 0 / 1; the other two sit at 0.5.
    _set_layer(model.encoder.layers[0], np.zeros((2, 4)), np.array([50.0, -50.0, 0.0, 0.0]))
    assert evaluate.saturation(model, np.ones((6, 2), np.float32)) == 0.5
    with pytest.raises(ValueError, match="tol"):
        evaluate.saturation(model, np.ones((6, 2), np.float32), tol=0.7)


# ---- linear probe ----------------------------------------------------------------------------


def test_linear_probe_separable_and_chance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=300)
    centres = 10.0 * np.eye(3)
    codes = centres[y] + rng.normal(size=(300, 3))
    out = evaluate.linear_probe(codes[:200], y[:200], codes[200:], y[200:])
    assert out["accuracy"] == 1.0 and out["error"] == 0.0
    noise = rng.normal(size=(300, 3))  # codes carry no label information
    chance = evaluate.linear_probe(noise[:200], y[:200], noise[200:], y[200:])
    assert chance["accuracy"] < 0.6
    with pytest.raises(ValueError, match="labels"):
        evaluate.linear_probe(codes, None, codes, y)
    with pytest.raises(ValueError, match="shapes"):
        evaluate.linear_probe(codes, y[:10], codes, y)


# ---- noise ratio, PSNR, retrieval precision --------------------------------------------------


def test_noise_ratio_of_a_halving_linear_ae_is_a_quarter():
    # Encoder I, decoder 0.5 I, zero biases: x̂(x̃) = x̃ / 2. At x = 0 the surviving noise is
    # ñ / 2, so the ratio is exactly 1/4 whatever the noise draw.
    model = make_autoencoder((3,), hidden=(3,), activation="identity", output="identity", key=0)
    _set_layer(model.encoder.layers[0], np.eye(3), np.zeros(3))
    _set_layer(model.decoder.layers[0], 0.5 * np.eye(3), np.zeros(3))
    x = np.zeros((40, 3), np.float32)
    assert evaluate.noise_ratio(model, x, sigma=0.3, seed=0) == pytest.approx(0.25, rel=1e-5)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        evaluate.noise_ratio(model, x, sigma=0.0, seed=0)


def test_psnr_hand_computed():
    x = np.zeros((2, 2, 2))
    x_hat = np.zeros((2, 2, 2))
    x_hat[0] = 0.1  # MSE 0.01 -> 20 dB
    x_hat[1, 0, 0] = 1.0  # MSE 1/4 -> 10 log10(4) dB
    np.testing.assert_allclose(evaluate.psnr(x_hat, x), [20.0, 10 * np.log10(4.0)], rtol=1e-12)
    # Over the masked pixel only: image 0 still 20 dB, image 1 has MSE 1 there -> 0 dB.
    mask = np.zeros((2, 2), bool)
    mask[0, 0] = True
    np.testing.assert_allclose(evaluate.psnr(x_hat, x, mask), [20.0, 0.0], atol=1e-12)
    assert evaluate.psnr(x, x)[0] == pytest.approx(100.0)  # MSE floored at 1e-10
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate.psnr(x_hat[:, 0], x)


def test_precision_at_k_hand_computed():
    codes_train = np.array([[0.0], [0.1], [0.2], [5.0], [5.1]])
    y_train = np.array([0, 0, 1, 1, 1])
    codes_test = np.array([[0.05], [5.05]])
    y_test = np.array([0, 1])
    # Query 0's 3 neighbours: labels 0, 0, 1 -> 2/3; query 1's: 1, 1, 1 (the third at 0.2) -> 1.
    p = evaluate.precision_at_k(codes_train, y_train, codes_test, y_test, k=3)
    assert p == pytest.approx((2 / 3 + 1) / 2)
    assert evaluate.precision_at_k(codes_train, y_train, codes_test, y_test, k=1) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        evaluate.precision_at_k(codes_train, y_train, codes_test, y_test, k=6)


# ---- contraction curves ----------------------------------------------------------------------


def test_contraction_curve_linear_models(x64):
    d, k = 6, 3
    model = make_autoencoder(
        (d,), hidden=(k,), activation="identity", output="identity", key=0, dtype=jnp.float64
    )
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    x = rng.normal(size=(30, d))
    # W = kernel.T with orthonormal ROWS of a [d, d] rotation (k = d): an isometry, ratio 1.
    full = make_autoencoder(
        (d,), hidden=(d,), activation="identity", output="identity", key=0, dtype=jnp.float64
    )
    _set_layer(full.encoder.layers[0], q, np.ones(d))
    curve = evaluate.contraction_curve(full, x, radii=[0.01, 1.0, 10.0], key=jax.random.key(0))
    np.testing.assert_allclose(curve["radii"], [0.01, 1.0, 10.0])
    np.testing.assert_allclose(curve["ratio"], 1.0, rtol=1e-10)
    # Scaled isometry: ratio 2.
    _set_layer(full.encoder.layers[0], 2 * q, np.zeros(d))
    curve = evaluate.contraction_curve(full, x, radii=[0.5], key=jax.random.key(1))
    np.testing.assert_allclose(curve["ratio"], 2.0, rtol=1e-10)
    # k < d: ratio is the median of ‖W u‖ over the same directions, whatever the radius.
    _set_layer(model.encoder.layers[0], q[:, :k], np.zeros(k))
    curve = evaluate.contraction_curve(
        model, x, radii=[0.1, 3.0], num_pairs=500, key=jax.random.key(2)
    )
    assert curve["ratio"][0] == pytest.approx(curve["ratio"][1], rel=1e-10)
    # ‖W u‖² for uniform u on the sphere of R^6 projected on 3 dims: median near sqrt(1/2).
    assert 0.6 < curve["ratio"][0] < 0.8
    with pytest.raises(ValueError, match="radii"):
        evaluate.contraction_curve(model, x, radii=[0.0, 1.0], key=jax.random.key(0))


def test_contraction_curve_saturating_encoder_contracts_far_away():
    model = make_autoencoder((4,), hidden=(8,), activation="sigmoid", key=0)
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    curve = evaluate.contraction_curve(model, x, radii=[0.01, 100.0], key=jax.random.key(0))
    assert curve["ratio"][1] < curve["ratio"][0]


# ---- evaluate_model --------------------------------------------------------------------------


def test_evaluate_model_keys_and_json():
    rng = np.random.default_rng(0)
    model = make_autoencoder((4, 4, 1), hidden=(5,), key=0)
    x_train = rng.uniform(size=(40, 4, 4, 1)).astype(np.float32)
    x_test = rng.uniform(size=(30, 4, 4, 1)).astype(np.float32)
    y_train, y_test = rng.integers(0, 2, 40), rng.integers(0, 2, 30)
    ds = _dataset(x_train, x_test, y_train, y_test)
    out = evaluate.evaluate_model(model, ds, Objective(loss="cross_entropy"), max_examples=25)
    assert set(out) == {
        "reconstruction_error",
        "mean_jacobian_norm",
        "saturation",
        "linear_probe_accuracy",
        "decoder_distortion",
        "metric_condition_median",
        "mean_logdet_metric",
        "metric_singular_fraction",
    }
    assert all(type(v) is float for v in out.values())
    json.dumps(out)
    ref = evaluate.reconstruction_error(model, x_test[:25], loss="cross_entropy")
    assert out["reconstruction_error"] == pytest.approx(ref)
    unlabeled = evaluate.evaluate_model(model, _dataset(x_train, x_test), Objective())
    assert "linear_probe_accuracy" not in unlabeled
    assert "linear_probe_accuracy" not in evaluate.evaluate_model(
        model, ds, Objective(), probe=False
    )
    with pytest.raises(ValueError, match="dataset.x_test"):
        evaluate.evaluate_model(model, _dataset(x_train, x_test[:, :2]), Objective())
