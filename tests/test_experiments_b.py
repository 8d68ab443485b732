"""Quick modes of the sparse, denoising, classifier and applications experiments, run in-process
on offline scikit-learn digits (never the MNIST subset of experiments/data), with the claims
that hold there.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from aecore.filters import filter_stats
from experiments import exp_applications, exp_classifier, exp_denoising, exp_sparse


def _run(module, tmp_path):
    results = module.main(["--quick", "--data", "digits", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert set(on_disk) == set(results)
    return results


def _pngs(tmp_path, names):
    for name in names:
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 1000, name


def test_filter_stats_separate_edges_from_noise():
    # A localized vertical step edge vs white noise on 8x8.
    edge = np.zeros((8, 8))
    edge[2:6, 3] = 1.0
    edge[2:6, 4] = -1.0
    noise = np.random.default_rng(0).standard_normal((64, 50))
    stats = filter_stats(np.c_[edge.reshape(64, 1), noise], (8, 8))
    assert stats["spread"][0] < stats["spread"][1:].min()
    assert stats["orientedness"][0] > 0.7 > np.median(stats["orientedness"][1:])


def test_area50_counts_the_pixels_holding_half_the_energy():
    blob = np.zeros((28, 28))
    blob[10:12, 10:12] = 1.0  # 4 equal pixels: 2 hold exactly half, so 2
    spike = np.zeros((28, 28))
    spike[5, 5], spike[5, 6] = 2.0, 1.0  # 4/5 of the energy in one pixel
    noise = np.random.default_rng(0).standard_normal((784, 200))
    kernel = np.c_[blob.reshape(784, 1), spike.reshape(784, 1), noise]
    area = filter_stats(kernel, (28, 28))["area50"]
    assert area[0] == 2 and area[1] == 1
    # white noise: energy ~ chi-squared(1), half of it in roughly the top 12% of pixels
    assert 70 < np.median(area[2:]) < 130


def test_sparse(tmp_path):
    r = _run(exp_sparse, tmp_path)
    assert r["kl_curve"]["argmin"] == pytest.approx(0.2, abs=1e-3)
    # After 200 steps the units' mean activations are already far nearer ρ than without KL.
    for row in r["kl_activations"].values():
        assert row["mean_abs_log_ratio"] < 0.5 * row["no_penalty_mean_abs_log_ratio"]
    assert r["patches"]["mean_activation_test"] < 0.1  # ρ = 0.01 from ~0.5 at init
    _pngs(
        tmp_path,
        [
            "kl_curve.png",
            "activations_vs_rho.png",
            "patch_filters_sparse_ae.png",
            "patch_filters_pca.png",
        ],
    )


def test_denoising(tmp_path):
    r = _run(exp_denoising, tmp_path)
    field = r["vector_field"]
    assert field["mean_distance_reconstructed"] < field["mean_distance_corrupted"]
    assert set(r["mask_filters"]) == {"0.0", "0.25", "0.5"}
    for row in r["mask_filters"].values():
        assert 0 < row["mean_spread"] < 8  # 8x8 digits: within the image
        assert 1 <= row["median_area50_px"] <= 64 and 0 <= row["localized_fraction"] <= 1
    assert r["mask_localized_if_area50_at_most_px"] == 2  # 30/784 of 64 pixels, rounded
    # Edge-likeness of patch filters needs the default run's 5,000 steps; quick mode only checks
    # that both are measured.
    assert 0 <= r["patches"]["gaussian_dae"]["edge_like_fraction"] <= 1
    _pngs(
        tmp_path,
        [
            "filters_mask_q0.0.png",
            "filters_mask_q0.25.png",
            "filters_mask_q0.5.png",
            "patch_filters_gaussian_dae.png",
            "patch_filters_pca.png",
            "vector_field_circle.png",
        ],
    )


def test_classifier(tmp_path):
    r = _run(exp_classifier, tmp_path)
    assert set(r["errors"]) == set(exp_classifier.FEATURE_SETS)
    for row in r["errors"].values():
        assert 0 <= row["probe_error"] <= 1 and 0 <= row["finetuned_error"] <= 1
    assert r["errors"]["raw_pixels"]["probe_error"] < 0.5  # chance is 0.9 on 10 classes
    # The same tuning budget for every method; the choice is the lowest validation error.
    for method in exp_classifier.METHODS:
        runs = r["tuning"][method]
        assert len(runs) == r["protocol"]["trials_per_method"] == 2
        best = min(runs, key=lambda t: t["val_error"])
        assert r["chosen"][method]["learning_rate"] == best["learning_rate"]
    # Validation held out of the training digits; 2 seeds give the paired statistics.
    assert r["protocol"]["splits"]["val"] == round(300 * exp_classifier.VALIDATION_FRACTION)
    assert len(r["errors_per_seed"]) == 2 and "statistics" in r
    _pngs(tmp_path, ["test_errors.png"])


def test_applications(tmp_path):
    r = _run(exp_applications, tmp_path)
    anomaly = r["anomaly_detection"]
    assert all(v["auroc_ae"] > 0.5 for v in anomaly["per_class"].values())
    # AE vs PCA AUROC is not asserted: 100 steps do not let the AE match PCA's exact fit.
    for row in r["denoising"].values():
        assert row["psnr_reconstructed_db"] > row["psnr_noisy_db"]
    for p in r["retrieval_precision_at_10"].values():
        assert 0.1 < p <= 1  # better than chance (0.1)
    # Inpainting after 100 training steps need not help; checked in the default run.
    assert np.isfinite(r["inpainting"]["psnr_region_after_db"])
    _pngs(tmp_path, ["denoising_gaussian.png", "denoising_mask.png", "inpainting.png"])
