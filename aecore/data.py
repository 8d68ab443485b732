"""Datasets for autoencoder experiments as NumPy float32 arrays with explicit train/test splits.

Offline sources (scikit-learn digits and photographs, synthetic manifolds, user files), TFDS.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import zipfile
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from aecore import _checks

# The built-in names; anything else must be a path to one of FILE_SUFFIXES.
DATASETS: tuple[str, ...] = (
    "digits",
    "patches",
    "circle",
    "spiral",
    "swiss_roll",
    "mnist",
    "fashion_mnist",
    "binarized_mnist",
    "cifar10_bw",
)
MANIFOLDS: tuple[str, ...] = ("circle", "spiral", "swiss_roll")
FILE_SUFFIXES: tuple[str, ...] = (".npy", ".npz", ".csv")
NORMALIZATIONS: tuple[str, ...] = ("none", "unit", "standardize", "pca")
VALUE_RANGES: tuple[str, ...] = ("unit", "real")
PATCH_NORMALIZATIONS: tuple[str, ...] = ("ng", "none", "zca", "whiten")
PATCH_IMAGES: tuple[str, ...] = ("sklearn", "skimage")
# scikit-image's bundled photographs of natural scenes and objects (in its wheel, no download);
# the drawings, micrographs and synthetic images of skimage.data are left out.
SKIMAGE_PHOTOGRAPHS: tuple[str, ...] = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "grass",
    "gravel",
    "brick",
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "coins",
    "moon",
)

# ITU-R BT.601 luma, the weights PIL uses for mode "L": one grayscale convention everywhere.
_LUMA = np.array([0.299, 0.587, 0.114])

# aecore name -> (TFDS name, TFDS splits read as (train, test), has labels).
# binarized_mnist has train (50k) / validation (10k) / test (10k); validation is left out so
# the test split is the one of Larochelle & Murray (2011) and no example is read twice.
_TFDS: dict[str, tuple[str, tuple[str, str], bool]] = {
    "mnist": ("mnist", ("train", "test"), True),
    "fashion_mnist": ("fashion_mnist", ("train", "test"), True),
    "binarized_mnist": ("binarized_mnist", ("train", "test"), False),
    "cifar10_bw": ("cifar10", ("train", "test"), True),
}

# Keyword arguments each source accepts beyond the common ones of `load_dataset`.
_EXTRA_KWARGS: dict[str, tuple[str, ...]] = {
    "digits": (),
    "patches": ("patch_size", "num_patches", "normalization", "images", "zca_epsilon"),
    **{m: ("num_points", "noise") for m in MANIFOLDS},
    **{t: () for t in _TFDS},
    ".npy": (),
    ".npz": (),
    ".csv": ("label_column",),
}


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: `==` on arrays has no single truth
class Dataset:
    """A train/test split of examples, ready for `jax.vmap`-ed per-example models.

    Attributes:
      name: the dataset name given to `load_dataset` (a file's base name for user files).
      x_train: training inputs [N, *input_shape], float32.
      x_test: test inputs [M, *input_shape], float32.
      y_train: integer labels [N] int32, or None when the dataset has none.
      y_test: integer labels [M] int32, or None.
      value_range: "unit" when every value lies in [0, 1] (cross-entropy targets), else "real".
      description: one line naming the source and the normalization applied.
    """

    name: str
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray | None
    y_test: np.ndarray | None
    value_range: str
    description: str

    def __post_init__(self) -> None:
        _checks.check_choice("value_range", self.value_range, VALUE_RANGES)
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if not isinstance(x, np.ndarray) or x.ndim < 2:
                raise ValueError(
                    f"x_{split} must be a NumPy array [N, *input_shape] of rank >= 2, "
                    f"got {type(x).__name__} of shape {getattr(x, 'shape', None)}"
                )
            if y is not None and (np.ndim(y) != 1 or len(y) != len(x)):
                raise ValueError(
                    f"y_{split} must hold one label per example: shape {np.shape(y)} "
                    f"for x_{split} of shape {x.shape}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"x_train examples have shape {self.x_train.shape[1:]} but x_test examples "
                f"have shape {self.x_test.shape[1:]}; they must match"
            )
        if (self.y_train is None) != (self.y_test is None):
            raise ValueError("y_train and y_test must both be arrays or both be None")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (28, 28, 1)."""
        return tuple(self.x_train.shape[1:])


def load_dataset(
    name: str | os.PathLike[str],
    *,
    data_dir: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_examples: int | None = None,
    **kwargs: Any,
) -> Dataset:
    """Loads a built-in dataset or a user file as float32 arrays with a train/test split.

    Built-in names (`DATASETS`), their normalization and split:

    - "digits": scikit-learn's bundled `load_digits` (1,797 8x8 scans), pixel/16 in [0, 1],
      [N, 8, 8, 1], labels 0-9. Offline; the project's default.
    - "patches": grayscale (BT.601 luma / 255) `patch_size` x `patch_size` patches cut at
      uniformly random places from scikit-learn's sample photographs china.jpg and
      flower.jpg, [N, p, p, 1], no labels. kwargs: `patch_size=8`, `num_patches=10000`
      (before the split), `normalization="ng"`: Ng's sparse-autoencoder notes (CS294A,
      §"Sparse autoencoder" exercise): subtract each patch's mean, clip to ±3 standard
      deviations (pooled over the training patches) and map [-3σ, 3σ] to [0.1, 0.9]; or
      "none": the raw grayscale values in [0, 1]; or "whiten": each photograph whitened as
      Olshausen & Field (1996) did for the images Vincent et al. (2010) trained on (see
      `whiten_image`) before the patches are cut, then scaled to unit variance per pixel
      (pooled over the training patches); or "zca": ZCA whitening of the patches
      (`zca_matrix`, fitted on the training patches, `zca_epsilon=0.1` of the mean
      eigenvalue added to each). "zca" and "whiten" give value range "real".
      `images="sklearn"` (default: china.jpg, flower.jpg) or "skimage": the twelve
      photographs `SKIMAGE_PHOTOGRAPHS` bundled with scikit-image (its wheel, no download).
    - "circle" [N, 2], "spiral" [N, 2], "swiss_roll" [N, 3]: noisy samples of a 1-D or 2-D
      manifold, see `sample_manifold` (kwargs `num_points=2000`, `noise=0.05`). Value range
      "real", no labels. The points are i.i.d., so the first examples form the training split
      and `sample_manifold(name, seed=seed, ...)` gives their intrinsic coordinates in order.
    - "mnist", "fashion_mnist" [N, 28, 28, 1], "binarized_mnist" [N, 28, 28, 1] (pixels in
      {0, 1}, no labels; TFDS splits train (50k) and test (10k), validation unused),
      "cifar10_bw" [N, 32, 32, 1] (CIFAR-10 in BT.601 luma): read with
      `tfds.data_source(..., download=False)` (no TensorFlow needed) from `data_dir`
      (default: $TFDS_DATA_DIR or ~/tensorflow_datasets), pixels/255 in [0, 1], the
      dataset's own train/test splits. Nothing is ever downloaded: a dataset that is not
      prepared raises FileNotFoundError at once, saying how to obtain it.

    Otherwise `name` is a path to a user file:

    - ".npy": inputs only.
    - ".npz": keys `x` (and optionally `y`), or `x_train`, `x_test` (and optionally
      `y_train`, `y_test`) when the file brings its own split.
    - ".csv": comma-separated numbers (UTF-8, a BOM is skipped), one example a row; the first
      row is a header only when none of its fields is a number. An empty or missing (NA,
      NaN, ...) cell is refused naming its line and column, and so is a row-index column (a
      blank first header cell, as pandas' `to_csv` writes, or a headerless first column
      0, 1, ..., N-1), rather than trained as a feature. kwarg `label_column` (an index, or
      a header name) selects a column of integer labels, which is removed from the inputs.

    Arrays are [N, features], [N, H, W] (becomes [N, H, W, 1]) or [N, H, W, C]. uint8 data are
    divided by 255; other numeric data are kept as they are (as float32) and `value_range` is
    "unit" when all values lie in [0, 1], else "real". Without a split in the file, one is drawn
    with `test_fraction` and `seed`.

    Args:
      name: one of `DATASETS`, or a path to a .npy, .npz or .csv file.
      data_dir: TFDS data directory (TFDS datasets only).
      test_fraction: fraction of examples held out for testing, in (0, 1); used where the
        source has no split of its own (digits, patches, manifolds, files without one).
      seed: seed of the split and of the random sampling (patches, manifolds).
      max_examples: keep at most this many examples of each split (the first ones after the
        split; TFDS splits are stored shuffled). TFDS examples are read one at a time (about
        0.2 ms each), so this is what keeps a quick run quick. None keeps all.
      **kwargs: source-specific options listed above.

    Returns:
      The `Dataset`; float32 inputs, int32 labels or None.

    Raises:
      ValueError: unknown name, bad option value, bad file content (non-numeric, empty,
        NaN/inf, wrong rank, labels that do not match the examples).
      TypeError: a keyword option the source does not accept.
      FileNotFoundError: a missing file, or a TFDS dataset not prepared in `data_dir`.
      ImportError: a TFDS name without tensorflow-datasets installed (the `tfds` extra).

    Examples:
      >>> from aecore.data import load_dataset
      >>> ds = load_dataset("digits")  # offline: scikit-learn's bundled scans
      >>> ds.x_train.shape, ds.x_test.shape, ds.input_shape
      ((1438, 8, 8, 1), (359, 8, 8, 1), (8, 8, 1))
      >>> ds.value_range, float(ds.x_train.min()), float(ds.x_train.max())
      ('unit', 0.0, 1.0)
      >>> circle = load_dataset("circle", num_points=100, max_examples=50)
      >>> circle.x_train.shape, circle.y_train is None
      ((50, 2), True)
    """
    _checks.check_open_unit("test_fraction", test_fraction)
    _checks.check_int("seed", seed)
    if max_examples is not None:
        _checks.check_positive_int("max_examples", max_examples)

    path = None
    if isinstance(name, str) and name in DATASETS:
        source = name
    else:
        path = _user_file(name)
        source = os.path.splitext(path)[1].lower()
    unexpected = sorted(set(kwargs) - set(_EXTRA_KWARGS[source]))
    if unexpected:
        accepted = ", ".join(_EXTRA_KWARGS[source]) or "none"
        raise TypeError(
            f"load_dataset({os.fspath(name)!r}) got unexpected keyword argument(s) {unexpected}; "
            f"options accepted for {source!r}: {accepted}"
        )

    split: dict[str, Any] = dict(test_fraction=test_fraction, seed=seed)
    if path is not None:
        ds = _load_file(path, label_column=kwargs.get("label_column"), **split)
    elif source == "digits":
        ds = _load_digits(**split)
    elif source == "patches":
        ds = _load_patches(**split, **kwargs)
    elif source in MANIFOLDS:
        ds = _load_manifold(source, **split, **kwargs)
    else:
        ds = _load_tfds(source, data_dir=data_dir, max_examples=max_examples)
    if max_examples is not None:
        ds = _cap(ds, max_examples)
    return ds


def sample_manifold(
    name: str, *, num_points: int = 2000, noise: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draws i.i.d. noisy points of a synthetic manifold and their intrinsic coordinates.

    With t ~ U[0, 1) (and h ~ U[-1, 1) for the swiss roll) and ε ~ N(0, noise² I):

    - "circle": x = (cos 2πt, sin 2πt) + ε, the unit circle.
    - "spiral": x = r (cos θ, sin θ) + ε with θ = 3πt, r = 0.1 + 0.9t: 1.5 turns whose arms are
      0.6 apart, inside the unit disc.
    - "swiss_roll": s = 1.5π(1 + 2t) (Roweis & Saul's roll), x = (s cos s / 4.5π, h,
      s sin s / 4.5π) + ε: scaled so that the roll fits in [-1, 1]³ (its layers 0.44 apart).

    Args:
      name: one of `MANIFOLDS`.
      num_points: number of points, >= 1.
      noise: standard deviation of the isotropic Gaussian noise, >= 0.
      seed: seed of `np.random.default_rng`.

    Returns:
      (x, coords): points [num_points, D] float32 (D = 2, 2, 3) and the noise-free intrinsic
      coordinates [num_points, k] float32: (t,) for circle and spiral, (t, h) for swiss_roll.
    """
    _checks.check_choice("manifold", name, MANIFOLDS)
    _checks.check_positive_int("num_points", num_points)
    _checks.check_nonnegative("noise", noise)
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, 1.0, num_points)
    if name == "circle":
        clean, coords = np.stack([np.cos(2 * np.pi * t), np.sin(2 * np.pi * t)], 1), t[:, None]
    elif name == "spiral":
        theta, r = 3 * np.pi * t, 0.1 + 0.9 * t
        clean, coords = r[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1), t[:, None]
    else:
        s, h = 1.5 * np.pi * (1 + 2 * t), rng.uniform(-1.0, 1.0, num_points)
        clean = np.stack([s * np.cos(s), 4.5 * np.pi * h, s * np.sin(s)], 1) / (4.5 * np.pi)
        coords = np.stack([t, h], 1)
    x = clean + noise * rng.standard_normal(clean.shape)
    return x.astype(np.float32), coords.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data a run trains on (`load_dataset`) and how it is normalized (a config section).

    Attributes:
      name: a dataset name (`DATASETS`, or a TFDS name) or a .npy/.npz/.csv path.
      normalization: a method of `normalize` (one of `NORMALIZATIONS`).
      data_dir: TFDS data directory, or None for its default.
      max_examples: keep at most this many examples (before the split), or None for all.
      test_fraction: the held-out fraction of a dataset without its own test split.
      seed: the split's and subsample's seed.
    """

    name: str = "digits"
    normalization: str = "none"
    data_dir: str | None = None
    max_examples: int | None = None
    test_fraction: float = 0.2
    seed: int = 0


def normalize(
    x_train: np.ndarray, x_test: np.ndarray | None = None, *, method: str
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Normalizes inputs with statistics of the training split only.

    Every method is x̃ = (x − shift) / scale, recorded in the returned stats so that
    `denormalize` maps reconstructions (and decoded codes) back:

    - "none": shift 0, scale 1.
    - "unit": min-max over the whole training split to [0, 1] (test values may fall outside).
    - "standardize": per-feature mean and standard deviation; a zero-variance feature gets
      scale 1 so it maps to 0 instead of NaN.
    - "pca": per-feature mean, scale √m with m the number of training examples, so that
      X̃ᵀX̃ is the (biased, 1/m) covariance matrix of X and a linear autoencoder trained with
      squared error spans the principal subspace (lecture notes on PCA as a linear AE).

    Args:
      x_train: [N, *input_shape] training inputs, finite.
      x_test: optional [M, *input_shape] inputs normalized with the training statistics.
      method: one of `NORMALIZATIONS`.

    Returns:
      (x_train_normalized, x_test_normalized or None, stats) where stats holds "method",
      "shift" and "scale" (scalars or [*input_shape] arrays, float64). Outputs keep a
      floating input dtype; integer inputs become float32.
    """
    _checks.check_choice("normalization method", method, NORMALIZATIONS)
    x_train = np.asarray(x_train)
    _check_inputs("x_train", x_train)
    if x_test is not None:
        x_test = np.asarray(x_test)
        _check_inputs("x_test", x_test)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise ValueError(
                f"x_test examples have shape {x_test.shape[1:]}, x_train examples "
                f"{x_train.shape[1:]}; they must match"
            )
    dtype = x_train.dtype if np.issubdtype(x_train.dtype, np.floating) else np.float32
    # float64 statistics: float32 sums over 60k examples lose digits the PCA identity needs.
    x64 = x_train.astype(np.float64)
    shift: float | np.ndarray
    scale: float | np.ndarray
    if method == "none":
        shift, scale = 0.0, 1.0
    elif method == "unit":
        lo, hi = float(x64.min()), float(x64.max())
        shift, scale = lo, (hi - lo) if hi > lo else 1.0
    elif method == "standardize":
        shift, std = x64.mean(axis=0), x64.std(axis=0)
        scale = np.where(std > 0, std, 1.0)
    else:
        shift, scale = x64.mean(axis=0), math.sqrt(x64.shape[0])
    stats = {"method": method, "shift": shift, "scale": scale}

    def apply(x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float64) - shift) / scale).astype(dtype)

    return apply(x_train), (None if x_test is None else apply(x_test)), stats


def denormalize(x: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Inverts `normalize`: x · scale + shift, for inputs [B, *input_shape] in normalized units.

    Args:
      x: normalized values (e.g. reconstructions) [B, *input_shape].
      stats: the dict returned by `normalize`.

    Returns:
      Values in the original units, in the dtype of `x` (float32 for non-floating `x`).
    """
    x = np.asarray(x)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    return (x.astype(np.float64) * stats["scale"] + stats["shift"]).astype(dtype)


def batches(
    x: np.ndarray, *, batch_size: int, key_or_seed: int | jax.Array, drop_remainder: bool = True
) -> Iterator[np.ndarray]:
    """One shuffled epoch of `x` in batches, deterministic given the seed or key.

    Args:
      x: examples [N, *input_shape].
      batch_size: examples per batch, >= 1 (and <= N when `drop_remainder`).
      key_or_seed: an integer seed (NumPy permutation) or a `jax.random` key (JAX
        permutation); e.g. `jax.random.fold_in(key, epoch)` for a new order each epoch.
      drop_remainder: drop the last N mod batch_size examples so all batches have one shape
        (one compilation of a jitted step); otherwise the last batch is smaller.

    Returns:
      An iterator over arrays x[indices] of shape [batch_size, *input_shape] (copies).
    """
    _checks.check_positive_int("batch_size", batch_size)
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"x must hold at least one example [N, ...], got shape {x.shape}")
    n = x.shape[0]
    if drop_remainder and batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {n} examples: with drop_remainder=True "
            "the epoch would have no batch; use batch_size <= N or drop_remainder=False"
        )
    if isinstance(key_or_seed, bool):
        raise TypeError(
            f"key_or_seed must be an integer seed or a jax.random key, got {key_or_seed!r}"
        )
    if isinstance(key_or_seed, int | np.integer):
        order = np.random.default_rng(int(key_or_seed)).permutation(n)
    else:
        order = np.asarray(jax.random.permutation(key_or_seed, n))
    stop = n - n % batch_size if drop_remainder else n

    def epoch() -> Iterator[np.ndarray]:
        for start in range(0, stop, batch_size):
            yield x[order[start : start + batch_size]]

    # The checks above run at call time; only the slicing is lazy.
    return epoch()


# --------------------------------------------------------------------------------------------
# Built-in sources.


def _load_digits(*, test_fraction: float, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    return _split_dataset(
        "digits",
        x,
        digits.target.astype(np.int32),
        value_range="unit",
        description="scikit-learn load_digits (1,797 8x8 scans); pixel/16 in [0, 1]",
        test_fraction=test_fraction,
        seed=seed,
    )


def _load_patches(
    *,
    test_fraction: float,
    seed: int,
    patch_size: int = 8,
    num_patches: int = 10000,
    normalization: str = "ng",
    images: str = "sklearn",
    zca_epsilon: float = 0.1,
) -> Dataset:
    _checks.check_choice("patches normalization", normalization, PATCH_NORMALIZATIONS)
    _checks.check_positive_int("num_patches", num_patches)
    _checks.check_nonnegative("zca_epsilon", zca_epsilon)
    photos = photographs(images)
    if normalization == "whiten":
        photos = [whiten_image(img) for img in photos]
    max_size = min(min(img.shape) for img in photos)
    _checks.check_int("patch_size", patch_size, low=1, high=max_size)
    rng = np.random.default_rng(seed)
    which = rng.integers(len(photos), size=num_patches)
    patches = np.empty((num_patches, patch_size, patch_size))
    for k, img in enumerate(photos):
        mask = which == k
        rows = rng.integers(img.shape[0] - patch_size + 1, size=mask.sum())
        cols = rng.integers(img.shape[1] - patch_size + 1, size=mask.sum())
        windows = np.lib.stride_tricks.sliding_window_view(img, (patch_size, patch_size))
        patches[mask] = windows[rows, cols]
    # Patches are i.i.d. draws, so the first ones form the training split.
    n_train, _ = _split_sizes(num_patches, test_fraction)
    train, test = patches[:n_train], patches[n_train:]
    value_range = "unit"
    if normalization == "ng":
        train, test = (p - p.mean(axis=(1, 2), keepdims=True) for p in (train, test))
        bound = 3 * train.std()
        train, test = ((np.clip(p, -bound, bound) / bound + 1) * 0.4 + 0.1 for p in (train, test))
        how = "patch mean removed, clipped to ±3 std (train), mapped to [0.1, 0.9] (Ng)"
    elif normalization == "whiten":
        scale = train.std()
        train, test = train / scale, test / scale
        value_range = "real"
        how = "images whitened as Olshausen & Field (1996), unit variance per pixel (train)"
    elif normalization == "zca":
        flat_train = train.reshape(n_train, -1)
        mean = flat_train.mean(axis=0)
        w = zca_matrix(flat_train, epsilon=zca_epsilon)
        train, test = (((p.reshape(len(p), -1) - mean) @ w).reshape(p.shape) for p in (train, test))
        value_range = "real"
        how = f"ZCA-whitened patches (epsilon {zca_epsilon} of the mean eigenvalue, train)"
    else:
        how = "grayscale in [0, 1]"
    source = (
        "scikit-learn's sample photographs"
        if images == "sklearn"
        else f"scikit-image's {len(photos)} photographs"
    )
    return Dataset(
        name="patches",
        x_train=train.astype(np.float32)[..., None],
        x_test=test.astype(np.float32)[..., None],
        y_train=None,
        y_test=None,
        value_range=value_range,
        description=(
            f"{num_patches} random {patch_size}x{patch_size} patches of {source} "
            f"(BT.601 luma/255); {how}"
        ),
    )


def photographs(images: str = "sklearn") -> list[np.ndarray]:
    """Grayscale photographs (BT.601 luma / 255, float64 [H, W] in [0, 1]) bundled offline.

    Args:
      images: "sklearn" (scikit-learn's china.jpg and flower.jpg) or "skimage" (the
        `SKIMAGE_PHOTOGRAPHS` of scikit-image's `skimage.data`, inside its wheel).

    Returns:
      The photographs as a list of 2-D arrays (their sizes differ).

    Raises:
      ValueError: an unknown `images` name.
      ImportError: "skimage" without scikit-image installed.
    """
    _checks.check_choice("patches images", images, PATCH_IMAGES)
    if images == "sklearn":
        from sklearn.datasets import load_sample_images

        raw = load_sample_images().images
    else:
        try:
            import skimage.data
        except ImportError as e:
            raise ImportError(
                "images='skimage' needs scikit-image: pip install scikit-image"
            ) from e
        left, right, _ = skimage.data.stereo_motorcycle()
        extra = {"motorcycle_left": left, "motorcycle_right": right}
        raw = [extra[n] if n in extra else getattr(skimage.data, n)() for n in SKIMAGE_PHOTOGRAPHS]

    def gray(img: np.ndarray) -> np.ndarray:
        img = np.asarray(img, dtype=np.float64)
        return (img[..., :3] @ _LUMA if img.ndim == 3 else img) / 255.0

    return [gray(img) for img in raw]


def whiten_image(image: np.ndarray, *, cutoff: float = 0.4) -> np.ndarray:
    """Whitens a grayscale image as Olshausen & Field (1996) did for their natural scenes.

    The image (mean removed) is filtered in the frequency domain by R(f) = f exp(−(f/f0)⁴),
    f the radial frequency in cycles per pixel and f0 = `cutoff` (their 200 cycles per
    512-pixel picture is 0.39): the f factor flattens the ~1/f amplitude spectrum of natural
    images, the exponential rolls off the highest frequencies, where sensor noise and JPEG
    artefacts would otherwise be amplified (what ZCA with a small epsilon does). The result is
    scaled to unit variance.

    Args:
      image: [H, W] grayscale values.
      cutoff: f0 in cycles per pixel, in (0, 0.5] (0.5 is Nyquist).

    Returns:
      The whitened image [H, W], float64, zero mean and unit variance.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"image must be a 2-D array [H, W] with H, W >= 2, got {image.shape}")
    if not 0 < cutoff <= 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5] cycles per pixel, got {cutoff!r}")
    h, w = image.shape
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.rfftfreq(w), indexing="ij")
    f = np.hypot(fy, fx)
    spectrum = np.fft.rfft2(image - image.mean()) * f * np.exp(-((f / cutoff) ** 4))
    out = np.fft.irfft2(spectrum, s=(h, w))
    return out / (out.std() + 1e-12)


def zca_matrix(x: np.ndarray, *, epsilon: float = 0.1) -> np.ndarray:
    """The symmetric ZCA whitening matrix U diag(1/√(λ + ε λ̄)) Uᵀ of examples x [N, D].

    λ, U are the eigenvalues and eigenvectors of x's covariance (mean removed), λ̄ their mean;
    ε = `epsilon` is relative, so it means the same for any scale of x. ε → 0 whitens fully
    (every direction, noise included, gets unit variance); (x − mean) @ W is the whitened data.

    Args:
      x: examples [N, D], N >= 2.
      epsilon: regularizer as a fraction of the mean eigenvalue, >= 0.

    Returns:
      W [D, D], float64, symmetric.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be examples [N, D] with N >= 2, got shape {x.shape}")
    _checks.check_nonnegative("epsilon", epsilon)
    cov = np.cov(x, rowvar=False)
    lam, u = np.linalg.eigh(cov)
    lam = np.clip(lam, 0.0, None)
    reg = epsilon * lam.mean()
    if not np.all(lam + reg > 0):
        raise ValueError(
            f"covariance of x is singular (smallest eigenvalue {lam.min():.3g}); use epsilon > 0"
        )
    return (u / np.sqrt(lam + reg)) @ u.T


def _load_manifold(
    name: str, *, test_fraction: float, seed: int, num_points: int = 2000, noise: float = 0.05
) -> Dataset:
    x, _ = sample_manifold(name, num_points=num_points, noise=noise, seed=seed)
    n_train, _ = _split_sizes(num_points, test_fraction)
    return Dataset(
        name=name,
        x_train=x[:n_train],
        x_test=x[n_train:],
        y_train=None,
        y_test=None,
        value_range="real",
        description=f"synthetic {name}, {num_points} points, Gaussian noise std {noise}; raw",
    )


def _load_tfds(name: str, *, data_dir: str | None, max_examples: int | None) -> Dataset:
    tfds_name, splits, has_labels = _TFDS[name]
    try:
        import tensorflow_datasets as tfds  # optional: aecore imports without it
    except ImportError as e:
        raise ImportError(
            f"dataset {name!r} needs tensorflow-datasets: pip install 'aecore[tfds]', or pass "
            "a local .npz file"
        ) from e
    # array_record is the random-access format that data_source reads without TensorFlow.
    builder_kwargs = {"file_format": "array_record"}
    try:
        sources = tfds.data_source(
            tfds_name,
            split=list(splits),
            data_dir=data_dir,
            download=False,
            builder_kwargs=builder_kwargs,
        )
    except (KeyError, NotImplementedError, ValueError, OSError) as e:
        # Asked after the failure, not before: under tfds.testing.mock_data the builder
        # reports "not prepared" although data_source works.
        builder = tfds.builder(tfds_name, data_dir=data_dir, **builder_kwargs)
        if builder.is_prepared():
            raise
        root = data_dir or os.path.dirname(os.path.dirname(os.fspath(builder.data_dir)))
        raise FileNotFoundError(
            f"TFDS dataset {tfds_name!r} (for {name!r}) is not prepared in data_dir={root!r} "
            f"(looked for {builder.data_dir}); aecore never downloads. On a machine with "
            "internet, `pip install tensorflow tensorflow-datasets importlib_resources` and run "
            f"python -c \"import tensorflow_datasets as tfds; tfds.data_source('{tfds_name}', "
            f"data_dir='{root}', download=True, builder_kwargs={{'file_format': "
            f"'array_record'}})\" and copy the folder {tfds_name}/ it creates into {root}; "
            "or pass the path of a local .npz file (keys x, y) instead of the name."
        ) from e

    def read(source) -> tuple[np.ndarray, np.ndarray | None]:
        n = len(source) if max_examples is None else min(len(source), max_examples)
        # One item at a time: mocked data sources do not support slices.
        examples = [source[i] for i in range(n)]
        images = np.stack([np.asarray(ex["image"]) for ex in examples])
        if name == "cifar10_bw":
            x = (images.astype(np.float64) @ _LUMA / 255.0)[..., None]
        elif name == "binarized_mnist":
            x = images > 0
        else:
            x = images / 255.0
        y = np.array([ex["label"] for ex in examples], np.int32) if has_labels else None
        return x.astype(np.float32), y

    (x_train, y_train), (x_test, y_test) = (read(s) for s in sources)
    how = "pixels in {0, 1}" if name == "binarized_mnist" else "pixel/255 in [0, 1]"
    if name == "cifar10_bw":
        how = "BT.601 luma/255 in [0, 1]"
    return Dataset(
        name=name,
        x_train=x_train,
        x_test=x_test,
        y_train=y_train,
        y_test=y_test,
        value_range="unit",
        description=f"TFDS {tfds_name} splits {splits[0]}/{splits[1]} via data_source; {how}",
    )


# --------------------------------------------------------------------------------------------
# User files.


def _user_file(name: str | os.PathLike[str]) -> str:
    """Returns the path of a supported existing file or raises the error that explains why not."""
    path = os.fspath(name)
    suffix = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        raise ValueError(f"dataset path {path!r} is a directory, not a data file")
    if suffix in FILE_SUFFIXES or os.path.exists(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"dataset file {path!r} does not exist (or is not a file)")
        if suffix not in FILE_SUFFIXES:
            raise ValueError(
                f"unsupported dataset file {path!r}: the suffix must be one of "
                f"{', '.join(FILE_SUFFIXES)}"
            )
        return path
    raise ValueError(
        f"unknown dataset {path!r}; valid names: {', '.join(map(repr, DATASETS))}, "
        f"or a path to a {', '.join(FILE_SUFFIXES)} file"
    )


def _load_file(
    path: str, *, label_column: int | str | None, test_fraction: float, seed: int
) -> Dataset:
    suffix = os.path.splitext(path)[1].lower()
    base = os.path.basename(path)
    if label_column is not None and suffix != ".csv":
        raise ValueError(f"label_column applies to .csv files only, got it for {path!r}")
    if suffix == ".csv":
        x, y = _read_csv(path, label_column)
        arrays = {"x": x} if y is None else {"x": x, "y": y}
    elif suffix == ".npy":
        arrays = {"x": _np_load(path)}
    else:
        with _np_load(path) as npz:
            arrays = {key: npz[key] for key in npz.files}
    keys = set(arrays)
    if "x" in keys and keys <= {"x", "y"}:
        split_given = False
    elif (
        {"x_train", "x_test"} <= keys <= {"x_train", "x_test", "y_train", "y_test"}
        and len(keys & {"y_train", "y_test"}) != 1  # labels for both splits or for neither
    ):
        split_given = True
    else:
        raise ValueError(
            f"{path!r} holds arrays {sorted(keys)}; expected 'x' (and optionally 'y'), or "
            "'x_train' and 'x_test' (and optionally both 'y_train' and 'y_test')"
        )

    xs = {k: _as_inputs(f"{base}: {k}", arrays[k]) for k in arrays if k.startswith("x")}
    dtypes = {str(np.asarray(arrays[k]).dtype) for k in xs}
    if len(dtypes) > 1:
        raise ValueError(f"{path!r}: x_train and x_test have different dtypes {sorted(dtypes)}")
    uint8 = np.asarray(arrays["x_train" if split_given else "x"]).dtype == np.uint8
    ys = {
        k: _as_labels(f"{base}: {k}", arrays[k], len(xs["x" + k[1:]]))
        for k in arrays
        if k.startswith("y")
    }
    how = "uint8/255" if uint8 else "values as stored"
    if split_given:
        x_train, x_test = xs["x_train"], xs["x_test"]
        if x_train.shape[1:] != x_test.shape[1:]:
            raise ValueError(
                f"{path!r}: x_train examples have shape {x_train.shape[1:]} but x_test examples "
                f"{x_test.shape[1:]}; they must match"
            )
        value_range = _value_range(x_train, x_test)
        return Dataset(
            name=base,
            x_train=x_train,
            x_test=x_test,
            y_train=ys.get("y_train"),
            y_test=ys.get("y_test"),
            value_range=value_range,
            description=f"user file {path} with its own split; {how} ({value_range})",
        )
    x = xs["x"]
    value_range = _value_range(x)
    return _split_dataset(
        base,
        x,
        ys.get("y"),
        value_range=value_range,
        description=f"user file {path}; {how} ({value_range})",
        test_fraction=test_fraction,
        seed=seed,
    )


def load_array(path: str | os.PathLike[str]) -> np.ndarray:
    """The array of a .npy file, checked before it is read (see `_np_load`).

    Raises:
      ValueError: the path is not a readable .npy file of numbers (one line, naming it).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a .npy file")
    if not os.path.exists(path):
        broken = os.path.islink(path)
        why = "is a symbolic link to nothing (a loop or a missing target)" if broken else None
        raise ValueError(f"{path!r} {why or 'does not exist'}")
    return np.asarray(_np_load(path))


def _check_npy_header(f, size: int, what: str) -> None:
    """Refuses a .npy stream whose header claims more (or less) data than it holds."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(f)
    if dtype.hasobject:
        return  # np.load refuses it (allow_pickle=False)
    claimed = math.prod(shape) * dtype.itemsize
    held = size - f.tell()
    if claimed != held:
        raise ValueError(
            f"{what} is damaged: its header claims shape {tuple(shape)} of {dtype} "
            f"({claimed} bytes) but it holds {held} bytes of data"
        )


def _np_load(path: str):
    """np.load without pickles, after checking the file is not empty and that each array's
    header matches the bytes it holds (a damaged header must not allocate terabytes)."""
    suffix = os.path.splitext(path)[1].lower()
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path!r} is empty (0 bytes), not a NumPy {suffix} file")
    try:
        if suffix == ".npz":
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    with z.open(info) as f:
                        _check_npy_header(f, info.file_size, f"{path!r}: {info.filename}")
        else:
            with open(path, "rb") as f:
                _check_npy_header(f, os.path.getsize(path), repr(path))
        return np.load(path, allow_pickle=False)  # never unpickle code from a data file
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
        if str(e).startswith(repr(path)):
            raise
        raise ValueError(
            f"{path!r} is not a readable NumPy {suffix} file ({_checks.one_line(e, limit=160)})"
        ) from e


# Cells that mean "no value" in spreadsheets and pandas (compared in lower case).
_MISSING_CELLS = frozenset({"", "na", "n/a", "nan", "null", "none", "?", "-"})
# Delimiters other than the comma that CSV files are written with.
_OTHER_DELIMITERS = (";", "\t", "|", " ")


def _cell(cell: str) -> str:
    """A cell as an error message quotes it: at most 40 characters."""
    return repr(cell if len(cell) <= 40 else cell[:37] + "...")


def _read_csv(path: str, label_column: int | str | None) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: skip a BOM
            rows = [
                (i, row) for i, row in enumerate(csv.reader(f), 1) if any(c.strip() for c in row)
            ]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(
            f"{path!r} is not a UTF-8 CSV file ({_checks.one_line(e, limit=120)})"
        ) from e
    if not rows:
        raise ValueError(f"{path!r} is empty: no rows of numbers")
    if max(len(row) for _, row in rows) == 1:
        cell = rows[-1][1][0]
        found = [d for d in _OTHER_DELIMITERS if d in cell.strip() and not _is_number(cell)]
        if found:
            raise ValueError(
                f"{path!r}: line {rows[-1][0]} is one cell holding {found[0]!r}-separated "
                f"values; aecore reads comma-separated files (rewrite it with commas)"
            )
    header = None
    if not any(_is_number(c) for c in rows[0][1]):  # a header only when nothing is a number
        header = [c.strip() for c in rows[0][1]]
        rows = rows[1:]
        if not rows:
            raise ValueError(f"{path!r} is empty: a header row and no rows of numbers")
    width = len(header) if header is not None else len(rows[0][1])
    for i, row in rows:
        if len(row) != width:
            raise ValueError(f"{path!r}: line {i} has {len(row)} columns, expected {width}")
    if header is not None and width > 1 and header[0] in ("", "Unnamed: 0"):
        raise ValueError(
            f"{path!r}: column 1 has the blank header {header[0]!r} of a pandas row index, "
            "not a feature; write the file with to_csv(index=False), or name the column"
        )
    for i, row in rows:  # name the first bad cell (its line and column) before converting
        for j, cell in enumerate(row):
            if _is_number(cell) and cell.strip().lower() not in _MISSING_CELLS:
                continue
            column = f"column {j + 1}" + (f" ({_cell(header[j])})" if header else "")
            what = "is empty" if not cell.strip() else f"{_cell(cell)} is not a number"
            if cell.strip().lower() in _MISSING_CELLS - {""}:
                what = f"{_cell(cell)} is a missing value"
            raise ValueError(f"{path!r}: line {i}, {column}: {what}; every cell needs a number")
    values = np.array([row for _, row in rows], dtype=np.float64)
    n = values.shape[0]
    if header is None and width > 1 and n > 1 and np.array_equal(values[:, 0], np.arange(n)):
        raise ValueError(
            f"{path!r}: column 1 holds 0, 1, ..., {n - 1}, a row index, not a feature; write "
            "the file with to_csv(index=False), or give it a header naming that column"
        )
    if label_column is None:
        return values, None
    if isinstance(label_column, str):
        if header is None or label_column not in header:
            raise ValueError(
                f"label_column {label_column!r} is not a column name of {path!r}; "
                f"header: {header if header is not None else 'none (use an index)'}"
            )
        index = header.index(label_column)
    elif isinstance(label_column, int | np.integer) and -width <= label_column < width:
        index = int(label_column) % width
    else:
        raise ValueError(
            f"label_column must be a column name or an index in [{-width}, {width - 1}], "
            f"got {label_column!r}"
        )
    if width < 2:
        raise ValueError(f"{path!r} has a single column; with label_column no inputs remain")
    return np.delete(values, index, axis=1), values[:, index]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _as_inputs(what: str, x) -> np.ndarray:
    """Validated float32 inputs [N, *input_shape] with [N, H, W] given a channel axis."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
        raise ValueError(f"{what} must hold real numbers, got dtype {x.dtype}")
    if x.ndim not in (2, 3, 4):
        raise ValueError(
            f"{what} has rank {x.ndim} (shape {x.shape}); expected [N, features], [N, H, W] "
            "or [N, H, W, C]"
        )
    if x.size == 0:
        raise ValueError(f"{what} is empty (shape {x.shape})")
    out = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    # Checked after the cast: float64 values beyond float32's range become inf here.
    _checks.check_finite(what, out)
    return out[..., None] if out.ndim == 3 else out


def _as_labels(what: str, y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{what} has shape {y.shape}; expected one label per example, [{n}]")
    if not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
        raise ValueError(f"{what} must hold integer labels, got dtype {y.dtype}")
    _checks.check_finite(what, y)
    if not np.array_equal(y, np.round(y)):
        first = int(np.flatnonzero(y != np.round(y))[0])
        raise ValueError(f"{what} must hold integer labels; index {first} is {y[first].item()!r}")
    return y.astype(np.int32)


def _check_inputs(what: str, x: np.ndarray) -> None:
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty batch [N, *input_shape], got shape {x.shape}")
    _checks.check_finite(what, x)


def _value_range(*xs: np.ndarray) -> str:
    return "unit" if all(x.min() >= 0 and x.max() <= 1 for x in xs) else "real"


# --------------------------------------------------------------------------------------------
# Splits.


def _split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    n_test = int(round(test_fraction * n))
    if not 1 <= n_test <= n - 1:
        raise ValueError(
            f"test_fraction={test_fraction} of {n} examples leaves an empty train or test split "
            f"({n - n_test} / {n_test}); use more examples or a test_fraction nearer 0.5"
        )
    return n - n_test, n_test


def _split_dataset(
    name: str,
    x: np.ndarray,
    y: np.ndarray | None,
    *,
    value_range: str,
    description: str,
    test_fraction: float,
    seed: int,
) -> Dataset:
    n_train, _ = _split_sizes(len(x), test_fraction)
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:n_train], order[n_train:]
    return Dataset(
        name=name,
        x_train=x[train],
        x_test=x[test],
        y_train=None if y is None else y[train],
        y_test=None if y is None else y[test],
        value_range=value_range,
        description=f"{description}; random split {n_train}/{len(test)} (seed {seed})",
    )


def _cap(ds: Dataset, max_examples: int) -> Dataset:
    def head(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[:max_examples]

    return dataclasses.replace(
        ds,
        description=f"{ds.description}; first {max_examples} examples of each split kept",
        x_train=ds.x_train[:max_examples],
        x_test=ds.x_test[:max_examples],
        y_train=head(ds.y_train),
        y_test=head(ds.y_test),
    )
