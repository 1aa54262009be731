"""The sweep's trade-off picture (``tradeoff.png`` beside ``results.md``): validation clean accuracy against
validation robust accuracy, one panel per choice group, one line per setting of the non-numeric axes
(e.g. JR mode) through its numeric ones in order (e.g. lambda), the twin as a star, the rule's clean
floor (twin minus ``max_clean_drop``) dashed and the chosen trial ringed. Where no trial passes the rule
it shows how close the grid gets, and at what cost (issue 12)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .spec import SweepSpec

Point = Dict[str, Any]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def numeric_axes(spec: SweepSpec, exclude: List[str]) -> List[str]:
    """Axes whose every value is a number (or absent, as lambda is for a no-JR twin): they order a line."""
    out = []
    for a in spec.axes:
        vals = [t.values.get(a) for t in spec.trials if t.values.get(a) is not None]
        if a not in exclude and vals and all(_is_number(v) for v in vals):
            out.append(a)
    return out


def tradeoff_panels(
    spec: SweepSpec, results: Dict[str, Dict[str, Any]], choice: Optional[List[Dict[str, Any]]] = None
) -> List[Dict[str, Any]]:
    """Scored trials arranged for the plot: per group its twin, its clean floor, its chosen trial and its
    lines (label -> points sorted by the numeric axes). Unscored and failed trials are left out. ``choice``:
    ``engine.choose(spec, results)`` when the caller has it already."""
    from .engine import _twin_key, choose

    ch = spec.choice or {}
    group_by = [str(k) for k in ch.get("group_by") or []]
    drop = ch.get("max_clean_drop")
    chosen = {c["chosen"] for c in (choose(spec, results) if choice is None else choice) if c.get("chosen")}
    numeric = numeric_axes(spec, group_by)
    panels: Dict[tuple, Dict[str, Any]] = {}
    for t in spec.trials:
        r = results.get(t.key) or {}
        if r.get("status") != "done" or r.get("val_clean_accuracy") is None or r.get("val_robust_accuracy") is None:
            continue
        g = tuple((k, t.values.get(k)) for k in group_by)
        p = panels.setdefault(g, {"group": dict(g), "twin": None, "floor": None, "chosen": None, "lines": {}})
        pt: Point = {
            "trial": t.name,
            "clean": float(r["val_clean_accuracy"]),
            "robust": float(r["val_robust_accuracy"]),
            "ci95": r.get("val_robust_ci95"),
            "at": {a: t.values.get(a) for a in numeric if t.values.get(a) is not None},
        }
        if ch.get("twin") and _twin_key(spec, t) == t.key:
            p["twin"] = pt
            p["floor"] = pt["clean"] - drop if drop is not None else None
            continue
        label = ", ".join(str(t.values[a]) for a in spec.axes if a in t.values and a not in group_by + numeric)
        p["lines"].setdefault(label or "trials", []).append(pt)
        if t.name in chosen:
            p["chosen"] = pt
    for p in panels.values():
        for pts in p["lines"].values():
            pts.sort(key=lambda q: tuple(q["at"].get(a, float("-inf")) for a in numeric))
    return list(panels.values())


def _at_label(at: Dict[str, Any]) -> str:
    return ", ".join(f"{v:.3g}" for v in at.values())


def tradeoff_png(panels: List[Dict[str, Any]], evaluation: Optional[Dict[str, Any]] = None) -> Optional[bytes]:
    """The picture as PNG bytes; None when no trial is scored yet."""
    panels = [p for p in panels if p["lines"] or p["twin"]]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.render import _png

    ev = evaluation or {}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False, sharey=True)
    for ax, p in zip(axes[0], panels):
        for i, (label, pts) in enumerate(sorted(p["lines"].items())):
            xs, ys = [100 * q["clean"] for q in pts], [100 * q["robust"] for q in pts]
            col = f"C{i}"
            ax.plot(xs, ys, "-o", color=col, ms=5, lw=1.2, label=label)
            for q, x, y in zip(pts, xs, ys):
                if q["ci95"]:
                    lo, hi = 100 * q["ci95"][0], 100 * q["ci95"][1]
                    ax.errorbar(x, y, yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="none", ecolor=col, alpha=0.35)
                if q["at"]:
                    ax.annotate(_at_label(q["at"]), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if p["twin"]:
            tw = p["twin"]
            ax.plot(100 * tw["clean"], 100 * tw["robust"], "*", color="black", ms=12, label="twin", zorder=5)
        if p["floor"] is not None:
            ax.axvline(100 * p["floor"], color="grey", ls="--", lw=1, label="rule's clean floor")
        if p["chosen"]:
            c = p["chosen"]
            ax.plot(100 * c["clean"], 100 * c["robust"], "o", ms=14, mfc="none", mec="black", label="chosen", zorder=6)
        ax.set_title(", ".join(f"{k}={v}" for k, v in p["group"].items()) or "all trials", fontsize=9)
        ax.set_xlabel("validation clean accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    attacks = "+".join(ev.get("attacks") or []) or "attack"
    axes[0][0].set_ylabel(
        f"validation robust accuracy % ({attacks} worst case, {ev.get('eps', '?')}/255, n={ev.get('n', '?')})",
        fontsize=8,
    )
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png
