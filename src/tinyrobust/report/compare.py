"""The headline comparison: per eps, the per-image worst case over ONE attack set shared by every model.

Why one set: a model that faced fewer attacks looks more robust. The set is the intersection of the
attacks each compared model actually faced (an attack recorded in ``skipped``, like a transfer
attack onto its own surrogate, is left out for everyone and shown as n/a). With the cascade rule
(attacks some model cannot face run last) that set is a prefix of every model's cascade, so the
worst case over it is exact; when it is not for some model, we refuse rather than guess.

Refusals (one line, :class:`~tinyrobust.errors.TinyRobustError`): models attacked on different test
images (beyond nesting: a 200-image subset must be the first 200 of the 500-image one), at other
eps, with other attack parameters, or without an attack another model faced and no record why.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import TinyRobustError
from ..stats import accuracy_with_ci, paired_difference, robust_flags

SCHEMA = 2
MASKING_NOTE = "gradient masking suspected"
TRANSFER_PREFIX = "transfer@"


def ekey(e: float) -> str:
    return f"{float(e):g}"


def check_schema(key: str, res: Dict[str, Any], where: str) -> None:
    if res.get("schema") != SCHEMA:
        raise TinyRobustError(
            f"{where} (model {key}) has robustness schema {res.get('schema', 1)!r}, the report "
            f"needs {SCHEMA} (per-image outcomes): attack the model again with this version"
        )


def faced(res: Dict[str, Any]) -> List[str]:
    """Attacks the model actually faced, in cascade order (then any others in file order)."""
    names = list(res.get("attacks", {}))
    order = [a for a in (res.get("cascade") or res.get("attack_order") or []) if a in names]
    return order + [a for a in names if a not in order]


def skipped(key: str, res: Dict[str, Any]) -> Dict[str, str]:
    """Attacks recorded as not run on this model, with the reason; a transfer from the model itself
    counts as skipped even if the attack stage did not list it."""
    out = dict(res.get("skipped") or {})
    out.setdefault(TRANSFER_PREFIX + key, "the model is this transfer attack's surrogate")
    return out


def masked(res: Optional[Dict[str, Any]]) -> bool:
    mc = (res or {}).get("masking_checks") or {}
    return mc.get("passed") is False


def _indices(res: Dict[str, Any]) -> Optional[List[int]]:
    idx = ((res.get("meta") or {}).get("subset") or {}).get("indices")
    return None if idx is None else [int(i) for i in idx]


def check_comparable(models: Sequence[Dict[str, Any]], eps: Sequence[float]) -> int:
    """Refuse models that cannot be compared; return the number of images they share (first k)."""
    if not models:
        return 0
    first = models[0]
    for m in models:
        res = m["attacks"]
        missing = [ekey(e) for e in eps if any(ekey(e) not in a["results"] for a in res["attacks"].values())]
        if missing:
            raise TinyRobustError(
                f"model {m['key']} was not attacked at eps {', '.join(missing)} (/255) that the "
                f"report compares; attack it again with the grid's eps"
            )
    # nested subsets: the smaller subset must be the first images of the larger one
    n_shared = min(len(m["attacks"]["clean_correct"]) for m in models)
    base = _indices(first["attacks"])
    for m in models[1:]:
        idx = _indices(m["attacks"])
        if base is None or idx is None:
            raise TinyRobustError(
                f"model {m['key'] if idx is None else first['key']} has no subset indices in its "
                f"robustness.json: attack it again with this version"
            )
        k = min(len(base), len(idx))
        diff = next((i for i in range(k) if base[i] != idx[i]), None)
        if diff is not None:
            raise TinyRobustError(
                f"models {first['key']} and {m['key']} were attacked on different test images "
                f"(image {diff} of the subset is test index {base[diff]} vs {idx[diff]}): attack "
                f"them with the same seed so their subsets are nested"
            )
    # attack sets: an attack one model faced must have been faced or recorded as skipped by every other
    universe = list(dict.fromkeys(a for m in models for a in faced(m["attacks"])))
    for a in universe:
        for m in models:
            if a not in m["attacks"]["attacks"] and a not in skipped(m["key"], m["attacks"]):
                who = next(o["key"] for o in models if a in o["attacks"]["attacks"])
                raise TinyRobustError(
                    f"different attack sets: model {m['key']} was not attacked with {a} (model "
                    f"{who} was) and its robustness.json records no reason; attack it again with "
                    f"the same grid"
                )
    # same parameters for the same attack
    for a in universe:
        having = [m for m in models if a in m["attacks"]["attacks"]]
        ref = having[0]
        p0 = ref["attacks"]["attacks"][a].get("params")
        for m in having[1:]:
            p = m["attacks"]["attacks"][a].get("params")
            if p != p0:
                keys = sorted(set(p0 or {}) | set(p or {}))
                what = next(
                    (
                        f"{k}={(p0 or {}).get(k)!r} vs {(p or {}).get(k)!r}"
                        for k in keys
                        if (p0 or {}).get(k) != (p or {}).get(k)
                    ),
                    "",
                )
                raise TinyRobustError(
                    f"different attack parameters: {a} ran on {ref['key']} and {m['key']} with "
                    f"{what}; attack them with the same grid budget"
                )
    return n_shared


def common_set(models: Sequence[Dict[str, Any]]) -> Tuple[List[str], Dict[str, List[str]]]:
    """(attacks every model faced, in the first model's cascade order;
    {left-out attack: models that did not face it})."""
    if not models:
        return [], {}
    universe = list(dict.fromkeys(a for m in models for a in faced(m["attacks"])))
    common = [a for a in faced(models[0]["attacks"]) if all(a in m["attacks"]["attacks"] for m in models)]
    left = {a: [m["key"] for m in models if a not in m["attacks"]["attacks"]] for a in universe if a not in common}
    return common, left


def _strings(res: Dict[str, Any], attacks: Sequence[str], e: float, k: Optional[int] = None) -> List[str]:
    return [res["attacks"][a]["results"][ekey(e)]["robust"][:k] for a in attacks]


def worst_case(
    res: Dict[str, Any], attacks: Sequence[str], e: float, k: Optional[int] = None
) -> Tuple[List[bool], int]:
    """Per-image robust flags over ``attacks`` at ``e`` on the first ``k`` images, and undetermined count."""
    return robust_flags(res["clean_correct"][:k], _strings(res, attacks, e, k))


def check_exact(m: Dict[str, Any], attacks: Sequence[str], eps: Sequence[float]) -> None:
    """The worst case over ``attacks`` must be exact for this model: refuse when its cascade let an
    attack outside the set break images first, so an attack of the set never tried them."""
    res = m["attacks"]
    for e in eps:
        _, undetermined = worst_case(res, attacks, e)
        if undetermined:
            cascade = res.get("cascade") or faced(res)
            outside = [a for a in cascade[: len(attacks)] if a not in attacks]
            raise TinyRobustError(
                f"the common attack set ({', '.join(attacks)}) is not a prefix of model {m['key']}'s cascade "
                f"({', '.join(cascade)}; {', '.join(outside) or 'another attack'} ran earlier), so {undetermined} of "
                f"its images at eps {ekey(e)} were never tried by the common attacks: attack it again with the "
                f"cascade rule (model-specific attacks last)"
            )


def compare(models: Sequence[Dict[str, Any]], eps: Sequence[float]) -> Dict[str, Any]:
    """The headline numbers of attacked models ``[{key, label, role, attacks: robustness.json}]``."""
    models = [m for m in models if m.get("attacks")]
    for m in models:
        check_schema(m["key"], m["attacks"], f"attacks/{m['key']}/robustness.json")
    n_shared = check_comparable(models, eps)
    common, left = common_set(models)
    for m in models:
        check_exact(m, common, eps)
    black_common = [a for a in common if _family(models, a) == "black"]
    per_model: Dict[str, Any] = {}
    for m in models:
        res = m["attacks"]
        row = {
            "n": len(res["clean_correct"]),
            "masked": masked(res),
            "clean": accuracy_with_ci([c == "1" for c in res["clean_correct"]]),
            "worst_case": {},
            "black_worst_case": {},
        }
        for e in eps:
            flags, _ = worst_case(res, common, e)
            row["worst_case"][ekey(e)] = accuracy_with_ci(flags)
            if black_common:
                bflags, undetermined = worst_case(res, black_common, e)
                upper = [
                    f or (c == "1" and "0" not in chars)
                    for f, c, chars in zip(bflags, res["clean_correct"], zip(*_strings(res, black_common, e)))
                ]
                row["black_worst_case"][ekey(e)] = {
                    **accuracy_with_ci(bflags),
                    "undetermined": undetermined,
                    "upper": sum(upper) / len(upper),
                }
        per_model[m["key"]] = row
    deltas = []
    proposed = next((m for m in models if m["role"] == "proposed"), None)
    if proposed is not None:
        for other in sorted((m for m in models if m is not proposed), key=lambda m: _ROLE_ORDER.get(m["role"], 9)):
            for e in eps:
                deltas.append(
                    {
                        "proposed": proposed["key"],
                        "other": other["key"],
                        "role": other["role"],
                        "eps": ekey(e),
                        **paired_worst_case(proposed["attacks"], other["attacks"], common, e),
                    }
                )
    return {
        "common": common,
        "left_out": left,
        "black_common": black_common,
        "n_shared": n_shared,
        "models": per_model,
        "deltas": deltas,
        "skipped": {m["key"]: {a: r for a, r in skipped(m["key"], m["attacks"]).items() if a in left} for m in models},
        "seeds": seed_summary(models, eps, common),
    }


_ROLE_ORDER = {"reference": 0, "reference_quantized": 1, "ablation": 2, "float": 3, "variant": 4}


def paired_worst_case(a_res: Dict[str, Any], b_res: Dict[str, Any], common: Sequence[str], e: float) -> Dict[str, Any]:
    """Worst case of ``a`` minus ``b`` over ``common`` at ``e``, paired on the images both were attacked on:
    subsets are nested, so the first n of either (500 for two 500-image models, 200 when one has 200)."""
    n_pair = min(len(a_res["clean_correct"]), len(b_res["clean_correct"]))
    a, _ = worst_case(a_res, common, e, n_pair)
    b, _ = worst_case(b_res, common, e, n_pair)
    return {"n": n_pair, **paired_difference(a, b)}


def _mean_std(values: Sequence[float]) -> Dict[str, Any]:
    """Mean and sample standard deviation (n - 1) over seeds; std is None for a single seed."""
    import statistics

    v = list(values)
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else None, "n_seeds": len(v)}


def seed_summary(models: Sequence[Dict[str, Any]], eps: Sequence[float], common: Sequence[str]) -> Dict[str, Any]:
    """Mean +- std over seeds for every grid entry trained with more than one seed (``group``), and for
    the proposed entry minus each other multi-seed entry: the per-seed paired difference on shared
    images (same seed paired with same seed), then its mean +- std over the seeds both have."""
    attacked = [m for m in models if m.get("attacks")]
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for m in attacked:
        groups.setdefault(m.get("group") or m["key"], []).append(m)
    multi = {g: ms for g, ms in groups.items() if len(ms) > 1}
    out: Dict[str, Any] = {"groups": {}, "deltas": []}
    for g, ms in multi.items():
        row = {
            "seeds": [m.get("seed") for m in ms],
            "members": [m["key"] for m in ms],
            "clean": _mean_std(
                [sum(c == "1" for c in m["attacks"]["clean_correct"]) / len(m["attacks"]["clean_correct"]) for m in ms]
            ),
            "worst_case": {},
        }
        for e in eps:
            row["worst_case"][ekey(e)] = _mean_std(
                [sum(worst_case(m["attacks"], common, e)[0]) / len(m["attacks"]["clean_correct"]) for m in ms]
            )
        out["groups"][g] = row
    proposed = next((m for m in attacked if m["role"] == "proposed"), None)
    pg = (proposed.get("group") or proposed["key"]) if proposed else None
    if pg in multi:
        mine = {m.get("seed"): m for m in multi[pg]}
        for g, ms in multi.items():
            if g == pg:
                continue
            theirs = {m.get("seed"): m for m in ms}
            shared = [sd for sd in mine if sd in theirs]
            if len(shared) < 2:
                continue
            for e in eps:
                per_seed = [
                    {"seed": sd, **paired_worst_case(mine[sd]["attacks"], theirs[sd]["attacks"], common, e)}
                    for sd in shared
                ]
                out["deltas"].append(
                    {"other": g, "eps": ekey(e), **_mean_std([d["delta"] for d in per_seed]), "per_seed": per_seed}
                )
    return out


def _family(models: Sequence[Dict[str, Any]], attack: str) -> str:
    for m in models:
        a = m["attacks"]["attacks"].get(attack)
        if a:
            return a.get("family", "white")
    return "white"


def cumulative(res: Dict[str, Any], attack: str, e: float) -> Optional[Dict[str, Any]]:
    """Robust accuracy after ``attack`` in this model's cascade (worst case over it and every attack
    before it), and how many images this attack broke of those it tried."""
    if attack not in res.get("attacks", {}):
        return None
    order = faced(res)
    upto = order[: order.index(attack) + 1]
    flags, _ = worst_case(res, upto, e)
    s = res["attacks"][attack]["results"][ekey(e)]["robust"]
    cc = res["clean_correct"]
    tried = sum(1 for c, x in zip(cc, s) if c == "1" and x in "01")
    broke = sum(1 for c, x in zip(cc, s) if c == "1" and x == "0")
    return {**accuracy_with_ci(flags), "tried": tried, "broke": broke}


def survived_both(a: Dict[str, Any], b: Dict[str, Any], attack: str, e: float) -> Optional[Tuple[int, int, int]]:
    """(survived in a, survived in b, images both runs tried) for one attack on the same images."""
    if attack not in a.get("attacks", {}) or attack not in b.get("attacks", {}):
        return None
    sa, sb = a["attacks"][attack]["results"][ekey(e)]["robust"], b["attacks"][attack]["results"][ekey(e)]["robust"]
    both = [(x, y) for c, x, y in zip(a["clean_correct"], sa, sb) if c == "1" and x in "01" and y in "01"]
    return sum(x == "1" for x, _ in both), sum(y == "1" for _, y in both), len(both)
