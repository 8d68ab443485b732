"""Figures of autoencoder experiments (reconstructions, filters, losses, spectra, contraction
curves, vector fields, codes, reconstruction scatters, 3-D points), each saved as a PNG;
matplotlib is imported only when plotting.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from jax.typing import ArrayLike


def _pyplot():
    """matplotlib.pyplot on the Agg backend (no display), imported on first use only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _is_image_batch(x: np.ndarray) -> bool:
    return (x.ndim == 4 and x.shape[-1] in (1, 3)) or x.ndim == 3


def _as_image(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """[H, W], [H, W, 1] or [H, W, 3] as something imshow draws (gray colormap for one channel)."""
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return img, "gray"
    return np.clip(img, 0.0, 1.0), None


def save_reconstructions(path: str, x: ArrayLike, x_hat: ArrayLike, *, n: int = 10) -> str:
    """Originals (top row) above their reconstructions (bottom row) for the first n examples.

    Args:
      path: PNG file to write.
      x: inputs [N, H, W, C] or [N, H, W] (drawn as images) or [N, d] (drawn as line plots).
      x_hat: reconstructions, same shape as x.
      n: number of examples shown.

    Returns:
      path.
    """
    x, x_hat = np.asarray(x), np.asarray(x_hat)
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have one shape, got {x.shape} and {x_hat.shape}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [N, ...], got shape {x.shape}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    n = min(n, x.shape[0])
    plt = _pyplot()
    if _is_image_batch(x):
        fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.6), squeeze=False)
        lo, hi = float(min(x[:n].min(), x_hat[:n].min())), float(max(x[:n].max(), x_hat[:n].max()))
        for i in range(n):
            for row, batch in enumerate((x, x_hat)):
                img, cmap = _as_image(batch[i])
                axes[row, i].imshow(img, cmap=cmap, vmin=lo, vmax=hi)
                axes[row, i].axis("off")
        axes[0, 0].set_title("x", fontsize=8, loc="left")
        axes[1, 0].set_title("x̂", fontsize=8, loc="left")
    else:
        flat, flat_hat = x.reshape(x.shape[0], -1), x_hat.reshape(x.shape[0], -1)
        fig, axes = plt.subplots(n, 1, figsize=(6, 1.2 * n), squeeze=False, sharex=True)
        for i in range(n):
            ax = axes[i, 0]
            ax.plot(flat[i], label="x", color="k", lw=1)
            ax.plot(flat_hat[i], label="x̂", color="C1", lw=1, ls="--")
            ax.tick_params(labelsize=6)
        axes[0, 0].legend(fontsize=7, loc="upper right")
        axes[-1, 0].set_xlabel("input dimension")
    return _save(fig, path)


