"""One sweep trial: train a normal run directory, then score it on validation images.

``execute_trial`` is what both executors run (in this process, or as a Ray task): it never raises;
a failure comes back as ``{"status": "failed", "error": ...}`` and is also written to the run
directory, so the sweep goes on. Finished steps are kept: ``summary.json`` means trained (a killed
trial resumes from ``checkpoint.pt``), ``sweep_trial.json`` with status "done" means scored.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

RESULT_FILE = "sweep_trial.json"
ATTACK_CACHE = "sweep_attacks"  # run_attacks' resume folder inside the run directory


def read_result(run_dir: Path) -> Optional[Dict[str, Any]]:
    p = Path(run_dir) / RESULT_FILE
    if not p.is_file():
        return None
    try:
        result = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # cut by a kill: score again
    if result.get("status") == "done" and "val_robust" not in result:
        flags = _robust_from_parts(Path(run_dir), result)
        if flags is not None:
            result["val_robust"] = flags
    return result


def _robust_from_parts(run_dir: Path, result: Dict[str, Any]) -> Optional[str]:
    """Per-image worst case of a trial scored before ``val_robust`` was recorded, from its attack parts
    (each a 0/1 string over the same images); None unless it reproduces the recorded robust accuracy."""
    from ..attacks.runner import eps_key

    strings = []
    for a in result.get("attacks") or []:
        part = run_dir / ATTACK_CACHE / f"{a}_at_eps{eps_key(float(result['eps']))}.json"
        try:
            strings.append(json.loads(part.read_text())["entry"]["robust"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    if not strings or len({len(t) for t in strings}) != 1 or len(strings[0]) != result.get("n"):
        return None
    flags = "".join("1" if all(c == "1" for c in chars) else "0" for chars in zip(*strings))
    ok = abs(flags.count("1") / len(flags) - float(result.get("val_robust_accuracy", -1))) < 1e-9
    return flags if ok else None


def validation_data(cfg, data_dir: Optional[str]):
    """(x float32 NCHW in [0, 1], y int64) numpy arrays of the run's validation images
    (helper F's split: data.val_size held out of the training split, tinyrobust.data.splits)."""
    from ..data.loader import to_tensors
    from ..data.splits import config_split
    from ..errors import ConfigError

    if cfg.data.val_size <= 0:
        raise ConfigError(
            "data.val_size: 0 holds out no validation images; a sweep chooses on validation "
            "data only (set e.g. data.val_size: 5000 in the sweep's base)"
        )
    ds = config_split(cfg, "val", data_dir)
    x, y = to_tensors(ds)
    return x.numpy(), y.numpy()


def score_run(
    run_dir: Path, evaluation: Dict[str, Any], data_dir: Optional[str], progress: bool = False
) -> Dict[str, Any]:
    """Validation clean accuracy, robust accuracy (per-image worst case over ``evaluation.attacks`` at
    ``evaluation.eps``) with a 95% Wilson interval, median input->logits ||J||_F^2, weight KB."""
    import torch

    from ..attacks.runner import eps_key, run_attacks
    from ..data.loader import stratified_subset
    from ..inference import batched_accuracy
    from ..runs import load_run
    from ..stats import wilson
    from ..train.jacobian import frobenius_estimate

    loaded = load_run(run_dir)
    model = loaded.model
    x, y = validation_data(loaded.cfg, data_dir)
    ev = evaluation
    clean_idx = (
        np.arange(len(y))
        if ev["clean_n"] is None or ev["clean_n"] >= len(y)
        else stratified_subset(y, ev["clean_n"], ev["seed"])
    )
    clean = batched_accuracy(model, torch.from_numpy(x[clean_idx]), torch.from_numpy(y[clean_idx]))
    n = min(ev["n"], len(y))
    idx = stratified_subset(y, n, ev["seed"])  # nested: the first k of n are the k-subset (same seed)
    out: Dict[str, Any] = {
        "val_images": int(len(y)),
        "val_clean_accuracy": clean,
        "val_clean_n": int(len(clean_idx)),
        "eps": ev["eps"],
        "attacks": list(ev["attacks"]),
        "n": int(n),
    }
    if ev["attacks"]:
        res = run_attacks(
            model,
            x[idx],
            y[idx],
            list(ev["attacks"]),
            [ev["eps"]],
            seed=ev["seed"],
            params=ev["params"] or {},
            progress=progress,
            masking_checks=False,
            resume_dir=Path(run_dir) / ATTACK_CACHE,
        )
        wc = res["worst_case"][eps_key(float(ev["eps"]))]
        k = int(round(wc["robust_accuracy"] * n))
        out.update(
            {
                "val_robust_accuracy": wc["robust_accuracy"],
                "val_robust_ci95": list(wilson(k, n)),
                "val_robust": wc["robust"],  # per image, same images for every trial: paired differences
                "val_clean_accuracy_attacked": res["clean_accuracy"],
                "per_attack": {
                    a: e["results"][eps_key(float(ev["eps"]))]["robust_accuracy"] for a, e in res["attacks"].items()
                },
            }
        )
    if ev["jacobian_n"]:
        torch.manual_seed(ev["seed"])
        jidx = stratified_subset(y, min(ev["jacobian_n"], len(y)), ev["seed"])
        vals = []
        for chunk in torch.from_numpy(x[jidx]).split(50):
            xr = chunk.clone().requires_grad_(True)
            vals.append(frobenius_estimate(model(xr), xr, n_proj=64, create_graph=False).detach())
        v = torch.cat(vals)
        out["median_jacobian_sq_frobenius"] = float(v.median())
        out["jacobian_n"] = int(len(v))
    out["weight_kb"] = loaded.summary.get("weight_kb")
    return out


def _train_seconds(run_dir: Path) -> float:
    """Training seconds over every session (sum of per-epoch times in metrics.jsonl)."""
    total = 0.0
    from ..rundir import METRICS_FILE

    p = Path(run_dir) / METRICS_FILE
    if p.is_file():
        for line in p.read_text().splitlines():
            try:
                total += float(json.loads(line).get("epoch_time_s", 0.0))
            except (json.JSONDecodeError, TypeError, ValueError):
                pass
    return total


def _write_result(run_dir: Path, result: Dict[str, Any]) -> None:
    """Record a trial's result in its run directory (best effort: the sweep goes on without it)."""
    from ..io_utils import atomic_write_json

    try:
        atomic_write_json(Path(run_dir) / RESULT_FILE, result)
    except OSError:
        pass


def _trial_base(payload: Dict[str, Any]) -> Dict[str, Any]:
    return {"key": payload["key"], "values": payload["values"], "run": Path(payload["run_dir"]).name}


def record_failure(payload: Dict[str, Any], error: str, **extra: Any) -> Dict[str, Any]:
    """A failed trial's result (``error`` plus ``extra`` fields), written to its run directory and returned:
    a crash in the trial, its process dying, or the Ray worker running it dying."""
    result = {**_trial_base(payload), "status": "failed", "error": error, **extra}
    _write_result(Path(payload["run_dir"]), result)
    return result


def execute_trial(payload: Dict[str, Any]) -> Dict[str, Any]:
    """Train (or resume) and score one trial; never raises. ``payload``: key, values, config (raw dict),
    run_dir, evaluation, data_dir, threads, progress."""
    run_dir = Path(payload["run_dir"])
    threads = int(payload.get("threads", 1))
    os.environ["TINYROBUST_THREADS"] = str(threads)  # train_run reads it; one thread per trial by default
    os.environ["OMP_NUM_THREADS"] = str(threads)
    t0 = time.time()
    try:
        import torch

        torch.set_num_threads(threads)
        from ..config import config_from_dict
        from ..rundir import SUMMARY_FILE
        from ..train.loop import train_run

        done = read_result(run_dir)
        if done and done.get("status") == "done":
            return done
        cfg = config_from_dict(payload["config"])
        summary = train_run(
            cfg, run_dir, resume=True, data_dir=payload.get("data_dir"), progress=bool(payload.get("progress", False))
        )
        if not (run_dir / SUMMARY_FILE).is_file():
            raise RuntimeError("training returned without summary.json")
        t1 = time.time()
        scores = score_run(run_dir, payload["evaluation"], payload.get("data_dir"))
        result = {
            **_trial_base(payload),
            "status": "done",
            **scores,
            "train_s": round(_train_seconds(run_dir), 1),
            "eval_s": round(time.time() - t1, 1),
            "epochs": summary.get("epochs"),
        }
    except BaseException as exc:  # noqa: BLE001 - a trial's failure is a result, not the sweep's end
        if isinstance(exc, KeyboardInterrupt):
            raise
        msg = " ".join(str(exc).split())[:500]
        return record_failure(
            payload,
            f"{type(exc).__name__}: {msg}",
            traceback=traceback.format_exc()[-4000:],
            seconds=round(time.time() - t0, 1),
        )
    _write_result(run_dir, result)
    return result


def execute_trial_in_subprocess(payload: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`execute_trial` in a fresh Python process; what a Ray task runs. The trial then trains in a
    plain process with none of the Ray worker's own threads (RPC, heartbeats, memory monitor) competing
    for its one core, the way a `tinyrobust train` would (``benchmarks/results/sweep_throughput.md``).
    A process killed by a signal comes back as a failed trial."""
    import subprocess
    import sys

    run_dir = Path(payload["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    old = read_result(run_dir)
    if old is not None and old.get("status") == "failed":  # an earlier try's failure: this try writes its own
        (run_dir / RESULT_FILE).unlink(missing_ok=True)
    spec = run_dir / "sweep_payload.json"  # may name machine paths (data_dir): removed when the trial ends
    spec.write_text(json.dumps(payload, default=str))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tinyrobust.sweep.trial", str(spec)], capture_output=True, text=True
        )
    finally:
        spec.unlink(missing_ok=True)
    result = read_result(run_dir)
    if proc.returncode == 0 and result is not None:
        return result
    if result is not None and result.get("status") == "failed":
        return result  # execute_trial recorded its own failure
    last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return record_failure(payload, f"trial process ended with code {proc.returncode}: {last[:400]}")


if __name__ == "__main__":  # python -m tinyrobust.sweep.trial <payload.json> (execute_trial_in_subprocess)
    import sys

    execute_trial(json.loads(Path(sys.argv[1]).read_text()))
