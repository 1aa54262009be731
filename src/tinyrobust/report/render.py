"""Write ``report.md`` and a self-contained ``report.html`` from a reproduce output folder.

Inputs: ``runs/<key>/summary.json`` (training) and ``attacks/<key>/robustness.json`` (attacks,
schema 2: per-image outcomes). The headline is the per-image worst case over one attack set shared
by every compared model (:mod:`.compare`), each accuracy with its Wilson 95% interval and n, each
proposed-minus-other delta with a paired 95% interval on the same images (:mod:`.stats`). Family
means, the paper's figure of merit, are a secondary table and carry the masking flag. Plots are PNGs
embedded in the HTML as base64 and written beside the Markdown.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import TinyRobustError
from ..io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from ..paths import portable_record, portable_text
from ..rundir import ONNX_VERIFY_FILE, ROBUSTNESS_FILE, ROBUSTNESS_ONNX_FILE, SUMMARY_FILE, WEIGHTS_FILE
from ..stats import format_ci
from .compare import MASKING_NOTE, check_schema, compare, cumulative, ekey, faced, masked, survived_both
from .grid import Grid

# Headline figures of Ayaz et al. (IJCNN 2023 abstract): proposed minus MLCommons/Tiny model,
# in accuracy points, averaged over the attack family.
PAPER_DELTAS = {
    ("cifar10", "white"): 8.3,
    ("speech_commands", "black"): 79.5,
    # the same claim, checked on the genuine log-mel set (trained on 8-bit log-mel JPEGs, not MFCCs: the
    # report names the dataset copy, so the comparison carries that caveat)
    ("speech_commands_logmel", "black"): 79.5,
    ("svhn", "black"): 6.5,
}
# What stands between a dataset's numbers and the paper's, said under the comparison with its figure.
PAPER_CAVEATS = {
    "speech_commands_logmel": "Caveats: the paper trains on MFCCs of the Speech Commands audio; these models "
    "train on the shared 8-bit log-mel JPEG set (no training audio exists here) and are tested on the official "
    "test WAVs through our log-mel front end, so the DS-CNN is adapted to 98x40 log-mel inputs; the attacks "
    "act on the log-mel pixels (feature domain; the waveform domain has its own report, grid "
    "speech_commands_wav); the paper's black-box attack set and budgets are not stated, ours is the common "
    "set above.",
    # the waveform grid (domain waveform) reports the same models; keyed (dataset, domain)
    ("speech_commands_logmel", "waveform"): "Caveats: the paper trains on MFCCs of the Speech Commands audio "
    "and states no waveform-domain attack; these models train on the shared 8-bit log-mel JPEG set and are "
    "attacked here on the official test WAVs (L-inf on the 16-bit samples, white-box gradients through our "
    "differentiable log-mel front end, black-box queries waveform in, label out), so the paper's figure is "
    "shown for orientation, not as a like-for-like claim; the attacks perturb float samples (a WAV file "
    "would round them), so these are upper bounds on what a file-level attacker needs.",
}


def paper_caveat(data: Dict[str, Any]) -> Optional[str]:
    """The caveat said under the paper comparison: the grid's (dataset, domain) entry, else its dataset's
    (feature domain only)."""
    domain = data.get("domain", "feature")
    if (data["dataset"], domain) in PAPER_CAVEATS:
        return PAPER_CAVEATS[(data["dataset"], domain)]
    return PAPER_CAVEATS.get(data["dataset"]) if domain == "feature" else None


Table = Tuple[List[str], List[List[str]]]


def _relabel_eps(text: str, data: Dict[str, Any]) -> str:
    """The attack code writes eps as ``<key>/255``; a grid with its own unit (waveform samples) relabels them."""
    for k, label in (data.get("eps_labels") or {}).items():
        if label != f"{k}/255":
            text = re.sub(rf"(?<![\d.]){re.escape(k)}/255", label, text)
    return text


def _eps_label(data: Dict[str, Any], e: float) -> str:
    """``2/255``, or the grid's own unit (``32 samples`` in the waveform domain)."""
    return (data.get("eps_labels") or {}).get(ekey(e), f"{e:g}/255")