def save_filters(
    path: str, kernel: ArrayLike, *, image_shape: Sequence[int], n: int | None = None
) -> str:
    """Encoder filters as an image grid: rows W_l / ‖W_l‖ of W = kernelᵀ, reshaped.

    The classic figure of denoising and sparse autoencoders (Vincent et al., 2010, Fig. 6): each
    hidden unit's weight vector over the input, shown as an image on a symmetric gray scale.

    Args:
      path: PNG file to write.
      kernel: a dense layer's kernel [d, k] (d = prod(image_shape) inputs, k units).
      image_shape: (H, W) or (H, W, C) of one input example.
      n: number of filters shown (default: all k).

    Returns:
      path.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    image_shape = tuple(int(s) for s in image_shape)
    if kernel.ndim != 2 or kernel.shape[0] != math.prod(image_shape):
        raise ValueError(
            f"kernel must be [prod(image_shape), k] = [{math.prod(image_shape)}, k] for "
            f"image_shape {image_shape}, got shape {kernel.shape}"
        )
    w = kernel.T  # [k, d]: one row per hidden unit
    n = w.shape[0] if n is None else min(int(n), w.shape[0])
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    norms = np.linalg.norm(w[:n], axis=1, keepdims=True)
    w = w[:n] / np.where(norms > 0, norms, 1.0)
    lim = float(np.abs(w).max()) or 1.0
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        img = w[i].reshape(image_shape)
        if img.ndim == 3 and img.shape[-1] == 3:
            ax.imshow((img / lim + 1.0) / 2.0)  # map [-lim, lim] to [0, 1] per channel
        else:
            img = img[..., 0] if img.ndim == 3 else img
            ax.imshow(img, cmap="gray", vmin=-lim, vmax=lim)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return _save(fig, path)


def save_loss_curves(path: str, history: Sequence[Mapping[str, float]]) -> str:
    """One line per numeric term of a training history against "step", log y-axis.

    Args:
      path: PNG file to write.
      history: records like `FitResult.history`: dicts with "step" and numeric terms; the
        boolean "finite" flag is skipped, as are non-positive values (absent on a log scale).

    Returns:
      path.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    if any("step" not in rec for rec in history):
        raise ValueError(f"every history record needs a 'step', got keys {sorted(history[0])}")
    terms: list[str] = []
    for rec in history:
        for key, value in rec.items():
            if key in ("step", "finite") or key in terms or isinstance(value, bool | np.bool_):
                continue
            if isinstance(value, int | float | np.number):
                terms.append(key)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for term in terms:
        pts = [
            (float(r["step"]), float(r[term]))
            for r in history
            if term in r and np.isfinite(r[term]) and r[term] > 0
        ]
        if pts:
            steps, values = zip(*pts, strict=True)
            ax.plot(steps, values, label=term)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    if terms:
        ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def save_spectrum(path: str, singular_values: ArrayLike) -> str:
    """Singular values of encoder Jacobians by rank (log y): median with 10-90% band over examples.

    Args:
      path: PNG file to write.
      singular_values: [n, r] per-example spectra (e.g. `evaluate.jacobian_spectrum`) or [r].

    Returns:
      path.
    """
    sv = np.asarray(singular_values, dtype=np.float64)
    if sv.ndim == 1:
        sv = sv[None]
    if sv.ndim != 2 or sv.size == 0:
        raise ValueError(f"singular_values must be [n, r] or [r], got shape {sv.shape}")
    sv = -np.sort(-sv, axis=1)
    floor = np.finfo(np.float64).tiny
    sv = np.maximum(sv, floor)
    ranks = np.arange(1, sv.shape[1] + 1)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ranks, np.median(sv, axis=0), marker="o", ms=3, label="median")
    if sv.shape[0] > 1:
        lo, hi = np.percentile(sv, [10, 90], axis=0)
        ax.fill_between(ranks, lo, hi, alpha=0.3, label="10–90%")
    ax.set_yscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("singular value of J")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def save_contraction_curves(
    path: str, curves: Mapping[str, Mapping[str, Sequence[float] | np.ndarray]]
) -> str:
    """Contraction ratio against distance, one line per model (Rifai et al., 2011, Fig. 2).

    Args:
      path: PNG file to write.
      curves: model name -> `evaluate.contraction_curve` output {"radii": [R], "ratio": [R]}.

    Returns:
      path.
    """
    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        if "radii" not in curve or "ratio" not in curve:
            raise ValueError(f"curve {name!r} needs 'radii' and 'ratio', got keys {sorted(curve)}")
        radii, ratio = np.asarray(curve["radii"]), np.asarray(curve["ratio"])
        if radii.shape != ratio.shape:
            raise ValueError(
                f"curve {name!r}: radii {radii.shape} and ratio {ratio.shape} differ in shape"
            )
        ax.plot(radii, ratio, marker="o", ms=3, label=str(name))
    ax.set_xscale("log")
    ax.set_xlabel("distance ‖x − x'‖")
    ax.set_ylabel("‖h(x) − h(x')‖ / ‖x − x'‖")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def save_vector_field(path: str, x: ArrayLike, x_hat: ArrayLike) -> str:
    """Arrows from each 2-D point x to its reconstruction x_hat, over the scattered data.

    A denoising or contractive autoencoder's x_hat − x points back towards the data manifold
    (Alain & Bengio, 2014): the arrows show that score-like field.

    Args:
      path: PNG file to write.
      x: points [N, 2].
      x_hat: reconstructions [N, 2].

    Returns:
      path.
    """
    x, x_hat = np.asarray(x, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2 or x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must both be [N, 2], got shapes {x.shape} and {x_hat.shape}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(x[:, 0], x[:, 1], s=4, color="0.6", label="x")
    delta = x_hat - x
    ax.quiver(
        x[:, 0],
        x[:, 1],
        delta[:, 0],
        delta[:, 1],
        angles="xy",
        scale_units="xy",
        scale=1.0,
        width=0.003,
        color="C0",
    )
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title("x → x̂")
    return _save(fig, path)


def save_codes_2d(path: str, codes: ArrayLike, labels: ArrayLike | None = None) -> str:
    """Scatter of 2-D codes (or the first two code units), coloured by label when given.

    Args:
      path: PNG file to write.
      codes: [N, d_z] with d_z >= 2 (only the first two units are drawn).
      labels: optional [N] integer labels.

    Returns:
      path.
    """
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] < 2:
        raise ValueError(f"codes must be [N, d_z] with d_z >= 2, got shape {codes.shape}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    if labels is None:
        ax.scatter(codes[:, 0], codes[:, 1], s=4)
    else:
        labels = np.asarray(labels)
        if labels.shape != (codes.shape[0],):
            raise ValueError(
                f"labels must be [N] = [{codes.shape[0]}] for codes {codes.shape}, "
                f"got shape {labels.shape}"
            )
        points = ax.scatter(codes[:, 0], codes[:, 1], c=labels, s=4, cmap="tab10")
        fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("h₁")
    ax.set_ylabel("h₂")
    return _save(fig, path)


def save_reconstruction_scatter(
    path: str, x: ArrayLike, x_hat: ArrayLike, *, max_points: int = 20000
) -> str:
    """Every reconstructed value against its input value, with the identity line.

    The figure for feature vectors (which have no image to show): a perfect reconstruction lies
    on the diagonal; the title gives R² = 1 − Σ(x̂ − x)² / Σ(x − mean x)² over all values.

    Args:
      path: PNG file to write.
      x: inputs [N, ...] (any example shape; flattened).
      x_hat: reconstructions, same shape as x.
      max_points: at most this many (evenly spaced) values are drawn; R² uses all.

    Returns:
      path.
    """
    x, x_hat = np.asarray(x, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    if x.shape != x_hat.shape or x.size == 0:
        raise ValueError(
            f"x and x_hat must have one non-empty shape, got {x.shape} and {x_hat.shape}"
        )
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    a, b = x.reshape(-1), x_hat.reshape(-1)
    total = float(np.sum((a - a.mean()) ** 2))
    r2 = 1.0 - float(np.sum((b - a) ** 2)) / total if total > 0 else float("nan")
    idx = np.linspace(0, a.size - 1, min(a.size, max_points)).astype(np.int64)
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(a[idx], b[idx], s=2, alpha=0.3)
    ax.plot([lo, hi], [lo, hi], color="k", lw=1, ls="--", label="x̂ = x")
    ax.set_xlabel("input value x")
    ax.set_ylabel("reconstruction x̂")
    ax.set_title(f"{x.shape[0]} examples, R² = {r2:.3f}", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def save_points_3d(
    path: str,
    points: ArrayLike,
    *,
    reconstructions: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    axis: str = "x",
) -> str:
    """A 3-D scatter: a 3-D manifold's points (with their reconstructions), or 3-unit codes.

    Args:
      path: PNG file to write.
      points: [N, 3], e.g. test points of the swiss roll, or codes of a 3-unit encoder.
      reconstructions: optional [N, 3] reconstructions of `points`, drawn over them.
      labels: optional [N] integer labels colouring `points`.
      axis: the axis-name prefix ("x" for inputs: x₁, x₂, x₃; "h" for codes).

    Returns:
      path.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
        raise ValueError(f"points must be [N, 3] with N >= 1, got shape {points.shape}")
    if reconstructions is not None:
        reconstructions = np.asarray(reconstructions, dtype=np.float64)
        if reconstructions.shape != points.shape:
            raise ValueError(
                f"reconstructions must have the shape of points {points.shape}, "
                f"got {reconstructions.shape}"
            )
    if labels is not None and np.shape(labels) != (points.shape[0],):
        raise ValueError(f"labels must be [N] = [{points.shape[0]}], got shape {np.shape(labels)}")
    plt = _pyplot()
    fig = plt.figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d")
    colour = {"color": "0.5"} if labels is None else {"c": labels, "cmap": "tab10"}
    ax.scatter(*points.T, s=4, alpha=0.5, label=axis, **colour)
    if reconstructions is not None:
        ax.scatter(*reconstructions.T, s=4, color="C1", label=f"{axis}̂ (reconstruction)")
        ax.legend(fontsize=8)
    for i, set_label in enumerate((ax.set_xlabel, ax.set_ylabel, ax.set_zlabel)):
        set_label(f"{axis}{'₁₂₃'[i]}")
    return _save(fig, path)
