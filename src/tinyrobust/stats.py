"""Statistics of the report: intervals for robust accuracies and for paired differences between models.

Robust accuracy is a binomial proportion over n test images, so every figure carries a Wilson 95%
score interval (good coverage at small n and near 0 or 1, unlike the Wald interval). Two models are
compared on the *same* images, so their difference is a difference of paired proportions; treating
the two accuracies as independent would give intervals too wide (or too narrow) depending on how
correlated the per-image outcomes are. We use Newcombe's paired score interval (Newcombe 1998,
"Improved confidence intervals for the difference between binomial proportions based on paired
data", Stat Med 17:2635, method 10): the square-and-add of the two Wilson intervals with the
correlation phi (corrected towards 0 as in the paper). It is closed form, needs no seed, and has
near-nominal coverage at the n we use (tested against Fagerland, Lydersen & Laake's values).

Per-image outcome strings (robustness.json schema 2): one character per attacked image,
'1' survived the attack, '0' broken by it (or the image was already misclassified clean),
'.' not attacked by it because an earlier attack of the cascade had already broken it.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple

from .errors import TinyRobustError

Z95 = 1.959963984540054  # two-sided 95% standard normal quantile


def wilson(k: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """Wilson score interval (lower, upper) for k successes out of n (95% by default)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson needs 0 <= k <= n and n > 0; got k={k}, n={n}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_counts(a: Sequence[bool], b: Sequence[bool]) -> Tuple[int, int, int, int]:
    """(both robust, only a, only b, neither) over the same images."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes must cover the same images; got {len(a)} and {len(b)}")
    n11 = sum(1 for x, y in zip(a, b) if x and y)
    n10 = sum(1 for x, y in zip(a, b) if x and not y)
    n01 = sum(1 for x, y in zip(a, b) if y and not x)
    return n11, n10, n01, len(a) - n11 - n10 - n01


def newcombe_paired(n11: int, n10: int, n01: int, n00: int, z: float = Z95) -> Tuple[float, float, float]:
    """Difference p_a - p_b of paired proportions and its Newcombe (1998, method 10) interval.

    ``n11`` both succeed, ``n10`` only a, ``n01`` only b, ``n00`` neither. Returns (delta, lower, upper)."""
    n = n11 + n10 + n01 + n00
    if n <= 0:
        raise ValueError("newcombe_paired needs at least one pair")
    pa, pb = (n11 + n10) / n, (n11 + n01) / n
    la, ua = wilson(n11 + n10, n, z)
    lb, ub = wilson(n11 + n01, n, z)
    margins = ((n11 + n10), (n01 + n00), (n11 + n01), (n10 + n00))
    if 0 in margins:
        phi = 0.0
    else:
        det = n11 * n00 - n10 * n01
        corrected = det - n / 2 if det > n / 2 else (0.0 if det >= 0 else det)
        phi = corrected / math.sqrt(math.prod(margins))
    d = pa - pb
    lower = d - math.sqrt(max(0.0, (pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2))
    upper = d + math.sqrt(max(0.0, (pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2))
    return d, max(-1.0, lower), min(1.0, upper)


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Robust accuracy of a minus b on the same images, with its paired 95% interval and n."""
    d, lo, hi = newcombe_paired(*paired_counts(a, b))
    return {"delta": d, "ci95": [lo, hi], "n": len(a), "method": "Newcombe 1998 paired score (method 10)"}


def robust_flags(clean_correct: str, strings: Iterable[str]) -> Tuple[List[bool], int]:
    """Per-image worst case over a set of attacks from their outcome strings.

    An image is robust when it was classified correctly and no attack of the set broke it ('0').
    Returns (robust per image, number of undetermined images): an image that no attack of the set
    broke but that some attack of the set did not try ('.', broken earlier by an attack outside the
    set) is undetermined, counted as not robust, and reported so the caller can refuse or show a
    bound. With a set that is a prefix of the cascade there are none."""
    strings = list(strings)
    n = len(clean_correct)
    for s in strings:
        if len(s) != n:
            raise TinyRobustError(f"outcome strings of different lengths ({len(s)} vs {n} images)")
    robust, undetermined = [], 0
    for i in range(n):
        chars = [s[i] for s in strings]
        ok = clean_correct[i] == "1" and "0" not in chars
        if ok and "." in chars:
            undetermined += 1
            ok = False
        robust.append(ok)
    return robust, undetermined


def accuracy_with_ci(flags: Sequence[bool]) -> dict:
    """{robust_accuracy, ci95, n, k} of per-image robust flags."""
    n, k = len(flags), sum(bool(f) for f in flags)
    if n == 0:
        return {"robust_accuracy": None, "ci95": None, "n": 0, "k": 0}
    return {"robust_accuracy": k / n, "ci95": list(wilson(k, n)), "n": n, "k": k}


def format_ci(acc: Optional[float], ci: Optional[Sequence[float]], n: Optional[int] = None) -> str:
    """``43.0 [36.3, 50.0]`` (percent), with ``n=`` when given."""
    if acc is None:
        return "n/a"
    s = f"{100 * acc:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else f"{100 * acc:.1f}"
    return s + (f" n={n}" if n is not None else "")
