"""Quick modes of the PCA, overcomplete, decoder-loss, weight-decay/tied and contractive
experiments, run in-process on offline digits, with the claims each one makes; and run_all's
discovery of every experiment module.
"""

from __future__ import annotations

import json
import sys

import pytest

from experiments import (
    common,
    exp_contractive,
    exp_decoder_loss,
    exp_overcomplete,
    exp_pca,
    exp_weight_decay_tied,
    run_all,
)


def _run(module, tmp_path, keys, pngs):
    results = module.main(["--quick", "--data", "digits", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert set(on_disk) == set(results)
    assert set(keys) <= set(on_disk)
    for name in pngs:
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 1000, name
    return results


def test_run_all_discovers_every_experiment():
    names = run_all.discover()
    for name in ("pca", "overcomplete", "decoder_loss", "weight_decay_tied", "contractive"):
        assert name in names
    assert "common" not in names and "run_all" not in names


def test_a_failed_check_fails_the_experiment_and_run_all(tmp_path, monkeypatch, capsys):
    import argparse
    import types

    def run(args):
        s = common.setup("fake", args)
        checks = [
            common.check("holds", 1.0, "<", 2.0),
            common.check("claim", 0.83, ">", 0.9, why="the claim"),
        ]
        return common.finish("fake", s, args, {"value": 1}, checks=checks)

    fake = types.ModuleType("experiments.exp_fake")
    fake.main = common.main_for(run, "A fake experiment.")
    monkeypatch.setitem(sys.modules, "experiments.exp_fake", fake)
    monkeypatch.setattr(run_all, "discover", lambda: ["fake"])
    assert run_all.main(["--quick", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "claim = 0.83 (expected > 0.9 (the claim))" in out
    records = json.loads((tmp_path / "fake" / "metrics.json").read_text())["checks"]
    assert records == [
        {"name": "holds", "expected": "< 2", "measured": 1.0, "passed": True},
        {"name": "claim", "expected": "> 0.9 (the claim)", "measured": 0.83, "passed": False},
    ]
    args = argparse.Namespace(quick=True, out=str(tmp_path), data="digits", data_dir=None, seed=0)
    with pytest.raises(ValueError, match="states no check"):
        common.finish("fake", common.setup("fake", args), args, {}, checks=[])


def test_pca(tmp_path):
    r = _run(
        exp_pca,
        tmp_path,
        ["linear", "nonlinear", "checks"],
        ["linear_ae_vs_pca.png", "spiral_pca_vs_ae.png"],
    )
    lin = r["linear"]
    # Same bound as the default run: the linear AE spans PCA's subspace.
    assert lin["max_angle_rad"] < 1e-2
    # Summed training error equals the discarded eigenvalues (7e-7 in the default run, 6e-8 in
    # the quick run, both with a cosine-decayed step).
    assert lin["relative_difference"] < 1e-2
    assert r["nonlinear"]["ae_test_error"] < 0.8 * r["nonlinear"]["pca_test_error"]


def test_overcomplete(tmp_path):
    r = _run(exp_overcomplete, tmp_path, ["variants", "checks"], ["overcomplete.png"])
    v = r["variants"]
    # The unregularized copier: training error a few % of the data variance at most, and a
    # noisy input comes out nearly as noisy as it went in (1.04 in the default run; 500 quick
    # steps leave ~0.83, still far above the regularized variants' 0.3-0.5).
    assert v["plain"]["train_error"] < 0.05 * r["data_variance_sum"]
    assert v["plain"]["noise_ratio"] > 0.75
    for name in ("weight decay", "denoising", "contractive"):
        assert v[name]["noise_ratio"] < v["plain"]["noise_ratio"], name


def test_decoder_loss(tmp_path):
    r = _run(exp_decoder_loss, tmp_path, ["settings", "checks"], ["decoder_loss.png"])
    s = r["settings"]
    assert s["real: sigmoid + SE"]["test_squared_error"] >= r["real_test_unit_interval_floor"]
    assert (
        s["real: sigmoid + SE"]["test_squared_error"] > s["real: linear + SE"]["test_squared_error"]
    )
    assert s["real: sigmoid + SE"]["fraction_outputs_outside_unit_interval"] == 0.0
    assert s["real: linear + CE"]["eager_check"].startswith("ValueError")
    # fit rejects the targets before any step, naming the allowed range.
    assert s["real: linear + CE"]["status"].startswith("rejected: ValueError")
    assert "[0, 1]" in s["real: linear + CE"]["status"]
    assert "min_train_loss" not in s["real: linear + CE"]
    assert common.passed(r)["linear_CE_on_real_rejected_before_training"]
    assert s["binary: sigmoid + CE"]["eager_check"] == "accepted"


def test_weight_decay_tied(tmp_path):
    r = _run(
        exp_weight_decay_tied,
        tmp_path,
        ["variants", "checks"],
        ["weight_decay_tied.png", "filters_plain.png", "filters_wd_1e-2.png", "filters_tied.png"],
    )
    assert common.passed(r)["encoder_norm_decreases_with_weight_decay"]
    v = r["variants"]
    assert v["tied"]["encoder_weight_norm"] == pytest.approx(v["tied"]["decoder_weight_norm"])
    assert v["wd 1e-2"]["test_error"] > v["plain"]["test_error"]


def test_contractive(tmp_path):
    r = _run(
        exp_contractive,
        tmp_path,
        ["part_a_2d", "part_b_contraction", "part_c_closed_form_vs_exact", "checks"],
        ["cae_2d.png", "contraction.png", "spectrum_CAE.png"],
    )
    a = r["part_a_2d"]
    assert a["mean_abs_cos_v1_u1"] > 0.9
    assert a["singular_value_ratio_s2_over_s1"] < 0.5
    m = r["part_b_contraction"]["models"]
    for name in ("CAE", "CAE+H"):
        assert m[name]["mean_jacobian_frobenius"] < m["AE"]["mean_jacobian_frobenius"]
    c = r["part_c_closed_form_vs_exact"]
    assert c["max_abs_param_diff"] < 1e-5 * max(1.0, c["max_abs_param"])
