"""``tinyrobust reproduce``: train what is missing, attack every model the same way, write the report.

Every piece is resumable: a finished run (``summary.json``) is reused, a killed one resumes from its
last checkpoint, and a model's attack results (``robustness.json``) are kept once written, so a
reproduce run killed at any point and started again continues from the finished pieces.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import RunLocked, TinyRobustError
from ..io_utils import atomic_write_json, check_writable
from ..paths import portable_path, portable_record
from ..report.grid import Grid, GridModel, load_grid
from ..resources import configs_dir as configs_dir_of
from ..rundir import (
    CONFIG_FILE,
    LOCK_FILE,
    ONNX_FILE,
    ONNX_VERIFY_FILE,
    ROBUSTNESS_FILE,
    ROBUSTNESS_ONNX_FILE,
    WEIGHTS_FILE,
    is_finished,
    run_lock,
)
from ..rundir import machine as rundir_machine

STAGES = ("train", "attack", "report")


def grid_path(name: str, configs_dir: Optional[str | Path] = None) -> Path:
    """The grid file ``<name>.yaml``: a dataset's own grid (``cifar10``) or any other grid by name
    (``cifar10_adversarial``); the grid names its dataset."""
    base = Path(configs_dir) if configs_dir else configs_dir_of("reproduce")
    p = base / f"{name}.yaml"
    if not p.is_file():
        avail = sorted(q.stem for q in base.glob("*.yaml")) if base.is_dir() else []
        raise TinyRobustError(f"no reproduce grid named {name!r} ({p}); available: {', '.join(avail) or 'none'}")
    return p


def machine() -> Dict[str, Any]:
    """What the report names as the machine: OS, CPU, core count and the accelerator when one is used."""
    info = rundir_machine()
    try:
        import torch

        if torch.cuda.is_available():
            info["accelerator"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA setup must not stop the report
        pass
    return info


def portable(arg: str | Path, data_dir: Optional[str | Path] = None) -> str:
    """A path (or an argument holding one) as committed results write it: relative under the working
    directory, ``$TINYROBUST_DATA/...`` under the data directory, ``~/...`` under home (paths.py)."""
    return portable_path(arg, data_dir)


def _grid_record(path: Path, data_dir: Optional[str | Path] = None) -> str:
    """The grid file as reproduce.json names it: portable (see :func:`portable`); a grid shipped inside
    an installed package (outside the working directory) as ``tinyrobust:configs/<name>``."""
    p, base = Path(path).resolve(), configs_dir_of().resolve()
    rec = portable(p, data_dir)
    if Path(rec).is_absolute() and p.is_relative_to(base):
        return f"tinyrobust:configs/{p.relative_to(base).as_posix()}"
    return rec


JOB_ENV = "TINYROBUST_REPRODUCE_JOB"  # set in the worker processes of ``--jobs``: tags their log lines


def _log(msg: str) -> None:
    job = os.environ.get(JOB_ENV)
    tag = f" job {job}" if job else ""
    print(f"[reproduce{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _start_worker(cmd: List[str], env: Dict[str, str]):
    import subprocess

    return subprocess.Popen(cmd, env=env)


def worker_env(job: int, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of worker ``job`` of ``--jobs``: this process's (plus ``base``), one thread, and
    the job number that tags its log lines."""
    from ..train.loop import thread_env

    return {**os.environ, **(base or {}), **thread_env(1), JOB_ENV: str(job)}


def worker_args(
    name: str,
    budget: str,
    out: Path,
    runs_root: Path,
    stages: List[str],
    *,
    data_dir: Optional[str],
    seed: int,
    configs_dir: Optional[str | Path],
    models: Optional[List[str]],
) -> List[str]:
    """The arguments after ``python`` of one worker of ``--jobs`` (paths absolute: a Ray worker may start
    in another folder)."""
    cmd = ["-m", "tinyrobust", "reproduce", "--grid", name, "--budget", budget, "--out", os.path.abspath(out)]
    cmd += ["--stages", ",".join(stages), "--seed", str(seed), "--runs-dir", os.path.abspath(runs_root), "--quiet"]
    if data_dir:
        cmd += ["--data-dir", os.path.abspath(data_dir)]
    if configs_dir:
        cmd += ["--grid-dir", os.path.abspath(configs_dir)]
    if models:
        cmd += ["--models", ",".join(models)]
    return cmd


