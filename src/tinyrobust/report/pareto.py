"""Robustness against memory: which runs are worth their weight KB (issue 12 item 6).

A user picking a model for a device wants one picture per quantity: weight KB (the footprint's
headline figure: weights at their bit widths, biases, per-channel weight scales and BatchNorm folded
into 32-bit biases) against clean accuracy and against the report's headline robust accuracy (the
per-image worst case over the common attack set, :mod:`.compare`) at 2/255 and 8/255. A run is on
the Pareto front when no other run has less or equal KB and greater or equal accuracy with one of
the two strictly better; two runs with the same KB and accuracy are both on it.

Points are the report's runs plus any extra run folders (``pareto_runs`` in the grid, or the
``extra_runs`` argument: e.g. sweep trials). An extra run gets a robust point only from a schema-2
``robustness.json`` in its folder (``tinyrobust attack --run RUN`` writes one there) that matches
the report's protocol: the same test images (nested subsets), eps, and attack parameters, and every
attack of the common set; otherwise it is listed with the reason and left off that plot.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..io_utils import sha256_file
from ..rundir import CONFIG_FILE, ROBUSTNESS_FILE, SUMMARY_FILE, WEIGHTS_FILE
from ..stats import accuracy_with_ci, format_ci, wilson
from .compare import _indices, check_schema, ekey, masked, worst_case

PARETO_EPS = (2.0, 8.0)  # the robust quantities drawn, where the grid has them
PAPER_KB = 410.0
PAPER_NOTE = "paper's best model (arXiv 2503.08973, stochastic-ternary weights), about 410 KB"
REFERENCE_ROLES = ("reference", "reference_quantized")


# ---------------------------------------------------------------- the front


def dominates(a: Tuple[float, float], b: Tuple[float, float]) -> bool:
    """``a`` = (KB, accuracy) dominates ``b``: no more memory, no less accuracy, one strictly better."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_front(points: Sequence[Optional[Tuple[float, float]]]) -> List[bool]:
    """Per point: on the front (not dominated by any other point). ``None`` (no value) is never on it."""
    have = [p for p in points if p is not None]
    return [p is not None and not any(dominates(q, p) for q in have) for p in points]


# ---------------------------------------------------------------- weight KB


def recompute_weight_kb(run_dir: Path) -> float:
    """Weight KB of a run's model, counted by this version (from its config: the count does not
    depend on the weights' values)."""
    from ..config import load_config
    from ..export.footprint import footprint_table
    from ..runs import model_for_config

    cfg = load_config(Path(run_dir) / CONFIG_FILE)
    model, info = model_for_config(cfg)
    return float(footprint_table(model, info.input_shape)["weight_kb"])


def weight_kb(run_dir: Path, summary: Optional[Dict[str, Any]]) -> Tuple[Optional[float], str]:
    """(weight KB, how it was obtained), always counted from the model by this version: "summary" when
    summary.json holds the same figure, "recomputed" when it holds an older count (before scales and
    folded BatchNorm biases were counted); summary.json's figure, marked, only when the model cannot
    be rebuilt."""
    old = (summary or {}).get("weight_kb")
    try:
        kb = recompute_weight_kb(run_dir)
    except Exception as exc:  # noqa: BLE001 - a run we cannot rebuild keeps its older figure, marked
        why = f"no {CONFIG_FILE}" if not (Path(run_dir) / CONFIG_FILE).is_file() else type(exc).__name__
        return (None, f"unknown: {why}") if old is None else (float(old), f"older count: model not rebuilt, {why}")
    same = old is not None and abs(float(old) - kb) <= 1e-6 * max(1.0, kb)
    return kb, "summary" if same else "recomputed"


# ---------------------------------------------------------------- points


