"""Gradient-masking checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness", sec. 5).

Quantized and Jacobian-regularized networks can look robust because their gradients are
useless (zero through rounding, saturated softmax), not because they are. Each check below is
a symptom of that; any failure means the white-box numbers are not trustworthy:

1. ``monotone_in_eps``: robust accuracy must not rise with eps (per attack).
2. ``large_eps_breaks_model``: PGD at a huge budget (default 64/255) must leave <= 5 %
   accuracy. Raise ``masking.large_eps`` for datasets where 64/255 is legitimately survivable
   (e.g. binarised MNIST digits).
3. ``white_box_beats_black_box``: the best white-box attack must do at least as well as the
   best black-box one at every eps.
4. ``more_steps_not_worse``: PGD with 100 steps must do at least as well as with 20 (at 8/255).

Comparisons allow a tolerance of max(2 images, 1 % of n) for run-to-run noise.
"""

from __future__ import annotations

import math

PROBE_DEFAULTS = {"large_eps": 64.0, "max_accuracy_large_eps": 0.05, "steps_eps": 8.0,
                  "few_steps": 20, "many_steps": 100}


def tolerance(n: int) -> float:
    return max(2, math.ceil(0.01 * n)) / n


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _acc_by_eps(entry: dict) -> list[tuple[float, float]]:
    return sorted((float(k), v["robust_accuracy"]) for k, v in entry["results"].items())


def _monotone(results: dict, tol: float) -> dict:
    rises, checked = [], 0
    for name, entry in results["attacks"].items():
        series = _acc_by_eps(entry)
        checked += len(series) > 1
        rises += [f"{name}: {_pct(a)} at {e:g}/255 -> {_pct(b)} at {f:g}/255"
                  for (e, a), (f, b) in zip(series, series[1:]) if b > a + tol]
    if not checked:
        return {"check": "monotone_in_eps", "passed": None, "detail": "skipped: needs two or more eps"}
    if rises:
        return {"check": "monotone_in_eps", "passed": False,
                "detail": "robust accuracy rises with eps: " + "; ".join(rises)}
    return {"check": "monotone_in_eps", "passed": True,
            "detail": f"robust accuracy never rises with eps ({checked} attacks)"}


def _large_eps(results: dict) -> dict:
    probe = results.get("masking_probes", {}).get("large_eps")
    if probe is None:
        return {"check": "large_eps_breaks_model", "passed": None, "detail": "skipped: no probe run"}
    limit = results["masking_probes"]["config"]["max_accuracy_large_eps"]
    acc = probe["robust_accuracy"]
    return {"check": "large_eps_breaks_model", "passed": acc <= limit,
            "detail": f"PGD-{probe['steps']} at {probe['eps']:g}/255 leaves {_pct(acc)} accuracy "
                      f"(must be <= {_pct(limit)})"}


def _white_vs_black(results: dict, tol: float) -> dict:
    worse, compared = [], 0
    for e in results["eps"]:
        best = {}
        for family in ("white", "black"):
            scored = [(entry["results"][f"{e:g}"]["robust_accuracy"], name)
                      for name, entry in results["attacks"].items() if entry["family"] == family]
            best[family] = min(scored) if scored else None
        if best["white"] is None or best["black"] is None:
            continue
        compared += 1
        (w, wn), (b, bn) = best["white"], best["black"]
        if w > b + tol:
            worse.append(f"at {e:g}/255 best white-box {wn} {_pct(w)} > best black-box {bn} {_pct(b)}")
    if not compared:
        return {"check": "white_box_beats_black_box", "passed": None,
                "detail": "skipped: needs at least one white-box and one black-box attack"}
    if worse:
        return {"check": "white_box_beats_black_box", "passed": False, "detail": "; ".join(worse)}
    return {"check": "white_box_beats_black_box", "passed": True,
            "detail": f"best white-box <= best black-box at all {compared} eps"}


def _more_steps(results: dict, tol: float) -> dict:
    probe = results.get("masking_probes", {}).get("more_steps")
    if probe is None:
        return {"check": "more_steps_not_worse", "passed": None, "detail": "skipped: no probe run"}
    few, many = probe["few_steps"], probe["many_steps"]
    return {"check": "more_steps_not_worse", "passed": many["robust_accuracy"] <= few["robust_accuracy"] + tol,
            "detail": f"PGD at {probe['eps']:g}/255: {_pct(few['robust_accuracy'])} with {few['steps']} steps, "
                      f"{_pct(many['robust_accuracy'])} with {many['steps']} steps"}


def check_masking(results: dict) -> dict:
    """Run the checks on a :func:`~tinyrobust.attacks.runner.run_attacks` results dict.

    Returns ``{"passed", "verdict", "tolerance", "checks": [{check, passed, detail}]}``;
    ``passed`` of a check is ``None`` when it was skipped."""
    tol = tolerance(results["n"])
    checks = [_monotone(results, tol), _large_eps(results), _white_vs_black(results, tol), _more_steps(results, tol)]
    failed = [c["check"] for c in checks if c["passed"] is False]
    ran = sum(c["passed"] is not None for c in checks)
    if failed:
        verdict = f"gradient masking suspected: failed {', '.join(failed)}"
    else:
        verdict = f"no sign of gradient masking ({ran} of {len(checks)} checks ran, all passed)"
    return {"passed": not failed, "verdict": verdict, "tolerance": tol, "checks": checks}
