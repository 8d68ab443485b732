"""Statistics for comparing methods over seeds: mean ± standard error, paired tests, and the
verdict on a published ordering (reproduced / partly / not) derived from those numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

TESTS: tuple[str, ...] = ("t", "wilcoxon", "sign")
VERDICTS: tuple[str, ...] = ("reproduced", "partly reproduced", "not reproduced")


def _as_samples(name: str, x, *, min_n: int = 2) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.shape[0] < min_n:
        raise ValueError(f"{name} must be a 1-D array of >= {min_n} values, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds NaN or inf: {a.tolist()}")
    return a


def mean_se(x: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean, std(ddof=1)/√n, of values x [n], n >= 2."""
    a = _as_samples("x", x)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a)))


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """A one-sided paired comparison of a and b (same seeds), alternative mean(a − b) < 0.

    Attributes:
      mean_diff: mean of d = a − b.
      se_diff: standard error of that mean.
      n: number of pairs.
      p_less: one-sided p-value of the chosen test for "a < b".
      p_greater: one-sided p-value for "a > b" (the reversed ordering).
      test: "t" (paired t-test), "wilcoxon" (signed-rank, exact for n <= 25 without ties)
        or "sign" (binomial on the signs, ties dropped).
    """

    mean_diff: float
    se_diff: float
    n: int
    p_less: float
    p_greater: float
    test: str


def paired_test(a, b, *, test: str = "t") -> PairedTest:
    """Paired one-sided tests of a < b on matched samples (e.g. one value per seed).

    Args:
      a: values of the method expected smaller [n].
      b: values of the other method on the same seeds [n].
      test: one of `TESTS`. With n = 5 the smallest possible one-sided p of the Wilcoxon and
        sign tests is 1/32 ≈ 0.031, so they can only support, never sharpen, the t-test there.

    Returns:
      `PairedTest`.

    Raises:
      ValueError: arrays of different lengths, fewer than 2 pairs, NaN/inf, unknown test.
    """
    from scipy import stats as sps

    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    a, b = _as_samples("a", a), _as_samples("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired samples of one length, got {len(a)} and {len(b)}")
    d = a - b
    n = len(d)
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))
    if test == "t":
        if se == 0.0:  # every pair differs by the same amount: the sign of it decides
            p_less = 0.0 if mean < 0 else 1.0
            p_greater = 0.0 if mean > 0 else 1.0
        else:
            t = mean / se
            p_less, p_greater = float(sps.t.cdf(t, n - 1)), float(sps.t.sf(t, n - 1))
    elif test == "wilcoxon":
        if np.all(d == 0):
            p_less = p_greater = 1.0
        else:
            p_less = float(sps.wilcoxon(d, alternative="less", zero_method="wilcox").pvalue)
            p_greater = float(sps.wilcoxon(d, alternative="greater", zero_method="wilcox").pvalue)
    else:
        neg, pos = int(np.sum(d < 0)), int(np.sum(d > 0))
        m = neg + pos
        # P(X >= k) for X ~ Binomial(m, 1/2); no pairs left after dropping ties: no evidence.
        p_less = float(sps.binom.sf(neg - 1, m, 0.5)) if m else 1.0
        p_greater = float(sps.binom.sf(pos - 1, m, 0.5)) if m else 1.0
    return PairedTest(mean, se, n, p_less, p_greater, test)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError(f"p_values must be a 1-D list of values in [0, 1], got {p.tolist()}")
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def ordering_verdict(
    scores: Mapping[str, Sequence[float]],
    order: Sequence[str],
    *,
    alpha: float = 0.05,
    test: str = "t",
) -> dict:
    """Checks a published ordering order[0] < order[1] < ... on paired scores (lower first).

    Each adjacent pair gets a one-sided paired test; the p-values are Holm-adjusted over the
    pairs. A pair is "confirmed" when its adjusted p for a < b is below `alpha`, "reversed" when
    the adjusted p for a > b is, else "unresolved". The verdict follows from the pairs only:
    "reproduced" when every pair is confirmed, "not reproduced" when any is reversed or none
    is confirmed, otherwise "partly reproduced".

    Args:
      scores: method name -> values [n] on the same n seeds (e.g. test errors).
      order: method names in the published order, smallest expected value first (>= 2).
      alpha: family-wise significance level in (0, 1).
      test: one of `TESTS`.

    Returns:
      {"verdict", "alpha", "test", "summary": {name: {"mean", "se", "n"}},
        "pairs": [{"a", "b", "mean_diff", "se_diff", "p_less", "p_greater", "p_less_holm",
        "p_greater_holm", "status"}]}.

    Raises:
      ValueError: a name of `order` missing from `scores`, repeated names, bad alpha, or
        scores of different lengths.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    order = list(order)
    if len(order) < 2 or len(set(order)) != len(order):
        raise ValueError(f"order must name >= 2 distinct methods, got {order}")
    missing = [m for m in order if m not in scores]
    if missing:
        raise ValueError(f"order names {missing} that scores lacks (has {sorted(scores)})")
    lengths = {m: len(np.asarray(scores[m])) for m in order}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"scores must have one value per seed for every method, got {lengths}")
    adjacent = list(zip(order[:-1], order[1:], strict=True))
    tests = [paired_test(scores[a], scores[b], test=test) for a, b in adjacent]
    less = holm([t.p_less for t in tests])
    greater = holm([t.p_greater for t in tests])
    pairs = []
    for (a, b), t, pl, pg in zip(adjacent, tests, less, greater, strict=True):
        status = "confirmed" if pl < alpha else "reversed" if pg < alpha else "unresolved"
        pairs.append(
            {
                "a": a,
                "b": b,
                "mean_diff": t.mean_diff,
                "se_diff": t.se_diff,
                "p_less": t.p_less,
                "p_greater": t.p_greater,
                "p_less_holm": pl,
                "p_greater_holm": pg,
                "status": status,
            }
        )
    statuses = [p["status"] for p in pairs]
    if all(s == "confirmed" for s in statuses):
        verdict = VERDICTS[0]
    elif "reversed" in statuses or "confirmed" not in statuses:
        verdict = VERDICTS[2]
    else:
        verdict = VERDICTS[1]
    summary = {}
    for m in order:
        mean, se = mean_se(scores[m])
        summary[m] = {"mean": mean, "se": se, "n": lengths[m]}
    return {"verdict": verdict, "alpha": alpha, "test": test, "summary": summary, "pairs": pairs}