def _cfg_facts(run_dir: Path, fallback: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """weights / acts quantizers and whether JR is on, from the run's config (or the grid's)."""
    try:
        from ..config import config_to_dict, load_config

        raw = config_to_dict(load_config(Path(run_dir) / CONFIG_FILE))
    except Exception:  # noqa: BLE001 - not trained yet or not a run: the grid's config
        raw = fallback or {}
    q = (raw.get("model") or {}).get("quant") or {}
    jr = raw.get("jr") or {}
    layers = jr.get("layers") or {}
    jr_on = float(jr.get("weight") or 0) > 0 or any(float(v or 0) > 0 for v in layers.values())
    return {"weights": q.get("weight") or "float", "acts": q.get("act") or "float", "jr": jr_on}


def _clean(summary: Optional[Dict[str, Any]], res: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Clean test accuracy with its Wilson interval: the full test split from summary.json when it
    records its n, otherwise the attacked images."""
    s = summary or {}
    if s.get("test_accuracy") is not None and s.get("test_examples"):
        n = int(s["test_examples"])
        k = int(round(float(s["test_accuracy"]) * n))
        return {"robust_accuracy": k / n, "ci95": list(wilson(k, n)), "n": n, "k": k, "source": "test split"}
    if res is not None:
        return {**accuracy_with_ci([c == "1" for c in res["clean_correct"]]), "source": "attacked images"}
    return {"robust_accuracy": None, "ci95": None, "n": 0, "k": 0, "source": "none"}


def pareto_eps(eps: Sequence[float], in_unit: Optional[Dict[str, float]] = None) -> List[float]:
    """2 and 8 in the grid's own unit where it has them: 2/255 and 8/255, or on the waveform grid 2 and 8
    samples (``in_unit``: eps key -> the eps in the grid's unit, ``Grid.eps_in_unit``); otherwise the
    smallest and the largest eps."""
    in_unit = in_unit or {}
    chosen = [e for q in PARETO_EPS for e in eps if in_unit.get(ekey(e), e) == q]
    if chosen or not eps:
        return list(dict.fromkeys(chosen))
    ordered = sorted(eps)
    return list(dict.fromkeys([ordered[0], ordered[-1]]))


def eps_label(pareto: Dict[str, Any], q: str) -> str:
    return (pareto.get("labels") or {}).get(q, f"{q}/255")


def _extra_reason(
    res: Dict[str, Any], run_dir: Path, ref: Optional[Dict[str, Any]], common: List[str], eps: List[float]
) -> Optional[str]:
    """Why an extra run's robustness.json cannot join the report's comparison (None: it can)."""
    try:
        check_schema(run_dir.name, res, ROBUSTNESS_FILE)
    except Exception as exc:  # noqa: BLE001
        return str(exc)
    want = (res.get("meta") or {}).get("model_sha256")
    weights = run_dir / WEIGHTS_FILE
    if not want or (weights.is_file() and sha256_file(weights) != want):
        return f"{ROBUSTNESS_FILE} is stale or has no model_sha256 (attack the run again)"
    if ref is None:
        return "no model of the report was attacked"
    missing = [a for a in common if a not in res.get("attacks", {})]
    if missing:
        return f"not attacked with {', '.join(missing)} of the common set"
    for e in eps:
        if any(ekey(e) not in res["attacks"][a]["results"] for a in common):
            return f"not attacked at eps {ekey(e)}"
    for a in common:
        p0, p = ref["attacks"]["attacks"][a].get("params"), res["attacks"][a].get("params")
        if p0 != p:
            return f"{a} ran with other parameters ({p} vs the report's {p0})"
    base, idx = _indices(ref["attacks"]), _indices(res)
    if base is None or idx is None:
        return "no subset indices in robustness.json"
    k = min(len(base), len(idx))
    if base[:k] != idx[:k]:
        return "attacked on other test images than the report's models (attack it with the same seed)"
    for e in eps:
        if worst_case(res, common, e)[1]:
            return "the common attack set is not a prefix of its cascade"
    return None


def resolve_extra_runs(patterns: Sequence[str | Path], base: Path) -> List[Path]:
    """Run folders from paths or glob patterns (relative ones taken from ``base``), in order, once each."""
    out: List[Path] = []
    for p in patterns:
        p = Path(p)
        full = p if p.is_absolute() else base / p
        hits = sorted(Path(h) for h in glob.glob(str(full))) if glob.has_magic(str(p)) else [full]
        for h in hits:
            if h.is_dir() and h not in out:
                out.append(h)
    return out


def _rel(path: Path, base: Path) -> str:
    import os

    try:
        return os.path.relpath(path.resolve(), base.resolve())
    except ValueError:
        return path.name


def collect_points(data: Dict[str, Any], out: Path, extra_runs: Sequence[Path] = ()) -> Dict[str, Any]:
    """Every point of the plots: the report's runs (``data`` from render.collect) and ``extra_runs``."""
    cmp = data["comparison"]
    eps = pareto_eps(data["eps"], data.get("eps_in_unit"))
    common = cmp["common"]
    gradient_free = any(
        (m["attacks"]["attacks"].get(a) or {}).get("family", "white") in ("black", "ensemble")
        for m in data["models"]
        if m["attacks"]
        for a in common
    )
    points: List[Dict[str, Any]] = []
    for m in data["models"]:
        run = out / data.get("runs_dir", "runs") / m["key"]
        if not m["summary"]:
            continue
        kb, kb_source = weight_kb(run, m["summary"])
        pt = {
            "key": m["key"],
            "label": m["label"],
            "role": m["role"],
            "source": "grid",
            **_cfg_facts(run, m.get("config")),
            "weight_kb": kb,
            "kb_source": kb_source,
            "clean": _clean(m["summary"], m["attacks"]),
            "robust": {},
            "masked": masked(m["attacks"]),
            "robust_note": None,
        }
        if not m["attacks"]:
            pt["robust_note"] = "not attacked"
        elif pt["masked"] and not gradient_free:
            pt["robust_note"] = "gradient masking suspected, no gradient-free attack in the common set"
        else:
            wc = cmp["models"][m["key"]]["worst_case"]
            pt["robust"] = {ekey(e): wc[ekey(e)] for e in eps}
        points.append(pt)
    ref = next((m for m in data["models"] if m["attacks"]), None)
    keys = {p["key"] for p in points}
    for run in extra_runs:
        run = Path(run)
        summary = _load(run / SUMMARY_FILE)
        if summary is None:
            continue  # not a finished run
        key = run.name if run.name not in keys else f"{run.parent.name}/{run.name}"
        keys.add(key)
        res = _load(run / ROBUSTNESS_FILE)
        kb, kb_source = weight_kb(run, summary)
        pt = {
            "key": key,
            "label": key,
            "role": "extra",
            "source": _rel(run, out),
            **_cfg_facts(run),
            "weight_kb": kb,
            "kb_source": kb_source,
            "clean": _clean(summary, res),
            "robust": {},
            "masked": masked(res),
            "robust_note": None,
        }
        why = "no robustness.json in the run folder" if res is None else _extra_reason(res, run, ref, common, eps)
        if why is None and pt["masked"] and not gradient_free:
            why = "gradient masking suspected, no gradient-free attack in the common set"
        if why is None:
            pt["robust"] = {ekey(e): accuracy_with_ci(worst_case(res, common, e)[0]) for e in eps}
        else:
            pt["robust_note"] = why
        points.append(pt)
    quantities = ["clean"] + [ekey(e) for e in eps]
    for q in quantities:
        # a point flagged for gradient masking is drawn but kept off the robust fronts: its worst case is
        # an upper bound, and a front is a headline (clean accuracy does not rest on gradients)
        vals = [None if q != "clean" and p["masked"] else _value(p, q) for p in points]
        for p, on in zip(points, pareto_front(vals)):
            p.setdefault("front", {})[q] = on
    labels = {ekey(e): (data.get("eps_labels") or {}).get(ekey(e), f"{ekey(e)}/255") for e in eps}
    return {
        "eps": [ekey(e) for e in eps],
        "labels": labels,
        "quantities": quantities,
        "common": list(common),
        "points": points,
    }


def _load(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _acc(p: Dict[str, Any], q: str) -> Optional[Dict[str, Any]]:
    a = p["clean"] if q == "clean" else p["robust"].get(q)
    return a if a and a.get("robust_accuracy") is not None else None


def _value(p: Dict[str, Any], q: str) -> Optional[Tuple[float, float]]:
    a = _acc(p, q)
    return None if a is None or p["weight_kb"] is None else (p["weight_kb"], a["robust_accuracy"])


def quantity_title(q: str, pareto: Optional[Dict[str, Any]] = None) -> str:
    return "clean accuracy" if q == "clean" else f"worst-case robust accuracy at {eps_label(pareto or {}, q)}"


# ---------------------------------------------------------------- table and plots


def table(pareto: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """One row per point: run key, weights/acts, JR, weight KB, each quantity with its Wilson 95%
    interval and n, and the quantities on whose front it lies."""
    qs = pareto["quantities"]
    head = ["run", "weights / acts", "JR", "weight KB"]
    head += ["clean % [95% CI]"] + [f"eps {eps_label(pareto, q)} % [95% CI]" for q in qs[1:]] + ["on the front"]
    rows = []
    for p in sorted(pareto["points"], key=lambda p: (p["weight_kb"] is None, p["weight_kb"] or 0, p["key"])):
        kb = "n/a" if p["weight_kb"] is None else f"{p['weight_kb']:.1f}"
        if p["kb_source"] not in ("summary", "recomputed"):
            kb += f" ({p['kb_source']})"
        cells = []
        for q in qs:
            a = _acc(p, q)
            if a is None:
                cells.append("n/a" + (f" ({p['robust_note']})" if q != "clean" and p["robust_note"] else ""))
            else:
                cells.append(format_ci(a["robust_accuracy"], a["ci95"], a["n"]))
        on = [("clean" if q == "clean" else eps_label(pareto, q)) for q in qs if p["front"].get(q)]
        name = p["key"] + (" (reference)" if p["role"] in REFERENCE_ROLES else "")
        name += " (gradient masking suspected)" if p["masked"] else ""
        rows.append(
            [name, f"{p['weights']} / {p['acts']}", "yes" if p["jr"] else "no", kb, *cells, ", ".join(on) or "no"]
        )
    return head, rows


def notes(pareto: Dict[str, Any]) -> List[str]:
    eps_text = " and ".join(eps_label(pareto, q) for q in pareto["eps"]) or "no eps (the grid has none)"
    lines = [
        "Weight KB (the footprint's figure: weights at their bit widths, biases, 32-bit per-channel weight scales "
        "and BatchNorm folded into 32-bit biases) against clean test accuracy and against the headline's "
        f"per-image worst case over the common attack set ({', '.join(pareto['common']) or 'none'}) at "
        f"{eps_text}. A run is on the front when no other run has less or equal KB and greater or equal "
        "accuracy with one of the two strictly better (ties are both on it); the front compares point "
        "estimates, so read it with the Wilson 95% intervals beside it. Runs flagged for gradient masking "
        "are drawn with a cross and kept off the robust fronts (their worst case is an upper bound); they "
        "stay on the clean-accuracy front.",
        f"Vertical line: the {PAPER_NOTE}; its accuracy under this protocol is not measured here.",
    ]
    redo = [p["key"] for p in pareto["points"] if p["kb_source"] == "recomputed"]
    if redo:
        lines.append(
            "Weight KB counted from the model; summary.json holds an older count (without scales and folded "
            f"BatchNorm biases) for: {', '.join(redo)}."
        )
    clean_src = {p["clean"].get("source") for p in pareto["points"]} - {"none"}
    if clean_src:
        lines.append(f"Clean accuracy from: {', '.join(sorted(clean_src))} (n beside each value).")
    return lines


def _prec_name(weights: str) -> str:
    """The precision family of a weight quantizer name (``ternary_stats`` and ``ternary`` are one colour)."""
    return weights.split("_")[0]


def _prec_colour(weights: str) -> str:
    order = ["float", "int8", "int6", "int4", "int3", "int2", "ternary", "binary"]
    palette = ["tab:gray", "tab:blue", "tab:cyan", "tab:green", "tab:olive", "tab:orange", "tab:red", "tab:purple"]
    base = weights.split("_")[0]
    for name, col in zip(order, palette):
        if base.startswith(name):
            return col
    return "tab:brown"


def plots(pareto: Dict[str, Any]) -> Dict[str, bytes]:
    """One PNG per quantity: points with 95% intervals, the front as a staircase, references and front
    points named, the paper's 410 KB as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from matplotlib.lines import Line2D

    from .render import _png

    out: Dict[str, bytes] = {}
    for q in pareto["quantities"]:
        pts = [(p, _acc(p, q)) for p in pareto["points"] if _value(p, q) is not None]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(8.6, 4.6))
        for p, a in pts:
            x, y = p["weight_kb"], 100 * a["robust_accuracy"]
            col = _prec_colour(p["weights"])
            ax.errorbar(
                x,
                y,
                yerr=[[max(0.0, y - 100 * a["ci95"][0])], [max(0.0, 100 * a["ci95"][1] - y)]],
                fmt="none",
                ecolor=col,
                alpha=0.5,
                capsize=2,
                lw=1,
            )
            marker = "s" if p["role"] in REFERENCE_ROLES else "o"
            if p["front"].get(q):  # a black ring around the points on the front
                ax.scatter(x, y, s=170, marker=marker, facecolors="none", edgecolors="black", linewidths=1, zorder=3)
            if q != "clean" and p["masked"]:  # a cross: gradient masking suspected, an upper bound
                ax.scatter(x, y, s=120, marker="x", color="black", linewidths=1.2, zorder=5)
            ax.scatter(
                x,
                y,
                s=55,
                marker=marker,
                facecolors=col if p["jr"] else "white",
                edgecolors=col,
                linewidths=1.6,
                zorder=4,
            )
            if p["role"] in REFERENCE_ROLES or p["front"].get(q) or p["role"] == "proposed":
                ax.annotate(p["key"], (x, y), fontsize=7, xytext=(6, 3), textcoords="offset points")
        front = sorted((p["weight_kb"], 100 * a["robust_accuracy"]) for p, a in pts if p["front"].get(q))
        if front:
            xs, ys = zip(*front)
            ax.step(xs, ys, where="post", color="black", lw=1, ls="--", alpha=0.7, zorder=2)
        ax.axvline(PAPER_KB, color="tab:red", ls=":", lw=1.2)
        ax.annotate(
            "paper's best model\n(stochastic ternary, ~410 KB)",
            (PAPER_KB, 0.98),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            ha="right",
            va="top",
            xytext=(-3, 0),
            textcoords="offset points",
            color="tab:red",
        )
        kbs = [p["weight_kb"] for p, _ in pts] + [PAPER_KB]
        ax.set_xscale("log")
        ax.set_xlim(min(kbs) / 1.5, max(kbs) * 1.5)
        lo, hi = ax.get_xlim()
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if lo <= t <= hi]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylim(-2, 100)
        ax.set_xlabel("weight memory (KB, log scale; scales and folded BatchNorm included)")
        ax.set_ylabel(f"{quantity_title(q, pareto)} % (95% CI)")
        ax.set_title(f"{quantity_title(q, pareto)} vs weight memory: Pareto front (dashed)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        precs = list(dict.fromkeys(_prec_name(p["weights"]) for p, _ in pts))
        handles = [Line2D([], [], marker="o", ls="", color=_prec_colour(w), label=f"weights {w}") for w in precs] + [
            Line2D([], [], marker="o", ls="", markerfacecolor="black", markeredgecolor="black", label="with JR"),
            Line2D([], [], marker="o", ls="", markerfacecolor="white", markeredgecolor="black", label="no JR"),
            Line2D(
                [], [], marker="s", ls="", markerfacecolor="white", markeredgecolor="black", label="MLC/T reference"
            ),
            Line2D(
                [], [], marker="o", ls="", ms=11, markerfacecolor="none", markeredgecolor="black", label="on the front"
            ),
        ]
        if q != "clean" and any(p["masked"] for p, _ in pts):
            handles.append(
                Line2D([], [], marker="x", ls="", color="black", label="gradient masking\nsuspected (off the front)")
            )
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.tight_layout()
        out[f"pareto_{'clean' if q == 'clean' else 'eps' + q}.png"] = _png(fig)
        plt.close(fig)
    return out
