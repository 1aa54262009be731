"""Write ``report.md`` and a self-contained ``report.html`` from a reproduce output folder.

Inputs: ``runs/<key>/summary.json`` (training) and ``attacks/<key>/robustness.json`` (attacks).
Both reports are built from the same tables; plots are PNGs embedded in the HTML as base64 and
written beside the Markdown.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..io_utils import atomic_write, atomic_write_json, atomic_write_text
from .grid import Grid

# Headline figures of Ayaz et al. (IJCNN 2023 abstract): proposed minus MLCommons/Tiny model,
# in accuracy points, averaged over the attack family.
PAPER_DELTAS = {
    ("cifar10", "white"): 8.3,
    ("speech_commands", "black"): 79.5,
    ("svhn", "black"): 6.5,
}

Table = Tuple[List[str], List[List[str]]]


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _load(path: Path) -> Optional[Dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(grid: Grid, out: Path, budget: Optional[str] = None) -> Dict[str, Any]:
    """Gather every model's training summary and attack results into one JSON-able dict."""
    models = []
    for m in grid.models:
        summary = _load(out / "runs" / m.key / "summary.json")
        attacks = _load(out / "attacks" / m.key / "robustness.json")
        models.append({"key": m.key, "label": m.label, "role": m.role, "config": m.config,
                       "summary": summary, "attacks": attacks,
                       "onnx_attacks": _load(out / "attacks" / m.key / "robustness_onnx.json"),
                       "onnx_verify": _load(out / "runs" / m.key / "model.onnx.verify.json")})
    white, black = grid.attacks_for(budget) if budget else (grid.white, grid.black)
    return {"dataset": grid.dataset, "eps": grid.eps, "white": white, "black": black, "models": models,
            "skipped_attacks": [a for a in grid.white + grid.black if a not in white + black]}


def _acc(res: Dict[str, Any], attack: str, eps: float) -> Optional[float]:
    a = (res or {}).get("attacks", {}).get(attack)
    if not a:
        return None
    r = a["results"].get(f"{eps:g}")
    return None if r is None else r["robust_accuracy"]


