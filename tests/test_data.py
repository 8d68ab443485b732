"""Tests of aecore.data: offline loaders, user files, TFDS (mocked), normalizations, batches.

Everything runs offline; TFDS is exercised through `tfds.testing.mock_data` and an empty data_dir.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits, load_sample_images

from aecore import data

# The 10k real-MNIST subset kept in the repository (experiments/data/README.md); the same
# AECORE_MNIST_10K override as experiments/common.py.
MNIST_10K = os.environ.get(
    "AECORE_MNIST_10K",
    os.path.join(os.path.dirname(__file__), "..", "experiments", "data", "mnist_10k.npz"),
)


# --------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_range_and_split_sizes():
    ds = data.load_dataset("digits")
    assert ds.name == "digits"
    assert ds.x_train.shape == (1438, 8, 8, 1) and ds.x_test.shape == (359, 8, 8, 1)
    assert ds.input_shape == (8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.y_train.shape == (1438,)
    assert ds.value_range == "unit"
    x = np.concatenate([ds.x_train, ds.x_test])
    assert x.min() == 0.0 and x.max() == 1.0  # pixel/16, and digits do reach 16
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert "load_digits" in ds.description and "16" in ds.description


def test_digits_split_is_a_partition_with_labels_aligned():
    digits = load_digits()
    expected = collections.Counter(
        ((img / 16.0).astype(np.float32).tobytes(), int(label))
        for img, label in zip(digits.images, digits.target, strict=True)
    )
    ds = data.load_dataset("digits", seed=3)
    got = collections.Counter(
        (x[..., 0].tobytes(), int(y))
        for x, y in zip(
            np.concatenate([ds.x_train, ds.x_test]),
            np.concatenate([ds.y_train, ds.y_test]),
            strict=True,
        )
    )
    assert got == expected  # every (image, label) pair exactly once across the two splits


def test_digits_deterministic_by_seed():
    a, b = data.load_dataset("digits", seed=1), data.load_dataset("digits", seed=1)
    c = data.load_dataset("digits", seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_test_fraction_and_max_examples():
    ds = data.load_dataset("digits", test_fraction=0.5)
    assert (len(ds.x_train), len(ds.x_test)) == (899, 898)
    capped = data.load_dataset("digits", max_examples=100)
    full = data.load_dataset("digits")
    assert capped.x_train.shape == (100, 8, 8, 1) and capped.y_test.shape == (100,)
    np.testing.assert_array_equal(capped.x_train, full.x_train[:100])
    np.testing.assert_array_equal(capped.y_train, full.y_train[:100])
    assert "first 100" in capped.description


# --------------------------------------------------------------------------------------------
# patches


def test_patches_ng_normalization_shape_and_range():
    ds = data.load_dataset("patches", num_patches=1000, patch_size=6, seed=1)
    assert ds.x_train.shape == (800, 6, 6, 1) and ds.x_test.shape == (200, 6, 6, 1)
    assert ds.y_train is None and ds.y_test is None and ds.value_range == "unit"
    for x in (ds.x_train, ds.x_test):
        assert x.dtype == np.float32
        assert x.min() >= 0.1 - 1e-6 and x.max() <= 0.9 + 1e-6
    # A patch untouched by the ±3σ clip had its mean removed, so it maps to mean 0.5 exactly.
    flat = ds.x_train.reshape(800, -1)
    unclipped = (flat > 0.1 + 1e-6).all(1) & (flat < 0.9 - 1e-6).all(1)
    assert unclipped.sum() > 400
    np.testing.assert_allclose(flat[unclipped].mean(1), 0.5, atol=1e-5)
    assert flat.std() > 0.01  # not collapsed to a constant


def test_patches_ng_normalization_matches_the_recipe_with_training_statistics():
    kwargs = dict(num_patches=500, patch_size=4, seed=2)
    raw = data.load_dataset("patches", normalization="none", **kwargs)  # same draws
    ng = data.load_dataset("patches", **kwargs)
    train, test = (
        x.astype(np.float64) - x.mean(axis=(1, 2), keepdims=True) for x in (raw.x_train, raw.x_test)
    )
    bound = 3 * train.std()  # from the training patches only
    for got, centred in ((ng.x_train, train), (ng.x_test, test)):
        expected = (np.clip(centred, -bound, bound) / bound + 1) * 0.4 + 0.1
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_patches_raw_are_grayscale_windows_of_the_photographs():
    ds = data.load_dataset("patches", num_patches=20, patch_size=5, normalization="none")
    assert ds.x_train.shape == (16, 5, 5, 1) and ds.value_range == "unit"
    gray = [
        (img.astype(np.float64) @ [0.299, 0.587, 0.114] / 255.0).astype(np.float32)
        for img in load_sample_images().images
    ]
    windows = [np.lib.stride_tricks.sliding_window_view(g, (5, 5)) for g in gray]
    for patch in ds.x_train[:3, ..., 0]:
        found = any((np.abs(w - patch) < 1e-6).all(axis=(2, 3)).any() for w in windows)
        assert found


def test_skimage_photographs_are_the_twelve_grayscale_images():
    photos = data.photographs("skimage")
    assert len(photos) == len(data.SKIMAGE_PHOTOGRAPHS) == 12
    for img in photos:
        assert img.ndim == 2 and min(img.shape) >= 256
        assert 0 <= img.min() and img.max() <= 1 and img.std() > 0.02


def test_zca_matrix_whitens_exactly_without_epsilon_and_is_symmetric():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 4)) @ np.array(
        [[2.0, 0, 0, 0], [1.0, 1.0, 0, 0], [0, 0.5, 0.3, 0], [0, 0, 0.1, 0.05]]
    )
    w = data.zca_matrix(x, epsilon=0.0)
    np.testing.assert_allclose(w, w.T, atol=1e-12)
    white = (x - x.mean(0)) @ w
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(4), atol=1e-9)
    # Closed form: W = Σ^{-1/2}, so W Σ W = I and W² = Σ^{-1}.
    np.testing.assert_allclose(w @ w, np.linalg.inv(np.cov(x, rowvar=False)), rtol=1e-8)
    # epsilon is relative to the mean eigenvalue: scaling x does not change the whitened data.
    a = (x - x.mean(0)) @ data.zca_matrix(x, epsilon=0.1)
    b = (10 * x - 10 * x.mean(0)) @ data.zca_matrix(10 * x, epsilon=0.1)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_whiten_image_flattens_a_one_over_f_spectrum_and_rolls_off_near_nyquist():
    n = 128
    fy, fx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    f = np.hypot(fy, fx)
    rng = np.random.default_rng(1)
    amplitude = np.where(f > 0, 1 / np.maximum(f, 1e-9), 0.0)  # natural-image-like 1/f
    img = np.real(np.fft.ifft2(amplitude * np.exp(2j * np.pi * rng.random((n, n)))))
    power = np.abs(np.fft.fft2(data.whiten_image(img, cutoff=0.4))) ** 2

    def band(lo, hi):
        return power[(f >= lo) & (f < hi)].mean()

    low, mid = band(0.03, 0.06), band(0.12, 0.18)
    assert 0.7 < low / mid < 1.4  # flat: 1/f · f = const (the envelope is ~1 there)
    assert band(0.45, 0.5) < 0.5 * mid  # exp(−(f/0.4)⁴) ≈ 0.3 in power at 0.47
    w = data.whiten_image(img)
    assert abs(w.mean()) < 1e-9 and w.std() == pytest.approx(1.0)


@pytest.mark.parametrize("normalization", ["zca", "whiten"])
def test_whitened_patches_have_unit_scale_and_real_range(normalization):
    ds = data.load_dataset(
        "patches", images="skimage", patch_size=6, num_patches=3000,
        normalization=normalization, zca_epsilon=0.0, seed=3,
    )  # fmt: skip
    assert ds.value_range == "real" and ds.x_train.shape == (2400, 6, 6, 1)
    flat = ds.x_train.reshape(len(ds.x_train), -1).astype(np.float64)
    if normalization == "zca":  # fully whitened on the training split: identity covariance
        np.testing.assert_allclose(np.cov(flat, rowvar=False), np.eye(36), atol=1e-4)
    else:  # pooled unit variance, correlations between neighbours mostly removed
        assert flat.std() == pytest.approx(1.0, rel=1e-4)
        corr = np.corrcoef(flat, rowvar=False)
        raw = data.load_dataset(
            "patches", images="skimage", patch_size=6, num_patches=3000,
            normalization="none", seed=3,
        )  # fmt: skip
        raw_corr = np.corrcoef(raw.x_train.reshape(2400, -1), rowvar=False)
        # These photographs fall off faster than 1/f (power ~f^-2.7), so the 1/f whitening
        # leaves some correlation: 0.95 -> 0.58 here.
        assert abs(corr[0, 1]) < abs(raw_corr[0, 1]) - 0.2


# --------------------------------------------------------------------------------------------
# manifolds


@pytest.mark.parametrize("name, dim", [("circle", 2), ("spiral", 2), ("swiss_roll", 3)])
def test_manifold_shapes(name, dim):
    ds = data.load_dataset(name, num_points=500)
    assert ds.x_train.shape == (400, dim) and ds.x_test.shape == (100, dim)
    assert ds.x_train.dtype == np.float32
    assert ds.y_train is None and ds.value_range == "real"
    x, coords = data.sample_manifold(name, num_points=500, seed=0)
    np.testing.assert_array_equal(ds.x_train, x[:400])  # i.i.d.: train is the first points
    np.testing.assert_array_equal(ds.x_test, x[400:])
    assert coords.shape == (500, 2 if name == "swiss_roll" else 1)


def _clean_points(name, coords):
    t = coords[:, 0].astype(np.float64)
    if name == "circle":
        return np.stack([np.cos(2 * np.pi * t), np.sin(2 * np.pi * t)], 1)
    if name == "spiral":
        r, theta = 0.1 + 0.9 * t, 3 * np.pi * t
        return r[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)
    s = 1.5 * np.pi * (1 + 2 * t)
    return np.stack([s * np.cos(s), 4.5 * np.pi * coords[:, 1], s * np.sin(s)], 1) / (4.5 * np.pi)


@pytest.mark.parametrize("name", ["circle", "spiral", "swiss_roll"])
def test_manifold_points_lie_near_the_manifold(name):
    x0, coords = data.sample_manifold(name, num_points=2000, noise=0.0, seed=4)
    np.testing.assert_allclose(x0, _clean_points(name, coords), atol=1e-5)
    x, coords = data.sample_manifold(name, num_points=2000, noise=0.05, seed=4)
    residual = x - _clean_points(name, coords)
    np.testing.assert_allclose(residual.std(), 0.05, rtol=0.1)  # the noise and nothing else
    np.testing.assert_allclose(residual.mean(), 0.0, atol=0.01)


def test_circle_radius_and_swiss_roll_geometry():
    x, _ = data.sample_manifold("circle", num_points=1000, noise=0.0)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    x, coords = data.sample_manifold("swiss_roll", num_points=1000, noise=0.0)
    s = 1.5 * np.pi * (1 + 2 * coords[:, 0])
    np.testing.assert_allclose(np.hypot(x[:, 0], x[:, 2]), s / (4.5 * np.pi), atol=1e-5)
    assert np.abs(x).max() <= 1.0 + 1e-6


# --------------------------------------------------------------------------------------------
# user files


def test_npy_uint8_images_get_a_channel_and_are_scaled(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 4, 5), dtype=np.uint8)
    x[0, 0, 0], x[1, 0, 0] = 0, 255
    path = tmp_path / "imgs.npy"
    np.save(path, x)
    ds = data.load_dataset(str(path), test_fraction=0.2, seed=7)
    assert ds.name == "imgs.npy"
    assert ds.x_train.shape == (40, 4, 5, 1) and ds.x_test.shape == (10, 4, 5, 1)
    assert ds.x_train.dtype == np.float32 and ds.value_range == "unit" and ds.y_train is None
    both = np.concatenate([ds.x_train, ds.x_test])[..., 0]
    np.testing.assert_allclose(np.sort(both.ravel()), np.sort(x.ravel() / 255.0), rtol=1e-6)
    again = data.load_dataset(path, test_fraction=0.2, seed=7)  # a PathLike works too
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_npz_x_y_keeps_labels_aligned(tmp_path):
    x = np.arange(30 * 3, dtype=np.float64).reshape(30, 3) / 10.0
    y = np.arange(30) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = data.load_dataset(str(tmp_path / "d.npz"), test_fraction=0.3)
    assert ds.x_train.shape == (21, 3) and ds.x_test.shape == (9, 3)
    assert ds.value_range == "real" and ds.y_train.dtype == np.int32
    for xs, ys in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        rows = np.round(xs[:, 0] * 10 / 3).astype(int)  # row index of each example
        np.testing.assert_array_equal(ys, y[rows])


def test_npz_with_own_split(tmp_path):
    path = tmp_path / "split.npz"
    np.savez(
        path,
        x_train=np.full((6, 2, 2, 3), 0.25, np.float32),
        x_test=np.full((4, 2, 2, 3), 0.75, np.float32),
        y_train=np.arange(6),
        y_test=np.arange(4),
    )
    ds = data.load_dataset(str(path), test_fraction=0.5)  # the file's split wins
    assert ds.x_train.shape == (6, 2, 2, 3) and ds.x_test.shape == (4, 2, 2, 3)
    assert (ds.x_train == 0.25).all() and (ds.x_test == 0.75).all()
    np.testing.assert_array_equal(ds.y_test, np.arange(4))
    assert ds.value_range == "unit"


def test_csv_with_header_and_label_column(tmp_path):
    path = tmp_path / "table.csv"
    lines = ["a,label,b"] + [f"{i / 10},{i % 3},{-i}" for i in range(20)]
    path.write_text("\n".join(lines) + "\n")
    for label_column in ("label", 1, -2):
        ds = data.load_dataset(str(path), label_column=label_column, test_fraction=0.25)
        assert ds.x_train.shape == (15, 2) and ds.x_test.shape == (5, 2)
        assert ds.value_range == "real"
        for xs, ys in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
            i = np.round(-xs[:, 1]).astype(int)
            np.testing.assert_allclose(xs[:, 0], i / 10, rtol=1e-6)
            np.testing.assert_array_equal(ys, i % 3)


def test_csv_without_header_and_without_labels(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("0.5,1\n0,0.25\n1,0\n0.75,0.5\n")
    ds = data.load_dataset(str(path), test_fraction=0.25)
    assert ds.x_train.shape == (3, 2) and ds.x_test.shape == (1, 2)
    assert ds.y_train is None and ds.value_range == "unit"
    rows = np.concatenate([ds.x_train, ds.x_test])
    expected = np.array([[0.5, 1], [0, 0.25], [1, 0], [0.75, 0.5]], np.float32)
    np.testing.assert_array_equal(
        rows[np.lexsort(rows.T[::-1])], expected[np.lexsort(expected.T[::-1])]
    )


def test_real_mnist_subset_file():
    raw = np.load(MNIST_10K)  # the arrays experiments/data/README.md documents
    assert raw["x"].shape == (10000, 28, 28) and raw["x"].dtype == np.uint8
    assert raw["y"].shape == (10000,) and set(np.unique(raw["y"])) == set(range(10))
    ds = data.load_dataset(MNIST_10K, max_examples=1000)
    assert ds.x_train.shape == (1000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    assert ds.value_range == "unit" and ds.x_train.max() == 1.0
    order = np.random.default_rng(0).permutation(10000)  # the documented split: seed 0
    np.testing.assert_array_equal(ds.y_train, raw["y"][order[:1000]])
    np.testing.assert_allclose(ds.x_test[0, ..., 0], raw["x"][order[8000]] / 255.0, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# errors


def test_unknown_dataset_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnst'.*'digits'.*'cifar10_bw'.*\.npz"):
        data.load_dataset("mnst")


def test_missing_file_names_the_path(tmp_path):
    path = str(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        data.load_dataset(path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("1,2\n")
    with pytest.raises(ValueError, match=r"x\.txt.*\.npy, \.npz, \.csv"):
        data.load_dataset(str(path))


def test_non_numeric_csv_names_line_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(ValueError, match=r"line 3, column 2 \('b'\): 'oops' is not a number"):
        data.load_dataset(str(path))


def test_ragged_csv(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("1,2\n3\n")
    with pytest.raises(ValueError, match="line 2 has 1 columns, expected 2"):
        data.load_dataset(str(path))


@pytest.mark.parametrize(
    "content, match",
    [("", "empty"), ("a,b\n", "header row and no rows")],
)
def test_empty_csv(tmp_path, content, match):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        data.load_dataset(str(path))


def test_empty_array(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match=r"empty \(shape \(0, 3\)\)"):
        data.load_dataset(str(tmp_path / "e.npy"))


def test_nan_and_inf_are_counted_and_located(tmp_path):
    x = np.zeros((10, 3))
    x[4, 2], x[7, 0] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\).*first at index \(4, 2\)"):
        data.load_dataset(str(tmp_path / "nan.npy"))
    (tmp_path / "inf.csv").write_text("1,2\n3,inf\n")
    with pytest.raises(ValueError, match=r"1 non-finite.*\(1, 1\)"):
        data.load_dataset(str(tmp_path / "inf.csv"))
    (tmp_path / "nan.csv").write_text("1,2\n3,nan\n")  # a missing value: named by its cell
    with pytest.raises(ValueError, match=r"line 2, column 2: 'nan' is a missing value"):
        data.load_dataset(str(tmp_path / "nan.csv"))


@pytest.mark.parametrize("test_fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_test_fraction_outside_open_unit_interval(test_fraction):
    with pytest.raises(ValueError, match=rf"test_fraction.*\(0, 1\).*{test_fraction}"):
        data.load_dataset("digits", test_fraction=test_fraction)


def test_test_fraction_that_empties_a_split(tmp_path):
    np.save(tmp_path / "three.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"test_fraction=0\.01 of 3 examples"):
        data.load_dataset(str(tmp_path / "three.npy"), test_fraction=0.01)


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4, 5, 6)])
def test_wrong_rank(tmp_path, shape):
    np.save(tmp_path / "r.npy", np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match=rf"rank {len(shape)}"):
        data.load_dataset(str(tmp_path / "r.npy"))


def test_labels_length_mismatch(tmp_path):
    np.savez(tmp_path / "m.npz", x=np.zeros((10, 2)), y=np.zeros(9, np.int64))
    with pytest.raises(ValueError, match=r"y has shape \(9,\).*\[10\]"):
        data.load_dataset(str(tmp_path / "m.npz"))
    with pytest.raises(ValueError, match=r"y_train must hold one label per example"):
        data.Dataset("d", np.zeros((3, 2)), np.zeros((2, 2)), np.zeros(2), np.zeros(2), "real", "")


def test_non_integer_labels(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 1.5, 2]))
    with pytest.raises(ValueError, match=r"integer labels; index 2 is 1\.5"):
        data.load_dataset(str(tmp_path / "f.npz"))


def test_npz_with_unexpected_keys(tmp_path):
    np.savez(tmp_path / "k.npz", images=np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"holds arrays \['images'\]; expected 'x'"):
        data.load_dataset(str(tmp_path / "k.npz"))


def test_bad_label_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError, match=r"label_column 'c' is not a column name"):
        data.load_dataset(str(path), label_column="c")
    with pytest.raises(ValueError, match=r"index in \[-2, 1\], got 5"):
        data.load_dataset(str(path), label_column=5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch_size": 0}, r"patch_size must be an integer in \[1, 427\], got 0"),
        ({"normalization": "pca"}, r"'pca'.*'ng', 'none', 'zca', 'whiten'"),
        ({"images": "kodak"}, r"'kodak'.*'sklearn', 'skimage'"),
        ({"zca_epsilon": -1.0}, r"zca_epsilon.*-1.0"),
        ({"num_patches": -5}, r"num_patches must be a positive integer, got -5"),
    ],
)
def test_bad_patch_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load_dataset("patches", **kwargs)


def test_bad_common_options():
    with pytest.raises(ValueError, match="max_examples must be a positive integer, got 0"):
        data.load_dataset("digits", max_examples=0)
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0, got -1"):
        data.load_dataset("digits", seed=-1)
    with pytest.raises(ValueError, match=r"noise must be a finite number >= 0, got -0\.1"):
        data.load_dataset("circle", noise=-0.1)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['patch_size'\]"):
        data.load_dataset("digits", patch_size=4)


# --------------------------------------------------------------------------------------------
# normalize


def test_pca_normalization_gives_the_covariance_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)) + 3.0
    x_tilde, _, stats = data.normalize(x, method="pca")
    np.testing.assert_allclose(x_tilde.T @ x_tilde, np.cov(x, rowvar=False, bias=True), rtol=1e-10)
    assert stats["scale"] == pytest.approx(np.sqrt(200))
    np.testing.assert_allclose(data.denormalize(x_tilde, stats), x, rtol=1e-12)


def test_pca_normalization_of_images_flattens_to_the_same_identity():
    x = data.load_dataset("digits").x_train.astype(np.float64)
    x_tilde, _, _ = data.normalize(x, method="pca")
    flat = x_tilde.reshape(len(x), -1)
    cov = np.cov(x.reshape(len(x), -1), rowvar=False, bias=True)
    np.testing.assert_allclose(flat.T @ flat, cov, atol=1e-12)


def test_statistics_come_from_the_training_split_only():
    x_train = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    x_test = np.array([[100.0, -100.0]])
    for method in ("unit", "standardize", "pca"):
        a_train, a_test, stats = data.normalize(x_train, x_test, method=method)
        b_train, _, _ = data.normalize(x_train, method=method)
        np.testing.assert_array_equal(a_train, b_train)  # the test split changes nothing
        np.testing.assert_allclose(a_test, (x_test - stats["shift"]) / stats["scale"])
    unit_train, unit_test, _ = data.normalize(x_train, x_test, method="unit")
    assert unit_train.min() == 0.0 and unit_train.max() == 1.0
    np.testing.assert_allclose(unit_test, [[20.0, -20.0]])  # (x - 0) / 5


def test_standardize_keeps_zero_variance_features_finite():
    x = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 0.0], [5.0, 5.0, 0.0]], np.float32)
    z, z_test, stats = data.normalize(x, x[:1], method="standardize")
    assert np.isfinite(z).all() and np.isfinite(z_test).all()
    assert z.dtype == np.float32
    np.testing.assert_allclose(z[:, 1:], 0.0)
    np.testing.assert_allclose(z[:, 0].mean(), 0.0, atol=1e-7)
    np.testing.assert_allclose(z[:, 0].std(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(data.denormalize(z, stats), x, rtol=1e-6)


def test_none_and_unit_on_a_constant_input():
    x = np.full((4, 2), 7.0)
    z, _, stats = data.normalize(x, method="none")
    np.testing.assert_array_equal(z, x)
    z, _, _ = data.normalize(x, method="unit")
    assert np.isfinite(z).all()


def test_normalize_errors():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"unknown normalization method 'zca'.*'pca'"):
        data.normalize(x, method="zca")
    with pytest.raises(ValueError, match=r"x_test examples have shape \(3,\)"):
        data.normalize(x, np.zeros((2, 3)), method="unit")
    bad = x.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"1 non-finite.*\(1, 1\)"):
        data.normalize(bad, method="standardize")
    with pytest.raises(ValueError, match=r"non-empty batch.*\(0, 2\)"):
        data.normalize(np.zeros((0, 2)), method="pca")


# --------------------------------------------------------------------------------------------
# batches


def test_batches_are_one_shuffled_epoch_deterministic_by_seed():
    x = np.arange(23 * 2).reshape(23, 2)
    got = list(data.batches(x, batch_size=5, key_or_seed=3))
    assert len(got) == 4 and all(b.shape == (5, 2) for b in got)
    rows = np.concatenate(got)[:, 0] // 2
    assert len(set(rows)) == 20 and not np.array_equal(rows, np.arange(20))
    again = list(data.batches(x, batch_size=5, key_or_seed=3))
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate(got))
    other = np.concatenate(list(data.batches(x, batch_size=5, key_or_seed=4)))
    assert not np.array_equal(other, np.concatenate(got))


def test_batches_keep_the_remainder_and_accept_a_jax_key():
    x = np.arange(23)
    got = list(data.batches(x, batch_size=5, key_or_seed=jax.random.key(0), drop_remainder=False))
    assert [len(b) for b in got] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.sort(np.concatenate(got)), x)
    same = list(data.batches(x, batch_size=5, key_or_seed=jax.random.key(0), drop_remainder=False))
    np.testing.assert_array_equal(np.concatenate(same), np.concatenate(got))


def test_batches_errors_are_raised_at_call_time():
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        data.batches(np.zeros((4, 2)), batch_size=0, key_or_seed=0)
    with pytest.raises(ValueError, match=r"batch_size=8 exceeds the 4 examples"):
        data.batches(np.zeros((4, 2)), batch_size=8, key_or_seed=0)


# --------------------------------------------------------------------------------------------
# TFDS (offline: mocked data and an empty data_dir)


@pytest.mark.parametrize(
    "name, shape, labelled",
    [
        ("mnist", (28, 28, 1), True),
        ("fashion_mnist", (28, 28, 1), True),
        ("binarized_mnist", (28, 28, 1), False),
        ("cifar10_bw", (32, 32, 1), True),
    ],
)
def test_tfds_through_mock_data(name, shape, labelled, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=12):
        ds = data.load_dataset(name, data_dir=str(tmp_path))
        capped = data.load_dataset(name, data_dir=str(tmp_path), max_examples=5)
    assert ds.x_train.shape == (12, *shape) and ds.x_test.shape == (12, *shape)
    assert ds.x_train.dtype == np.float32 and ds.value_range == "unit"
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.x_train.max() > 0.5  # scaled, not all zeros (mock pixels are random uint8)
    if name == "binarized_mnist":
        assert set(np.unique(ds.x_train)) <= {0.0, 1.0}
    if labelled:
        assert ds.y_train.dtype == np.int32 and ds.y_train.shape == (12,)
        assert ((0 <= ds.y_train) & (ds.y_train < 10)).all()
    else:
        assert ds.y_train is None and ds.y_test is None
    assert capped.x_train.shape == (5, *shape) and capped.x_test.shape == (5, *shape)
    np.testing.assert_array_equal(capped.x_train, ds.x_train[:5])


def test_tfds_not_prepared_fails_fast_with_instructions(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("mnist", data_dir=str(tmp_path))
    elapsed = time.monotonic() - start
    assert elapsed < 10.0, f"took {elapsed:.1f} s: a download must never be attempted"
    message = str(info.value)
    assert "'mnist'" in message and str(tmp_path) in message
    assert "download=True" in message and ".npz" in message
    assert os.listdir(tmp_path) == []  # nothing was written


def test_aecore_data_imports_without_tfds():
    code = "import sys, aecore.data; print('tensorflow_datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
