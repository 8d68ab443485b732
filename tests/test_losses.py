"""Reconstruction losses: hand-computed values, stability at saturated logits, input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aecore import losses


def test_squared_error_hand_value():
    x = jnp.array([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    x_hat = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.5, 1.0]])
    np.testing.assert_allclose(losses.squared_error(x_hat, x), [1.0 + 0.0 + 4.0, 0.25])


def test_squared_error_sums_over_image_axes():
    x = jnp.zeros((2, 3, 3, 1))
    np.testing.assert_allclose(losses.squared_error(x + 2.0, x), [36.0, 36.0])


def test_cross_entropy_matches_textbook_formula():
    logits = jnp.array([[0.3, -1.2, 2.0]])
    x = jnp.array([[1.0, 0.0, 0.25]])
    p = 1 / (1 + np.exp(-np.asarray(logits)))
    xn = np.asarray(x)
    expected = -np.sum(xn * np.log(p) + (1 - xn) * np.log(1 - p), axis=1)
    np.testing.assert_allclose(losses.sigmoid_cross_entropy(logits, x), expected, rtol=1e-6)


def test_cross_entropy_finite_at_saturated_logits():
    logits = jnp.array([[1e4, -1e4, 1e4, -1e4]])
    x = jnp.array([[1.0, 0.0, 0.0, 1.0]])
    value = losses.sigmoid_cross_entropy(logits, x)
    # Right predictions cost 0, wrong ones |logit| each: finite, never inf/NaN.
    np.testing.assert_allclose(value, [2e4])
    grad = jax.grad(lambda z: losses.sigmoid_cross_entropy(z, x).sum())(logits)
    assert np.all(np.isfinite(grad))


def test_cross_entropy_works_under_jit():
    f = jax.jit(losses.sigmoid_cross_entropy)
    logits, x = jnp.zeros((2, 3)), jnp.full((2, 3), 0.5)
    np.testing.assert_allclose(f(logits, x), [3 * np.log(2)] * 2, rtol=1e-6)


@pytest.mark.parametrize("bad", [1.5, -0.1])
def test_cross_entropy_rejects_data_outside_unit_interval(bad):
    x = jnp.array([[0.0, bad]])
    with pytest.raises(ValueError, match=f"{bad:g}"):
        losses.sigmoid_cross_entropy(jnp.zeros((1, 2)), x)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        losses.squared_error(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