def run_jobs(
    name: str,
    budget: str,
    out: Path,
    runs_root: Path,
    stages: List[str],
    jobs: int,
    *,
    data_dir: Optional[str],
    seed: int,
    configs_dir: Optional[str | Path],
    models: Optional[List[str]],
    address: Optional[str] = None,
) -> None:
    """The train and attack stages in ``jobs`` worker processes of one thread each (a 2-core machine:
    ``jobs=2``). Every worker walks the same model list; a model another worker is training or attacking
    is locked (``run_lock``) and skipped, so the workers share the list as a queue, and a model skipped
    because its run or a surrogate was not trained yet is taken up by the worker that trained the last
    of them. Once every worker has exited, a failed one makes the whole call fail, naming it; if the
    caller itself is interrupted, the workers still running are terminated. ``address``: the workers run
    as Ray tasks of one CPU each on that cluster (``local``: a local Ray) instead of as child processes
    (:func:`run_jobs_on_ray`)."""
    args = worker_args(
        name, budget, out, runs_root, stages, data_dir=data_dir, seed=seed, configs_dir=configs_dir, models=models
    )
    if address:
        codes = run_jobs_on_ray(args, jobs, address)
    else:
        procs = []
        try:
            for j in range(1, jobs + 1):
                procs.append(_start_worker([sys.executable, *args], worker_env(j)))
                time.sleep(1.0 if j < jobs else 0)  # the first worker takes the first model's lock first
            _log(f"{jobs} worker processes (one thread each) for stages {', '.join(stages)}")
            codes = [p.wait() for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
    failed = [str(j) for j, c in enumerate(codes, 1) if c != 0]
    if failed:
        raise TinyRobustError(
            f"reproduce worker job {', '.join(failed)} failed (its error is printed above); "
            "finished work is kept: run the same command again to continue"
        )


RAY_HINT = "Ray is not installed: pip install 'tinyrobust[sweep]' (or run without --address: local processes)"


def job_on_ray(args: List[str], job: int, cwd: str, env: Dict[str, str]) -> int:
    """What one Ray task of ``--jobs --address`` runs: a reproduce worker in its own process (this node's
    Python, one thread, the caller's TINYROBUST_* settings), as a local worker would; its exit code."""
    import subprocess

    return subprocess.call([sys.executable, *args], env=worker_env(job, env), cwd=cwd if os.path.isdir(cwd) else None)


def run_jobs_on_ray(args: List[str], jobs: int, address: str) -> List[int]:
    """``jobs`` reproduce workers as Ray tasks of one CPU each, on the cluster at ``address`` (``local``:
    a Ray started here with ``jobs`` CPUs). The workers share the grid's folders as local workers do
    (locks and finished runs), so on a cluster every node must see the output, runs and data folders
    at the same paths (a shared file system). A task that dies counts as a failed worker."""
    from ..sweep.engine import import_ray, start_ray

    ray = import_ray(RAY_HINT)
    env = {k: v for k, v in os.environ.items() if k.startswith("TINYROBUST_")}
    start_ray(ray, None if address == "local" else address, num_cpus=jobs, env_vars={}, log_to_driver=True)
    task = ray.remote(num_cpus=1, max_retries=0)(job_on_ray)
    refs = []
    try:
        for j in range(1, jobs + 1):
            refs.append(task.remote(args, j, os.getcwd(), env))
            time.sleep(1.0 if j < jobs else 0)  # as local workers: the first takes the first lock first
        _log(f"{jobs} Ray tasks at {address} (one CPU each) for stages {args[args.index('--stages') + 1]}")
        codes = []
        for ref in refs:
            try:
                codes.append(int(ray.get(ref)))
            except Exception as exc:  # the task's process died (killed, out of memory, node lost)
                _log(f"a Ray task ended without an exit code: {' '.join(str(exc).split())[:300]}")
                codes.append(-1)
        refs = []
        return codes
    finally:
        for ref in refs:  # interrupted: stop the workers still running
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort
                pass
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def config_drift(saved: Dict[str, Any], wanted: Dict[str, Any], prefix: str = "") -> List[str]:
    """``key: saved -> wanted`` for every setting where two config dicts differ."""
    diffs = []
    for k in sorted(set(saved) | set(wanted)):
        a, b = saved.get(k), wanted.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_drift(a, b, f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return diffs


def check_run_matches(run_dir: Path, cfg, key: str) -> None:
    """A run folder already there must hold the grid's current config: reusing a run trained with
    other settings (say 5 epochs after the grid moved to 20) would put its numbers under the wrong
    label. Error naming what differs and how to go on."""
    from ..config import effective_config_dict, load_config

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return
    diffs = config_drift(effective_config_dict(load_config(path)), effective_config_dict(cfg))
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise TinyRobustError(
            f"{run_dir} was trained with another config than the grid's model {key!r} "
            f"({shown}); remove that folder to train it again, or choose another --out"
        )


def select_models(grid: Grid, keys: Optional[List[str]]) -> List[GridModel]:
    """The grid's models named by ``keys``, in that order (all, in grid order, when None)."""
    if not keys:
        return list(grid.models)
    return [grid.model(k) for k in dict.fromkeys(keys)]  # unknown key: ConfigError listing the keys


def train_stage(
    grid: Grid,
    budget: str,
    out: Path,
    data_dir: Optional[str],
    progress: bool,
    models: Optional[List[GridModel]] = None,
) -> Dict[str, Any]:
    from ..train import train_run

    models = grid.models if models is None else models
    summaries = {}
    for m in models:  # before any training: a stale run found late would waste the hours before it
        check_run_matches(grid.runs_root(out) / m.key, grid.run_config(m, budget), m.key)
    for i, m in enumerate(models, 1):
        run_dir = grid.runs_root(out) / m.key
        cfg = grid.run_config(m, budget)
        if is_finished(run_dir):
            _log(f"train {i}/{len(models)} {m.key}: finished run reused")
        else:
            _log(f"train {i}/{len(models)} {m.key}: training ({cfg.train.epochs} epochs)")
        try:
            summaries[m.key] = train_run(cfg, run_dir, resume=True, data_dir=data_dir, progress=progress)
        except RunLocked as exc:  # another reproduce process is training it: move on
            _log(f"train {i}/{len(models)} {m.key}: skipped, {exc}")
    return summaries


def expand_params(params: Optional[Dict[str, Any]], names: List[str]) -> Optional[Dict[str, Any]]:
    """Budget ``attack_params`` for the attacks actually run: ``transfer`` settings go to every
    ``transfer@<surrogate>`` entry; settings of attacks not run this time are dropped."""
    if not params:
        return None
    out = {}
    for k, v in params.items():
        if k == "transfer":
            out.update({a: v for a in names if a.startswith("transfer@")})
        elif k == "masking" or k in names:
            out[k] = v
    return out or None


def _attack_run_supports(*kwargs: str) -> bool:
    import inspect

    from ..attacks.evaluate import attack_run

    params = inspect.signature(attack_run).parameters
    return all(k in params for k in kwargs)


def attack_stage(
    grid: Grid,
    budget: str,
    out: Path,
    data_dir: Optional[str],
    seed: int,
    progress: bool = True,
    models: Optional[List[GridModel]] = None,
) -> Dict[str, Any]:
    """Attack every trained model with every attack of the grid, on the same seeded test images.

    Each model gets its own cascade order (:meth:`Grid.model_attacks`): transfers from every surrogate
    but itself, last. A model whose run is not finished yet, or whose surrogates are not trained yet,
    is skipped (run the stage again later), so no model is attacked with a smaller attack set than
    the others. Finished attacks are reused (``robustness_parts/``, keyed by the weights' hash).

    In a worker of ``--jobs`` the work units are (model, eps), not models: every eps of a model is
    attacked on its own under its own lock (the cascade is per eps, so the parts are the same as one
    call's), and a second pass writes each model's ``robustness.json`` (masking probes included) from
    the parts. With whole models as units the two workers' shares of the waveform grid were 10,832 and
    8,634 s (its costliest model is 3.6x its cheapest; ``benchmarks/attack_progress.py --workers``)."""
    results = {}
    models = grid.models if models is None else models
    calls = []  # (position, model, attack_run keyword arguments) of the models ready to attack
    for i, m in enumerate(models, 1):
        tag = f"attack {i}/{len(models)} {m.key}"
        call = _attack_call(grid, budget, out, data_dir, seed, progress, m, tag)
        if call is None:
            continue
        calls.append((i, m, call, _kept(call, ROBUSTNESS_FILE, tag)))
    in_worker = bool(os.environ.get(JOB_ENV)) and len(grid.eps) > 1
    if in_worker:
        for i, m, call, kept in calls:
            for e in grid.eps if not kept else []:
                try:
                    with _unit_lock(call, e):
                        unit = f"attack {i}/{len(models)} {m.key} at eps {grid.eps_label(e)}"
                        _log(f"{unit}: {', '.join(call['attacks'])}")
                        t0 = time.perf_counter()
                        _attack_run({**call, "eps": [e]}, parts_only=True)
                        # a unit the other worker had finished takes seconds: its parts are reused
                        _log(f"{unit}: done in {time.perf_counter() - t0:.0f} s")
                except RunLocked:  # another worker attacks this model at this eps
                    continue
    for i, m, call, kept in calls:
        try:
            with run_lock(call["out"]):
                if kept:
                    results[m.key] = json.loads((call["out"] / ROBUSTNESS_FILE).read_text())
                elif in_worker and _report_fresh(call["out"], grid.eps):
                    continue  # the other worker wrote it from the same parts
                else:
                    _log(  # once the lock is held: a model another worker holds is logged as skipped only
                        f"attack {i}/{len(models)} {m.key}: {', '.join(call['attacks'])} on {call['n']} images"
                        + (
                            " (cascade: each attack on the survivors of the earlier ones)"
                            if call.get("cascade")
                            else ""
                        )
                        + (
                            f"; units it shares with {portable(call['prior_path'])} are taken from there"
                            if call.get("prior_path")
                            else ""
                        )
                    )
                    if in_worker:  # wait for a unit the other worker may still be attacking
                        for e in grid.eps:
                            with _unit_lock(call, e, wait=True):
                                pass
                    results[m.key] = _attack_run(call)
                if m.role == "proposed" and grid.onnx_attacks:  # the grid allows them in the feature domain only
                    results[m.key + "@onnx"] = onnx_attack(grid, budget, out, m.key, data_dir, seed, progress)
        except RunLocked as exc:  # another reproduce process is attacking it
            _log(f"attack {i}/{len(models)} {m.key}: skipped, {exc}")
    return results


def _kept(call: Dict[str, Any], name: str, tag: str) -> bool:
    """Whether the result file ``name`` of this call is already what the call would write (same weights,
    attacks, eps, images and parameters: ``attacks.evaluate.result_is_current``); then it is kept (and
    logged). Delete the file to attack again."""
    from ..attacks.evaluate import result_is_current

    if not result_is_current(call["out"] / name, **call):
        return False
    _log(f"{tag}: {name} is up to date (same weights, attacks, eps, images and parameters), kept")
    return True


def record_stage_seconds(meta_path: Path, record: Dict[str, Any], key: str, seconds: float) -> None:
    """Add one stage's seconds to ``reproduce.json``, re-read under a lock: two processes sharing a grid
    (``--models``) each finish hours after they started, and a record read at the start would drop the
    other's entries."""
    with run_lock(meta_path.parent, name=f"{LOCK_FILE}-reproduce-json", wait=True):
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta.update(record)
        meta.setdefault("stage_seconds", {})[key + "@" + time.strftime("%Y-%m-%dT%H:%M:%S")] = seconds
        atomic_write_json(meta_path, meta)


def _unit_lock(call: Dict[str, Any], e: float, wait: bool = False):
    """The lock of one (model, eps) unit of the attack stage, beside the model's own lock."""
    from ..attacks.runner import eps_key

    return run_lock(call["out"], name=f"{LOCK_FILE}-eps{eps_key(e)}", wait=wait)


def _attack_run(call: Dict[str, Any], **kwargs) -> Dict[str, Any]:
    from ..attacks.evaluate import attack_run

    args = {k: v for k, v in call.items() if k != "attacks"}
    return attack_run(args.pop("run_dir"), call["attacks"], args.pop("eps"), **args, **kwargs)


def _report_fresh(folder: Path, eps: List[float]) -> bool:
    """``robustness.json`` in ``folder`` covers ``eps`` and is newer than every resume part."""
    path = Path(folder) / ROBUSTNESS_FILE
    if not path.is_file():
        return False
    try:
        have = json.loads(path.read_text()).get("eps") or []
    except (OSError, json.JSONDecodeError):
        return False
    parts = [p.stat().st_mtime for p in (Path(folder) / "robustness_parts").glob("*.json")]
    return sorted(have) == sorted(eps) and all(t <= path.stat().st_mtime for t in parts)


def _attack_call(
    grid: Grid,
    budget: str,
    out: Path,
    data_dir: Optional[str],
    seed: int,
    progress: bool,
    m: GridModel,
    tag: str,
) -> Optional[Dict[str, Any]]:
    """``attack_run``'s arguments for one model of the grid; None (logged) if it cannot be attacked yet."""
    runs = grid.runs_root(out)
    run_dir = runs / m.key
    if not (run_dir / WEIGHTS_FILE).is_file():
        _log(f"{tag}: not trained yet, skipped")
        return None
    names = grid.model_attacks(budget, m.key)
    ready = [s for s in grid.surrogates if (runs / s / WEIGHTS_FILE).is_file()]
    waiting = [a.split("@", 1)[1] for a in names if a.startswith("transfer@") and a.split("@", 1)[1] not in ready]
    if waiting:
        _log(
            f"{tag}: waits for surrogate(s) {', '.join(waiting)} (not trained yet); "
            "run the attack stage again once they are"
        )
        return None
    surrogate_runs = {s: runs / s for s in (a.split("@", 1)[1] for a in names if a.startswith("transfer@"))}
    cascade = grid.cascade(budget)
    if (surrogate_runs or cascade) and not _attack_run_supports("surrogate_runs", "cascade"):
        raise TinyRobustError(
            "this tree's attack_run (attacks/evaluate.py) takes no surrogate_runs/cascade "
            "arguments yet (issue 11, attack side): use a grid without transfer and cascade"
        )
    call: Dict[str, Any] = {
        "run_dir": run_dir,
        "attacks": names,
        "eps": grid.eps,
        "n": grid.attack_n(budget, m.key),
        "seed": seed,
        "data_dir": data_dir,
        "out": out / "attacks" / m.key,
        "params": expand_params(grid.budget(budget).get("attack_params"), names),
        "progress": progress,
    }
    if surrogate_runs or cascade:
        call.update(surrogate_runs=surrogate_runs, cascade=cascade)
    if grid.domain != "feature":
        call["domain"] = grid.domain
    prior = _owner_result(runs, m.key)
    if prior is not None and prior.resolve() != (call["out"] / ROBUSTNESS_FILE).resolve():
        call["prior_path"] = prior
    return call


def _owner_result(runs: Path, key: str) -> Optional[Path]:
    """The attack result of ``key`` in the grid that owns the runs folder (``<its out>/runs``, shared
    through ``runs_dir``), if there is one: the attack stage offers it to ``attack_run``, which takes
    every (attack, eps) unit it provably shares instead of attacking again (cifar10_jr's eps 2 and 8
    from cifar10's 1, 2, 4 and 8)."""
    path = Path(os.path.normpath(Path(runs).parent / "attacks" / key / ROBUSTNESS_FILE))
    return path if path.is_file() else None


def onnx_attack(
    grid: Grid, budget: str, out: Path, key: str, data_dir: Optional[str], seed: int, progress: bool
) -> Dict[str, Any]:
    """Export a model to ONNX (verified against PyTorch) and attack the exported file black-box,
    so the report can say whether robustness carries over to the artifact a device runs."""
    from ..export.onnx_export import export_run

    b = grid.budget(budget)
    n = grid.attack_n(budget, key)
    run_dir = grid.runs_root(out) / key
    onnx = run_dir / ONNX_FILE
    call = {
        "run_dir": run_dir,
        "attacks": list(grid.onnx_attacks),
        "eps": grid.eps,
        "n": n,
        "seed": seed,
        "data_dir": data_dir,
        "out": out / "attacks" / key,
        "progress": progress,
        "params": {k: v for k, v in (b.get("attack_params") or {}).items() if k in grid.onnx_attacks},
    }
    if onnx.is_file() and _kept(call, ROBUSTNESS_ONNX_FILE, f"attack the exported {onnx.name} of {key}"):
        return json.loads((call["out"] / ROBUSTNESS_ONNX_FILE).read_text())
    if not (onnx.is_file() and (run_dir / ONNX_VERIFY_FILE).is_file()):
        _log(f"export {key} to ONNX (verified on the test set)")
        export_run(run_dir, "onnx", onnx, n=min(1000, n * 5), data_dir=data_dir, seed=seed)
    _log(f"attack the exported {onnx.name} of {key}: {', '.join(grid.onnx_attacks)}")
    return _attack_run(call, onnx_path=onnx, out_name=ROBUSTNESS_ONNX_FILE)


def reproduce(
    dataset: str,
    budget: str,
    out: str | Path,
    *,
    data_dir: Optional[str] = None,
    stages: List[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    configs_dir: Optional[str | Path] = None,
    models: Optional[List[str]] = None,
    extra_runs: Optional[List[str | Path]] = None,
    runs_dir: Optional[str | Path] = None,
    jobs: int = 1,
    address: Optional[str] = None,
) -> Path:
    """Train, attack and report the grid of ``dataset``; ``extra_runs``: more run folders (or glob
    patterns) for the report's Pareto plots, beside the grid's ``pareto_runs``; ``jobs`` > 1: the train
    and attack stages in that many one-thread worker processes (:func:`run_jobs`), as Ray tasks on the
    cluster at ``address`` if one is given."""
    grid = load_grid(grid_path(dataset, configs_dir))
    grid.budget(budget)
    out = Path(out)
    # the runs folder, kept relative to the output folder so results name no machine path
    grid.runs_dir = (
        os.path.relpath(os.path.abspath(runs_dir), os.path.abspath(out))
        if runs_dir is not None
        else grid.runs_dir.format(budget=budget)
    )
    chosen = select_models(grid, models)
    check_writable(out)
    stages = stages or list(STAGES)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise TinyRobustError(f"unknown stage {bad[0]!r}; choose from: {', '.join(STAGES)}")
    t0 = time.time()
    meta_path = out / "reproduce.json"
    record = {
        "dataset": grid.dataset,
        "budget": budget,
        "grid": _grid_record(grid.path, data_dir),
        "seed": seed,
        "command": "tinyrobust reproduce " + " ".join(portable(a, data_dir) for a in sys.argv[2:])
        if sys.argv[1:2] == ["reproduce"]
        else None,
        "machine": machine(),
    }
    if not isinstance(jobs, int) or jobs < 1:
        raise TinyRobustError(f"--jobs must be a whole number >= 1, got {jobs!r}")
    work = [s for s in ("train", "attack") if s in stages]
    if (jobs > 1 or address) and work:
        run_jobs(
            dataset,
            budget,
            out,
            grid.runs_root(out),
            work,
            jobs,
            data_dir=data_dir,
            seed=seed,
            configs_dir=configs_dir,
            models=models,
            address=address,
        )
    else:
        if "train" in stages:
            train_stage(grid, budget, out, data_dir, progress, chosen)
        if "attack" in stages:
            attack_stage(grid, budget, out, data_dir, seed, progress, chosen)
    # a worker of --jobs leaves the record to the process that started it; a report-only call records
    # nothing (its seconds would be taken before the report is written, and the report takes seconds)
    if not os.environ.get(JOB_ENV) and work:
        key = "+".join(s for s in stages if s != "report") + (f"(jobs={jobs})" if jobs > 1 else "")
        key += " on Ray" if address else ""
        record_stage_seconds(meta_path, portable_record(record, data_dir), key, round(time.time() - t0, 1))
    if "report" in stages:
        from ..report.render import write_report

        report = write_report(grid, budget, out, extra_runs=extra_runs, data_dir=data_dir)
        _log(f"report written: {report} (and {report.with_suffix('.html')})")
        return report
    return out
