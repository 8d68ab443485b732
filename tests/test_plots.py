"""Each plotting function writes a real PNG; aecore.plots does not import matplotlib eagerly."""

import subprocess
import sys

import numpy as np
import pytest

from aecore import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, returned):
    assert str(returned) == str(path)
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_SIGNATURE


def test_import_does_not_load_matplotlib():
    code = "import sys, aecore.plots, aecore.evaluate; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("shape", [(12, 8, 8, 1), (12, 8, 8, 3), (12, 8, 8), (12, 20)])
def test_save_reconstructions(tmp_path, shape):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=shape)
    path = tmp_path / "rec.png"
    _assert_png(path, plots.save_reconstructions(path, x, 0.9 * x, n=5))
    with pytest.raises(ValueError, match="one shape"):
        plots.save_reconstructions(path, x, x[:3])


def test_save_filters(tmp_path):
    kernel = np.random.default_rng(0).normal(size=(64, 10))  # [d, k]
    path = tmp_path / "sub" / "filters.png"  # parent directory is created
    _assert_png(path, plots.save_filters(path, kernel, image_shape=(8, 8, 1)))
    path_rgb = tmp_path / "filters_rgb.png"
    kernel_rgb = np.random.default_rng(1).normal(size=(48, 4))
    _assert_png(path_rgb, plots.save_filters(path_rgb, kernel_rgb, image_shape=(4, 4, 3), n=3))
    with pytest.raises(ValueError, match="image_shape"):
        plots.save_filters(path, kernel, image_shape=(7, 7))


def test_save_loss_curves(tmp_path):
    history = [
        {"step": s, "loss": 1.0 / s, "reconstruction": 0.5 / s, "grad_norm": 2.0, "finite": True}
        for s in range(10, 110, 10)
    ]
    path = tmp_path / "loss.png"
    _assert_png(path, plots.save_loss_curves(path, history))
    with pytest.raises(ValueError, match="empty"):
        plots.save_loss_curves(path, [])


def test_save_spectrum(tmp_path):
    sv = -np.sort(-np.random.default_rng(0).exponential(size=(20, 6)), axis=1)
    path = tmp_path / "spectrum.png"
    _assert_png(path, plots.save_spectrum(path, sv))
    _assert_png(path, plots.save_spectrum(path, sv[0]))


def test_save_contraction_curves(tmp_path):
    radii = np.logspace(-2, 1, 8)
    curves = {
        "cae": {"radii": radii, "ratio": 1.0 / (1.0 + radii)},
        "dae": {"radii": radii, "ratio": np.ones(8)},
    }
    path = tmp_path / "contraction.png"
    _assert_png(path, plots.save_contraction_curves(path, curves))
    with pytest.raises(ValueError, match="radii"):
        plots.save_contraction_curves(path, {"bad": {"ratio": [1.0]}})


def test_save_vector_field(tmp_path):
    t = np.linspace(0, 2 * np.pi, 50)
    x = np.stack([np.cos(t), np.sin(t)], axis=1) * 1.2
    path = tmp_path / "field.png"
    _assert_png(path, plots.save_vector_field(path, x, x / 1.2))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plots.save_vector_field(path, np.zeros((5, 3)), np.zeros((5, 3)))


def test_save_codes_2d(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(100, 3))
    path = tmp_path / "codes.png"
    _assert_png(path, plots.save_codes_2d(path, codes))
    _assert_png(path, plots.save_codes_2d(path, codes, labels=rng.integers(0, 10, 100)))
    with pytest.raises(ValueError, match="labels"):
        plots.save_codes_2d(path, codes, labels=np.zeros(3))