def _eps_axis(data: Dict[str, Any]) -> str:
    if data.get("domain") == "waveform":
        return "epsilon (L-inf, 1/255 of the 16-bit sample range = 257 samples)"
    return "epsilon (/255, L-inf)"


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _load(path: Path) -> Optional[Dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else None


def check_fresh(
    out: Path, key: str, res: Dict[str, Any], name: str = ROBUSTNESS_FILE, runs: Optional[Path] = None
) -> None:
    """Refuse attack results computed on other weights than the run's (or from another surrogate);
    ``runs``: the folder of run folders (default ``<out>/runs``)."""
    where = f"attacks/{key}/{name}"
    meta = res.get("meta") or {}
    runs = out / "runs" if runs is None else runs
    weights = runs / key / WEIGHTS_FILE
    want = meta.get("model_sha256")
    if not want:
        raise TinyRobustError(f"{where} records no model_sha256: attack model {key} again with this version")
    if weights.is_file() and sha256_file(weights) != want:
        raise TinyRobustError(
            f"{where} is stale: it was computed on other weights than runs/{key}/{WEIGHTS_FILE} "
            f"(sha256 {want[:12]} vs {sha256_file(weights)[:12]}); attack {key} again "
            f"(tinyrobust reproduce --stages attack)"
        )
    for skey, s in (meta.get("surrogates") or {}).items():
        sw = runs / skey / WEIGHTS_FILE
        if sw.is_file() and s.get("sha256") and sha256_file(sw) != s["sha256"]:
            raise TinyRobustError(
                f"{where} is stale: its transfer@{skey} used other surrogate weights than "
                f"runs/{skey}/{WEIGHTS_FILE}; attack {key} again"
            )


def collect(grid: Grid, out: Path, budget: Optional[str] = None) -> Dict[str, Any]:
    """Gather every model's training summary and attack results into one JSON-able dict, and compare them."""
    models = []
    runs = grid.runs_root(out)
    for m in grid.models:
        summary = _load(runs / m.key / SUMMARY_FILE)
        attacks = _load(out / "attacks" / m.key / ROBUSTNESS_FILE)
        onnx = _load(out / "attacks" / m.key / ROBUSTNESS_ONNX_FILE)
        if attacks is not None:
            check_schema(m.key, attacks, f"attacks/{m.key}/{ROBUSTNESS_FILE}")
            check_fresh(out, m.key, attacks, runs=runs)
        if onnx is not None:
            check_schema(m.key, onnx, f"attacks/{m.key}/{ROBUSTNESS_ONNX_FILE}")
        models.append(
            {
                "key": m.key,
                "label": m.label,
                "role": m.role,
                "config": m.config,
                "group": m.group or m.key,
                "seed": m.seed,
                "summary": summary,
                "attacks": attacks,
                "onnx_attacks": onnx,
                "onnx_verify": _load(runs / m.key / ONNX_VERIFY_FILE),
                "weight_kb": _weight_kb(runs / m.key, summary),
            }
        )
    white, black = grid.attacks_for(budget) if budget else (grid.white, grid.black)
    data = {
        "dataset": grid.dataset,
        "eps": grid.eps,
        "eps_labels": {ekey(e): grid.eps_label(e) for e in grid.eps},
        "eps_in_unit": {ekey(e): grid.eps_in_unit(e) for e in grid.eps},
        "domain": grid.domain,
        "runs_dir": grid.runs_dir,
        "white": white,
        "black": black,
        "models": models,
        "skipped_attacks": [a for a in grid.white + grid.black if a not in white + black],
        "report_notes": list(grid.report_notes),
    }
    data["comparison"] = compare(models, grid.eps)
    return data


def _attack_names(data: Dict[str, Any]) -> List[str]:
    """Every attack any model faced, in the first attacked model's cascade order."""
    names: List[str] = []
    for m in data["models"]:
        if m["attacks"]:
            names += [a for a in faced(m["attacks"]) if a not in names]
    return names


def _family_of(data: Dict[str, Any], attack: str) -> str:
    for m in data["models"]:
        a = (m["attacks"] or {}).get("attacks", {}).get(attack)
        if a:
            return a.get("family", "white")
    return "white"


def family_mean(res: Optional[Dict[str, Any]], attacks: List[str], eps: List[float]) -> Optional[float]:
    """Mean over attacks and budgets of each attack's recorded robust accuracy (the paper's figure of
    merit; secondary: a mean lets a weak attack dilute a strong one)."""
    vals = [
        ((res or {}).get("attacks", {}).get(a) or {}).get("results", {}).get(ekey(e), {}).get("robust_accuracy")
        for a in attacks
        for e in eps
    ]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _mark(m: Dict[str, Any]) -> str:
    return f" ({MASKING_NOTE})" if masked(m["attacks"]) else ""


def _weight_kb(run_dir: Path, summary: Optional[Dict[str, Any]]) -> Optional[float]:
    """Weight KB counted by this version's footprint (scales and folded BatchNorm biases included), from
    the run's config; the summary's own figure only when the model cannot be rebuilt (older summaries
    hold the count without scales and folded biases)."""
    from .pareto import recompute_weight_kb

    if not summary:
        return None
    try:
        return recompute_weight_kb(run_dir)
    except Exception:  # noqa: BLE001 - a config this version cannot build: keep the recorded figure
        return summary.get("weight_kb")


def _pm(v: Dict[str, Any], scale: float = 100.0, sign: bool = False) -> str:
    mean = f"{scale * v['mean']:+.1f}" if sign else f"{scale * v['mean']:.1f}"
    return mean + (f" +- {scale * v['std']:.1f}" if v.get("std") is not None else "")


def _seed_tables(data: Dict[str, Any]) -> Tuple[Table, Table]:
    """Mean +- std over seeds per multi-seed grid entry, and the proposed entry minus each other one."""
    eps = data["eps"]
    sd = (data["comparison"] or {}).get("seeds") or {"groups": {}, "deltas": []}
    by_key = {m["key"]: m for m in data["models"]}
    rows = []
    for g, row in sd["groups"].items():
        masked_any = any(masked(by_key[k]["attacks"]) for k in row["members"])
        rows.append(
            [
                by_key[g]["label"] + (f" ({MASKING_NOTE} for some seed)" if masked_any else ""),
                ", ".join(map(str, row["seeds"])),
            ]
            + [_pm(row["clean"])]
            + [_pm(row["worst_case"][ekey(e)]) for e in eps]
        )
    seeds_t = (["grid entry", "seeds", "clean % mean +- std"] + [f"eps {_eps_label(data, e)} %" for e in eps], rows)
    rows = []
    for other in dict.fromkeys(d["other"] for d in sd["deltas"]):
        ds = {d["eps"]: d for d in sd["deltas"] if d["other"] == other}
        cells = []
        for e in eps:
            d = ds[ekey(e)]
            per = "; ".join(
                f"seed {p['seed']}: {100 * p['delta']:+.1f} [{100 * p['ci95'][0]:+.1f}, {100 * p['ci95'][1]:+.1f}]"
                for p in d["per_seed"]
            )
            cells.append(f"{_pm(d, sign=True)} ({per})")
        rows.append([by_key[other]["label"]] + cells)
    deltas_t = (["proposed minus"] + [f"eps {_eps_label(data, e)} points" for e in eps], rows)
    return seeds_t, deltas_t


def tables(data: Dict[str, Any]) -> Dict[str, Table]:
    eps = data["eps"]
    cmp = data["comparison"]
    attacked = [m for m in data["models"] if m["attacks"]]
    t: Dict[str, Table] = {}

    head = ["model", "role", "weights", "acts", "params", "weight KB", "clean acc % (test)", "epochs"]
    rows = []
    for m in data["models"]:
        s, q = m["summary"] or {}, m["config"].get("model", {}).get("quant", {})
        rows.append(
            [
                m["label"],
                m["role"],
                q.get("weight", "float"),
                q.get("act", "float"),
                f"{s.get('parameters', 0):,}" if s else "-",
                f"{m['weight_kb']:.1f}" if m.get("weight_kb") is not None else "-",
                _pct(s.get("test_accuracy")) if s else "not trained",
                str(s.get("epochs", "-")) if s else "-",
            ]
        )
    t["models"] = (head, rows)

    # headline: worst case over the common set, Wilson CI and n
    gradient_free = any(_family_of(data, a) in ("black", "ensemble") for a in cmp["common"])
    rows = []
    for m in data["models"]:
        if not m["attacks"]:
            rows.append([m["label"], m["role"], "not attacked"] + ["n/a"] * len(eps) + ["0"])
            continue
        pm = cmp["models"][m["key"]]
        clean = format_ci(pm["clean"]["robust_accuracy"], pm["clean"]["ci95"])
        if pm["masked"] and not gradient_free:  # its worst case rests on gradients it masks: void
            rows.append(
                [m["label"] + _mark(m), m["role"], clean]
                + ["not headlined: no gradient-free attack in the common set"] * len(eps)
                + [str(pm["n"])]
            )
            continue
        rows.append(
            [m["label"] + _mark(m), m["role"], clean]
            + [format_ci(pm["worst_case"][ekey(e)]["robust_accuracy"], pm["worst_case"][ekey(e)]["ci95"]) for e in eps]
            + [str(pm["n"])]
        )
    t["headline"] = (
        ["model", "role", "clean % [95% CI]"] + [f"eps {_eps_label(data, e)} % [95% CI]" for e in eps] + ["n"],
        rows,
    )

    labels = {m["key"]: m["label"] for m in data["models"]}
    by_key = {m["key"]: m for m in data["models"]}
    rows = []
    proposed_key = next((d["proposed"] for d in cmp["deltas"]), None)
    for other in dict.fromkeys(d["other"] for d in cmp["deltas"]):
        ds = {d["eps"]: d for d in cmp["deltas"] if d["other"] == other}
        void = not gradient_free and (cmp["models"][other]["masked"] or cmp["models"][proposed_key]["masked"])
        if void:  # a difference with a masked model's gradient-only worst case means nothing
            rows.append(
                [labels[other] + _mark(by_key[other]), by_key[other]["role"]]
                + ["not headlined: gradient masking suspected, no gradient-free attack in the common set"] * len(eps)
                + [str(ds[ekey(eps[0])].get("n", cmp["n_shared"]))]
            )
            continue
        rows.append(
            [labels[other] + _mark(by_key[other]), by_key[other]["role"]]
            + [
                f"{100 * ds[ekey(e)]['delta']:+.1f} [{100 * ds[ekey(e)]['ci95'][0]:+.1f}, "
                f"{100 * ds[ekey(e)]['ci95'][1]:+.1f}]"
                for e in eps
            ]
            + [str(ds[ekey(eps[0])].get("n", cmp["n_shared"]))]
        )
    t["seeds"], t["seed_deltas"] = _seed_tables(data)
    t["deltas"] = (
        ["proposed minus", "role"]
        + [f"eps {_eps_label(data, e)} points [paired 95% CI]" for e in eps]
        + ["n (shared)"],
        rows,
    )

    # black-box summary: per-image worst case over the common black-box attacks
    rows = []
    for m in attacked:
        bw = cmp["models"][m["key"]]["black_worst_case"]
        if not bw:
            continue
        cells = []
        for e in eps:
            b = bw[ekey(e)]
            cell = format_ci(b["robust_accuracy"], b["ci95"])
            if b["undetermined"]:
                cell = (
                    f"{_pct(b['robust_accuracy'])}-{_pct(b['upper'])} (bounds: {b['undetermined']} image(s) "
                    f"broken first by white-box attacks)"
                )
            cells.append(cell)
        rows.append([m["label"], ", ".join(cmp["black_common"])] + cells)
    t["black"] = (["model", "black-box attacks"] + [f"eps {_eps_label(data, e)} % [95% CI]" for e in eps], rows)

    # secondary: family means (the paper's figure of merit), masking flagged
    fam_attacks = {
        f: [a for a in cmp["common"] if _family_of(data, a) in ((f, "ensemble") if f == "white" else (f,))]
        for f in ("white", "black")
    }
    rows = []
    proposed = next((m for m in attacked if m["role"] == "proposed"), None)
    for m in attacked:
        row = [m["label"], m["role"]]
        for f in ("white", "black"):
            v = family_mean(m["attacks"], fam_attacks[f], eps)
            row.append(_pct(v) + (f" ({MASKING_NOTE})" if f == "white" and masked(m["attacks"]) else ""))
        rows.append(row)
    t["family"] = (["model", "role", "mean white-box %", "mean black-box %"], rows)
    rows = []
    if proposed is not None:
        for ref in (m for m in attacked if m["role"] in ("reference", "reference_quantized")):
            for f in ("white", "black"):
                p = family_mean(proposed["attacks"], fam_attacks[f], eps)
                r = family_mean(ref["attacks"], fam_attacks[f], eps)
                either = masked(proposed["attacks"]) or masked(ref["attacks"])
                flag = f" ({MASKING_NOTE})" if f == "white" and either else ""
                paper = PAPER_DELTAS.get((data["dataset"], f))
                rows.append(
                    [
                        f"{f}-box mean",
                        ref["label"],
                        _pct(p),
                        _pct(r),
                        ("n/a" if p is None or r is None else f"{100 * (p - r):+.1f}") + flag,
                        "-" if paper is None else f"{paper:+.1f}",
                    ]
                )
    t["paper"] = (
        ["attacks", "reference", "proposed mean %", "reference mean %", "delta (points)", "paper's delta"],
        rows,
    )

    # per attack: cumulative robust accuracy after it in each model's cascade; n/a where not faced
    for a in _attack_names(data):
        rows = []
        for m in data["models"]:
            res = m["attacks"]
            if not res:
                rows.append([m["label"], "n/a"] + ["n/a"] * len(eps))
                continue
            reason = cmp["skipped"].get(m["key"], {}).get(a) or (res.get("skipped") or {}).get(a)
            cells = []
            for e in eps:
                c = cumulative(res, a, e)
                cells.append(
                    "n/a" if c is None else f"{_pct(c['robust_accuracy'])} (broke {c['broke']} of {c['tried']})"
                )
            if a not in res["attacks"]:
                cells = [f"n/a ({reason or 'not run'})"] + ["n/a"] * (len(eps) - 1)
            rows.append([m["label"], _pct(res["clean_accuracy"])] + cells)
        t[f"attack:{a}"] = (["model", "clean"] + [f"eps {_eps_label(data, e)}" for e in eps], rows)

    rows = []
    for m in attacked:
        win = m["attacks"].get("white_box_winner") or {}
        if win:
            rows.append([m["label"]] + [_winner(win.get(ekey(e))) for e in eps])
    t["winner"] = (["model"] + [f"eps {_eps_label(data, e)}" for e in eps], rows)

    rows = []
    for m in data["models"]:
        mc = (m["attacks"] or {}).get("masking_checks")
        if not mc:
            rows.append([m["label"], "not attacked" if not m["attacks"] else "no checks run", ""])
            continue
        failed = [c for c in mc["checks"] if c["passed"] is False]
        detail = "; ".join(f"{c['check']}: {c['detail']}" for c in failed)
        rows.append([m["label"], mc["verdict"], _relabel_eps(detail, data)])
    t["masking"] = (["model", "verdict", "failed checks"], rows)

    rows = []
    for m in data["models"]:
        onnx = m.get("onnx_attacks")
        if not onnx or not m["attacks"]:
            continue
        v = m.get("onnx_verify") or {}
        for a in onnx.get("attacks", {}):
            cells = []
            for e in eps:
                s = survived_both(m["attacks"], onnx, a, e)
                cells.append("n/a" if s is None else f"{s[0]} / {s[1]} of {s[2]}")
            rows.append([m["label"], a, _pct(m["attacks"]["clean_accuracy"]), _pct(onnx["clean_accuracy"])] + cells)
        if v:
            rows.append(
                [
                    m["label"],
                    "export check",
                    "",
                    "",
                    f"top-1 agreement {_pct(v.get('agreement'))}% on {v.get('n', '?')} test images; "
                    f"max logit diff {v.get('max_abs_logit_diff', float('nan')):.2g}",
                ]
                + [""] * (len(eps) - 1)
            )
    t["onnx"] = (
        ["model", "attack", "clean PyTorch", "clean ONNX"] + [f"eps {e:g}: survived PyTorch / ONNX" for e in eps],
        rows,
    )
    return t


def _winner(w: Optional[Dict[str, Any]]) -> str:
    if not w or not w.get("attack"):
        return "n/a"
    if w.get("n_broken") is not None and w.get("robust_accuracy") is None:
        return f"{w['attack']} (broke {w['n_broken']})"
    return f"{w['attack']} ({_pct(w.get('robust_accuracy'))}%)"


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
    """PNG bytes: headline worst case against eps (with 95% CIs) and robust accuracy after each attack of
    the cascade (accuracy against weight memory: :mod:`.pareto`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = data["eps"]
    cmp = data["comparison"]
    attacked = [m for m in data["models"] if m["attacks"]]
    out: Dict[str, bytes] = {}
    if attacked:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for idx, m in enumerate(attacked):
            wc = cmp["models"][m["key"]]["worst_case"]
            ys = [100 * wc[ekey(e)]["robust_accuracy"] for e in eps]
            # max(0, .): interval ends are stored rounded, so an end can sit a hair inside the estimate
            lo = [max(0.0, y - 100 * wc[ekey(e)]["ci95"][0]) for y, e in zip(ys, eps)]
            hi = [max(0.0, 100 * wc[ekey(e)]["ci95"][1] - y) for y, e in zip(ys, eps)]
            shift = 2 ** (0.06 * (idx - (len(attacked) - 1) / 2))  # side by side, so the intervals stay readable
            ax.errorbar(
                [e * shift for e in eps],
                ys,
                yerr=[lo, hi],
                marker="o",
                capsize=3,
                label=m["label"] + _mark(m),
                lw=2.5 if m["role"] == "proposed" else 1.2,
            )
        ax.set_xlabel(_eps_axis(data))
        ax.set_xscale("log", base=2)
        ax.set_xticks(eps, [f"{e:g}" for e in eps])
        ax.set_ylabel("worst-case robust accuracy % (95% CI)")
        ax.set_title("headline: per-image worst case over the common attack set", fontsize=9)
        ax.set_ylim(-2, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out["worst_case_vs_eps.png"] = _png(fig)
        plt.close(fig)

    names = _attack_names(data)
    if names:
        cols = min(3, len(names))
        rows = (len(names) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, a in zip(axes.flat, names):
            for m in attacked:
                if a not in m["attacks"]["attacks"]:
                    continue
                ys = [100 * m["attacks"]["clean_accuracy"]] + [
                    100 * cumulative(m["attacks"], a, e)["robust_accuracy"] for e in eps
                ]
                ax.plot([0] + eps, ys, marker="o", label=m["label"], lw=2.5 if m["role"] == "proposed" else 1.2)
            ax.set_title(f"after {a} ({_family_of(data, a)}-box)", fontsize=9)
            ax.set_xlabel(_eps_axis(data))
            ax.set_ylabel("accuracy %")
            ax.set_ylim(-2, 100)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        out["accuracy_vs_eps.png"] = _png(fig)
        plt.close(fig)

    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _machine(meta: Dict[str, Any]) -> str:
    m = meta.get("machine") or {}
    s = f"{m.get('platform', platform.platform())}, {m.get('processor') or '?'}, {m.get('cpu_count', '?')} CPUs"
    if m.get("accelerator"):
        s += f", accelerator {m['accelerator']}"
    return s


def waveform_eps_db(grid: Grid, data: Dict[str, Any], data_dir: Optional[str | Path] = None):
    """Waveform grids: each eps in dB below the peak of the attacked clips (median, 10th/90th percentile
    over the largest attacked subset), read from the test WAVs; None for other grids or without the data."""
    if grid.domain != "waveform":
        return None
    subsets = [((m["attacks"] or {}).get("meta") or {}).get("subset") or {} for m in data["models"]]
    indices = max((s.get("indices") or [] for s in subsets), key=len, default=[])
    if not indices:
        return None
    from ..data.datasets import load_dataset
    from ..data.waveform import SAMPLES_PER_255TH, eps_db_below_peak

    try:
        ds = load_dataset("speech_commands_wav", "test", data_dir)
    except TinyRobustError:  # the report still renders without the WAVs; the line says n/a
        return None
    import numpy as np

    db = eps_db_below_peak(ds.x[np.asarray(indices)], [e * SAMPLES_PER_255TH for e in grid.eps])
    return {"n": len(indices), "by_eps": {ekey(e): v for e, v in zip(grid.eps, db.values())}}


def whole_grid_command(cmd: str) -> str:
    """The recorded ``reproduce`` call without the options that restrict it to part of the grid
    (``--models``, ``--stages``), only quieten it or name the machines it ran on (``--address``): the command
    that gives the whole report. A grid is often run in parts (one model per process on a 2-core machine),
    and the last part is what was recorded."""
    words, out, skip = cmd.split(), [], False
    for w in words:
        if skip:
            skip = False
            continue
        name = w.split("=", 1)[0]
        if name in ("--models", "--stages", "--address"):
            skip = "=" not in w
            continue
        if name == "--quiet":
            continue
        out.append(w)
    return " ".join(out)


def stage_totals(seconds: Dict[str, float]) -> str:
    """``{"train@<time>": s, ...}`` as total hours per stage and the number of calls."""
    totals: Dict[str, List[float]] = {}
    for key, sec in seconds.items():
        totals.setdefault(key.split("@", 1)[0], []).append(float(sec))
    return (
        "; ".join(f"{stage} {sum(v) / 3600:.2f} h in {len(v)} call(s)" for stage, v in sorted(totals.items())) or "n/a"
    )


def _context(grid: Grid, budget: str, out: Path, data: Dict[str, Any]) -> List[str]:
    meta = _load(out / "reproduce.json") or {}
    sources = {((m["attacks"] or {}).get("meta") or {}).get("dataset_source") for m in data["models"]} - {None}
    sources = sources or {(m["summary"] or {}).get("data_source") for m in data["models"]} - {None}
    # one archive, extracted into differently keyed cache folders on different machines: said once
    sources = {re.sub(r" extracted to \S+", " (extracted once into the cache)", s) for s in sources}
    attacked = [m for m in data["models"] if m["attacks"]]
    ns = sorted({len(m["attacks"]["clean_correct"]) for m in attacked})
    last = meta.get("command") or f"tinyrobust reproduce --dataset {grid.dataset} --budget {budget} --out {out.name}"
    cmd = whole_grid_command(last)
    lines = [
        f"- dataset: **{grid.dataset}**, read from {', '.join(sorted(sources)) or 'n/a'}",
        f"- budget: **{budget}**; grid: `{grid.path.name}`; seed {meta.get('seed', 0)}",
        f"- command: `{cmd}`" + (f" (the last call, one part of it: `{last}`)" if cmd != last else ""),
        f"- machine: {_machine(meta)}",
        f"- attacks: every model on the same seeded, class-stratified test images ({'/'.join(map(str, ns)) or 'n/a'} "
        f"images; smaller subsets are the first images of larger ones); L-inf budgets "
        f"{', '.join(grid.eps_label(e) for e in grid.eps)}; robust accuracy counts clean errors as failures",
        f"- stage durations: {stage_totals(meta.get('stage_seconds') or {})} (each call's seconds: reproduce.json)",
    ]
    if data.get("skipped_attacks"):
        lines.append(f"- not run at this budget (grid `skip_attacks`): {', '.join(data['skipped_attacks'])}")
    if attacked:
        lines.insert(4, f"- threat model: {attacked[0]['attacks']['meta'].get('threat_model', 'n/a')}")
    if grid.domain == "waveform":
        db = data.get("eps_db")
        lines.append(
            "- eps in dB below each attacked clip's peak (20 log10(peak / eps)), median [10th, 90th percentile] "
            + (
                f"over the {db['n']} clips: "
                + "; ".join(
                    f"{grid.eps_label(e)}: {v['median']:g} dB [{v['p10']:g}, {v['p90']:g}]"
                    for e, v in zip(grid.eps, db["by_eps"].values())
                )
                if db
                else "n/a (the test WAVs were not found when the report was written)"
            )
        )
    return lines


def _common_note(data: Dict[str, Any]) -> List[str]:
    cmp = data["comparison"]
    lines = [
        f"The per-image worst case over the attacks every compared model faced: "
        f"**{', '.join(cmp['common']) or 'none'}**. An image counts as robust only if it was classified "
        f"correctly and no attack of this set broke it. Brackets: Wilson 95% interval."
    ]
    for a, keys in cmp["left_out"].items():
        why = "; ".join(f"{k}: {cmp['skipped'].get(k, {}).get(a, 'not run')}" for k in keys)
        lines.append(f"Left out of the common set (shown as n/a below): **{a}** ({why}).")
    flagged = [m["label"] for m in data["models"] if masked(m["attacks"])]
    if flagged:
        has_black = bool(cmp["black_common"])
        lines.append(
            f"{MASKING_NOTE} for: {', '.join(flagged)}; "
            + (
                "the common set includes black-box attacks, so their worst case does not rest on gradients "
                "alone, but read it as an upper bound."
                if has_black
                else "the common set has no black-box attack: their worst case is an upper bound only."
            )
        )
    reused = [(m["label"], (m["attacks"] or {}).get("reused") or {}) for m in data["models"]]
    reused = [(label, r) for label, r in reused if r.get("units")]
    if reused:
        lines.append(
            "Attack results taken from another grid's result of the same weights, images, seed and attack "
            "parameters instead of attacked again (each (attack, eps) unit is seeded on its own, so a unit "
            "is taken only where its attacked images match too; docs/attacks.md, Resuming): "
            + "; ".join(f"{label}: {len(r['units'])} units from {r.get('from')}" for label, r in reused)
            + "."
        )
    lines += [f"Grid note: {note}" for note in data.get("report_notes") or []]
    return lines


FOOTPRINT_NOTE = (
    "Weights at their bit widths (biases 32-bit; BN folds into the layer before it); activation "
    "memory at the activation quantizer's bits: peak = largest single layer output, double buffer = "
    "largest pair of consecutive tensors (docs/deployment.md)."
)


def footprint(grid: Grid, out: Path) -> Table:
    """Memory of every trained model of the grid beside the MLCommons Tiny references."""
    from ..export.footprint import footprint_run, reference_footprints

    head = ["model", "precision", "params", "weight KB", "peak act KB", "double buffer KB"]
    rows = []
    runs = grid.runs_root(out)
    for m in grid.models:
        if not (runs / m.key / WEIGHTS_FILE).is_file():
            continue
        fp = footprint_run(runs / m.key, references=False)
        q = m.config.get("model", {}).get("quant", {})
        rows.append(
            [
                m.label,
                f"w {q.get('weight', 'float')} / a {q.get('act', 'float')}",
                f"{fp['parameters']:,}",
                f"{fp['weight_kb']:.1f}",
                f"{fp['peak_act_kb']:.1f}",
                f"{fp['double_buffer_kb']:.1f}",
            ]
        )
    for r in reference_footprints():
        if "skipped" in r:
            continue
        rows.append(
            [
                f"reference {r['model']}",
                r["precision"],
                f"{r['parameters']:,}",
                f"{r['weight_kb']:.1f}",
                f"{r['peak_act_kb']:.1f}",
                f"{r['double_buffer_kb']:.1f}",
            ]
        )
    return head, rows


def _sections(
    data: Dict[str, Any], t: Dict[str, Table], pareto_notes: Optional[List[str]] = None
) -> List[Tuple[str, str, List[str], Optional[Table]]]:
    """(level, title, paragraphs, table) in report order; shared by Markdown and HTML."""
    s: List[Tuple[str, str, List[str], Optional[Table]]] = [
        ("##", "Headline: worst-case robust accuracy (%)", _common_note(data), t["headline"]),
        (
            "##",
            "Proposed model minus each other model (points)",
            [
                "Each pair on the images both models were attacked on (subsets are nested: the first n of each; "
                "n per row), "
                "worst case over the common set; interval: Newcombe's paired score interval (95%). An interval that "
                "excludes 0 is a difference these images can show."
            ],
            t["deltas"],
        ),
    ]
    if t["seeds"][1]:
        s.append(
            (
                "##",
                "Over seeds: mean +- std",
                [
                    "Grid entries trained with more than one seed (`seeds:` in the grid): clean and worst-case robust "
                    "accuracy (common set, as in the headline) on the attacked images, mean +- sample standard "
                    "deviation over the seeds. The headline rows above are the entries' own seed."
                ],
                t["seeds"],
            )
        )
        if t["seed_deltas"][1]:
            s.append(
                (
                    "###",
                    "Proposed minus each multi-seed entry, over seeds",
                    [
                        "Per seed, the proposed entry minus the other entry trained with the same seed, paired on "
                        "shared images (Newcombe 95% interval in brackets); then mean +- std of those differences."
                    ],
                    t["seed_deltas"],
                )
            )
    if t["black"][1]:
        s.append(
            (
                "##",
                "Black-box: per-image worst case (%)",
                [
                    "Robust only if no black-box attack of the common set broke the image (not a mean over attacks). "
                    "Under the cascade black-box attacks only try images the white-box attacks left; where some were "
                    "broken first, the exact value lies between the bounds shown."
                ],
                t["black"],
            )
        )
    s += [
        ("##", "Models", [], t["models"]),
        ("##", "Gradient-masking checks", [], t["masking"]),
        (
            "###",
            "Strongest white-box attack per model",
            [
                "Under the cascade: the white-box attack that broke the most images in its place of the cascade; "
                "without it: the one with the lowest robust accuracy. Straight-through gradients losing to bpda (or to "
                "AutoAttack's Square stage) is a sign of gradient masking."
            ],
            t["winner"] if t["winner"][1] else None,
        ),
        (
            "##",
            "Secondary: family means (the paper's figure of merit)",
            [
                "Mean over the common set's attacks of a family and over all eps of each attack's recorded robust "
                "accuracy, as the paper reports it; the paper's figure is from the IJCNN 2023 abstract. A mean lets "
                "weak attacks "
                f'dilute strong ones and white-box means are void for a model marked "{MASKING_NOTE}": the headline '
                f"above is the number to quote."
            ],
            t["family"],
        ),
        (
            "###",
            "Proposed minus reference, family means",
            [paper_caveat(data)] if paper_caveat(data) else [],
            t["paper"],
        ),
    ]
    if t["onnx"][1]:
        s.append(
            (
                "##",
                "Does robustness carry over to the exported file?",
                [
                    "The proposed model exported to ONNX (QCDQ) and attacked black-box through onnxruntime, on the "
                    "same images: images that survived in PyTorch / in the exported file, of those both runs tried."
                ],
                t["onnx"],
            )
        )
    if "pareto" in t:
        s.append(("##", "Robustness vs memory: Pareto front", pareto_notes or [], t["pareto"]))
    s.append(("##", "Memory footprint", [FOOTPRINT_NOTE], t["footprint"]))
    s.append(
        (
            "##",
            "Accuracy (%) after each attack of the cascade",
            [
                "Per-image worst case over this attack and every attack before it in the model's cascade (broke: "
                "images this attack broke of those it tried). n/a: the model did not face the attack (reason given)."
            ],
            None,
        )
    )
    for k, tab in t.items():
        if k.startswith("attack:"):
            s.append(("###", k.split(":", 1)[1], [], tab))
    return s


def write_report(
    grid: Grid,
    budget: str,
    out: Path,
    extra_runs: Optional[List[str | Path]] = None,
    data_dir: Optional[str | Path] = None,
) -> Path:
    """``extra_runs``: run folders (or glob patterns) drawn on the Pareto plots beside the grid's
    models, added to the grid's ``pareto_runs`` (relative ones taken from ``out``). Every path the
    report writes is made portable (paths.py; ``data_dir``: the data directory the runs read)."""
    from . import pareto

    out = Path(out)
    data = collect(grid, out, budget)
    data["eps_db"] = waveform_eps_db(grid, data, data_dir)
    t = tables(data)
    t["footprint"] = footprint(grid, out)
    runs = pareto.resolve_extra_runs(list(grid.pareto_runs) + list(extra_runs or []), out)
    front = pareto.collect_points(data, out, runs)
    t["pareto"] = pareto.table(front)
    pngs = plots(data)
    pareto_pngs = pareto.plots(front)
    pngs.update(pareto_pngs)
    for name, blob in pngs.items():
        atomic_write_bytes(out / name, blob)
    record = {
        "tables": {k: {"header": v[0], "rows": v[1]} for k, v in t.items()},
        "comparison": data["comparison"],
        "pareto": front,
        "data": data,
    }
    atomic_write_json(out / "report.json", portable_record(record, data_dir))
    ctx = _context(grid, budget, out, data)
    sections = _sections(
        data, t, pareto.notes(front) + [f"Plots: {', '.join(pareto_pngs) or 'none (no point has a value)'}."]
    )

    title = f"tinyrobust reproduce: {grid.dataset}" + (
        f" (waveform domain, grid {grid.path.stem})" if grid.domain == "waveform" else ""
    )
    md = [f"# {title}", "", *ctx, ""]
    for level, title, paras, tab in sections:
        md += [f"{level} {title}", ""]
        for p in paras:
            md += [p, ""]
        if tab is not None:
            md += [md_table(tab), ""]
    for name in pngs:
        md += [f"![{name}]({name})", ""]
    atomic_write_text(out / "report.md", portable_text("\n".join(md), data_dir))

    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.6em 0 1.4em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%}code{background:#f5f5f5;padding:1px 4px}"
    )
    body = [f"<h1>{html.escape(title)}</h1><ul>"]
    body += [f"<li>{html.escape(c[2:]).replace('**', '')}</li>" for c in ctx]
    body.append("</ul>")
    for level, title, paras, tab in sections:
        tag = "h2" if level == "##" else "h3"
        body.append(f"<{tag}>{html.escape(title)}</{tag}>")
        body += [f"<p>{html.escape(p).replace('**', '')}</p>" for p in paras]
        if tab is not None:
            body.append(html_table(tab))
    for name, blob in pngs.items():
        body.append(f'<p><img alt="{name}" src="data:image/png;base64,{base64.b64encode(blob).decode()}"></p>')
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>tinyrobust {html.escape(grid.dataset)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    atomic_write_text(out / "report.html", portable_text(page, data_dir))
    return out / "report.md"
