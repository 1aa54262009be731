"""The two threat models side by side on one speech_commands_logmel run, on the same official test clips.

Usage: TINYROBUST_DATA=<datasets> python benchmarks/logmel_frontend_waveform_attack.py --run RUN_DIR
       [--n 100] [--pgd-steps 10] [--square-queries 200] [--feature-eps 1,2,4,8] [--wave-eps 8,32,128,512]
       [--out benchmarks/results/logmel_waveform_attack.json]

- feature domain: L-inf on the log-mel pixels (eps in pixel levels /255), the run's model as trained;
- waveform domain: L-inf on the 16-bit samples (eps in sample units; also given in the attack code's
  /255 units and as median dB below the clip's peak), ``WaveformModel`` = front end + the same model;
  white-box PGD backpropagates through the front end, Square queries WAV in, label out.
Same seeded stratified clips in both (the two datasets list the official test clips in one order).
Quick sanity-level budgets (not the grid's full attack protocol); masking checks are off.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tinyrobust.attacks.runner import run_attacks
from tinyrobust.data import load_dataset, stratified_subset, to_tensors
from tinyrobust.data.waveform import WaveformModel, convert_eps, unit_to_samples
from tinyrobust.runs import load_run


def robust(res: dict) -> dict:
    return {a: {e: r.get("robust_accuracy") for e, r in v["results"].items()} for a, v in res["attacks"].items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--pgd-steps", type=int, default=10)
    ap.add_argument("--square-queries", type=int, default=200)
    ap.add_argument("--feature-eps", default="1,2,4,8")
    ap.add_argument("--wave-eps", default="8,32,128,512")
    ap.add_argument("--out", default="benchmarks/results/logmel_waveform_attack.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    run = load_run(a.run)
    feat = load_dataset("speech_commands_logmel", "test")
    wave = load_dataset("speech_commands_wav", "test")
    if not np.array_equal(feat.y, wave.y):
        raise SystemExit("the two test datasets list the clips in different orders")
    idx = np.asarray(stratified_subset(feat.y, min(a.n, len(feat.y)), 0))
    params = {"pgd": {"steps": a.pgd_steps}, "square": {"queries": a.square_queries}}
    fx, fy = to_tensors(feat, idx)
    feps = [float(e) for e in a.feature_eps.split(",")]
    res_f = run_attacks(
        run.model,
        fx.numpy(),
        fy.numpy(),
        ["fgsm", "pgd", "square"],
        feps,
        params=params,
        progress=False,
        masking_checks=False,
    )
    wx, wy = to_tensors(wave, idx)
    weps = [float(e) for e in a.wave_eps.split(",")]
    weps255 = [convert_eps(e, "samples", "eps255") for e in weps]
    res_w = run_attacks(
        WaveformModel(run.model).eval(),
        wx.numpy(),
        wy.numpy(),
        ["fgsm", "pgd", "square"],
        weps255,
        params=params,
        progress=False,
        masking_checks=False,
    )
    peaks = np.abs(unit_to_samples(wx.numpy().astype(np.float64))).reshape(len(idx), -1).max(1)
    db = {f"{e:g}": float(np.median([convert_eps(e, "samples", "db", peak=p) for p in peaks if p > 0])) for e in weps}
    command = (
        f"python benchmarks/logmel_frontend_waveform_attack.py --run {a.run} --n {a.n} "
        f"--pgd-steps {a.pgd_steps} --square-queries {a.square_queries} --feature-eps {a.feature_eps} "
        f"--wave-eps {a.wave_eps}"
    )
    result = {
        "command": command,
        "run": Path(a.run).name,
        "n": len(idx),
        "clean_accuracy_feature": res_f["clean_accuracy"],
        "clean_accuracy_waveform": res_w["clean_accuracy"],
        "feature_domain": {"eps_pixel_levels": feps, "robust_accuracy": robust(res_f)},
        "waveform_domain": {
            "eps_samples": weps,
            "eps255": weps255,
            "median_db_below_peak": db,
            "robust_accuracy": robust(res_w),
        },
        "seconds": round(time.time() - t0, 1),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Feature- vs waveform-domain attacks on {Path(a.run).name} ({len(idx)} official test clips)",
        "",
        f"Command: `TINYROBUST_DATA=<datasets> {command}`; {platform.platform()}, torch {torch.__version__}, "
        f"1 thread, {result['seconds']} s. Sanity-level budgets (PGD {a.pgd_steps} steps, Square "
        f"{a.square_queries} queries), no masking checks: upper bounds on robust accuracy.",
        "",
        f"Clean accuracy: {100 * res_f['clean_accuracy']:.1f}% (log-mel input), "
        f"{100 * res_w['clean_accuracy']:.1f}% (waveform input through the front end).",
        "",
        "Feature domain (L-inf on log-mel pixels; 1 level = 0.43 dB of mel magnitude):",
        "",
        "| attack | " + " | ".join(f"{e:g}/255" for e in feps) + " |",
        "|---|" + "---:|" * len(feps),
    ]
    for att, r in robust(res_f).items():
        md.append(f"| {att} | " + " | ".join(f"{100 * v:.1f}%" for v in r.values()) + " |")
    md += [
        "",
        "Waveform domain (L-inf on 16-bit samples; median dB below the clip's peak in brackets):",
        "",
        "| attack | " + " | ".join(f"{e:g} ({db[f'{e:g}']:.0f} dB)" for e in weps) + " |",
        "|---|" + "---:|" * len(weps),
    ]
    for att, r in robust(res_w).items():
        md.append(f"| {att} | " + " | ".join(f"{100 * v:.1f}%" for v in r.values()) + " |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md), file=sys.stderr)


if __name__ == "__main__":
    main()
