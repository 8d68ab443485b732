"""aecore.filters: the Gabor model against finite differences, fits against synthetic Gabors
with known parameters, the white-noise null, the phase-randomized control, spatial statistics
in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from aecore import filters

SHAPE = (12, 12)


def _gabors(rng, k: int) -> np.ndarray:
    return np.stack([filters.gabor(_random_gabor_params(rng), SHAPE).ravel() for _ in range(k)], 1)


def _random_gabor_params(rng, shape=SHAPE) -> np.ndarray:
    h, w = shape
    return np.array(
        [
            rng.uniform(0.35 * h, 0.65 * h),
            rng.uniform(0.35 * w, 0.65 * w),
            rng.uniform(0, np.pi),
            rng.uniform(1.2, 2.5),
            rng.uniform(1.2, 2.5),
            rng.uniform(0.1, 0.3),
            rng.uniform(0, 2 * np.pi),
            rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0),
            0.0,
        ]
    )


def test_gabor_jacobian_matches_central_differences():
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = _random_gabor_params(rng)
        _, jac = filters._gabor_and_jacobian(p, SHAPE)
        eps = 1e-6
        fd = np.stack(
            [
                (filters.gabor(p + eps * e, SHAPE) - filters.gabor(p - eps * e, SHAPE)).ravel()
                / (2 * eps)
                for e in np.eye(len(p))
            ],
            axis=1,
        )
        np.testing.assert_allclose(jac, fd, atol=1e-6, rtol=1e-5)


def test_gabor_closed_form_at_the_centre_and_along_the_wave():
    p = np.array([5.0, 6.0, 0.0, 2.0, 3.0, 0.25, 0.0, 1.5, 0.1])
    g = filters.gabor(p, SHAPE)
    assert g[5, 6] == pytest.approx(1.5 + 0.1)
    # θ = 0: the wave runs along columns; two pixels on, cos(2π·0.25·2) = −1.
    assert g[5, 8] == pytest.approx(-1.5 * np.exp(-4 / 8) + 0.1)
    assert g[8, 6] == pytest.approx(1.5 * np.exp(-9 / 18) + 0.1)


def test_fit_recovers_synthetic_gabors():
    rng = np.random.default_rng(1)
    truth = np.stack([_random_gabor_params(rng) for _ in range(12)])
    kernel = np.stack([filters.gabor(p, SHAPE).ravel() for p in truth], axis=1)  # [144, 12]
    fit = filters.fit_gabor(kernel, SHAPE)
    assert fit.r2.min() > 0.999
    # Frequencies are identifiable; orientations up to the θ ↔ θ + π symmetry.
    np.testing.assert_allclose(fit.params[:, 5], truth[:, 5], rtol=0.02, atol=0.005)
    dtheta = np.mod(fit.params[:, 2] - truth[:, 2] + np.pi / 2, np.pi) - np.pi / 2
    assert np.abs(dtheta).max() < 0.05


def test_noisy_gabors_beat_the_white_noise_threshold_and_noise_does_not():
    shape = (8, 8)
    rng = np.random.default_rng(2)
    threshold = filters.white_noise_r2_threshold(shape, num_filters=24, seed=3)
    assert 0.05 < threshold < 0.6  # 9 parameters on 64 pixels: chance R² is far from 0 or 1
    kernel = np.stack(
        [filters.gabor(_random_gabor_params(rng, shape), shape).ravel() for _ in range(10)], 1
    )
    noisy = kernel + 0.2 * kernel.std() * rng.standard_normal(kernel.shape)
    assert np.mean(filters.fit_gabor(noisy, shape).r2 > threshold) == 1.0
    noise = rng.standard_normal((64, 24))  # a fresh draw, not the threshold's own
    assert np.mean(filters.fit_gabor(noise, shape).r2 > threshold) < 0.25  # 5% expected


def test_phase_randomized_keeps_the_amplitude_spectrum_and_breaks_localization():
    rng = np.random.default_rng(4)
    kernel = _gabors(rng, 6)
    surrogate = filters.phase_randomized(kernel, SHAPE, seed=5)
    amp = lambda k: np.abs(np.fft.rfft2(k.T.reshape(-1, *SHAPE)))  # noqa: E731
    np.testing.assert_allclose(amp(surrogate), amp(kernel), atol=1e-9)
    assert not np.allclose(surrogate, kernel)
    before = filters.fit_gabor(kernel, SHAPE).r2
    after = filters.fit_gabor(surrogate, SHAPE).r2
    assert np.median(after) < np.median(before) - 0.2


def test_gabor_summary_counts_fractions():
    rng = np.random.default_rng(6)
    kernel = np.concatenate(
        [
            _gabors(rng, 3),
            rng.standard_normal((144, 1)),
        ],
        axis=1,
    )
    s = filters.gabor_summary(kernel, SHAPE, threshold=0.5)
    assert s["gabor_fraction"] == 0.75
    assert s["r2_threshold"] == 0.5
    assert 0 <= s["surrogate_gabor_fraction"] <= 1
    # The three Gabors beat their own surrogates' 95th percentile; the noise column cannot.
    assert s["gabor_fraction_vs_surrogate"] == 0.75
    assert s["localized_gabor_fraction"] == 0.75  # envelopes of 1.2-2.5 px <= 12 / 4


def test_a_plane_wave_fits_a_gabor_but_is_not_a_localized_detector():
    rows, cols = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    wave = np.cos(2 * np.pi * (0.15 * cols + 0.1 * rows)).reshape(144, 1)
    s = filters.gabor_summary(wave, SHAPE, threshold=0.3)
    assert s["gabor_fraction"] == 1.0 and s["median_r2"] > 0.95
    assert s["localized_gabor_fraction"] == 0.0 and s["median_envelope_px"] > 3


def test_filter_stats_closed_forms():
    h, w = SHAPE
    delta = np.zeros((h, w))
    delta[3, 4] = 2.0
    # Vertical stripes, phase π/4: every |value| is √2/2, so half the energy is half the area.
    grating = np.tile(np.cos(2 * np.pi * np.arange(w) / 4 + np.pi / 4), (h, 1))
    two = np.zeros((h, w))
    two[0, 0] = two[0, 2] = 1.0  # spread 1 around their midpoint
    kernel = np.stack([delta.ravel(), grating.ravel(), two.ravel()], 1)
    s = filters.filter_stats(kernel, SHAPE)
    assert s["spread"][0] == pytest.approx(0.0, abs=1e-9)
    assert s["spread"][2] == pytest.approx(1.0)
    assert s["area50"][0] == 1 and s["area50"][2] == 1
    assert s["orientedness"][1] == pytest.approx(1.0)
    assert s["area50"][1] == h * w // 2


def test_edge_fraction_of_white_noise_is_small_and_of_gabors_large():
    rng = np.random.default_rng(7)
    noise = filters.edge_fraction(rng.standard_normal((144, 300)), SHAPE)
    assert noise["edge_like_fraction"] < 0.02  # both 5% tails at once
    params = [_random_gabor_params(rng) for _ in range(20)]
    for p in params:
        p[3:5] = 1.3  # small envelopes: localized
    gabors = np.stack([filters.gabor(p, SHAPE).ravel() for p in params], 1)
    assert filters.edge_fraction(gabors, SHAPE)["edge_like_fraction"] > 0.8


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: filters.fit_gabor(np.zeros((10, 3)), SHAPE), r"\[144, k\].*\(10, 3\)"),
        (lambda: filters.filter_stats(np.full((144, 2), np.nan), SHAPE), "NaN or inf"),
        (lambda: filters.white_noise_r2_threshold(SHAPE, quantile=1.5), "1.5"),
        (lambda: filters.white_noise_r2_threshold(SHAPE, num_filters=1), "got 1"),
        (lambda: filters.fit_gabor(np.zeros((144, 1)), (12, 12, 1)), r"\(12, 12, 1\)"),
    ],
)
def test_bad_input_names_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
