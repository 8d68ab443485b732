"""How edge-like learned filters are: 2-D Gabor fits with a white-noise R² threshold, and spatial
statistics (spread, area holding half the energy, orientedness) against white-noise filters.

A filter is one column of a first-layer kernel [d, k] (d = H*W pixels), shown as an H x W image.
Pure NumPy/SciPy: the fits run once per trained model, outside any JIT region.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from aecore import _checks

# Gabor parameters, in this order: centre (row, col) in pixels, orientation θ (radians, of the
# carrier's wave vector), envelope stds along and across the wave vector (pixels), spatial
# frequency f (cycles per pixel), phase φ, amplitude A, constant offset.
GABOR_PARAMS: tuple[str, ...] = (
    "row",
    "col",
    "theta",
    "sigma_along",
    "sigma_across",
    "frequency",
    "phase",
    "amplitude",
    "offset",
)


def gabor(params: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """A 2-D Gabor function sampled on the pixel grid.

    g(r, c) = A exp(−u²/(2σ_u²) − v²/(2σ_v²)) cos(2π f u + φ) + offset, with
    u = (c − c0) cos θ + (r − r0) sin θ and v = −(c − c0) sin θ + (r − r0) cos θ.

    Args:
      params: the 9 values named by `GABOR_PARAMS`.
      image_shape: (H, W).

    Returns:
      [H, W] float64.
    """
    return _gabor_and_jacobian(params, image_shape, jacobian=False)[0]


def _gabor_and_jacobian(
    params: np.ndarray, image_shape: tuple[int, int], *, jacobian: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """`gabor` [H, W] and its Jacobian [H*W, 9] in the parameters (closed form; tested by
    finite differences)."""
    r0, c0, theta, s_u, s_v, f, phase, amp, offset = np.asarray(params, dtype=np.float64)
    h, w = image_shape
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    dr, dc = rows - r0, cols - c0
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    u = dc * cos_t + dr * sin_t
    v = -dc * sin_t + dr * cos_t
    envelope = np.exp(-(u**2) / (2 * s_u**2) - v**2 / (2 * s_v**2))
    arg = 2 * np.pi * f * u + phase
    carrier, quadrature = np.cos(arg), np.sin(arg)
    g = amp * envelope * carrier + offset
    if not jacobian:
        return g, None
    ae = amp * envelope
    dg_du = ae * (-u / s_u**2 * carrier - 2 * np.pi * f * quadrature)
    dg_dv = ae * (-v / s_v**2) * carrier
    jac = np.stack(
        [
            dg_du * -sin_t + dg_dv * -cos_t,  # ∂/∂r0
            dg_du * -cos_t + dg_dv * sin_t,  # ∂/∂c0
            dg_du * v - dg_dv * u,  # ∂/∂θ: ∂u/∂θ = v, ∂v/∂θ = −u
            ae * carrier * u**2 / s_u**3,
            ae * carrier * v**2 / s_v**3,
            -ae * quadrature * 2 * np.pi * u,
            -ae * quadrature,
            envelope * carrier,
            np.ones_like(u),
        ],
        axis=-1,
    )
    return g, jac.reshape(h * w, -1)


@dataclasses.dataclass(frozen=True)
class GaborFit:
    """Best Gabor fits of a set of filters.

    Attributes:
      r2: [k] coefficient of determination 1 − SS_res / SS_tot of each fit (SS_tot about the
        filter's mean), in [0, 1] up to the optimiser's tolerance.
      params: [k, 9] fitted parameters, columns named by `GABOR_PARAMS`.
    """

    r2: np.ndarray
    params: np.ndarray


def _initial_guesses(img: np.ndarray) -> list[np.ndarray]:
    """Starts from the energy centroid and the strongest non-DC Fourier component."""
    h, w = img.shape
    centred = img - img.mean()
    energy = centred**2
    total = energy.sum() + 1e-300
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    r0, c0 = (energy * rows).sum() / total, (energy * cols).sum() / total
    power = np.abs(np.fft.fft2(centred)) ** 2
    power[0, 0] = 0.0
    fr, fc = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    peak = np.unravel_index(np.argmax(power), power.shape)
    f0 = max(float(np.hypot(fr[peak], fc[peak])), 1.0 / max(h, w))
    theta0 = float(np.arctan2(fr[peak], fc[peak]))
    amp = float(np.abs(centred).max())
    guesses = []
    for size in (1.5, 3.0):
        for phase in (0.0, np.pi / 2):  # with a signed amplitude these cover every phase
            guesses.append(np.array([r0, c0, theta0, size, size, f0, phase, amp, 0.0]))
    # A low-frequency (blob / single-edge) start, which the Fourier peak of a small patch misses.
    guesses.append(np.array([r0, c0, theta0, 2.0, 2.0, 0.5 / max(h, w), np.pi / 2, amp, 0.0]))
    return guesses


def fit_gabor(filters: np.ndarray, image_shape: tuple[int, int]) -> GaborFit:
    """Least-squares fit of one 2-D Gabor (`gabor`) to each filter, best of several starts.

    The envelope is kept inside the patch (centre within it, stds in [0.5, max(H, W)] pixels)
    and the frequency below Nyquist, so that a fit cannot explain noise with a sub-pixel
    envelope; starts: the energy centroid with the strongest Fourier component at phases 0
    and π/2 and 2 envelope sizes, and one low-frequency start (trust-region reflective,
    closed-form Jacobian, at most 100 evaluations per start).

    Args:
      filters: kernel [d, k] (one filter per column, d = H*W), as `Dense.kernel`.
      image_shape: (H, W) with H*W = d.

    Returns:
      `GaborFit` with R² [k] and parameters [k, 9].

    Raises:
      ValueError: a kernel that is not [H*W, k], or a non-finite one.
    """
    from scipy.optimize import least_squares

    imgs = _as_images(filters, image_shape)
    h, w = image_shape
    big = float(max(h, w))
    lower = np.array([-0.5, -0.5, -np.inf, 0.5, 0.5, 0.0, -np.inf, -np.inf, -np.inf])
    upper = np.array([h - 0.5, w - 0.5, np.inf, big, big, 0.5, np.inf, np.inf, np.inf])
    r2 = np.empty(len(imgs))
    params = np.empty((len(imgs), len(GABOR_PARAMS)))
    for i, img in enumerate(imgs):
        ss_tot = float(((img - img.mean()) ** 2).sum())
        if ss_tot == 0.0:  # a constant filter is fitted exactly by the offset alone
            r2[i], params[i] = 1.0, [0, 0, 0, 1, 1, 0, 0, 0, img.mean()]
            continue
        best_cost, best_x = np.inf, None
        for x0 in _initial_guesses(img):
            x0 = np.clip(x0, lower + 1e-6, upper - 1e-6)
            res = least_squares(
                lambda p, img=img: (gabor(p, image_shape) - img).ravel(),
                x0,
                jac=lambda p, img=None: _gabor_and_jacobian(p, image_shape)[1],
                bounds=(lower, upper),
                max_nfev=100,
                x_scale="jac",
            )
            if res.cost < best_cost:
                best_cost, best_x = res.cost, res.x
        r2[i] = 1.0 - 2.0 * best_cost / ss_tot  # least_squares' cost is ½ SS_res
        params[i] = best_x
    return GaborFit(r2=r2, params=params)


def white_noise_r2_threshold(
    image_shape: tuple[int, int], *, num_filters: int = 200, quantile: float = 0.95, seed: int = 0
) -> float:
    """The `quantile` of the Gabor-fit R² of i.i.d. Gaussian white-noise filters.

    A fit that beats it is better than `quantile` of what chance structure reaches with the
    same nine parameters and the same optimiser.

    Args:
      image_shape: (H, W).
      num_filters: noise filters fitted (cost grows linearly; 200 gives the 95th percentile to
        about ±0.02 on 12x12).
      quantile: in (0, 1).
      seed: NumPy seed of the noise.

    Returns:
      The R² threshold.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    _checks.check_int("num_filters", num_filters, low=2)
    d = int(np.prod(image_shape))
    noise = np.random.default_rng(seed).standard_normal((d, num_filters))
    return float(np.quantile(fit_gabor(noise, image_shape).r2, quantile))


def phase_randomized(filters: np.ndarray, image_shape: tuple[int, int], *, seed: int = 0):
    """Surrogate filters with each filter's amplitude spectrum and random Fourier phases.

    They keep a filter's frequency content (smoothness, dominant orientation) but lose its
    localization: a Gabor-fit R² above theirs is evidence of localized, edge-like structure
    beyond the power spectrum, a stricter control than white noise.

    Args:
      filters: kernel [d, k].
      image_shape: (H, W).
      seed: NumPy seed of the phases.

    Returns:
      Surrogate kernel [d, k], float64.
    """
    imgs = _as_images(filters, image_shape)
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft2(imgs)  # [k, H, W//2+1]
    # The phases of a real white-noise image are a valid Hermitian-symmetric random phase field.
    noise_phase = np.angle(np.fft.rfft2(rng.standard_normal(imgs.shape)))
    noise_phase[:, 0, 0] = 0.0  # keep the mean
    out = np.fft.irfft2(np.abs(spectrum) * np.exp(1j * noise_phase), s=image_shape)
    return out.reshape(len(imgs), -1).T


def gabor_summary(
    filters: np.ndarray,
    image_shape: tuple[int, int],
    *,
    threshold: float,
    max_sigma: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Fraction of good Gabor fits against white noise and against phase-randomized controls.

    White noise is the null the literature uses, but filters trained on correlated (not fully
    whitened) data are smooth even when they carry no edge, and smooth noise fits a Gabor far
    better than white noise. The stricter null is the filters' own phase-randomized surrogates
    (`phase_randomized`): same spectra, no localization. A plane wave (a PCA component of
    natural images) is fitted well by a Gabor with an envelope as wide as the patch, so an
    edge DETECTOR is also asked to be localized: envelope size √(σ_u σ_v) <= `max_sigma`.

    Args:
      filters: kernel [d, k].
      image_shape: (H, W).
      threshold: the white-noise R² a good fit must exceed (`white_noise_r2_threshold`).
      max_sigma: envelope size (pixels) a localized fit may not exceed; default max(H, W)/4.
      seed: seed of the phase-randomized surrogates.

    Returns:
      gabor_fraction (R² > threshold), localized_gabor_fraction (R² > threshold and envelope
      size <= max_sigma), median_envelope_px, median_r2, surrogate_median_r2, surrogate_r2_p95 (the
      95th percentile of the surrogates' R²), gabor_fraction_vs_surrogate (R² above it), and
      surrogate_gabor_fraction (surrogates with R² > threshold), r2_threshold.
    """
    if max_sigma is None:
        max_sigma = max(image_shape) / 4
    fit = fit_gabor(filters, image_shape)
    surrogate = fit_gabor(phase_randomized(filters, image_shape, seed=seed), image_shape)
    p95 = float(np.quantile(surrogate.r2, 0.95))
    envelope = np.sqrt(fit.params[:, 3] * fit.params[:, 4])
    return {
        "gabor_fraction": float(np.mean(fit.r2 > threshold)),
        "localized_gabor_fraction": float(np.mean((fit.r2 > threshold) & (envelope <= max_sigma))),
        "median_envelope_px": float(np.median(envelope)),
        "max_sigma": float(max_sigma),
        "median_r2": float(np.median(fit.r2)),
        "surrogate_gabor_fraction": float(np.mean(surrogate.r2 > threshold)),
        "surrogate_median_r2": float(np.median(surrogate.r2)),
        "surrogate_r2_p95": p95,
        "gabor_fraction_vs_surrogate": float(np.mean(fit.r2 > p95)),
        "r2_threshold": float(threshold),
    }


# --------------------------------------------------------------------------------------------
# Spatial statistics.


def filter_stats(kernel: np.ndarray, image_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Spatial spread, energy area and orientedness of each filter (a column of kernel [d, k]).

    spread: sqrt(Σ_p w_p² ‖p − c‖² / Σ_p w_p²), c the energy centroid, in pixels.
    area50: the fewest pixels that hold half of the filter's energy Σ_p w_p² (a white-noise
      filter needs about a third of the image; a stroke or blob detector a few pixels).
    orientedness: max over 8 orientation wedges of 45° (centred every 22.5°) of the fraction
      of the mean-removed filter's spectral energy (DC excluded) whose frequency falls in it.

    Returns:
      {"spread": [k], "area50": [k] int, "orientedness": [k]}.
    """
    filters = _as_images(kernel, image_shape)  # [k, H, W]
    h, w = image_shape
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    energy = filters**2
    total = energy.sum(axis=(1, 2)) + 1e-12
    cr = (energy * rows).sum(axis=(1, 2)) / total
    cc = (energy * cols).sum(axis=(1, 2)) / total
    dist2 = (rows[None] - cr[:, None, None]) ** 2 + (cols[None] - cc[:, None, None]) ** 2
    spread = np.sqrt((energy * dist2).sum(axis=(1, 2)) / total)
    ranked = np.sort(energy.reshape(len(filters), -1), axis=1)[:, ::-1]
    half = 0.5 * ranked.sum(axis=1, keepdims=True)
    area50 = 1 + np.sum(np.cumsum(ranked, axis=1) < half, axis=1)

    centred = filters - filters.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centred)) ** 2  # [k, H, W]
    fr, fc = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    angle = np.mod(np.arctan2(fr, fc), np.pi)  # orientation of the frequency, in [0, π)
    nonzero = (fr != 0) | (fc != 0)
    power = power * nonzero
    spectral = power.sum(axis=(1, 2)) + 1e-12
    best = np.zeros(len(filters))
    for centre in np.arange(8) * np.pi / 8:
        diff = np.abs(np.mod(angle - centre + np.pi / 2, np.pi) - np.pi / 2)
        wedge = (diff <= np.pi / 8 + 1e-9) & nonzero
        best = np.maximum(best, (power * wedge).sum(axis=(1, 2)) / spectral)
    return {"spread": spread, "area50": area50, "orientedness": best}


def noise_thresholds(image_shape: tuple[int, int], *, seed: int = 0) -> dict[str, float]:
    """5th percentile of spread and 95th of orientedness for 2000 white-noise filters."""
    rng = np.random.default_rng(seed)
    stats = filter_stats(rng.standard_normal((int(np.prod(image_shape)), 2000)), image_shape)
    return {
        "spread": float(np.percentile(stats["spread"], 5)),
        "orientedness": float(np.percentile(stats["orientedness"], 95)),
    }


def edge_fraction(kernel: np.ndarray, image_shape: tuple[int, int]) -> dict[str, float]:
    """Fraction of filters more localized AND more oriented than 95% of white-noise filters."""
    stats = filter_stats(kernel, image_shape)
    thr = noise_thresholds(image_shape)
    edge = (stats["spread"] < thr["spread"]) & (stats["orientedness"] > thr["orientedness"])
    return {
        "edge_like_fraction": float(edge.mean()),
        "mean_spread": float(stats["spread"].mean()),
        "mean_orientedness": float(stats["orientedness"].mean()),
        "noise_spread_p5": thr["spread"],
        "noise_orientedness_p95": thr["orientedness"],
    }


def _as_images(kernel: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """kernel [d, k] -> filters [k, H, W] float64, checked."""
    kernel = np.asarray(kernel, dtype=np.float64)
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 2 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (H, W) with H, W >= 1, got {image_shape}")
    d = image_shape[0] * image_shape[1]
    if kernel.ndim != 2 or kernel.shape[0] != d or kernel.shape[1] < 1:
        raise ValueError(
            f"kernel must be [H*W, k] = [{d}, k] for image_shape {image_shape}, got shape "
            f"{kernel.shape}"
        )
    if not np.all(np.isfinite(kernel)):
        raise ValueError("kernel holds NaN or inf values")
    return kernel.T.reshape(-1, *image_shape)