def family_mean(res: Optional[Dict[str, Any]], attacks: List[str], eps: List[float]) -> Optional[float]:
    """Mean robust accuracy over the attacks of a family that ran, and over all budgets."""
    vals = [_acc(res, a, e) for a in attacks for e in eps]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def headline(data: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Proposed minus each reference model, per attack family, beside the paper's figure."""
    proposed = next(m for m in data["models"] if m["role"] == "proposed")
    rows = []
    for ref in (m for m in data["models"] if m["role"] in ("reference", "reference_quantized")):
        for fam in ("white", "black"):
            names = data[fam]
            p = family_mean(proposed["attacks"], names, data["eps"])
            r = family_mean(ref["attacks"], names, data["eps"])
            rows.append({
                "family": fam, "proposed": proposed["key"], "reference": ref["key"],
                "proposed_mean": p, "reference_mean": r,
                "delta_points": None if p is None or r is None else 100 * (p - r),
                "paper_delta_points": PAPER_DELTAS.get((data["dataset"], fam)),
            })
        p, r = worst_case_mean(proposed["attacks"], data["eps"]), worst_case_mean(ref["attacks"], data["eps"])
        rows.append({"family": "worst-case", "proposed": proposed["key"], "reference": ref["key"],
                     "proposed_mean": p, "reference_mean": r,
                     "delta_points": None if p is None or r is None else 100 * (p - r), "paper_delta_points": None})
    return rows


def worst_case_mean(res: Optional[Dict[str, Any]], eps: List[float]) -> Optional[float]:
    """Mean over budgets of per-image worst-case accuracy (robust only if every attack failed)."""
    wc = (res or {}).get("worst_case") or {}
    vals = [wc[f"{e:g}"]["robust_accuracy"] for e in eps if f"{e:g}" in wc]
    return sum(vals) / len(vals) if vals else None


def tables(data: Dict[str, Any]) -> Dict[str, Table]:
    eps = data["eps"]
    t: Dict[str, Table] = {}
    head = ["model", "role", "weights", "acts", "params", "weight KB", "clean acc % (test)", "epochs"]
    rows = []
    for m in data["models"]:
        s, q = m["summary"] or {}, m["config"].get("model", {}).get("quant", {})
        rows.append([m["label"], m["role"], q.get("weight", "float"), q.get("act", "float"),
                     f"{s.get('parameters', 0):,}" if s else "-", f"{s['weight_kb']:.1f}" if s else "-",
                     _pct(s.get("test_accuracy")) if s else "not trained", str(s.get("epochs", "-")) if s else "-"])
    t["models"] = (head, rows)

    attack_names = [a for a in data["white"] + data["black"]
                    if any(m["attacks"] and a in m["attacks"].get("attacks", {}) for m in data["models"])]
    for a in attack_names:
        rows = []
        for m in data["models"]:
            res = m["attacks"]
            rows.append([m["label"], _pct(res["clean_accuracy"]) if res else "-"] + [_pct(_acc(res, a, e)) for e in eps])
        t[f"attack:{a}"] = (["model", "clean"] + [f"eps {e:g}/255" for e in eps], rows)

    rows = []
    for m in data["models"]:
        res = m["attacks"]
        wc = (res or {}).get("worst_case", {})
        rows.append([m["label"], _pct(family_mean(res, data["white"], eps)), _pct(family_mean(res, data["black"], eps))]
                    + [_pct(wc.get(f"{e:g}", {}).get("robust_accuracy")) for e in eps])
    t["summary"] = (["model", "mean white-box", "mean black-box"] + [f"worst case eps {e:g}" for e in eps], rows)

    rows = []
    for m in data["models"]:
        mc = (m["attacks"] or {}).get("masking_checks")
        if not mc:
            rows.append([m["label"], "not attacked", ""])
            continue
        failed = [c for c in mc["checks"] if c["passed"] is False]
        rows.append([m["label"], mc["verdict"], "; ".join(f"{c['check']}: {c['detail']}" for c in failed)])
    t["masking"] = (["model", "verdict", "failed checks"], rows)

    rows = []
    for m in data["models"]:
        onnx = m.get("onnx_attacks")
        if not onnx:
            continue
        v = m.get("onnx_verify") or {}
        for a in onnx.get("attacks", {}):
            rows.append([m["label"], a, _pct((m["attacks"] or {}).get("clean_accuracy")), _pct(onnx["clean_accuracy"])]
                        + [f"{_pct(_acc(m['attacks'], a, e))} / {_pct(_acc(onnx, a, e))}" for e in eps])
        if v:
            rows.append([m["label"], "export check", "", "",
                         f"top-1 agreement {_pct(v.get('agreement'))}% on {v.get('n', '?')} test images; "
                         f"max logit diff {v.get('max_abs_logit_diff', float('nan')):.2g}"] + [""] * (len(eps) - 1))
    t["onnx"] = (["model", "attack", "clean PyTorch", "clean ONNX"] + [f"eps {e:g}: PyTorch / ONNX" for e in eps], rows)

    rows = []
    for h in headline(data):
        rows.append([h["family"] + ("-box" if h["family"] in ("white", "black") else " (all attacks, per image)"),
                     h["proposed"], h["reference"], _pct(h["proposed_mean"]),
                     _pct(h["reference_mean"]),
                     "-" if h["delta_points"] is None else f"{h['delta_points']:+.1f}",
                     "-" if h["paper_delta_points"] is None else f"{h['paper_delta_points']:+.1f}"])
    t["headline"] = (["attacks", "proposed", "reference", "proposed mean %", "reference mean %",
                      "delta (points)", "paper's delta"], rows)
    return t


def md_table(t: Table) -> str:
    head, rows = t
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(t: Table) -> str:
    head, rows = t
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def plots(data: Dict[str, Any]) -> Dict[str, bytes]:
    """PNG bytes: accuracy against epsilon per attack, and robust accuracy against weight memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = data["eps"]
    names = [a for a in data["white"] + data["black"]
             if any(m["attacks"] and a in m["attacks"].get("attacks", {}) for m in data["models"])]
    out: Dict[str, bytes] = {}
    if names:
        cols = min(3, len(names))
        rows = (len(names) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, a in zip(axes.flat, names):
            for m in data["models"]:
                res = m["attacks"]
                if not res or a not in res.get("attacks", {}):
                    continue
                xs = [0] + eps
                ys = [100 * res["clean_accuracy"]] + [100 * (_acc(res, a, e) or 0) for e in eps]
                ax.plot(xs, ys, marker="o", label=m["label"], lw=2.5 if m["role"] == "proposed" else 1.2)
            fam = next(iter(m["attacks"]["attacks"][a]["family"] for m in data["models"]
                            if m["attacks"] and a in m["attacks"]["attacks"]))
            ax.set_title(f"{a} ({fam}-box)")
            ax.set_xlabel("epsilon (/255, L-inf)")
            ax.set_ylabel("accuracy %")
            ax.set_ylim(-2, 100)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        out["accuracy_vs_eps.png"] = _png(fig)
        plt.close(fig)

    pts = []
    for m in data["models"]:
        if m["summary"] and m["attacks"]:
            pts.append((m["summary"]["weight_kb"], family_mean(m["attacks"], data["white"], eps),
                        family_mean(m["attacks"], data["black"], eps), m["label"], m["role"]))
    if pts:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for kb, w, b, label, role in pts:
            if w is not None:
                ax.scatter(kb, 100 * w, marker="o", s=70 if role == "proposed" else 35, color="tab:red")
            if b is not None:
                ax.scatter(kb, 100 * b, marker="s", s=70 if role == "proposed" else 35, color="tab:blue")
            ax.annotate(label, (kb, 100 * (w if w is not None else b or 0)), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        ax.scatter([], [], marker="o", color="tab:red", label="mean white-box")
        ax.scatter([], [], marker="s", color="tab:blue", label="mean black-box")
        ax.set_xscale("log")
        ax.set_xlabel("weight memory (KB, log scale)")
        ax.set_ylabel("robust accuracy % (mean over attacks and eps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out["robustness_vs_memory.png"] = _png(fig)
        plt.close(fig)
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _context(grid: Grid, budget: str, out: Path, data: Dict[str, Any]) -> List[str]:
    meta = _load(out / "reproduce.json") or {}
    sources = {(m["summary"] or {}).get("data_source") for m in data["models"]} - {None}
    attacked = [m for m in data["models"] if m["attacks"]]
    n = attacked[0]["attacks"]["n"] if attacked else None
    lines = [
        f"- dataset: **{grid.dataset}**, read from {', '.join(sorted(sources)) or 'n/a'}",
        f"- budget: **{budget}**; grid: `{grid.path.name}`; seed {meta.get('seed', 0)}",
        f"- command: `{meta.get('command') or f'tinyrobust reproduce --dataset {grid.dataset} --budget {budget} --out {out}'}`",
        f"- machine: {(meta.get('machine') or {}).get('platform', platform.platform())}, "
        f"{(meta.get('machine') or {}).get('cpu_count', '?')} CPUs",
        f"- attacks: every model on the same seeded, class-stratified {n} test images; L-inf budgets "
        f"{', '.join(f'{e:g}' for e in grid.eps)} (/255); robust accuracy counts clean errors as failures",
        f"- stage durations (s): {json.dumps(meta.get('stage_seconds', {}))}",
    ]
    if data.get("skipped_attacks"):
        lines.append(f"- not run at this budget (grid `skip_attacks`): {', '.join(data['skipped_attacks'])}")
    if attacked:
        lines.insert(4, f"- threat model: {attacked[0]['attacks']['meta'].get('threat_model', 'n/a')}")
    return lines


FOOTPRINT_NOTE = ("Weights at their bit widths (biases 32-bit; BN folds into the layer before it); activation "
                  "memory at the activation quantizer's bits: peak = largest single layer output, double buffer = "
                  "largest pair of consecutive tensors (docs/deployment.md).")


def footprint(grid: Grid, out: Path) -> Table:
    """Memory of every trained model of the grid beside the MLCommons Tiny references."""
    from ..export.footprint import footprint_run, reference_footprints

    head = ["model", "precision", "params", "weight KB", "peak act KB", "double buffer KB"]
    rows = []
    for m in grid.models:
        if not (out / "runs" / m.key / "model.safetensors").is_file():
            continue
        fp = footprint_run(out / "runs" / m.key, references=False)
        q = m.config.get("model", {}).get("quant", {})
        rows.append([m.label, f"w {q.get('weight', 'float')} / a {q.get('act', 'float')}", f"{fp['parameters']:,}",
                     f"{fp['weight_kb']:.1f}", f"{fp['peak_act_kb']:.1f}", f"{fp['double_buffer_kb']:.1f}"])
    for r in reference_footprints():
        if "skipped" in r:
            continue
        rows.append([f"reference {r['model']}", r["precision"], f"{r['parameters']:,}", f"{r['weight_kb']:.1f}",
                     f"{r['peak_act_kb']:.1f}", f"{r['double_buffer_kb']:.1f}"])
    return head, rows


def write_report(grid: Grid, budget: str, out: Path) -> Path:
    out = Path(out)
    data = collect(grid, out, budget)
    t = tables(data)
    pngs = plots(data)
    for name, blob in pngs.items():
        atomic_write(out / name, lambda tmp, b=blob: Path(tmp).write_bytes(b))
    atomic_write_json(out / "report.json", {"tables": {k: {"header": v[0], "rows": v[1]} for k, v in t.items()},
                                            "headline": headline(data), "data": data})
    ctx = _context(grid, budget, out, data)
    t["footprint"] = footprint(grid, out)
    footprint_md = md_table(t["footprint"])

    attack_sections = [(k.split(":", 1)[1], v) for k, v in t.items() if k.startswith("attack:")]
    md = [f"# tinyrobust reproduce: {grid.dataset}", "", *ctx, "",
          "## Headline: proposed model minus MLCommons Tiny reference",
          "Mean robust accuracy over the attacks of a family and over all budgets; the paper's figure "
          "is from the IJCNN 2023 abstract. The worst-case row counts an image as robust only if it survived "
          "every attack: it is the number to trust when a model is flagged for gradient masking below.", "",
          md_table(t["headline"]), "",
          "## Models", "", md_table(t["models"]), "",
          "## Robust accuracy (%) summary", "", md_table(t["summary"]), "",
          "## Gradient-masking checks", "", md_table(t["masking"]), ""]
    if t["onnx"][1]:
        md += ["## Does robustness carry over to the exported file?",
               "The proposed model exported to ONNX (QCDQ) and attacked black-box through onnxruntime, on the same "
               "images; robust accuracy (%) of the PyTorch model / of the exported file.", "", md_table(t["onnx"]), ""]
    md += ["## Memory footprint", "", FOOTPRINT_NOTE, "", footprint_md, ""]
    md += ["## Accuracy (%) under each attack", ""]
    for a, tab in attack_sections:
        md += [f"### {a}", "", md_table(tab), ""]
    for name in pngs:
        md += [f"![{name}]({name})", ""]
    atomic_write_text(out / "report.md", "\n".join(md))

    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.6em 0 1.4em}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px;text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%}code{background:#f5f5f5;padding:1px 4px}")
    body = [f"<h1>tinyrobust reproduce: {html.escape(grid.dataset)}</h1><ul>"]
    body += [f"<li>{html.escape(c[2:]).replace('**', '')}</li>" for c in ctx]
    body += ["</ul><h2>Headline: proposed model minus MLCommons Tiny reference</h2>", html_table(t["headline"]),
             "<h2>Models</h2>", html_table(t["models"]), "<h2>Robust accuracy (%) summary</h2>",
             html_table(t["summary"]), "<h2>Gradient-masking checks</h2>", html_table(t["masking"])]
    if t["onnx"][1]:
        body += ["<h2>Does robustness carry over to the exported file?</h2>",
                 "<p>Robust accuracy (%) of the PyTorch model / of the exported ONNX file under black-box attacks.</p>",
                 html_table(t["onnx"])]
    body += ["<h2>Memory footprint</h2>", f"<p>{html.escape(FOOTPRINT_NOTE)}</p>", html_table(t["footprint"])]
    for name, blob in pngs.items():
        body.append(f'<p><img alt="{name}" src="data:image/png;base64,{base64.b64encode(blob).decode()}"></p>')
    body.append("<h2>Accuracy (%) under each attack</h2>")
    for a, tab in attack_sections:
        body += [f"<h3>{html.escape(a)}</h3>", html_table(tab)]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>tinyrobust {html.escape(grid.dataset)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    atomic_write_text(out / "report.html", page)
    return out / "report.md"
