"""Gradient-masking checks (Carlini et al. 2019, sec. 5; fra31/auto-attack ``checks.py``).

Quantized and Jacobian-regularized networks can look robust because their gradients are
useless (zero through rounding, saturated softmax), not because they are. Each check is a
symptom of that, chosen so that it *can* fail on the models we attack; any failure means the
white-box numbers are not trustworthy (the worst case over all attacks still is an upper bound):

1. ``monotone_in_eps``: robust accuracy must not rise with eps (per attack and worst case).
2. ``large_eps_breaks_model``: PGD at a huge budget (default 64/255) must leave <= 5 %.
3. ``white_box_beats_black_box``: best white-box attack <= best black-box attack at every eps
   (own accuracies; skipped under cascade, where check 4 is the exact per-image form).
4. ``black_box_only_breaks``: images broken by some black-box attack (standalone, or the Square stage
   of standard AutoAttack) and by no white-box attack (nor AutoAttack's gradient stages); flagged when
   more than the tolerance (max(2 images, 1 % of n)) at some eps.
5. ``more_steps_not_worse``: PGD-100 must do at least as well as PGD-20, at the largest probed
   eps where PGD-20 leaves >= 20 % (where more steps have something left to break).
6. ``deterministic_outputs``: the same input twice must give the same logits (measured, not the
   declared ``stochastic`` flag); a random model is attacked with EOT and this check fails.
7. ``zero_gradients``: share of clean-correct images whose cross-entropy input gradient is exactly
   zero must be <= ``zero_grad_max_share`` (default 1 %).
8. ``outputs_not_probabilities``: outputs whose rows are all in [0, 1] and sum to 1 are
   probabilities, not logits (softmax inside the model saturates gradients): fails.

Comparisons allow a tolerance of max(2 images, 1 % of n) for run-to-run noise. Select checks
with ``--set masking.checks=name,name`` (default ``all``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import AttackError

PROBE_DEFAULTS = {
    "checks": "all",
    "large_eps": 64.0,
    "max_accuracy_large_eps": 0.05,
    "steps_eps_candidates": "0.5,1,2,4,8",
    "steps_min_accuracy": 0.2,
    "few_steps": 20,
    "many_steps": 100,
    "zero_grad_max_share": 0.01,
    "gradient_images": 100,
}

CHECKS = (
    "monotone_in_eps",
    "large_eps_breaks_model",
    "white_box_beats_black_box",
    "black_box_only_breaks",
    "more_steps_not_worse",
    "deterministic_outputs",
    "zero_gradients",
    "outputs_not_probabilities",
)


def resolve_checks(spec) -> list[str]:
    """``"all"`` or a comma list of check names -> names; an unknown name fails in one line."""
    parts = [p.strip() for p in (spec if isinstance(spec, (list, tuple)) else str(spec).split(",")) if p.strip()]
    if not parts or parts == ["all"]:
        return list(CHECKS)
    unknown = [p for p in parts if p not in CHECKS]
    if unknown:
        raise AttackError(f"unknown masking check {unknown[0]!r}; choose from: {', '.join(CHECKS)}, or all")
    return list(dict.fromkeys(parts))


def steps_eps_candidates(cfg: dict, budgets: list[float]) -> list[float]:
    """Eps (pixel/255) probed for the more-steps check, ascending: the configured list."""
    from .runner import validate_eps

    raw = cfg["steps_eps_candidates"]
    try:
        values = [float(v) for v in (raw if isinstance(raw, (list, tuple)) else str(raw).split(",")) if str(v).strip()]
    except ValueError:
        raise AttackError(f"masking.steps_eps_candidates must be comma-separated eps; got {raw!r}") from None
    return validate_eps(values or budgets)


def tolerance(n: int) -> float:
    return max(2, math.ceil(0.01 * n)) / n


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


@torch.no_grad()
def measure_randomness(model: torch.nn.Module, x: np.ndarray) -> bool:
    """True when the same input twice gives different logits (beyond float noise)."""
    xb = torch.as_tensor(x, dtype=torch.float32)
    param = next(model.parameters(), None)
    if param is not None:
        xb = xb.to(param.device)
    model.eval()
    a, b = model(xb), model(xb)
    return not torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def gradient_probes(target, xs: np.ndarray, ys: np.ndarray, images: int = 100) -> dict:
    """Share of exactly-zero input gradients (per image, per component) and whether the outputs look
    like probabilities, on the first ``gradient_images`` clean-correct images."""
    x = torch.as_tensor(xs[:images], dtype=torch.float32, device=target.device)
    y = torch.as_tensor(ys[:images], dtype=torch.long, device=target.device)
    if len(x) == 0:
        return {"gradients": None, "outputs": None}

    def fn(v):
        logits = target.model(v)
        return torch.nn.functional.cross_entropy(logits, y, reduction="none"), logits

    _, grad, logits = target.value_and_grad(x, fn)
    flat = grad.flatten(1)
    zero_images = int((flat == 0).all(1).sum())
    rows_in_01 = bool(((logits >= -1e-6) & (logits <= 1 + 1e-6)).all())
    sums_to_1 = bool(torch.allclose(logits.sum(1), torch.ones(len(logits), device=logits.device), atol=1e-4))
    return {
        "gradients": {
            "images": len(x),
            "zero_gradient_images": zero_images,
            "zero_component_share": float((flat == 0).float().mean()),
        },
        "outputs": {"images": len(x), "all_in_0_1": rows_in_01, "rows_sum_to_1": sums_to_1},
    }


def _acc_by_eps(entry: dict) -> list[tuple[float, float]]:
    return sorted((float(k), v["robust_accuracy"]) for k, v in entry["results"].items())


def _result(name: str, passed, detail: str) -> dict:
    return {"check": name, "passed": passed, "detail": detail}


def _monotone(results: dict, tol: float) -> dict:
    rises, checked = [], 0
    series = {name: entry for name, entry in results["attacks"].items()}
    if results.get("worst_case"):
        series["worst case"] = {"results": results["worst_case"]}
    for name, entry in series.items():
        s = _acc_by_eps(entry)
        checked += len(s) > 1
        rises += [
            f"{name}: {_pct(a)} at {e:g}/255 -> {_pct(b)} at {f:g}/255"
            for (e, a), (f, b) in zip(s, s[1:])
            if b > a + tol
        ]
    if not checked:
        return _result("monotone_in_eps", None, "skipped: needs two or more eps")
    if rises:
        return _result("monotone_in_eps", False, "robust accuracy rises with eps: " + "; ".join(rises))
    return _result("monotone_in_eps", True, f"robust accuracy never rises with eps ({checked} series)")


def _large_eps(results: dict) -> dict:
    probe = results.get("masking_probes", {}).get("large_eps")
    if probe is None:
        return _result("large_eps_breaks_model", None, "skipped: no probe run")
    limit = results["masking_probes"]["config"]["max_accuracy_large_eps"]
    acc = probe["robust_accuracy"]
    return _result(
        "large_eps_breaks_model",
        acc <= limit,
        f"PGD-{probe['steps']} at {probe['eps']:g}/255 leaves {_pct(acc)} accuracy (must be <= {_pct(limit)})",
    )


def _white_vs_black(results: dict, tol: float) -> dict:
    name = "white_box_beats_black_box"
    if results.get("cascade"):
        return _result(name, None, "skipped under cascade (attacks see different images); see black_box_only_breaks")
    worse, compared = [], 0
    for e in results["eps"]:
        best = {}
        for family in ("white", "black"):
            scored = [
                (entry["results"][f"{e:g}"]["robust_accuracy"], a)
                for a, entry in results["attacks"].items()
                if entry["family"] == family
            ]
            best[family] = min(scored) if scored else None
        if best["white"] is None or best["black"] is None:
            continue
        compared += 1
        (w, wn), (b, bn) = best["white"], best["black"]
        if w > b + tol:
            worse.append(f"at {e:g}/255 best white-box {wn} {_pct(w)} > best black-box {bn} {_pct(b)}")
    if not compared:
        return _result(name, None, "skipped: needs at least one white-box and one black-box attack")
    if worse:
        return _result(name, False, "; ".join(worse))
    return _result(name, True, f"best white-box <= best black-box at all {compared} eps")


def _black_only(results: dict, tol: float) -> dict:
    """Per image: broken by a black-box attack ('0' on a clean-correct image) and by no white-box one.

    Standard AutoAttack (family "ensemble") counts stage by stage from its per-image ``stages`` string:
    an image its Square stage broke is a black-box break, one its APGD/FAB stages broke a white-box
    break. This is where a model that fools gradient attacks shows (issue 11: APGD leaves 44% where
    Square-5000 leaves 21%), so the check cannot pass just because Square ran inside AutoAttack."""
    from .autoattack import BLACK_BOX_STAGES

    name = "black_box_only_breaks"
    clean = results.get("clean_correct")
    fams = {a: e["family"] for a, e in results["attacks"].items()}
    # AutoAttack alone has both sides: its APGD/FAB stages are white-box, its Square stage black-box
    has_white = "white" in fams.values() or "ensemble" in fams.values()
    has_black = "black" in fams.values() or "ensemble" in fams.values()
    if clean is None or not has_white or not has_black:
        return _result(name, None, "skipped: needs at least one white-box and one black-box attack")
    n = results["n"]
    limit = tol * n
    parts, failed, unattributed = [], False, []
    for e in results["eps"]:
        k = f"{e:g}"
        strings = {a: results["attacks"][a]["results"][k]["robust"] for a in fams}
        stages = {a: results["attacks"][a]["results"][k].get("stages") for a in fams if fams[a] == "ensemble"}
        unattributed += [
            f"{a} at {k}/255"
            for a, st in stages.items()
            if st is None and results["attacks"][a]["results"][k].get("n_broken", 0) > 0
        ]
        count = 0
        for i in range(n):
            if clean[i] != "1":
                continue
            white = any(strings[a][i] == "0" for a in fams if fams[a] == "white")
            black = any(strings[a][i] == "0" for a in fams if fams[a] == "black")
            for a, st in stages.items():
                if st is not None and strings[a][i] == "0":
                    if st[i] in BLACK_BOX_STAGES:
                        black = True
                    else:
                        white = True
            count += black and not white
        failed |= count > limit
        parts.append(f"{k}/255: {count} ({_pct(count / n)})")
    order_note = ""
    if results.get("cascade"):
        order = [fams[a] for a in results["cascade"] if fams.get(a) in ("white", "black")]
        if "white" in order and "black" in order and order.index("black") < len(order) - order[::-1].index("white") - 1:
            order_note = " (a black-box attack ran before a white-box one in the cascade: count is an upper bound)"
    if unattributed:
        order_note += (
            "; not counted: breaks of " + ", ".join(unattributed) + " (run before per-stage attribution was "
            "recorded: attack again to count its Square stage)"
        )
    return _result(
        name, not failed, f"images broken only by black-box attacks, limit {limit:g}: " + ", ".join(parts) + order_note
    )


def _more_steps(results: dict, tol: float) -> dict:
    probe = results.get("masking_probes", {}).get("more_steps")
    if probe is None:
        return _result("more_steps_not_worse", None, "skipped: no probe run")
    few, many = probe["few_steps"], probe["many_steps"]
    return _result(
        "more_steps_not_worse",
        many["robust_accuracy"] <= few["robust_accuracy"] + tol,
        f"PGD at {probe['eps']:g}/255 ({probe.get('rule', 'fixed eps')}): {_pct(few['robust_accuracy'])} "
        f"with {few['steps']} steps, {_pct(many['robust_accuracy'])} with {many['steps']} steps",
    )


def _deterministic(results: dict) -> dict:
    probe = results.get("masking_probes", {}).get("randomness")
    if probe is None:
        return _result("deterministic_outputs", None, "skipped: no probe run")
    if probe["random_outputs"]:
        return _result(
            "deterministic_outputs",
            False,
            f"the same {probe['images']} inputs twice give different logits: the model is random; "
            f"attacked with EOT {results.get('eot_samples')} samples, robust numbers are noisy",
        )
    return _result("deterministic_outputs", True, f"the same {probe['images']} inputs twice give the same logits")


def _zero_gradients(results: dict) -> dict:
    probe = results.get("masking_probes", {}).get("gradients")
    if probe is None:
        return _result("zero_gradients", None, "skipped: no probe run")
    limit = results["masking_probes"]["config"]["zero_grad_max_share"]
    share = probe["zero_gradient_images"] / probe["images"]
    return _result(
        "zero_gradients",
        share <= limit,
        f"{probe['zero_gradient_images']} of {probe['images']} images ({_pct(share)}) have an all-zero "
        "input "
        f"gradient (must be <= {_pct(limit)}); {_pct(probe['zero_component_share'])} of components are zero",
    )


def _probabilities(results: dict) -> dict:
    probe = results.get("masking_probes", {}).get("outputs")
    if probe is None:
        return _result("outputs_not_probabilities", None, "skipped: no probe run")
    looks = probe["all_in_0_1"] and probe["rows_sum_to_1"]
    return _result(
        "outputs_not_probabilities",
        not looks,
        "outputs are in [0, 1] and sum to 1 per row: the model returns probabilities (softmax inside), "
        "attack its logits instead"
        if looks
        else "outputs are logits (not rows of probabilities)",
    )


def _source_result(reused: dict) -> dict:
    """A result built partly from another result of the same weights and images (``reused``, see
    :class:`~tinyrobust.attacks.runner.PriorResult`) carries that result's verdict: its checks ran at its
    own eps (often more than this call's), and a model that masks gradients there masks them here."""
    src = reused.get("source_masking")
    if src is None or src.get("passed") is None:
        return _result("source_result_checks", None, f"skipped: {reused.get('from')} has no masking checks")
    eps = ", ".join(f"{float(e):g}" for e in src.get("eps") or [])
    if src["passed"]:
        return _result("source_result_checks", True, f"{reused.get('from')} (eps {eps}) passed its checks")
    why = "; ".join(f"{c['check']}: {c['detail']}" for c in src.get("failed") or [])
    return _result("source_result_checks", False, f"{reused.get('from')} (eps {eps}) failed {why}")


def check_masking(results: dict, checks: list[str] | None = None) -> dict:
    """Run the checks on a :func:`~tinyrobust.attacks.runner.run_attacks` results dict.

    Returns ``{"passed", "verdict", "tolerance", "checks": [{check, passed, detail}]}``;
    ``passed`` of a check is ``None`` when it was skipped."""
    tol = tolerance(results["n"])
    run = {
        "monotone_in_eps": lambda: _monotone(results, tol),
        "large_eps_breaks_model": lambda: _large_eps(results),
        "white_box_beats_black_box": lambda: _white_vs_black(results, tol),
        "black_box_only_breaks": lambda: _black_only(results, tol),
        "more_steps_not_worse": lambda: _more_steps(results, tol),
        "deterministic_outputs": lambda: _deterministic(results),
        "zero_gradients": lambda: _zero_gradients(results),
        "outputs_not_probabilities": lambda: _probabilities(results),
    }
    out = [run[c]() for c in (checks or CHECKS)]
    reused = results.get("reused") or {}
    if reused.get("units"):
        out.append(_source_result(reused))
    failed = [c["check"] for c in out if c["passed"] is False]
    ran = sum(c["passed"] is not None for c in out)
    if failed:
        verdict = f"gradient masking suspected: failed {', '.join(failed)}"
    else:
        verdict = f"no sign of gradient masking ({ran} of {len(out)} checks ran, all passed)"
    return {"passed": not failed, "verdict": verdict, "tolerance": tol, "checks": out}
