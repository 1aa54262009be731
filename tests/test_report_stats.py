"""tinyrobust.stats: Wilson and Newcombe paired intervals against published values; per-image worst case."""

from __future__ import annotations

import pytest

from tinyrobust.stats import (
    accuracy_with_ci,
    format_ci,
    newcombe_paired,
    paired_counts,
    paired_difference,
    robust_flags,
    wilson,
)


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [
        (81, 263, 0.2553, 0.3662),  # Newcombe 1998 (single proportion), Table I example: 81/263
        (15, 148, 0.0624, 0.1605),  # same table: 15/148
        (0, 20, 0.0, 0.1611),  # same table: 0/20
        (1, 29, 0.0061, 0.1718),  # same table: 1/29
        (5, 10, 0.2366, 0.7634),  # symmetric case, by hand
    ],
)
def test_wilson_matches_published_values(k, n, lo, hi):
    a, b = wilson(k, n)
    assert a == pytest.approx(lo, abs=6e-5) and b == pytest.approx(hi, abs=6e-5)


def test_wilson_rejects_bad_counts():
    for k, n in ((3, 2), (-1, 5), (0, 0)):
        with pytest.raises(ValueError):
            wilson(k, n)


def test_newcombe_paired_matches_fagerland_book():
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017), ch. 8: Cavo et al. 2012,
    # table [[59, 6], [16, 80]]: Newcombe square-and-add estimate -0.0621, 95% CI -0.1186 to -0.0046
    d, lo, hi = newcombe_paired(59, 6, 16, 80)
    assert d == pytest.approx(-0.0621, abs=5e-5)
    assert lo == pytest.approx(-0.1186, abs=5e-5) and hi == pytest.approx(-0.0046, abs=5e-5)


def test_newcombe_paired_symmetry_and_bounds():
    d, lo, hi = newcombe_paired(10, 7, 2, 11)
    d2, lo2, hi2 = newcombe_paired(10, 2, 7, 11)  # swapping the two models mirrors the interval
    assert d == pytest.approx(-d2) and lo == pytest.approx(-hi2) and hi == pytest.approx(-lo2)
    assert lo < d < hi
    # identical outcomes: the difference is 0 and the interval is narrow but not empty
    d, lo, hi = newcombe_paired(30, 0, 0, 70)
    assert d == 0 and lo < 0 < hi and hi - lo < 0.08
    # all discordant one way: the interval stays inside [-1, 1]
    d, lo, hi = newcombe_paired(0, 20, 0, 0)
    assert d == 1 and -1 <= lo < 1 and hi == pytest.approx(1)


def test_paired_interval_narrower_than_independent_when_outcomes_agree():
    """Paired models that agree on most images: the paired interval is narrower than an unpaired one."""
    a = [True] * 40 + [False] * 55 + [True] * 5
    b = [True] * 40 + [False] * 55 + [False] * 5
    res = paired_difference(a, b)
    assert res["delta"] == pytest.approx(0.05) and res["n"] == 100
    (la, ua), (lb, ub) = wilson(45, 100), wilson(40, 100)
    unpaired = ((ua - 0.45) ** 2 + (0.40 - lb) ** 2) ** 0.5 + ((0.45 - la) ** 2 + (ub - 0.40) ** 2) ** 0.5
    assert res["ci95"][1] - res["ci95"][0] < 0.6 * unpaired
    assert paired_counts(a, b) == (40, 5, 0, 55)
    with pytest.raises(ValueError, match="same images"):
        paired_counts(a, b[:-1])


def test_robust_flags_worst_case_over_a_set():
    clean = "11110"
    pgd = "1011" + "0"  # image 1 broken by pgd; image 4 clean-wrong
    square = "1.01" + "0"  # image 1 not tried (broken earlier); image 2 broken by square
    flags, undetermined = robust_flags(clean, [pgd, square])
    assert flags == [True, False, False, True, False] and undetermined == 0
    # square alone: image 1 was never tried by it -> undetermined, counted not robust
    flags, undetermined = robust_flags(clean, [square])
    assert flags == [True, False, False, True, False] and undetermined == 1
    assert robust_flags(clean, [])[0] == [True, True, True, True, False]  # no attack: clean accuracy


def test_accuracy_with_ci_and_format():
    acc = accuracy_with_ci([True] * 43 + [False] * 57)
    assert acc["robust_accuracy"] == 0.43 and acc["n"] == 100 and acc["ci95"][0] < 0.43 < acc["ci95"][1]
    assert format_ci(acc["robust_accuracy"], acc["ci95"], 100) == "43.0 [33.7, 52.8] n=100"
    assert format_ci(None, None) == "n/a"
