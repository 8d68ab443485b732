"""aecore.stats against independent computations: scipy's own tests, exact enumeration of the
sign-flip distribution, closed forms, and the false-positive rate under the null."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from aecore import stats


def test_mean_se_matches_the_formula():
    x = [1.0, 2.0, 4.0, 7.0]
    mean, se = stats.mean_se(x)
    assert mean == pytest.approx(3.5)
    var = sum((v - 3.5) ** 2 for v in x) / 3
    assert se == pytest.approx(math.sqrt(var / 4))


def test_paired_t_matches_scipy_ttest_rel():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 7), rng.normal(0.5, 1, 7)
    r = stats.paired_test(a, b, test="t")
    ref = sps.ttest_rel(a, b, alternative="less")
    assert r.p_less == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.p_greater == pytest.approx(sps.ttest_rel(a, b, alternative="greater").pvalue)
    assert r.mean_diff == pytest.approx(np.mean(a - b))
    assert r.n == 7


def _exact_signed_rank_p_less(d: np.ndarray) -> float:
    """P(W+ <= observed W+) over all 2^n sign flips (no ties, no zeros): the exact null."""
    ranks = sps.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    count = 0
    for signs in itertools.product((0, 1), repeat=len(d)):
        count += ranks[np.array(signs, bool)].sum() <= observed
    return count / 2 ** len(d)


def test_wilcoxon_matches_exact_enumeration():
    d = np.array([-0.9, -0.3, 0.2, -1.4, -0.05, -0.6])
    r = stats.paired_test(d, np.zeros_like(d), test="wilcoxon")
    assert r.p_less == pytest.approx(_exact_signed_rank_p_less(d))


def test_sign_test_matches_binomtest_and_drops_ties():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    b = np.array([2.0, 3.0, 4.0, 5.0, 6.0, 5.0, 7.0])  # 5 below, 1 above, 1 tie
    r = stats.paired_test(a, b, test="sign")
    assert r.p_less == pytest.approx(sps.binomtest(5, 6, 0.5, alternative="greater").pvalue)
    assert r.p_greater == pytest.approx(sps.binomtest(1, 6, 0.5, alternative="greater").pvalue)


def test_constant_difference_is_decided_by_its_sign():
    r = stats.paired_test([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert (r.p_less, r.p_greater) == (0.0, 1.0)


def test_t_test_false_positive_rate_under_the_null_is_alpha():
    rng = np.random.default_rng(1)
    p = [stats.paired_test(*rng.normal(size=(2, 5))).p_less for _ in range(2000)]
    rate = np.mean(np.array(p) < 0.05)
    assert abs(rate - 0.05) < 0.015  # binomial sd at n = 2000 is 0.005


def test_holm_matches_the_step_down_definition():
    p = [0.01, 0.04, 0.03]
    # sorted: 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04) = 0.06
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06])


def _scores(means, *, n=6, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 0.2, n)  # a seed effect common to all methods: pairing removes it
    return {k: m + shared + rng.normal(0, noise, n) for k, m in means.items()}


def test_ordering_verdict_reproduced_partly_not():
    order = ["cae", "dae", "ae"]
    clear = stats.ordering_verdict(_scores({"cae": 1.0, "dae": 1.1, "ae": 1.2}), order)
    assert clear["verdict"] == "reproduced"
    assert [p["status"] for p in clear["pairs"]] == ["confirmed", "confirmed"]
    tie = stats.ordering_verdict(_scores({"cae": 1.0, "dae": 1.0, "ae": 1.2}, noise=0.05), order)
    assert tie["verdict"] == "partly reproduced"
    assert tie["pairs"][0]["status"] == "unresolved"
    flipped = stats.ordering_verdict(_scores({"cae": 1.2, "dae": 1.1, "ae": 1.3}), order)
    assert flipped["verdict"] == "not reproduced"
    assert flipped["pairs"][0]["status"] == "reversed"
    assert clear["summary"]["dae"]["n"] == 6


def test_pairing_matters_a_shared_seed_effect_does_not_hide_a_small_gap():
    s = _scores({"a": 1.0, "b": 1.02}, n=8, noise=0.002)
    assert stats.ordering_verdict(s, ["a", "b"])["verdict"] == "reproduced"
    # Unpaired, the seed effect (sd 0.2) swamps the 0.02 gap.
    assert sps.ttest_ind(s["a"], s["b"], alternative="less").pvalue > 0.05


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: stats.mean_se([1.0]), r"x must be a 1-D array of >= 2 values, got shape \(1,\)"),
        (lambda: stats.paired_test([1, 2], [1, 2, 3]), "one length, got 2 and 3"),
        (lambda: stats.paired_test([1, np.nan], [1, 2]), r"a holds NaN or inf: \[1.0, nan\]"),
        (lambda: stats.paired_test([1, 2], [1, 2], test="z"), "'z'"),
        (lambda: stats.ordering_verdict({"a": [1, 2]}, ["a", "b"]), r"\['b'\]"),
        (lambda: stats.ordering_verdict({"a": [1, 2]}, ["a", "a"]), "distinct"),
        (lambda: stats.ordering_verdict({"a": [1, 2], "b": [1, 2, 3]}, ["a", "b"]), "'b': 3"),
        (lambda: stats.ordering_verdict({"a": [1, 2], "b": [1, 2]}, ["a", "b"], alpha=2), "2"),
    ],
)
def test_bad_input_names_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
