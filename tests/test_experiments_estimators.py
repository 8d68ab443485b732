"""Quick mode of exp_estimators on offline digits: every part runs, its records are written and
the claims that hold at that size are checked (the same checks as the full run)."""

from __future__ import annotations

import json

from experiments import exp_estimators


def test_estimators(tmp_path):
    results = exp_estimators.main(["--quick", "--data", "digits", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert set(on_disk) == set(results)
    assert all(c["passed"] for c in results["checks"])
    conv = results["same_budget"]["conv"]
    assert {"exact", "hutchinson/1"} <= set(conv["runs"])
    assert all(len(r["steps"]) == 2 for r in conv["runs"].values())
    assert conv["verdict_jacobian_norm_exact_below_hutchinson1"]["verdict"]
    spread = results["caeh"]["gradient_relative_variance_over_keys"]
    assert spread["expected"] < 1e-10 < spread["monte_carlo"]
    assert (tmp_path / "penalty_error_vs_cost.png").stat().st_size > 1000
