"""Property-based tests (hypothesis) of the losses and regularizers on random values.

Shapes stay fixed per test so nothing recompiles per example; values and scales vary.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aecore import jacobian, losses, make_autoencoder, regularizers

SETTINGS = settings(max_examples=40, deadline=None)
unit = st.floats(0.0, 1.0, width=32)
finite = st.floats(-50.0, 50.0, width=32)
open_unit = st.floats(1e-4, 1 - 1e-4)
weights = st.floats(0.0, 100.0)


@SETTINGS
@given(rho=open_unit, rho_hat=hnp.arrays(np.float32, (16,), elements=unit))
def test_kl_is_finite_nonnegative_and_zero_only_at_rho(rho, rho_hat):
    kl = np.asarray(regularizers.kl_divergence(rho, jnp.asarray(rho_hat)))
    assert np.all(np.isfinite(kl))
    assert np.all(kl >= -1e-6)
    assert float(regularizers.kl_divergence(rho, jnp.float32(rho))) == pytest.approx(0, abs=1e-6)


@SETTINGS
@given(h=hnp.arrays(np.float32, (4, 6), elements=finite), weight=weights)
def test_l1_is_weight_times_abs_sum(h, weight):
    got = np.asarray(regularizers.l1_sparsity(jnp.asarray(h), weight=weight))
    np.testing.assert_allclose(got, weight * np.abs(h).sum(axis=1), rtol=1e-5, atol=1e-3)
    assert np.all(got >= 0)


@SETTINGS
@given(
    x=hnp.arrays(np.float32, (5, 7), elements=finite),
    q=st.floats(0.0, 0.999),
    seed=st.integers(0, 2**31 - 1),
)
def test_mask_noise_keeps_or_zeroes_each_entry(x, q, seed):
    x_tilde = np.asarray(regularizers.mask_noise(jax.random.key(seed), jnp.asarray(x), q=q))
    assert np.all((x_tilde == x) | (x_tilde == 0))
    if q == 0.0:
        np.testing.assert_array_equal(x_tilde, x)


@SETTINGS
@given(
    logits=hnp.arrays(np.float32, (3, 8), elements=st.floats(-1e4, 1e4, width=32)),
    x=hnp.arrays(np.float32, (3, 8), elements=unit),
)
def test_cross_entropy_is_finite_and_above_the_entropy_of_x(logits, x):
    ce = np.asarray(losses.sigmoid_cross_entropy(jnp.asarray(logits), jnp.asarray(x)))
    assert np.all(np.isfinite(ce))
    xs = np.clip(x.astype(np.float64), 1e-12, 1 - 1e-12)
    entropy = -(xs * np.log(xs) + (1 - xs) * np.log(1 - xs)).sum(axis=1)
    assert np.all(ce >= entropy - 1e-3 * (1 + np.abs(entropy)))


@SETTINGS
@given(
    x=hnp.arrays(np.float32, (3, 8), elements=finite),
    y=hnp.arrays(np.float32, (3, 8), elements=finite),
)
def test_squared_error_is_a_squared_distance(x, y):
    se = np.asarray(losses.squared_error(jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(
        se, ((x.astype(np.float64) - y) ** 2).sum(axis=1), rtol=1e-4, atol=1e-3
    )
    assert np.all(np.asarray(losses.squared_error(jnp.asarray(x), jnp.asarray(x))) == 0)


_MODEL = make_autoencoder((6,), hidden=(5,), activation="sigmoid", key=0)
_CLOSED = jax.jit(lambda m, x: jacobian.frobenius_sq(m.encode, x, mode="closed_form"))
_REV = jax.jit(lambda m, x: jacobian.frobenius_sq(m.encode, x, mode="jacrev"))


@SETTINGS
@given(x=hnp.arrays(np.float32, (4, 6), elements=st.floats(-1e3, 1e3, width=32)))
def test_contractive_closed_form_matches_jacrev_even_when_saturated(x):
    closed, rev = _CLOSED(_MODEL, jnp.asarray(x)), _REV(_MODEL, jnp.asarray(x))
    assert np.all(np.isfinite(closed))
    np.testing.assert_allclose(closed, rev, rtol=1e-4, atol=1e-12)


@SETTINGS
@given(rho=st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0)).filter(np.isfinite))
def test_rho_outside_open_unit_interval_is_rejected(rho):
    with pytest.raises(ValueError, match="rho"):
        regularizers.kl_sparsity(jnp.ones((2, 2)) * 0.5, rho=rho, weight=1.0)


@SETTINGS
@given(q=st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0)).filter(np.isfinite))
def test_q_outside_half_open_unit_interval_is_rejected(q):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        regularizers.mask_noise(jax.random.key(0), jnp.ones(3), q=q)


@SETTINGS
@given(weight=st.floats(max_value=-1e-12).filter(np.isfinite))
def test_negative_weights_are_rejected_everywhere(weight):
    for call in (
        lambda: regularizers.l1_sparsity(jnp.ones((2, 2)), weight=weight),
        lambda: regularizers.kl_sparsity(jnp.ones((2, 2)) * 0.5, rho=0.1, weight=weight),
        lambda: regularizers.weight_decay(_MODEL, weight=weight),
        lambda: regularizers.contractive(_MODEL.encode, jnp.ones((2, 6)), weight=weight),
    ):
        with pytest.raises(ValueError, match=">= 0"):
            call()
