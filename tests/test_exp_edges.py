"""Quick mode of exp_edges (natural-patch DAE edge detectors): every piece runs, the numbers are
well-formed, the verdict is derived from the per-seed numbers; and the chunked training used
for learning curves is the same run as one `fit` call."""

from __future__ import annotations

import json

import numpy as np

from aecore import Objective
from experiments import exp_edges


def test_quick_run_writes_results_figures_and_a_derived_verdict(tmp_path):
    r = exp_edges.main(["--quick", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "metrics.json").read_text()).keys() == r.keys()
    for png in ("edges_claim.png", "learning_curves.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert set(r["per_seed"]) == {"dae", "ae_wd", "pca"}
    assert len(r["seeds"]) == 2 and all(len(v) == 2 for v in r["per_seed"].values())
    for rows in r["per_seed"].values():
        for row in rows:
            for metric in exp_edges.METRICS:
                assert 0 <= row[metric] <= 1
    # The verdict follows from the pair statuses, which follow from the per-seed numbers.
    pairs = r["verdicts"]["localized_gabor_fraction"]
    for pair, v in pairs.items():
        other = pair.split(">")[1]
        dae = np.array([row["localized_gabor_fraction"] for row in r["per_seed"]["dae"]])
        base = np.array([row["localized_gabor_fraction"] for row in r["per_seed"][other]])
        assert v["pairs"][0]["mean_diff"] == np.mean(base - dae)  # negated: lower is better
    assert r["verdict"] in ("reproduced", "partly reproduced", "not reproduced")
    (check,) = r["checks"]  # quick: the DAE's fraction above PCA's (paired tests: default run)
    assert check["name"] == "quick_dae_minus_pca_localized_gabor_fraction" and check["passed"]
    d = r["diagnosis"][0]
    assert d["curve"]["step"][-1] == r["protocol"]["steps"]
    assert np.isfinite(d["curve"]["heldout_loss"]).all()


def test_chunked_training_equals_one_run():
    x_train, x_test, _ = exp_edges.patches(num_patches=600, seed=0)
    obj = Objective(loss="squared_error", corruption="gaussian", corruption_level=0.5)
    kwargs = dict(objective=obj, steps=20, learning_rate=1e-2, seed=0)
    one, _ = exp_edges.train_tied(x_train, x_test, points=1, **kwargs)
    chunked, c = exp_edges.train_tied(x_train, x_test, points=2, **kwargs)
    np.testing.assert_allclose(exp_edges.kernel_of(one), exp_edges.kernel_of(chunked), atol=1e-6)
    assert c["step"] == [10, 20] and len(c["heldout_loss"]) == 2
