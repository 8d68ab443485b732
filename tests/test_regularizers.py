"""Regularizers: hand-computed values, the KL derivative, noise statistics, bad scales."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aecore import jacobian, make_autoencoder, regularizers


def test_weight_decay_counts_weights_not_biases():
    model = make_autoencoder((3,), hidden=(2,), key=0)
    model.encoder.layers[0].bias[...] = jnp.full((2,), 100.0)
    expected = sum(
        float(jnp.sum(w**2))
        for w in (model.encoder.layers[0].kernel[...], model.decoder.layers[0].kernel[...])
    )
    np.testing.assert_allclose(
        regularizers.weight_decay(model, weight=0.5), 0.5 * expected, rtol=1e-6
    )


def test_weight_decay_counts_tied_weight_once():
    model = make_autoencoder((3,), hidden=(2,), tied=True, key=0)
    w = model.encoder.layers[0].kernel[...]
    np.testing.assert_allclose(
        regularizers.weight_decay(model, weight=1.0), jnp.sum(w**2), rtol=1e-6
    )


def test_l1_hand_value():
    h = jnp.array([[0.5, -1.0, 0.0], [2.0, 0.0, 0.0]])
    np.testing.assert_allclose(regularizers.l1_sparsity(h, weight=0.1), [0.15, 0.2], rtol=1e-6)


def test_kl_hand_value():
    h = jnp.array([[0.1, 0.5], [0.3, 0.5]])  # rho_hat = [0.2, 0.5]
    rho = 0.2
    expected = 0.0 + (rho * np.log(rho / 0.5) + (1 - rho) * np.log((1 - rho) / 0.5))
    np.testing.assert_allclose(
        regularizers.kl_sparsity(h, rho=rho, weight=3.0), 3 * expected, rtol=1e-6
    )


def test_kl_gradient_matches_derivation(x64):
    rho = 0.2
    rho_hat = jnp.array([0.05, 0.2, 0.5, 0.9], jnp.float64)
    grad = jax.grad(lambda r: jnp.sum(regularizers.kl_divergence(rho, r)))(rho_hat)
    expected = -rho / rho_hat + (1 - rho) / (1 - rho_hat)
    np.testing.assert_allclose(grad, expected, rtol=1e-12)
    # Through the batch mean: ∂Ω/∂h_bl = (1/B) ∂Ω/∂ρ̂_l.
    h = jnp.array([[0.1, 0.3], [0.3, 0.5]], jnp.float64)
    g = jax.grad(lambda a: regularizers.kl_sparsity(a, rho=rho, weight=1.0))(h)
    rh = np.asarray(h).mean(axis=0)
    np.testing.assert_allclose(g, np.tile((-rho / rh + (1 - rho) / (1 - rh)) / 2, (2, 1)))


def test_kl_minimum_at_rho_and_finite_at_ends():
    grid = jnp.linspace(0.0, 1.0, 1001)
    curve = regularizers.kl_divergence(0.2, grid)
    assert np.all(np.isfinite(curve))
    np.testing.assert_allclose(float(grid[jnp.argmin(curve)]), 0.2, atol=1e-3)
    h = jnp.zeros((4, 3))  # dead units: rho_hat = 0
    assert np.isfinite(float(regularizers.kl_sparsity(h, rho=0.1, weight=1.0)))
    assert np.isfinite(float(regularizers.kl_sparsity(h + 1, rho=0.1, weight=1.0)))


def test_mask_noise_drop_fraction_within_three_standard_errors():
    q, n = 0.3, 200_000
    x = jnp.arange(1, n + 1, dtype=jnp.float32).reshape(1000, 200)
    x_tilde = regularizers.mask_noise(jax.random.key(0), x, q=q)
    dropped = np.asarray(x_tilde == 0)
    se = np.sqrt(q * (1 - q) / n)
    assert abs(dropped.mean() - q) < 3 * se
    np.testing.assert_array_equal(np.asarray(x_tilde)[~dropped], np.asarray(x)[~dropped])


def test_gaussian_noise_statistics():
    x = jnp.zeros((500, 200))
    noise = np.asarray(regularizers.gaussian_noise(jax.random.key(1), x, sigma=0.5))
    n = noise.size
    assert abs(noise.mean()) < 3 * 0.5 / np.sqrt(n)
    assert abs(noise.std() - 0.5) < 0.01
    np.testing.assert_array_equal(
        regularizers.corrupt(jax.random.key(1), x, kind="none", level=0.0), x
    )


def test_contractive_is_weight_times_exact_norm():
    model = make_autoencoder((5,), hidden=(4,), key=0)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)), jnp.float32)
    got, exact = jax.jit(
        lambda v: (
            regularizers.contractive(model.encode, v, weight=0.7),
            jacobian.frobenius_sq(model.encode, v, mode="jacrev"),
        )
    )(x)
    np.testing.assert_allclose(got, 0.7 * exact, rtol=1e-5)


def test_higher_order_matches_explicit_jacobian_differences(x64):
    model = make_autoencoder((5,), hidden=(6, 3), key=0, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(0), (4, 5), jnp.float64)
    key, sigma, m = jax.random.key(3), 0.3, 5
    eps = sigma * jax.random.normal(key, (m, *x.shape), jnp.float64)
    # The reference: explicit per-example Jacobians at x and at each corrupted x, one compiled
    # function called m + 1 times.
    jac = jax.jit(lambda v: jacobian.jacobian(model.encode, v))
    ja = np.asarray(jac(x))
    expected = np.mean(
        [np.sum((ja - np.asarray(jac(x + e))) ** 2, axis=(1, 2)) for e in eps], axis=0
    )
    got = jax.jit(
        lambda v, k: regularizers.contractive_higher_order(
            model.encode, v, k, weight=2.0, sigma=sigma, num_corruptions=m
        )
    )(x, key)
    np.testing.assert_allclose(got, 2.0 * expected, rtol=1e-10)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: regularizers.l1_sparsity(jnp.ones((2, 2)), weight=-1.0), "-1.0"),
        (lambda: regularizers.kl_sparsity(jnp.ones((2, 2)), rho=1.0, weight=1.0), "1.0"),
        (lambda: regularizers.kl_sparsity(jnp.ones((2, 2)), rho=0.0, weight=1.0), "0.0"),
        (lambda: regularizers.kl_sparsity(jnp.ones((2, 2)), rho=0.1, weight=-2.0), "-2.0"),
        (lambda: regularizers.mask_noise(jax.random.key(0), jnp.ones(3), q=1.0), "1.0"),
        (lambda: regularizers.mask_noise(jax.random.key(0), jnp.ones(3), q=-0.1), "-0.1"),
        (lambda: regularizers.gaussian_noise(jax.random.key(0), jnp.ones(3), sigma=-0.5), "-0.5"),
        (
            lambda: regularizers.weight_decay(make_autoencoder((2,), hidden=(1,)), weight=-3.0),
            "-3.0",
        ),
        (lambda: regularizers.contractive(lambda v: v, jnp.ones((2, 2)), weight=-0.1), "-0.1"),
        (  # the Monte-Carlo form draws its corruptions from the key
            lambda: regularizers.contractive_higher_order(
                jnp.tanh, jnp.ones((2, 3)), None, weight=1.0, sigma=0.1
            ),
            "needs a key, got None",
        ),
        (
            lambda: regularizers.corrupt(jax.random.key(0), jnp.ones(2), kind="salt", level=0.1),
            "'salt'",
        ),
    ],
)
def test_bad_hyperparameters_raise_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
