"""exp_classifier's multi-seed statistics: verdicts derived from per-seed tables (synthetic
tables here: the real runs take minutes per seed)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from experiments import exp_classifier


def _tables(errors: dict[str, float], n: int = 5, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        shift = rng.normal(0, 0.005)  # one split is harder for every method alike
        out.append(
            {
                k: {
                    "finetuned_error": e + shift + rng.normal(0, 1e-4),
                    "probe_error": 0.05 + shift + rng.normal(0, 1e-2),
                }
                for k, e in errors.items()
            }
        )
    return out


def test_seed_statistics_reproduce_a_clear_ordering_and_not_a_flat_one():
    published = {"cae": 0.0114, "dae_gaussian": 0.0118, "ae_weight_decay": 0.0168, "ae": 0.0178}
    s = exp_classifier.seed_statistics(_tables({**published, "raw_pixels": 0.03}))
    fine = s["finetuned_error"]
    assert fine["published_ordering"]["verdict"] == "reproduced"
    mean, se = fine["mean_se"]["cae"]
    assert mean == pytest.approx(0.0114, abs=0.006) and 0 < se < 0.01
    # Probe errors carry no method effect: no adjacent pair can be confirmed.
    assert s["probe_error"]["published_ordering"]["verdict"] == "not reproduced"


def test_bad_seed_count_is_named():
    args = argparse.Namespace(quick=True, out=None, data="digits", data_dir=None, seed=0, seeds=0)
    with pytest.raises(ValueError, match="--seeds must be an integer >= 1, got 0"):
        exp_classifier.run(args)


def test_runs_on_tfds_mnist_under_mock_data(tmp_path):
    """The same experiment on full MNIST when the user has it (`--data mnist`), here mocked."""
    tfds = pytest.importorskip("tensorflow_datasets")
    # One seed: this checks the TFDS data path; the seeds' statistics are test_experiments_b's.
    argv = ["--quick", "--seeds", "1", "--data", "mnist", "--data-dir", str(tmp_path / "tfds")]
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=100):
        r = exp_classifier.main([*argv, "--out", str(tmp_path / "out")])
    assert r["data"].startswith("TFDS mnist")
    assert set(r["errors"]) == set(exp_classifier.FEATURE_SETS)
    assert all(0 <= row["finetuned_error"] <= 1 for row in r["errors"].values())
