"""Run a sweep's trials (on Ray, or one at a time in this process) and keep its results table current.

Layout of ``--out DIR``: ``sweep.yaml`` (the sweep file as run), ``runs/<name>-<key>/`` (one normal run
directory per trial, plus its ``sweep_trial.json``), ``results.csv`` / ``results.md`` /
``results.json`` and ``tradeoff.png`` (rewritten after every finished trial). Rerunning the same command continues:
scored trials are skipped, trained ones are only scored, unfinished ones resume from their
checkpoint, failed ones are tried again.
"""

from __future__ import annotations

import csv
import io
import math
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from tqdm import tqdm

from ..config import config_to_dict
from ..errors import TinyRobustError
from ..io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text, check_writable
from .spec import SweepSpec, Trial
from .trial import execute_trial, execute_trial_in_subprocess, read_result, record_failure

INSTALL_HINT = "Ray is not installed: pip install 'tinyrobust[sweep]' (or run trials one at a time with --local)"


class SweepError(TinyRobustError):
    """A sweep cannot start (Ray missing, cluster unreachable, output folder busy)."""


# ------------------------------------------------------------------ executors


class LocalExecutor:
    """Trials one after another in this process: the same ``execute_trial`` as on Ray (tests, no Ray)."""

    name = "local"

    def run(self, payloads: List[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        import os

        import torch

        for p in payloads:
            saved = {k: os.environ.get(k) for k in ("TINYROBUST_THREADS", "OMP_NUM_THREADS")}
            threads = torch.get_num_threads()
            try:
                result = execute_trial(p)
            finally:  # the trial's thread settings stay with the trial
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
                torch.set_num_threads(threads)
            yield result

    def close(self) -> None:
        pass


def import_ray(hint: str = INSTALL_HINT):
    try:
        import ray
    except ModuleNotFoundError:
        raise SweepError(hint) from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """One clear line if ``host:port`` (or ``ray://host:port``) does not answer; "auto" is left to Ray."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise SweepError(f"--address {address}: expected host:port (e.g. 10.0.0.5:6379), ray://host:10001 or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise SweepError(
            f"--address {address}: cannot reach the Ray cluster ({exc.strerror or exc}); "
            "is `ray start --head` running there?"
        ) from None


def start_ray(ray, address: Optional[str], *, num_cpus: int, env_vars: Dict[str, str], log_to_driver: bool) -> None:
    """Connect to the Ray cluster at ``address`` (checked first: one line if it does not answer), or start
    a local Ray with ``num_cpus`` CPUs when ``address`` is None; any other failure is one line too."""
    common = dict(log_to_driver=log_to_driver, ignore_reinit_error=True)
    if env_vars:
        common["runtime_env"] = {"env_vars": env_vars}
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, **common)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **common)
    except SweepError:
        raise
    except Exception as exc:  # ConnectionError, RuntimeError, ...
        raise SweepError(
            f"cannot start Ray{f' at {address}' if address else ''}: {' '.join(str(exc).split())[:300]}"
        ) from None


class RayExecutor:
    """Ray tasks, ``concurrent`` at a time with ``threads`` CPUs each; local Ray unless ``address``."""

    name = "ray"

    def __init__(self, address: Optional[str], concurrent: int, threads: int):
        ray = self.ray = import_ray()
        self.concurrent, self.threads = concurrent, threads
        from ..train.loop import thread_env

        start_ray(ray, address, num_cpus=concurrent * threads, env_vars=thread_env(threads), log_to_driver=False)
        self.task = ray.remote(num_cpus=threads, max_retries=0)(execute_trial_in_subprocess)

    def run(self, payloads: List[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        ray = self.ray
        queue = list(payloads)
        pending: Dict[Any, Dict[str, Any]] = {}
        while queue or pending:
            while queue and len(pending) < self.concurrent:
                p = queue.pop(0)
                pending[self.task.remote(p)] = p
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                p = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # the worker died (killed, out of memory, segfault)
                    msg = " ".join(str(exc).split())[:500]
                    yield record_failure(p, f"{type(exc).__name__}: {msg}")

    def close(self) -> None:
        try:
            self.ray.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


# ------------------------------------------------------------------ the sweep


@contextmanager
def _sweep_lock(out: Path):
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".sweep.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"{out} is being run by another `tinyrobust sweep`; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def payload(trial: Trial, spec: SweepSpec, out: Path, data_dir: Optional[str], threads: int) -> Dict[str, Any]:
    return {
        "key": trial.key,
        "values": trial.values,
        "config": config_to_dict(trial.cfg),
        "run_dir": str(out / "runs" / trial.name),
        "evaluation": spec.evaluation,
        "data_dir": data_dir,
        "threads": threads,
    }


def check_trials(spec: SweepSpec, data_dir: Optional[str] = None) -> None:
    """Checks that need a model (jr.layers block names), once per distinct model config, before any
    trial starts."""
    from ..config import ConfigError
    from ..runs import model_for_config
    from ..train.jacobian import check_jr_layers

    seen = set()
    for t in spec.trials:
        c = t.cfg
        key = (c.model.name, c.data.dataset, repr(c.model.quant), tuple(sorted(c.jr.layers)))
        if key in seen:
            continue
        seen.add(key)
        try:
            model, _ = model_for_config(c)
            check_jr_layers(model, c.jr.layers)
        except TinyRobustError as exc:
            label = ", ".join(f"{k}={v}" for k, v in t.values.items())
            raise ConfigError(f"trial ({label}): {exc}") from None
        if c.data.val_size <= 0:
            raise ConfigError(
                "data.val_size: 0 holds out no validation images; a sweep chooses on "
                "validation data only (set e.g. data.val_size: 5000 in the sweep's base)"
            )
        if spec.evaluation["n"] > c.data.val_size:
            raise ConfigError(
                f"evaluation.n: {spec.evaluation['n']} is more than data.val_size ({c.data.val_size}) validation images"
            )


def finished_results(spec: SweepSpec, out: Path) -> Dict[str, Dict[str, Any]]:
    """The scored trials found under ``out`` (trial key -> its sweep_trial.json)."""
    results = {}
    for t in spec.trials:
        r = read_result(Path(out) / "runs" / t.name)
        if r and r.get("status") == "done":
            results[t.key] = r
    return results


def run_sweep(
    spec: SweepSpec,
    out: Path,
    *,
    executor=None,
    address: Optional[str] = None,
    data_dir: Optional[str] = None,
    progress: bool = True,
    on_result: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """Run every trial not yet scored; return {"trials": [...], "done", "failed", "skipped"}."""
    import yaml

    out = Path(out)
    check_trials(spec, data_dir)
    check_writable(out)
    with _sweep_lock(out):
        atomic_write_text(out / "sweep.yaml", yaml.safe_dump(spec.raw, sort_keys=False))
        results: Dict[str, Dict[str, Any]] = finished_results(spec, out)
        todo = [t for t in spec.trials if t.key not in results]
        skipped = len(spec.trials) - len(todo)
        write_tables(spec, out, results)
        if todo:
            threads = spec.resources["threads_per_trial"]
            if executor is None:
                executor = RayExecutor(address, spec.resources["concurrent"], threads)
            payloads = [payload(t, spec, out, data_dir, threads) for t in todo]
            bar = tqdm(
                total=len(spec.trials),
                initial=skipped,
                desc=f"sweep {spec.name}",
                unit="trial",
                file=sys.stderr,
                disable=not progress,
            )
            try:
                for r in executor.run(payloads):
                    results[r["key"]] = r
                    write_tables(spec, out, results)
                    bar.update(1)
                    if r.get("status") != "done":
                        print(f"trial {r.get('run')} failed: {r.get('error')}", file=sys.stderr)
                    if on_result:
                        on_result(r)
            finally:
                bar.close()
                executor.close()
    ordered = [results[t.key] for t in spec.trials if t.key in results]
    return {
        "trials": ordered,
        "done": sum(r["status"] == "done" for r in ordered),
        "failed": sum(r["status"] != "done" for r in ordered),
        "skipped": skipped,
    }


# ------------------------------------------------------------------ tables and the choice


COLUMNS = [
    "val_clean_accuracy",
    "val_robust_accuracy",
    "val_robust_ci95",
    "robust_minus_twin",  # paired on the same validation images (Newcombe 95% interval beside it)
    "robust_minus_twin_ci95",
    "median_jacobian_sq_frobenius",
    "weight_kb",
    "train_s",
    "eval_s",
]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _twin_key(spec: SweepSpec, trial: Trial) -> Optional[str]:
    twin = (spec.choice or {}).get("twin") or {}
    if not twin:
        return None
    want = {**{k: v for k, v in trial.values.items() if k not in twin}, **twin}
    for t in spec.trials:
        # the twin's own values may lack a variable its variant does not use (lambda of "none")
        if all(t.values.get(k) == v for k, v in want.items() if k in t.values) and all(
            t.values.get(k) == v for k, v in twin.items()
        ):
            return t.key
    return None


def choose(spec: SweepSpec, results: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Apply the sweep file's choice rule: per group, the trial with the best ``maximize`` metric among
    those whose validation clean accuracy is within ``max_clean_drop`` of their twin's."""
    ch = spec.choice or {}
    if not ch:
        return []
    metric = ch.get("maximize", "val_robust_accuracy")
    drop = ch.get("max_clean_drop")
    groups: Dict[tuple, List[Trial]] = {}
    for t in spec.trials:
        groups.setdefault(tuple(t.values.get(k) for k in ch.get("group_by") or []), []).append(t)
    chosen = []
    for g, members in groups.items():
        best, best_v = None, -math.inf
        for t in members:
            r = results.get(t.key)
            if not r or r.get("status") != "done" or r.get(metric) is None:
                continue
            tk = _twin_key(spec, t)
            if tk == t.key:
                continue  # the twin itself is the baseline, not a candidate
            if drop is not None and tk is not None:
                tr = results.get(tk)
                if not tr or tr.get("status") != "done":
                    continue  # cannot apply the rule yet
                if r["val_clean_accuracy"] < tr["val_clean_accuracy"] - drop:
                    continue
            if r[metric] > best_v:
                best, best_v = t, r[metric]
        scored = sum(1 for t in members if (results.get(t.key) or {}).get("status") == "done")
        # a choice made before every trial of its group is scored may still change: say so
        entry = {"group": dict(zip(ch.get("group_by") or [], g)), "scored": scored, "trials": len(members)}
        entry["final"] = scored == len(members)
        if best is None:
            entry.update({"chosen": None, "note": "no finished trial meets the rule (yet)"})
        else:
            tk = _twin_key(spec, best)
            entry.update(
                {
                    "chosen": best.name,
                    "values": best.values,
                    metric: best_v,
                    "twin": next((t.name for t in spec.trials if t.key == tk), None),
                }
            )
        chosen.append(entry)
    return chosen


def _minus_twin(spec: SweepSpec, trial: Trial, results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The trial's validation robust accuracy minus its twin's, paired on the same images."""
    from ..stats import paired_difference

    none = {"robust_minus_twin": None, "robust_minus_twin_ci95": None}
    tk = _twin_key(spec, trial)
    a, b = (results.get(trial.key) or {}).get("val_robust"), (results.get(tk) or {}).get("val_robust")
    if tk is None or tk == trial.key or not a or not b or len(a) != len(b):
        return none
    d = paired_difference([c == "1" for c in a], [c == "1" for c in b])
    return {"robust_minus_twin": d["delta"], "robust_minus_twin_ci95": d["ci95"]}


def write_tables(spec: SweepSpec, out: Path, results: Dict[str, Dict[str, Any]]) -> None:
    rows = []
    for t in spec.trials:
        r = results.get(t.key) or {"status": "pending"}
        row = {"trial": t.name, "status": r.get("status")}
        row.update({a: t.values.get(a, "") for a in spec.axes})
        row.update({c: r.get(c) for c in COLUMNS})
        row.update(_minus_twin(spec, t, results))
        row["error"] = r.get("error", "")
        rows.append(row)
    header = ["trial", "status"] + spec.axes + COLUMNS + ["error"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for row in rows:
        w.writerow(
            [
                "" if row[h] is None else (" ".join(map(str, row[h])) if isinstance(row[h], list) else row[h])
                for h in header
            ]
        )
    atomic_write_text(out / "results.csv", buf.getvalue())
    ev = spec.evaluation
    chosen = choose(spec, results)
    lines = [
        f"# Sweep {spec.name}",
        "",
        f"Validation images only (data.val_size held out of the training split; the test split is not used). "
        f"Robust accuracy: per-image worst case of {', '.join(ev['attacks']) or '(none)'} at L-inf "
        f"{_fmt(ev['eps'])}/255 on {ev['n']} stratified validation images, 95% Wilson interval; "
        f"robust_minus_twin: minus the trial's no-JR twin on the same images (Newcombe paired 95% interval); "
        f"Jacobian: median input->logits ||J||_F^2 over {ev['jacobian_n']} validation images.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[h]).replace("|", "/") for h in header) + " |")
    if spec.choice:
        lines += ["", "## Choice", "", f"Rule (fixed before the sweep ran): {spec.choice.get('rule', '').strip()}", ""]
        for c in chosen:
            g = ", ".join(f"{k}={v}" for k, v in c["group"].items()) or "all"
            state = "" if c["final"] else f" (provisional: {c['scored']} of {c['trials']} trials of this group scored)"
            if c["chosen"]:
                vals = ", ".join(f"{k}={v}" for k, v in c["values"].items())
                lines.append(f"- {g}: **{c['chosen']}** ({vals}; twin {c['twin'] or '-'}){state}")
            else:
                lines.append(f"- {g}: {c['note']}{state}")
    from .tradeoff import tradeoff_panels, tradeoff_png

    png = tradeoff_png(tradeoff_panels(spec, results, chosen), ev)
    if png is not None:
        lines += ["", "Trade-off (clean against robust accuracy, twin, rule's floor, choice): `tradeoff.png`"]
        atomic_write_bytes(out / "tradeoff.png", png)
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    atomic_write_json(
        out / "results.json",
        {"sweep": spec.name, "evaluation": ev, "axes": spec.axes, "trials": rows, "choice": chosen},
    )
